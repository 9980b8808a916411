acl purgers {
    "10.9.9.0"/24;
}
