# Hosts cached by Varnish that are not platform sites (the platform owns hosts.vcl and
# rewrites it whole). The lab puts its test site here; production keeps it empty or lists
# status pages. Same contract as hosts.vcl: set X-Pressdock-Site for a known host.
sub pressdock_static_hosts {
}
