# WordPress-aware caching rules. Included by main.vcl after backend.vcl, acl.vcl and
# hosts.vcl and static-hosts.vcl (which must define `acl purgers`, `sub pressdock_hosts`
# and `sub pressdock_static_hosts`).
import std;
# vtc.sleep: the pause between two tries of a failed fetch (vmod_vtc ships with Varnish).
import vtc;

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
        # Not a site of ours: our own page, not the router's bare "404 page not found".
        return (synth(404, "No site is configured for this address"));
    }
    if (req.method != "GET" && req.method != "HEAD") {
        return (pass);
    }
    if (req.http.Authorization) {
        return (pass);
    }
    # Dashboard, login, cron, XML-RPC, previews, and anything carrying a nonce (the REST
    # API of logged-in users, as `/wp-json/…` or `?rest_route=…`): one user's.
    if (req.url ~ "^/wp-(admin|login\.php|cron\.php|signup\.php|activate\.php)" ||
        req.url ~ "^/xmlrpc\.php" || req.url ~ "[?&]preview=true" ||
        req.url ~ "[?&]_wpnonce=") {
        return (pass);
    }
    # The anonymous REST API (`/wp-json/…`, `/?rest_route=…`) is cached like pages: the
    # same for every visitor, and the most expensive requests of a headless site. The
    # site's pressdock-cache plugin purges the core routes a change makes stale (the
    # post's collection and item, its terms, author, search, oEmbed; a ban of a path
    # covers its query variants: the plugin's `/` and `/index.php` every `?rest_route=…`).

    # A commenter's own page after posting (no cookie consent): WordPress shows the
    # comment awaiting moderation to whoever holds `?unapproved=ID&moderation-hash=…`.
    # Personal, and stale as soon as the comment is approved: never cached.
    if (req.url ~ "[?&](unapproved|moderation-hash)=") {
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
    # A task being replaced (a start-first move, a rolling update) or Traefik between two
    # refreshes of its routes: Traefik answers 502/503/504 at once. An idempotent request
    # is tried again after a short pause (4 retries, 0.5 s to 2 s apart, 5 s in all:
    # Traefik's swarm provider refreshes every 2 s). A background refresh is not retried:
    # the stale object is served meanwhile.
    if (beresp.status >= 502 && beresp.status <= 504 && !bereq.is_bgfetch &&
        (bereq.method == "GET" || bereq.method == "HEAD") && bereq.retries < 4) {
        call pressdock_retry_pause;
        return (retry);
    }
    # Traefik's own "404 page not found" (no Server header; a site's 404 comes from its
    # nginx) for a host we route: the site's router is missing between two refreshes of
    # Traefik's swarm provider while its task is replaced. Same retries.
    if (beresp.status == 404 && !beresp.http.Server && bereq.http.X-Pressdock-Site &&
        !bereq.is_bgfetch && (bereq.method == "GET" || bereq.method == "HEAD") &&
        bereq.retries < 4) {
        call pressdock_retry_pause;
        return (retry);
    }
    set beresp.http.X-Pressdock-Host = bereq.http.host;
    # How many retries this fetch took (no header: none), to read slow answers by.
    if (bereq.retries > 0) {
        set beresp.http.X-Pressdock-Retries = bereq.retries;
    }
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
    # Traefik unreachable (its task moving, the connection refused): same retries.
    if ((bereq.method == "GET" || bereq.method == "HEAD") && bereq.retries < 4) {
        call pressdock_retry_pause;
        return (retry);
    }
}

# 0.5, 1, 1.5 and 2 s before the 1st to 4th retry (Varnish's max_retries is 4): 5 s in
# all, two refreshes of Traefik's swarm provider and then some.
sub pressdock_retry_pause {
    if (bereq.retries == 0) {
        vtc.sleep(500ms);
    } elsif (bereq.retries == 1) {
        vtc.sleep(1s);
    } elsif (bereq.retries == 2) {
        vtc.sleep(1500ms);
    } else {
        vtc.sleep(2s);
    }
}

# Our own pages: an unknown host and a suspended site (the platform's hosts.vcl answers
# `synth(503, "Site suspended")`). Other synthetic answers (PURGE, BAN) keep Varnish's.
sub vcl_synth {
    unset resp.http.X-Varnish;
    if (resp.status == 404 && resp.reason == "No site is configured for this address") {
        set resp.http.X-Pressdock-Edge = "not-found";
        set resp.http.Content-Type = "text/html; charset=utf-8";
        set resp.http.Cache-Control = "no-store";
        synthetic({"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>No site here</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{font-family:system-ui,sans-serif;max-width:36em;margin:4em auto;padding:0 1em;color:#222}</style>
</head><body>
<h1>No site is configured for this address</h1>
<p>This address points at Pressdock, but no site uses it. If it is yours, add the domain
to your site in the dashboard; it works within a minute.</p>
</body></html>
"});
        return (deliver);
    }
    if (resp.status == 503 && resp.reason == "Site suspended") {
        set resp.http.X-Pressdock-Edge = "suspended";
        set resp.http.Retry-After = "300";
        set resp.http.Content-Type = "text/html; charset=utf-8";
        set resp.http.Cache-Control = "no-store";
        synthetic({"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Site suspended</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{font-family:system-ui,sans-serif;max-width:36em;margin:4em auto;padding:0 1em;color:#222}</style>
</head><body>
<h1>Site suspended</h1>
<p>This site is under maintenance and will be back. Please try again later.</p>
</body></html>
"});
        return (deliver);
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
    if (obj.hits > 0) {
        unset resp.http.X-Pressdock-Retries;
    }
    unset resp.http.Via;
    unset resp.http.X-Varnish;
}
