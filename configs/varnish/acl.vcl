# Who may send PURGE and BAN over HTTP: the lab's node network and loopback.
# Public requests arrive through Traefik from overlay addresses and are refused.
acl purgers {
    "127.0.0.1";
    "::1";
    "10.213.0.0"/24;
}
