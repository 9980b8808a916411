//! The lab's storage services authenticate (issue 11, item 1): the S3 server answers only
//! requests signed with the platform's key, and the Gluster volume admits only clients
//! with the lab CA's storage certificate, from the storage clients' addresses, with TLS on
//! the management and the I/O path.
//!
//! Gated by `PRESSDOCK_LAB_TESTS=1` and a lab that is up (`pressdock-infra lab up`). Run
//! as root (the Gluster probes use mount and network namespaces). Read-only for the lab
//! except objects under a fresh prefix of the `backups` bucket, removed again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::SystemTime,
};

use backends::config::{BackendsConfig, S3Config};
use infra::lab::sigv4::{self, Credentials};

const LAB_CONFIG: &str = "/var/lib/pressdock-lab/pressdock.toml";
/// The node whose network namespace the Gluster probes run in (a worker: where site
/// tasks run, and whose address a site's traffic to the storage host leaves with).
const PROBE_NODE: &str = "pdlab-w1";

fn enabled() -> bool {
    e2e::lab_tests_enabled(Path::new(LAB_CONFIG))
}

fn s3_config() -> S3Config {
    let text = std::fs::read_to_string(LAB_CONFIG).unwrap();
    let table: toml::Table = text.parse().unwrap();
    let backends: BackendsConfig = table["backends"].clone().try_into().unwrap();
    backends.s3.expect("[backends.s3] in the lab's config")
}

/// `<Code>` of an S3 error body.
fn code(body: &str) -> &str {
    body.split_once("<Code>")
        .and_then(|(_, r)| r.split_once("</Code>"))
        .map(|(c, _)| c)
        .unwrap_or("")
}

struct S3 {
    http: reqwest::Client,
    endpoint: String,
    host: String,
    region: String,
}

impl S3 {
    fn new(cfg: &S3Config) -> Self {
        let endpoint = cfg.endpoint.trim_end_matches('/').to_owned();
        let host = endpoint
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .to_owned();
        Self {
            http: reqwest::Client::new(),
            endpoint,
            host,
            region: cfg.region.clone(),
        }
    }

    /// A request signed with `key`/`secret` (or unsigned when `key` is `None`); returns the
    /// status and the body.
    async fn send(
        &self,
        key: Option<(&str, &str)>,
        method: &str,
        path: &str,
        query: &str,
        body: &[u8],
    ) -> (u16, String) {
        let url = if query.is_empty() {
            format!("{}{path}", self.endpoint)
        } else {
            format!("{}{path}?{query}", self.endpoint)
        };
        let mut req = self
            .http
            .request(method.parse().unwrap(), &url)
            .body(body.to_vec());
        if let Some((access_key, secret_key)) = key {
            let c = Credentials {
                access_key,
                secret_key,
                region: &self.region,
            };
            for (k, v) in sigv4::sign(&c, method, &self.host, path, query, body, SystemTime::now())
            {
                req = req.header(k, v);
            }
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.text().await.unwrap())
    }
}

#[tokio::test]
async fn s3_answers_requests_signed_with_the_platforms_key_only() {
    if !enabled() {
        return;
    }
    let cfg = s3_config();
    let s3 = S3::new(&cfg);
    let (ak, sk) = (cfg.access_key.as_str(), cfg.secret_key.expose());
    let bucket = format!("/{}", cfg.bucket);
    let prefix = format!("authtest-{}", std::process::id());
    let object = format!("{bucket}/{prefix}/probe.txt");

    // Signed with the platform's key: write, read, list, delete.
    let (st, body) = s3
        .send(Some((ak, sk)), "PUT", &object, "", b"signed body")
        .await;
    assert_eq!(st, 200, "signed PUT: {body}");
    let (st, body) = s3.send(Some((ak, sk)), "GET", &object, "", b"").await;
    assert_eq!((st, body.as_str()), (200, "signed body"));
    let (st, body) = s3
        .send(
            Some((ak, sk)),
            "GET",
            &bucket,
            &format!("list-type=2&prefix={prefix}"),
            b"",
        )
        .await;
    assert_eq!(st, 200, "signed list: {body}");
    assert!(
        body.contains(&format!("<Key>{prefix}/probe.txt</Key>")),
        "{body}"
    );

    // Unsigned: refused, whatever the operation, and nothing leaks into the answer.
    for (method, path, query) in [
        ("GET", "/", ""),
        ("GET", bucket.as_str(), "list-type=2"),
        ("GET", object.as_str(), ""),
        ("PUT", object.as_str(), ""),
        ("DELETE", object.as_str(), ""),
        ("PUT", "/another-bucket", ""),
    ] {
        let (st, body) = s3.send(None, method, path, query, b"overwritten").await;
        assert_eq!(
            (st, code(&body)),
            (403, "AccessDenied"),
            "unsigned {method} {path}?{query}: {body}"
        );
        assert!(!body.contains("probe.txt"), "{body}");
    }

    // Wrongly signed: another secret for the platform's key id, an unknown key id, and a
    // valid signature of another request (replayed on the object).
    let wrong_secret = format!("{sk}x");
    let (st, body) = s3
        .send(Some((ak, &wrong_secret)), "GET", &object, "", b"")
        .await;
    assert_eq!((st, code(&body)), (403, "SignatureDoesNotMatch"), "{body}");
    let (st, body) = s3
        .send(Some(("PDLABUNKNOWNKEY00000", sk)), "GET", &object, "", b"")
        .await;
    // s3s answers an unknown key id `NotSignedUp` (AWS: `InvalidAccessKeyId`).
    assert_eq!(st, 403, "{body}");
    assert!(
        ["NotSignedUp", "InvalidAccessKeyId"].contains(&code(&body)),
        "{body}"
    );
    let signed_for_list = sigv4::sign(
        &Credentials {
            access_key: ak,
            secret_key: sk,
            region: &cfg.region,
        },
        "GET",
        &s3.host,
        &bucket,
        "",
        b"",
        SystemTime::now(),
    );
    let mut replay = s3.http.delete(format!("{}{object}", s3.endpoint));
    for (k, v) in signed_for_list {
        replay = replay.header(k, v);
    }
    let r = replay.send().await.unwrap();
    let st = r.status().as_u16();
    let body = r.text().await.unwrap();
    assert_eq!((st, code(&body)), (403, "SignatureDoesNotMatch"), "{body}");
    // A signed payload that is not the one sent.
    let mut tampered = s3.http.put(format!("{}{object}", s3.endpoint));
    for (k, v) in sigv4::sign(
        &Credentials {
            access_key: ak,
            secret_key: sk,
            region: &cfg.region,
        },
        "PUT",
        &s3.host,
        &object,
        "",
        b"signed body",
        SystemTime::now(),
    ) {
        tampered = tampered.header(k, v);
    }
    // Refused once the body's hash is checked: s3s-fs answers 500 (`Sha256Mismatch` in its
    // log; AWS: 400 `XAmzContentSHA256Mismatch`), and keeps the stored object.
    let r = tampered.body("tampered body").send().await.unwrap();
    let st = r.status().as_u16();
    let body = r.text().await.unwrap();
    assert!(st == 400 || st == 500, "tampered payload: {st} {body}");

    // The object is untouched by all of the above.
    let (st, body) = s3.send(Some((ak, sk)), "GET", &object, "", b"").await;
    assert_eq!((st, body.as_str()), (200, "signed body"));
    let (st, body) = s3.send(Some((ak, sk)), "DELETE", &object, "", b"").await;
    assert_eq!(st, 204, "signed DELETE: {body}");
    let (st, body) = s3.send(Some((ak, sk)), "GET", &object, "", b"").await;
    assert_eq!((st, code(&body)), (404, "NoSuchKey"), "{body}");
}

// ------------------------------------------------------------------------- Gluster

fn gluster(args: &[&str]) -> String {
    let out = Command::new("gluster")
        .arg("--mode=script")
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "gluster {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What a Gluster client attempt saw.
struct Attempt {
    /// The client mounted and listed the volume's root: these are its entries.
    listing: Option<String>,
    /// The script's whole output and the client's log.
    output: String,
    log: String,
}

/// How the probe client is configured: `own` is its TLS folder (`glusterfs.pem`, `.key`,
/// `.ca`) or `None` for no TLS at all; `volfile` a client volfile of its own instead of
/// fetching the layout from glusterd.
struct Probe<'a> {
    own_tls: Option<&'a Path>,
    volfile: Option<&'a Path>,
}

/// Runs a Gluster client in `PROBE_NODE`'s network namespace, in a private mount namespace
/// where `/usr/lib/ssl` and `/var/lib/glusterd` are replaced by what `probe` says (so the
/// lab's key and `secure-access` are out of its reach, as in a site's container). Returns
/// once the client has exited or has mounted (bounded: 60 s).
fn attempt(dir: &Path, name: &str, probe: &Probe<'_>) -> Attempt {
    let mnt = dir.join(format!("{name}-mnt"));
    let log = dir.join(format!("{name}.log"));
    std::fs::create_dir_all(&mnt).unwrap();
    let mut script = String::from("set -u\n");
    match probe.own_tls {
        Some(tls) => {
            script.push_str(&format!(
                "mount --bind {} /usr/lib/ssl\nmkdir -p {d}/empty-glusterd\n\
                 printf 'option transport.socket.ssl-cert-depth 1\\n' > {d}/empty-glusterd/secure-access\n\
                 mount --bind {d}/empty-glusterd /var/lib/glusterd\n",
                tls.display(),
                d = dir.display()
            ));
        }
        None => {
            script.push_str(
                "mount -t tmpfs none /usr/lib/ssl\nmount -t tmpfs none /var/lib/glusterd\n",
            );
        }
    }
    let source = match probe.volfile {
        Some(v) => format!("-f {}", v.display()),
        None => "--volfile-server=pdlab-gluster --volfile-id=sites".to_owned(),
    };
    script.push_str(&format!(
        "nsenter --net=/run/netns/{PROBE_NODE} glusterfs -N {source} --log-file={log} {mnt} &\n\
         pid=$!\ni=0\n\
         mounted() {{ grep -q ' {mnt} ' /proc/self/mountinfo; }}\n\
         while kill -0 $pid 2>/dev/null && ! mounted && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\n\
         if mounted; then\n\
           if out=$(ls -a {mnt} 2>&1); then echo LISTING; echo \"$out\"; else echo \"ls: $out\"; fi\n\
           umount -l {mnt}\n\
         fi\n\
         kill $pid 2>/dev/null; wait $pid; echo \"client exit $?\"\n",
        log = log.display(),
        mnt = mnt.display(),
    ));
    let t0 = std::time::Instant::now();
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{name}: {:.1?}\n{output}", t0.elapsed());
    let listing = output.split_once("LISTING\n").map(|(_, l)| {
        l.lines()
            .take_while(|l| !l.starts_with("client exit"))
            .collect::<Vec<_>>()
            .join("\n")
    });
    Attempt {
        listing,
        output,
        log: std::fs::read_to_string(&log).unwrap_or_default(),
    }
}

/// A TLS folder with a CA of its own and a certificate it signs, named like the lab's.
fn foreign_tls(dir: &Path) -> PathBuf {
    let d = dir.join("foreign-tls");
    std::fs::create_dir_all(&d).unwrap();
    let p = |f: &str| d.join(f).to_string_lossy().into_owned();
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &p("ca.key"),
        "-out",
        &p("glusterfs.ca"),
        "-days",
        "1",
        "-subj",
        "/CN=not-the-lab-ca",
    ]);
    run(&[
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &p("glusterfs.key"),
        "-out",
        &p("c.csr"),
        "-subj",
        "/CN=pressdock-lab-storage",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        &p("c.csr"),
        "-CA",
        &p("glusterfs.ca"),
        "-CAkey",
        &p("ca.key"),
        "-set_serial",
        "7",
        "-days",
        "1",
        "-out",
        &p("glusterfs.pem"),
    ]);
    d
}

/// A copy of the lab's own TLS files (the positive control).
fn lab_tls(dir: &Path) -> PathBuf {
    let d = dir.join("lab-tls");
    std::fs::create_dir_all(&d).unwrap();
    for f in ["glusterfs.pem", "glusterfs.key", "glusterfs.ca"] {
        std::fs::copy(Path::new("/usr/lib/ssl").join(f), d.join(f)).unwrap();
    }
    d
}

/// A client volfile straight to the first brick's port (no glusterd involved), with or
/// without TLS.
fn brick_volfile(dir: &Path, tls: bool) -> PathBuf {
    let xml = gluster(&["volume", "status", "sites", "--xml"]);
    let tag = |s: &str, t: &str| {
        s.split_once(&format!("<{t}>"))
            .and_then(|(_, r)| r.split_once(&format!("</{t}>")))
            .map(|(v, _)| v.to_owned())
    };
    let (path, port) = xml
        .split("<node>")
        .skip(1)
        .find_map(|n| {
            let path = tag(n, "path")?;
            let port: u16 = tag(n, "port")?.parse().ok()?;
            path.starts_with('/').then_some((path, port))
        })
        .unwrap_or_else(|| panic!("no brick port in {xml}"));
    let v = dir.join(if tls { "brick-tls.vol" } else { "brick.vol" });
    std::fs::write(
        &v,
        format!(
            "volume brick\n    type protocol/client\n    option remote-host 10.213.0.1\n\
             \x20   option remote-port {port}\n    option remote-subvolume {path}\n\
             \x20   option transport-type socket\n    option transport.socket.ssl-enabled {}\n\
             end-volume\n",
            if tls { "on" } else { "off" }
        ),
    )
    .unwrap();
    v
}

#[test]
fn gluster_admits_the_storage_certificate_from_the_storage_clients_only() {
    if !enabled() {
        return;
    }
    let info = gluster(&["volume", "info", "sites"]);
    for line in [
        "client.ssl: on",
        "server.ssl: on",
        "auth.ssl-allow: pressdock-lab-storage",
    ] {
        assert!(info.lines().any(|l| l.trim() == line), "{line} in {info}");
    }
    let allow = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("auth.allow: "))
        .unwrap_or_else(|| panic!("auth.allow in {info}"));
    assert!(!allow.contains('*'), "{allow}");
    assert!(allow.split(',').any(|a| a == "10.213.0.1"), "{allow}");
    assert!(allow.split(',').any(|a| a == "10.213.0.21"), "{allow}");

    let dir = tempdir();
    // The lab's own files mount the volume from the node (the control: the same probe
    // reaches the volume when it holds the certificate).
    let lab = lab_tls(&dir);
    let ok = attempt(
        &dir,
        "lab-cert",
        &Probe {
            own_tls: Some(&lab),
            volfile: None,
        },
    );
    let listing = ok.listing.unwrap_or_else(|| {
        panic!(
            "the lab's certificate did not mount: {}\n{}",
            ok.output, ok.log
        )
    });
    assert!(listing.lines().any(|l| l == ".."), "{listing}");

    // No TLS: glusterd does not hand out the volume's layout.
    let plain = attempt(
        &dir,
        "plain",
        &Probe {
            own_tls: None,
            volfile: None,
        },
    );
    assert!(
        plain.listing.is_none(),
        "a plain client mounted: {}",
        plain.output
    );
    assert!(
        plain.output.contains("client exit") && !plain.output.contains("client exit 0"),
        "{}",
        plain.output
    );
    assert!(
        plain.log.contains("failed to fetch volume file")
            || plain.log.contains("Exhausted all volfile servers"),
        "{}",
        plain.log
    );

    // A certificate with the admitted name from another CA: the handshake fails.
    let foreign = foreign_tls(&dir);
    let forged = attempt(
        &dir,
        "foreign-cert",
        &Probe {
            own_tls: Some(&foreign),
            volfile: None,
        },
    );
    assert!(
        forged.listing.is_none(),
        "a foreign certificate mounted: {}",
        forged.output
    );
    assert!(forged.log.contains("SSL"), "{}", forged.log);

    // Straight to a brick, without glusterd: without TLS, and with the foreign
    // certificate, the brick answers nothing.
    for (name, tls, own) in [
        ("brick-plain", false, None),
        ("brick-foreign", true, Some(foreign.as_path())),
    ] {
        let vol = brick_volfile(&dir, tls);
        let a = attempt(
            &dir,
            name,
            &Probe {
                own_tls: own,
                volfile: Some(&vol),
            },
        );
        assert!(
            a.listing.is_none(),
            "{name}: the brick answered: {}",
            a.output
        );
        // The client mounted (FUSE) and its lookups failed: the brick refused it.
        assert!(
            a.output.contains("Transport endpoint is not connected"),
            "{name}: {}",
            a.output
        );
    }
    // The same volfile with the lab's certificate reaches the brick (the control).
    let vol = brick_volfile(&dir, true);
    let a = attempt(
        &dir,
        "brick-lab-cert",
        &Probe {
            own_tls: Some(&lab),
            volfile: Some(&vol),
        },
    );
    assert!(
        a.listing.is_some(),
        "brick with the lab's certificate: {}\n{}",
        a.output,
        a.log
    );

    // The lab's own mounts answer on every node.
    for node in std::fs::read_dir("/var/lib/pressdock-lab/nodes").unwrap() {
        let m = node.unwrap().path().join("sites");
        std::fs::read_dir(&m).unwrap_or_else(|e| panic!("{}: {e}", m.display()));
    }
    let _ = std::fs::remove_dir_all(&dir);
    a_site_writes_its_wp_content();
}

/// A running site's task (the demo site of `lab up`), as WordPress's PHP user, writes into
/// its wp-content, and the file is in the volume as its node's TLS mount shows it.
fn a_site_writes_its_wp_content() {
    let e2e::DemoTask {
        sock,
        host,
        id,
        name,
        site,
    } = e2e::demo_site_task();
    let probe = format!(".pd-tls-probe-{}", std::process::id());
    let (ok, out) = e2e::docker(
        &sock,
        &[
            "exec",
            "-u",
            "www-data",
            &id,
            "sh",
            "-c",
            &format!("echo written-by-the-site > /var/lib/wordpress/wp-content/{probe}"),
        ],
    );
    assert!(ok, "{name} could not write its wp-content: {out}");
    let on_volume = Path::new("/var/lib/pressdock-lab/nodes")
        .join(&host)
        .join("sites")
        .join(&site)
        .join(&probe);
    assert_eq!(
        std::fs::read_to_string(&on_volume)
            .unwrap_or_else(|e| panic!("{}: {e}", on_volume.display())),
        "written-by-the-site\n"
    );
    std::fs::remove_file(&on_volume).unwrap();
}

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("pd-gluster-probe-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
