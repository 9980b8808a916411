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
use super::spec::{Role, VolumeSpec};

/// The user data of a node of `role`; `volume` is the name of its block volume.
pub fn user_data(role: Role, spec: Option<&VolumeSpec>, volume: Option<&str>) -> String {
    let mut packages = vec!["docker.io", "chrony"];
    match role {
        Role::Storage => packages.push("glusterfs-server"),
        Role::Worker | Role::Manager => packages.push("glusterfs-client"),
        _ => {}
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
    s.push_str("  - systemctl enable --now docker\n");
    if role == Role::Storage {
        s.push_str("  - systemctl enable --now glusterd\n");
    }
    s
}
