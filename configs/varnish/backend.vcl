# Misses go to Traefik's `internal` entrypoint, which routes by Host to the site's tasks.
# `traefik` is the stack's Traefik service (endpoint_mode dnsrr: resolves to its task).
backend default {
    .host = "traefik";
    .port = "8081";
    .connect_timeout = 2s;
    .first_byte_timeout = 60s;
    .probe = {
        .url = "/ping";
        .interval = 2s;
        .timeout = 1s;
        .window = 3;
        .threshold = 2;
    }
}
