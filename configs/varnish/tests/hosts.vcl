sub pressdock_hosts {
    if (req.http.host == "site.test") {
        set req.http.X-Pressdock-Site = "abc123";
    } elsif (req.http.host == "other.test") {
        set req.http.X-Pressdock-Site = "def456";
    }
}
