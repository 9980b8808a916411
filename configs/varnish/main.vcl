# Pressdock edge cache: the entry VCL loaded by every Varnish instance.
# Request path: Traefik `web` -> Varnish -> Traefik `internal` -> the site's task.
# Split into includes so each part can change on its own:
#   backend.vcl   - where misses go (Traefik's `internal` entrypoint)
#   acl.vcl       - addresses allowed to PURGE and BAN
#   hosts.vcl     - the host table, regenerated and hot-loaded (vcl.load + vcl.use over the
#                   -T admin port) by the platform whenever sites change
#   static-hosts.vcl - hosts that are not platform sites (the lab's test site)
#   pressdock.vcl - the WordPress-aware rules (tested by tests/*.vtc with varnishtest)
vcl 4.1;

include "backend.vcl";
include "acl.vcl";
include "hosts.vcl";
include "static-hosts.vcl";
include "pressdock.vcl";
