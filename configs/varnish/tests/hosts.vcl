sub pressdock_hosts {
    if (req.http.host == "site.test") {
        set req.http.X-Pressdock-Site = "abc123";
    } elsif (req.http.host == "other.test") {
        set req.http.X-Pressdock-Site = "def456";
    } elsif (req.http.host == "suspended.test") {
        # What the platform writes for a suspended site (backends::varnish).
        return (synth(503, "Site suspended"));
    }
}
