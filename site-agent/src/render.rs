//! The files the agent writes: wp-config, the object-cache drop-in, the install script,
//! nginx's and php-fpm's configs. Each is a pure function of the settings (tested below);
//! [`write_atomic`] puts a file in place by temp file + rename, so a reader (php-fpm, the
//! old task during a `start-first` update sharing the Gluster directory) never sees half a
//! file.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

use crate::config::{SALT_NAMES, Settings};
use crate::protocol::PhpSettings;

/// The object-cache drop-in (`wp-content/object-cache.php`): php-redis, the site's ACL
/// user and key prefix, the master found through Sentinel. It reads its settings from
/// the `PRESSDOCK_REDIS_*` constants of wp-config.
pub const OBJECT_CACHE_PHP: &str = include_str!("php/object-cache.php");

/// The must-use plugin (`wp-content/mu-plugins/pressdock-cache.php`): collects the paths a
/// change made stale and posts them to the agent's `/purge` at shutdown (see
/// [`crate::purge`]). It reads the URL from `PRESSDOCK_AGENT_PURGE_URL` of wp-config.
pub const PURGE_PLUGIN_PHP: &str = include_str!("php/pressdock-cache.php");

/// The install script run with php-cli on first start (see [`crate::install`]).
pub const INSTALL_PHP: &str = include_str!("php/install.php");

/// A PHP single-quoted string literal: only `\` and `'` need escaping there.
pub fn php_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\\' || c == '\'' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// The site's WordPress config. In the Debian image this is
/// `/etc/wordpress/config-default.php`, which Debian's `wp-config.php` requires before it
/// loads `wp-settings.php` (so it must not load it itself).
pub fn render_wp_config(s: &Settings) -> String {
    let mut o = String::new();
    let mut def = |name: &str, value: String| {
        o.push_str(&format!("define('{name}', {value});\n"));
    };
    let header = format!(
        "<?php\n// Written by pressdock-agent for site {} at every start; edits are lost.\n",
        s.site_id
    );
    def("DB_NAME", php_str(&s.db_name));
    def("DB_USER", php_str(&s.db_user));
    def("DB_PASSWORD", php_str(s.db_password.expose()));
    def("DB_HOST", php_str(&s.db_host));
    def("DB_CHARSET", php_str("utf8mb4"));
    def("DB_COLLATE", php_str(""));
    for name in SALT_NAMES {
        let v = s.salts.get(name).map(|v| v.expose()).unwrap_or_default();
        def(name, php_str(v));
    }
    def(
        "WP_CONTENT_DIR",
        php_str(&s.wp_content.display().to_string()),
    );
    def("WP_CACHE_KEY_SALT", php_str(&s.redis_prefix));
    let sentinels = s
        .redis_sentinels
        .iter()
        .map(|x| php_str(x))
        .collect::<Vec<_>>()
        .join(", ");
    def("PRESSDOCK_REDIS_SENTINELS", format!("[{sentinels}]"));
    def("PRESSDOCK_REDIS_MASTER_NAME", php_str(&s.redis_master_name));
    def("PRESSDOCK_REDIS_USER", php_str(&s.redis_user));
    def(
        "PRESSDOCK_REDIS_PASSWORD",
        php_str(s.redis_password.expose()),
    );
    def("PRESSDOCK_REDIS_PREFIX", php_str(&s.redis_prefix));
    def("PRESSDOCK_SITE_ID", php_str(&s.site_id));
    def("PRESSDOCK_AGENT_PURGE_URL", php_str(&s.local_purge_url()));
    def("WP_CORE_UPDATE", "false".into());
    def("AUTOMATIC_UPDATER_DISABLED", "true".into());
    def("DISALLOW_FILE_EDIT", "true".into());
    def("FS_METHOD", php_str("direct"));
    let primary = php_str(&s.primary_domain);
    format!(
        "{header}{o}\
$table_prefix = 'wp_';
// TLS ends at the edge (Traefik); only proxies reach the task, so X-Forwarded-Proto is
// trusted. The first value counts when a proxy appended its own.
if (isset($_SERVER['HTTP_X_FORWARDED_PROTO'])
    && strtolower(trim(explode(',', $_SERVER['HTTP_X_FORWARDED_PROTO'])[0])) === 'https') {{
    $_SERVER['HTTPS'] = 'on';
    $_SERVER['SERVER_PORT'] = 443;
}}
$pressdock_scheme = (!empty($_SERVER['HTTPS']) && $_SERVER['HTTPS'] !== 'off') ? 'https' : 'http';
define('WP_HOME', $pressdock_scheme . '://' . {primary});
define('WP_SITEURL', WP_HOME);
define('WP_CONTENT_URL', WP_HOME . '/wp-content');
unset($pressdock_scheme);
"
    )
}

/// nginx's whole config: WordPress core from the image, `/wp-content/` from the site's
/// directory, PHP to the pool, the access log as syslog datagrams to the agent, the
/// php-fpm status page for loopback only, the web installer closed (the agent installs).
pub fn render_nginx_conf(s: &Settings) -> String {
    let run = s.paths.run_dir.display();
    let wp_root = s.paths.wp_root.display();
    // wp_content ends in /wp-content (checked when the settings are read).
    let content_parent = s
        .wp_content
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let fpm = s.fpm_socket().display().to_string();
    let access = s.access_log_socket().display().to_string();
    let port = s.site_port;
    format!(
        r#"# Written by pressdock-agent at every start; edits are lost.
daemon off;
user www-data;
worker_processes 1;
pid {run}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 512; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    sendfile on;
    server_tokens off;
    client_body_temp_path {run}/nginx-tmp/body;
    fastcgi_temp_path {run}/nginx-tmp/fastcgi;
    proxy_temp_path {run}/nginx-tmp/proxy;
    uwsgi_temp_path {run}/nginx-tmp/uwsgi;
    scgi_temp_path {run}/nginx-tmp/scgi;
    # status, seconds, bytes: read by the agent for its metrics.
    log_format pressdock '$status $request_time $bytes_sent';
    access_log syslog:server=unix:{access},nohostname,tag=nginx pressdock;
    server {{
        listen {port} default_server;
        root {wp_root};
        index index.php;
        client_max_body_size 64m;
        location = /pressdock-health {{ access_log off; add_header Cache-Control "no-store"; return 200 "ok\n"; }}
        location = /fpm-status {{
            access_log off;
            allow 127.0.0.1;
            deny all;
            include /etc/nginx/fastcgi_params;
            fastcgi_param SCRIPT_NAME /fpm-status;
            fastcgi_param SCRIPT_FILENAME /fpm-status;
            fastcgi_pass unix:{fpm};
        }}
        location ~ ^/wp-admin/(install|setup-config)\.php$ {{ return 403; }}
        location ~ /\. {{ deny all; }}
        location ^~ /wp-content/ {{
            root {content_parent};
            location ~* ^/wp-content/uploads/.*\.php$ {{ return 403; }}
            location ~ \.php$ {{
                try_files $uri =404;
                include /etc/nginx/fastcgi_params;
                fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;
                fastcgi_pass unix:{fpm};
            }}
            expires 7d;
        }}
        location / {{ try_files $uri $uri/ /index.php?$args; }}
        location ~ \.php$ {{
            try_files $uri =404;
            include /etc/nginx/fastcgi_params;
            fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;
            fastcgi_pass unix:{fpm};
        }}
    }}
}}
"#
    )
}

/// php-fpm's whole config: one pool, the environment kept (`clear_env = no`), the status
/// page, and the PHP settings of the desired config.
pub fn render_fpm_conf(s: &Settings, php: &PhpSettings) -> String {
    let run = s.paths.run_dir.display();
    let sock = s.fpm_socket().display().to_string();
    let max_children = php.max_children.max(1);
    format!(
        "; Written by pressdock-agent; edits are lost.
[global]
pid = {run}/php-fpm.pid
error_log = /proc/self/fd/2
daemonize = no

[www]
user = www-data
group = www-data
listen = {sock}
listen.owner = www-data
listen.group = www-data
listen.mode = 0660
pm = dynamic
pm.max_children = {max_children}
pm.start_servers = 1
pm.min_spare_servers = 1
pm.max_spare_servers = {spare}
pm.max_requests = 500
pm.status_path = /fpm-status
clear_env = no
catch_workers_output = yes
decorate_workers_output = no
php_admin_value[memory_limit] = {mem}M
php_admin_value[upload_max_filesize] = {up}M
php_admin_value[post_max_size] = {up}M
php_admin_value[max_execution_time] = {exec}
",
        spare = max_children.min(2),
        mem = php.memory_limit_mb,
        up = php.upload_max_mb,
        exec = php.max_execution_secs,
    )
}

/// Writes `contents` to `path` through a temporary file in the same directory and a
/// rename; the file gets `mode`.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    write_atomic_owned(path, contents, mode, None)
}

/// [`write_atomic`], the file owned by `owner` (uid, gid) before it is renamed into place
/// when the agent runs as root (tests do not: the owner stays theirs).
///
/// The owner is set on the open temporary file, never by path: wp-content belongs to the
/// tenant's code (www-data), which could swap the file for a symlink between the rename
/// and a `chown(path)` and have root hand it a secret. For the same reason the temporary
/// file is created exclusively: a symlink planted at its name is not followed.
pub fn write_atomic_owned(
    path: &Path,
    contents: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let result = (|| -> Result<()> {
        // A random name created exclusively (tasks on other workers write the same Gluster
        // directory, and a planted symlink is not followed); removed if anything fails.
        let mut f = tempfile::Builder::new()
            .prefix(&format!(".{name}.tmp."))
            .permissions(std::fs::Permissions::from_mode(0o600))
            .tempfile_in(dir)?;
        f.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(contents)?;
        // Last: once the file is another user's, root needs CAP_FOWNER (dropped, see the
        // swarm spec) to change its mode.
        if let Some((uid, gid)) = owner {
            match std::os::unix::fs::fchown(f.as_file(), Some(uid), Some(gid)) {
                Ok(()) => {}
                Err(_) if !nix::unistd::geteuid().is_root() => {}
                Err(e) => return Err(e.into()),
            }
        }
        f.as_file().sync_all()?;
        f.persist(path).map_err(|e| e.error)?;
        Ok(())
    })();
    result.with_context(|| format!("writing {}", path.display()))
}

/// Writes `contents` only when it differs from what is there (the drop-in on the shared
/// wp-content would otherwise be rewritten by every task start). Returns whether it wrote.
pub fn write_if_changed(
    path: &Path,
    contents: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<bool> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // Same bytes, mode and owner (a symlink is never "the same": it gets replaced).
    let same = std::fs::symlink_metadata(path).is_ok_and(|m| {
        m.file_type().is_file()
            && m.permissions().mode() & 0o7777 == mode
            && owner.is_none_or(|(u, g)| {
                (m.uid(), m.gid()) == (u, g) || !nix::unistd::geteuid().is_root()
            })
    }) && std::fs::read(path).ok().as_deref() == Some(contents);
    if same {
        return Ok(false);
    }
    write_atomic_owned(path, contents, mode, owner)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::settings;

    #[test]
    fn php_strings_escape_quote_and_backslash_only() {
        assert_eq!(php_str(r"a'b\c$d"), r"'a\'b\\c$d'");
    }

    #[test]
    fn wp_config_has_db_salts_redis_and_home() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = settings(dir.path());
        let c = render_wp_config(&s);
        assert!(c.starts_with("<?php\n"));
        assert!(c.contains("define('DB_HOST', '10.0.0.5:6033');"));
        assert!(c.contains("define('DB_PASSWORD', 'db\\'pw\\\\');"), "{c}");
        assert!(c.contains("define('DB_NAME', 'wp_k3v9q2m8xa');"));
        for n in SALT_NAMES {
            assert!(c.contains(&format!("define('{n}', '")), "{n}");
        }
        // The salt values contain ' and \ (see the fixture): escaped.
        assert!(c.contains("define('AUTH_KEY', '0\\'\\\\xxxx"), "{c}");
        assert!(c.contains(
            "define('PRESSDOCK_REDIS_SENTINELS', ['10.0.0.7:26379', '10.0.0.8:26379']);"
        ));
        assert!(c.contains("define('PRESSDOCK_REDIS_USER', 'wp_k3v9q2m8xa');"));
        assert!(c.contains("define('PRESSDOCK_REDIS_PREFIX', 'wp_k3v9q2m8xa:');"));
        assert!(c.contains("define('PRESSDOCK_REDIS_PASSWORD', 'redis-pw');"));
        assert!(c.contains("define('PRESSDOCK_AGENT_PURGE_URL', 'http://127.0.0.1:9180/purge');"));
        assert!(c.contains("define('WP_HOME', $pressdock_scheme . '://' . 'a.test');"));
        assert!(c.contains("HTTP_X_FORWARDED_PROTO"));
        assert!(
            !c.contains("wp-settings.php"),
            "Debian's wp-config loads it"
        );
    }

    #[test]
    fn nginx_conf_routes_wp_content_to_the_site_dir_and_logs_to_the_agent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = settings(dir.path());
        let c = render_nginx_conf(&s);
        let parent = dir.path().display().to_string();
        assert!(c.contains(&format!("root {parent};")), "{c}");
        assert!(c.contains("root /usr/share/wordpress;"));
        assert!(c.contains(&format!(
            "access_log syslog:server=unix:{parent}/run/access.sock,nohostname,tag=nginx pressdock;"
        )));
        assert!(c.contains("listen 80 default_server;"));
        assert!(c.contains("allow 127.0.0.1;"));
        assert!(c.contains("(install|setup-config)\\.php$ { return 403; }"));
        // Balanced braces: a cheap syntax check (nginx -t runs in the PHP-stack test).
        assert_eq!(c.matches('{').count(), c.matches('}').count());
    }

    #[test]
    fn fpm_conf_keeps_env_and_applies_php_settings() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = settings(dir.path());
        let php = PhpSettings {
            memory_limit_mb: 256,
            upload_max_mb: 64,
            max_execution_secs: 30,
            max_children: 6,
        };
        let c = render_fpm_conf(&s, &php);
        assert!(c.contains("clear_env = no"));
        assert!(c.contains("pm.max_children = 6"));
        assert!(c.contains("php_admin_value[memory_limit] = 256M"));
        assert!(c.contains("pm.status_path = /fpm-status"));
        assert!(c.contains("daemonize = no"));
    }

    #[test]
    fn write_if_changed_replaces_a_planted_symlink_not_its_target() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("agent_token");
        std::fs::write(&secret, "tok").expect("write");
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o400)).expect("chmod");
        // The tenant's code made the plugin a link to a secret, with the same contents.
        let plugin = dir.path().join("pressdock-cache.php");
        std::os::unix::fs::symlink(&secret, &plugin).expect("link");
        assert!(write_if_changed(&plugin, b"tok", 0o644, Some((33, 33))).expect("write"));
        let m = std::fs::symlink_metadata(&plugin).expect("meta");
        assert!(m.file_type().is_file(), "the link itself was replaced");
        assert_eq!(m.permissions().mode() & 0o777, 0o644);
        let sm = std::fs::metadata(&secret).expect("secret");
        assert_eq!(
            sm.permissions().mode() & 0o777,
            0o400,
            "the target is untouched"
        );
    }

    #[test]
    fn write_atomic_replaces_whole_files_and_skips_unchanged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("sub/f.php");
        write_atomic(&p, b"one", 0o640).expect("write");
        assert_eq!(std::fs::read(&p).expect("read"), b"one");
        assert!(!write_if_changed(&p, b"one", 0o640, None).expect("same"));
        assert!(write_if_changed(&p, b"two", 0o640, None).expect("changed"));
        assert!(write_if_changed(&p, b"two", 0o644, None).expect("mode changed"));
        assert_eq!(std::fs::read(&p).expect("read"), b"two");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .expect("dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp."))
            .collect();
        assert!(leftovers.is_empty());
    }
}
