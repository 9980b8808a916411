//! The cloud-init user data of a node: Docker on every node, the GlusterFS server on storage
//! nodes (its client where the `sites` volume is mounted: workers and managers), and the
//! node's block volume mounted where its role keeps data. Only what a node needs before it
//! joins the swarm; the rest (swarm, labels, stacks) is done over the Docker API afterwards.
//!
//! The volume is made with a filesystem (DigitalOcean formats it) and attached when the
//! droplet is created, so it is there at first boot; the mount waits for the device anyway,
//! because an attachment converged by a later `apply` arrives after boot. It is mounted by
//! its stable `/dev/disk/by-id/scsi-0DO_Volume_<name>` path with `nofail`, so a node whose
//! volume is missing still boots (and its data service finds an empty mount point). The
//! output parses as YAML (checked by hand with PyYAML; no YAML crate in the workspace).
use super::spec::{GuardSpec, Role, VolumeSpec};

/// The network guard's unit, installed on every worker.
const GUARD_UNIT: &str = include_str!("../../../configs/systemd/pressdock-guard.service");
const GUARD_BIN: &str = "/usr/local/bin/pressdock-infra";
/// On cache and database nodes: `addr`, the node's VPC address (the cache and database
/// stacks' `PD_NODE_DIR`).
pub const NODE_DIR: &str = "/etc/pressdock/node";
/// DigitalOcean's metadata service: the droplet's private (VPC) IPv4 address.
const PRIVATE_IPV4_URL: &str =
    "http://169.254.169.254/metadata/v1/interfaces/private/0/ipv4/address";

/// The user data of a node of `role`; `volume` is the name of its block volume; `guard`
/// the network guard and the VPC's range (workers: installed and started before the node
/// joins the swarm, so no site task ever runs on it unconfined).
pub fn user_data(
    role: Role,
    spec: Option<&VolumeSpec>,
    volume: Option<&str>,
    guard: Option<(&GuardSpec, &str)>,
) -> String {
    let guard = guard.filter(|_| role == Role::Worker);
    let mut packages = vec!["docker.io", "chrony"];
    match role {
        Role::Storage => packages.push("glusterfs-server"),
        Role::Worker | Role::Manager => packages.push("glusterfs-client"),
        _ => {}
    }
    if guard.is_some() {
        // iptables-restore in each task's namespace; nsenter is util-linux (always there).
        packages.extend(["iptables", "curl"]);
    }
    let node_addr = matches!(role, Role::Cache | Role::Database);
    if node_addr {
        // The node's address file (below).
        packages.push("curl");
    }
    let mut s = String::from("#cloud-config\n");
    s.push_str("package_update: true\npackage_upgrade: true\npackages:\n");
    for p in &packages {
        s.push_str(&format!("  - {p}\n"));
    }
    s.push_str(concat!(
        "write_files:\n",
        "  - path: /etc/docker/daemon.json\n",
        "    permissions: \"0644\"\n",
        "    content: |\n",
        "      {\"log-driver\": \"json-file\", \"log-opts\": {\"max-size\": \"20m\", \"max-file\": \"3\"}, \"live-restore\": false}\n",
    ));
    if let Some((g, vpc)) = guard {
        s.push_str("  - path: /etc/systemd/system/pressdock-guard.service\n");
        s.push_str("    permissions: \"0644\"\n    content: |\n");
        for line in GUARD_UNIT.lines() {
            s.push_str(&format!("      {line}\n"));
        }
        // Written by us from checked fields (ranges and port lists: no quotes, no `$`).
        s.push_str("  - path: /etc/pressdock/guard.env\n");
        s.push_str("    permissions: \"0644\"\n    content: |\n");
        s.push_str(&format!("      PD_GUARD_ARGS=\"{}\"\n", g.args(vpc)));
    }
    s.push_str("runcmd:\n");
    if let (Some(v), Some(name)) = (spec, volume) {
        let dev = format!("/dev/disk/by-id/scsi-0DO_Volume_{name}");
        s.push_str(&format!(
            "  - [sh, -c, 'for i in $(seq 300); do [ -e {dev} ] && break; sleep 1; done']\n"
        ));
        s.push_str(&format!("  - mkdir -p {}\n", v.mount));
        s.push_str(&format!(
            "  - [sh, -c, 'grep -q {dev} /etc/fstab || echo \"{dev} {} {} defaults,nofail,discard,noatime 0 2\" >> /etc/fstab']\n",
            v.mount,
            v.filesystem.as_str()
        ));
        s.push_str(&format!("  - mount {}\n", v.mount));
    }
    if node_addr {
        // The cache stack's Redis nodes and Sentinels and the database stack's Galera nodes
        // announce their node's VPC address, read from this file at start (stacks/cache.yml,
        // stacks/database.yml, PD_NODE_DIR=/etc/pressdock/node): the droplet's own private
        // address, from DigitalOcean's metadata service.
        s.push_str(&format!(
            "  - [sh, -c, 'mkdir -p {NODE_DIR} && curl -fsS --retry 5 {PRIVATE_IPV4_URL} > {NODE_DIR}/addr.new && mv {NODE_DIR}/addr.new {NODE_DIR}/addr']\n"
        ));
    }
    s.push_str("  - systemctl enable --now docker\n");
    if let Some((g, _)) = guard {
        // The binary only if its digest is the spec's; the guard before anything else runs
        // tasks here (the node joins the swarm after cloud-init).
        s.push_str(&format!(
            "  - [sh, -c, 'curl -fsSL --retry 5 -o {GUARD_BIN}.new \"{url}\" && echo \"{sha}  {GUARD_BIN}.new\" | sha256sum -c - && chmod 0755 {GUARD_BIN}.new && mv {GUARD_BIN}.new {GUARD_BIN}']\n",
            url = g.binary_url,
            sha = g.sha256.to_ascii_lowercase(),
        ));
        s.push_str("  - systemctl daemon-reload\n");
        s.push_str("  - systemctl enable --now pressdock-guard\n");
    }
    if role == Role::Storage {
        s.push_str("  - systemctl enable --now glusterd\n");
    }
    s
}
