//! One backup of an existing schema and directory into an S3 server, for
//! `scripts/bench-backup.sh`: prints `seconds peak_rss_kib stored_bytes` on one line.
//!
//! Usage: bench_backup MYSQL_URL SCHEMA FILES_DIR S3_ENDPOINT BUCKET ACCESS_KEY
//! (the secret key is read from `BENCH_S3_SECRET`, so it is not on a command line).

use std::time::Instant;

use anyhow::Context;
use backends::{config::S3Config, ids::Secret};
use platform::{
    backup::{self, BackupSpec, BackupStore, Hooks},
    domain::Id,
};

/// The process's peak resident set (`VmHWM`), KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, schema, files, endpoint, bucket, access_key] = args.as_slice() else {
        anyhow::bail!(
            "usage: bench_backup MYSQL_URL SCHEMA FILES_DIR S3_ENDPOINT BUCKET ACCESS_KEY"
        );
    };
    let secret = std::env::var("BENCH_S3_SECRET").context("BENCH_S3_SECRET")?;
    let store = BackupStore::new(&S3Config {
        endpoint: endpoint.clone(),
        bucket: bucket.clone(),
        region: "us-east-1".to_owned(),
        access_key: access_key.clone(),
        secret_key: Secret::new(secret),
        force_path_style: true,
    })?;
    let spec = BackupSpec {
        backup_id: Id::generate(),
        tenant_id: Id::generate(),
        site_id: Id::generate(),
        plan: "bench".to_owned(),
        db: mysql_async::Opts::from_url(url).context("MYSQL_URL")?,
        schema: schema.clone(),
        files_root: files.into(),
        wordpress_version: None,
        php_version: None,
    };
    let started = Instant::now();
    let done = backup::run(&store, &spec, Hooks::default()).await?;
    println!(
        "{:.2} {} {}",
        started.elapsed().as_secs_f64(),
        peak_rss_kib(),
        done.manifest.stored_bytes()
    );
    Ok(())
}
