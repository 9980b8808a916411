# WordPress-aware caching rules. Included by main.vcl after backend.vcl, acl.vcl and
# hosts.vcl and static-hosts.vcl (which must define `acl purgers`, `sub pressdock_hosts`
# and `sub pressdock_static_hosts`).
import std;

sub vcl_recv {
    # One cache entry per site host, whatever port or case the client used.
    if (req.http.host) {
        set req.http.host = std.tolower(regsub(req.http.host, ":[0-9]+$", ""));
    }
    unset req.http.X-Pressdock-Site;
    unset req.http.X-Pressdock-Stale;

    if (req.method == "PURGE") {
        if (client.ip !~ purgers) {
            return (synth(405, "PURGE not allowed from this address"));
        }
        return (purge);
    }
    if (req.method == "BAN") {
        if (client.ip !~ purgers) {
            return (synth(405, "BAN not allowed from this address"));
        }
        # Everything cached for this host; lurker-friendly (matches an obj header).
        ban("obj.http.X-Pressdock-Host == " + req.http.host);
        return (synth(200, "Banned"));
    }

    call pressdock_hosts;
    if (!req.http.X-Pressdock-Site) {
        call pressdock_static_hosts;
    }
    if (!req.http.X-Pressdock-Site) {
        return (pass);
    }
    if (req.method != "GET" && req.method != "HEAD") {
        return (pass);
    }
    if (req.http.Authorization) {
        return (pass);
    }
    # Dashboard, login, cron, XML-RPC, previews and the REST API of logged-in users.
    if (req.url ~ "^/wp-(admin|login\.php|cron\.php|signup\.php|activate\.php)" ||
        req.url ~ "^/xmlrpc\.php" || req.url ~ "[?&]preview=true" ||
        req.url ~ "^/wp-json/.*[?&]_wpnonce=") {
        return (pass);
    }
    # Static files: cookies never change them.
    if (req.url ~ "\.(css|js|mjs|png|jpe?g|gif|ico|svg|webp|avif|woff2?|ttf|eot|otf|mp4|webm|pdf|txt|xml)(\?.*)?$") {
        unset req.http.Cookie;
        return (hash);
    }
    # Logged in, remembered commenters, unlocked password-protected posts, carts.
    if (req.http.Cookie ~ "(wordpress_logged_in_|wordpress_sec_|wp-postpass_|comment_author_|woocommerce_items_in_cart|wp_woocommerce_session_)") {
        return (pass);
    }
    # Anonymous visitor: other cookies (analytics, consent) do not change the page.
    unset req.http.Cookie;
    # With a healthy backend, serve stale objects only briefly while refreshing; when it is
    # sick, the object's full grace applies.
    if (std.healthy(req.backend_hint)) {
        set req.grace = 10s;
    }
    return (hash);
}

sub vcl_hash {
    hash_data(req.http.X-Forwarded-Proto);
}

sub vcl_hit {
    if (obj.ttl <= 0s) {
        set req.http.X-Pressdock-Stale = "1";
    }
}

sub vcl_backend_response {
    set beresp.http.X-Pressdock-Host = bereq.http.host;
    set beresp.grace = 6h;
    set beresp.keep = 1h;
    # A failed refresh keeps the stale object instead of replacing it with an error.
    if (beresp.status >= 500 && bereq.is_bgfetch) {
        return (abandon);
    }
    if (bereq.url ~ "\.(css|js|mjs|png|jpe?g|gif|ico|svg|webp|avif|woff2?|ttf|eot|otf|mp4|webm|pdf|txt|xml)(\?.*)?$") {
        unset beresp.http.Set-Cookie;
        if (!beresp.http.Cache-Control) {
            set beresp.ttl = 1d;
        }
    }
    # A page that sets a cookie for an anonymous visitor is personal: do not share it.
    if (beresp.http.Set-Cookie) {
        set beresp.uncacheable = true;
        set beresp.ttl = 120s;
        return (deliver);
    }
    if (beresp.status >= 500) {
        set beresp.ttl = 0s;
        set beresp.uncacheable = true;
    }
    # Not-found answers are cached briefly: a site (or route) that appears must show up
    # within seconds, not after the default two minutes.
    if (beresp.status == 404 || beresp.status == 410) {
        set beresp.ttl = 5s;
        set beresp.grace = 0s;
    }
}

sub vcl_backend_error {
    if (bereq.is_bgfetch) {
        return (abandon);
    }
}

sub vcl_deliver {
    if (obj.uncacheable) {
        set resp.http.X-Pressdock-Cache = "PASS";
    } elsif (obj.hits > 0) {
        set resp.http.X-Pressdock-Cache = "HIT";
    } else {
        set resp.http.X-Pressdock-Cache = "MISS";
    }
    if (req.http.X-Pressdock-Stale) {
        set resp.http.X-Pressdock-Stale = "1";
    }
    unset resp.http.X-Pressdock-Host;
    unset resp.http.Via;
    unset resp.http.X-Varnish;
}
