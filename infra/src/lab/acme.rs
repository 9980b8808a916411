//! The lab's ACME server (issue 14): Debian's `pebble` (Let's Encrypt's test CA) and
//! `pebble-challtestsrv` as its DNS server, both lab processes on loopback.
//!
//! challtestsrv answers every name with 127.0.0.1, and pebble validates HTTP-01 on port
//! [`ports::EDGE`]: so a challenge for any site domain is fetched through the lab's real
//! edge (HAProxy → Traefik `web` → the platform's challenge route), like Let's Encrypt would
//! reach a production edge. A test makes a domain fail by pointing it elsewhere through
//! challtestsrv's management API (`POST /add-a`).
//!
//! pebble's own HTTPS needs a certificate: the lab makes a small CA (`api-root.pem`, which
//! the platform trusts for the directory, `certs.directory_ca_file`) and a leaf for
//! 127.0.0.1, once. pebble makes a new issuing root at each start; every root it has used
//! is kept in `roots.pem` (what tests trust), so certificates issued before a restart still
//! verify. A restarted pebble also forgets its accounts: the platform registers again when
//! the directory says `accountDoesNotExist`.
use super::sh::{self, cmd, progress, run};
use super::{Lab, ports};
use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::time::Duration;

const PEBBLE: &str = "pebble";
const CHALLTESTSRV: &str = "challtestsrv";

/// `<state>/pebble`.
pub fn dir(lab: &Lab) -> PathBuf {
    lab.path("pebble")
}

/// The CA that pebble's own HTTPS (directory, management) chains to.
pub fn api_root(lab: &Lab) -> PathBuf {
    dir(lab).join("api-root.pem")
}

/// Every issuing root pebble has used in this lab: what a client trusts for site HTTPS.
pub fn roots(lab: &Lab) -> PathBuf {
    dir(lab).join("roots.pem")
}

pub fn directory_url() -> String {
    format!("https://127.0.0.1:{}/dir", ports::PEBBLE)
}

pub fn management_url() -> String {
    format!("https://127.0.0.1:{}", ports::PEBBLE_MANAGEMENT)
}

pub fn dns_management_url() -> String {
    format!("http://127.0.0.1:{}", ports::CHALLTEST_MANAGEMENT)
}

/// The API CA and pebble's leaf for 127.0.0.1 (openssl), made once.
fn ensure_tls(lab: &Lab) -> Result<()> {
    let d = dir(lab);
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    let (root, root_key, cert, key) = (
        api_root(lab),
        d.join("api-root.key"),
        d.join("cert.pem"),
        d.join("key.pem"),
    );
    if root.exists() && cert.exists() && key.exists() {
        return Ok(());
    }
    let s = |p: &PathBuf| p.to_string_lossy().into_owned();
    run(&mut cmd(
        "openssl",
        [
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "3650",
            "-subj",
            "/CN=pressdock lab pebble API root",
            "-keyout",
            &s(&root_key),
            "-out",
            &s(&root),
        ],
    ))
    .context("making pebble's API CA")?;
    let csr = d.join("cert.csr");
    run(&mut cmd(
        "openssl",
        [
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            &s(&key),
            "-out",
            &s(&csr),
        ],
    ))
    .context("making pebble's key")?;
    let ext = d.join("cert.ext");
    sh::write_file(&ext, "subjectAltName=IP:127.0.0.1,DNS:localhost\n")?;
    run(&mut cmd(
        "openssl",
        [
            "x509",
            "-req",
            "-in",
            &s(&csr),
            "-CA",
            &s(&root),
            "-CAkey",
            &s(&root_key),
            "-CAcreateserial",
            "-days",
            "3650",
            "-extfile",
            &s(&ext),
            "-out",
            &s(&cert),
        ],
    ))
    .context("signing pebble's certificate")?;
    Ok(())
}

fn config(lab: &Lab) -> String {
    let d = dir(lab);
    serde_json::json!({ "pebble": {
        "listenAddress": format!("127.0.0.1:{}", ports::PEBBLE),
        "managementListenAddress": format!("127.0.0.1:{}", ports::PEBBLE_MANAGEMENT),
        "certificate": d.join("cert.pem"),
        "privateKey": d.join("key.pem"),
        // HTTP-01 is fetched from <the name's address>:<httpPort>: the lab's edge.
        "httpPort": ports::EDGE,
        "tlsPort": ports::PEBBLE_TLS_ALPN,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false,
    }})
    .to_string()
}

/// Whether the directory answers (over its own HTTPS, trusting the lab's API CA).
pub fn directory_answers(lab: &Lab) -> bool {
    sh::ok(&mut cmd(
        "curl",
        [
            "-sf",
            "-o",
            "/dev/null",
            "--max-time",
            "2",
            "--cacert",
            &api_root(lab).to_string_lossy(),
            &directory_url(),
        ],
    ))
}

fn dns_answers() -> bool {
    sh::ok(&mut cmd(
        "curl",
        [
            "-sf",
            "-o",
            "/dev/null",
            "--max-time",
            "2",
            "-d",
            r#"{"host":"pressdock-lab-warmup.test"}"#,
            &format!("{}/clear-a", dns_management_url()),
        ],
    ))
}

/// Starts challtestsrv and pebble unless they run; records pebble's issuing root.
pub fn ensure(lab: &Lab) -> Result<()> {
    if !sh::have("pebble") || !sh::have("pebble-challtestsrv") {
        bail!("pebble not found: run scripts/install-deps.sh (Debian package pebble)");
    }
    ensure_tls(lab)?;
    let cfg = dir(lab).join("pebble.json");
    let text = config(lab);
    let changed = std::fs::read_to_string(&cfg).ok().as_deref() != Some(text.as_str());
    sh::write_file(&cfg, &text)?;
    if lab.procs.alive(CHALLTESTSRV).is_none() || !dns_answers() {
        lab.procs.stop(CHALLTESTSRV, Duration::from_secs(2))?;
        lab.procs.spawn(
            CHALLTESTSRV,
            super::data::DATA_CG,
            "pebble-challtestsrv",
            &lab.path("logs/challtestsrv.log"),
            "pebble-challtestsrv",
            &[
                "-dns01".into(),
                format!("127.0.0.1:{}", ports::CHALLTEST_DNS),
                "-management".into(),
                format!("127.0.0.1:{}", ports::CHALLTEST_MANAGEMENT),
                "-http01".into(),
                String::new(),
                "-https01".into(),
                String::new(),
                "-tlsalpn01".into(),
                String::new(),
                // Every site domain resolves to the edge.
                "-defaultIPv4".into(),
                "127.0.0.1".into(),
                "-defaultIPv6".into(),
                String::new(),
            ],
        )?;
        sh::wait_for(
            "pebble-challtestsrv (log: logs/challtestsrv.log)",
            Duration::from_secs(15),
            Duration::from_millis(100),
            || dns_answers().then_some(()),
        )?;
    }
    if changed && lab.procs.stop(PEBBLE, Duration::from_secs(3))? {
        progress("acme", "pebble's config changed: restarting");
    }
    if lab.procs.alive(PEBBLE).is_none() || !directory_answers(lab) {
        lab.procs.stop(PEBBLE, Duration::from_secs(3))?;
        lab.procs.spawn(
            PEBBLE,
            super::data::DATA_CG,
            "pebble.json",
            &lab.path("logs/pebble.log"),
            "env",
            &[
                // Real validation, no random sleeps, no injected bad nonces, no reuse of
                // an earlier authorization (every order validates).
                "PEBBLE_VA_ALWAYS_VALID=0".into(),
                "PEBBLE_VA_NOSLEEP=1".into(),
                "PEBBLE_WFE_NONCEREJECT=0".into(),
                "PEBBLE_AUTHZREUSE=0".into(),
                "pebble".into(),
                "-config".into(),
                cfg.to_string_lossy().into_owned(),
                "-dnsserver".into(),
                format!("127.0.0.1:{}", ports::CHALLTEST_DNS),
            ],
        )?;
        sh::wait_for(
            "pebble's directory (log: logs/pebble.log)",
            Duration::from_secs(20),
            Duration::from_millis(100),
            || directory_answers(lab).then_some(()),
        )?;
    }
    keep_root(lab)?;
    progress(
        "acme",
        format!(
            "pebble at {} (HTTP-01 through the edge), DNS by challtestsrv",
            directory_url()
        ),
    );
    Ok(())
}

/// Adds pebble's current issuing root to `roots.pem` unless it is there.
fn keep_root(lab: &Lab) -> Result<()> {
    let root = run(&mut cmd(
        "curl",
        [
            "-sf",
            "--max-time",
            "5",
            "--cacert",
            &api_root(lab).to_string_lossy(),
            &format!("{}/roots/0", management_url()),
        ],
    ))
    .context("reading pebble's issuing root")?;
    if !root.contains("BEGIN CERTIFICATE") {
        bail!("pebble's /roots/0 is not a PEM certificate");
    }
    let path = roots(lab);
    let mut all = std::fs::read_to_string(&path).unwrap_or_default();
    if !all.contains(root.trim()) {
        if !all.is_empty() && !all.ends_with('\n') {
            all.push('\n');
        }
        all.push_str(root.trim());
        all.push('\n');
        sh::write_file(&path, &all)?;
    }
    Ok(())
}
