#!/bin/sh
# mmdebstrap customize hook: $1 is the root filesystem.
set -eu
R="$1"
# php-fpm drops the environment unless told otherwise; the agent passes config by env.
sed -i 's/^;\?clear_env = .*/clear_env = no/' "$R"/etc/php/8.2/fpm/pool.d/www.conf
sed -i 's|^listen = .*|listen = /run/php/php-fpm.sock|' "$R"/etc/php/8.2/fpm/pool.d/www.conf
cat > "$R"/etc/nginx/sites-available/default <<'NGINX'
server {
    listen 80 default_server;
    root /usr/share/wordpress;
    index index.php;
    client_max_body_size 64m;
    location = /pressdock-health { access_log off; add_header Cache-Control "no-store"; return 200 "ok\n"; }
    location / { try_files $uri $uri/ /index.php?$args; }
    location ~ \.php$ {
        include snippets/fastcgi-php.conf;
        fastcgi_pass unix:/run/php/php-fpm.sock;
    }
    location ~* \.(css|js|png|jpg|jpeg|gif|svg|webp|woff2?)$ { expires 7d; access_log off; }
}
NGINX
ln -sf /dev/stdout "$R"/var/log/nginx/access.log
ln -sf /dev/stderr "$R"/var/log/nginx/error.log
cat > "$R"/entrypoint.sh <<'SH'
#!/bin/sh
# Default entrypoint (the site agent replaces it for real sites): php-fpm + nginx.
set -e
mkdir -p /run/php
php-fpm8.2 --daemonize
exec nginx -g 'daemon off;'
SH
chmod +x "$R"/entrypoint.sh
rm -rf "$R"/var/cache/apt/archives/*.deb "$R"/var/lib/apt/lists/*
