//! One backup of an existing schema and directory into an S3 server, or one restore of
//! such a backup, for `scripts/bench-backup.sh`.
//!
//! Usage: bench_backup MYSQL_URL SCHEMA FILES_DIR S3_ENDPOINT BUCKET ACCESS_KEY [PREFIX]
//! (the secret key is read from `BENCH_S3_SECRET`, so it is not on a command line).
//! Without PREFIX: backs SCHEMA and FILES_DIR up, prints `seconds peak_rss_kib
//! stored_bytes prefix`. With PREFIX (a backup's folder in the bucket): restores that
//! backup into SCHEMA (which must exist; its tables are replaced) and FILES_DIR (emptied
//! first), as a restore does (`backup::restore`), prints `seconds peak_rss_kib`.

use std::time::Instant;

use anyhow::Context;
use backends::{config::S3Config, ids::Secret};
use platform::{
    backup::{self, BackupSpec, BackupStore, Hooks, restore},
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
    let (args, prefix) = match args.as_slice() {
        [rest @ .., prefix] if rest.len() == 6 => (rest, Some(prefix.clone())),
        rest => (rest, None),
    };
    let [url, schema, files, endpoint, bucket, access_key] = args else {
        anyhow::bail!(
            "usage: bench_backup MYSQL_URL SCHEMA FILES_DIR S3_ENDPOINT BUCKET ACCESS_KEY [PREFIX]"
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
    if let Some(prefix) = prefix {
        let started = Instant::now();
        let manifest = restore::read_manifest(&store, &prefix, None).await?;
        let db = mysql_async::OptsBuilder::from_opts(
            mysql_async::Opts::from_url(url).context("MYSQL_URL")?,
        )
        .db_name(Some(schema.clone()));
        let (database, files) = tokio::join!(
            restore::restore_database(&store, &manifest, db.into(), None),
            restore::restore_files(&store, &manifest, files.into()),
        );
        database?;
        files?;
        println!("{:.2} {}", started.elapsed().as_secs_f64(), peak_rss_kib());
        return Ok(());
    }
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
    // Where the time goes, on stderr (stdout is the script's): when each object's last
    // part was uploaded, when both were written, when each was read back.
    let (progress, mut events) = backup::Progress::channel();
    let timeline = tokio::spawn(async move {
        let mut last_part: std::collections::BTreeMap<String, f64> = Default::default();
        let mut marks = Vec::new();
        while let Some(event) = events.recv().await {
            let at = started.elapsed().as_secs_f64();
            let name = |key: &str| key.rsplit('/').next().unwrap_or_default().to_owned();
            match event {
                backup::Event::PartUploaded { key, .. } => {
                    last_part.insert(name(&key), at);
                }
                backup::Event::ObjectWritten { key } => {
                    marks.push((format!("written {}", name(&key)), at))
                }
                backup::Event::Verified { key } => {
                    marks.push((format!("read back {}", name(&key)), at))
                }
            }
        }
        let parts = last_part
            .iter()
            .map(|(k, t)| (format!("last part {k}"), *t));
        parts
            .chain(marks)
            .map(|(what, t)| format!("{what} {t:.2}s"))
            .collect::<Vec<_>>()
            .join(", ")
    });
    let hooks = Hooks {
        progress: Some(progress),
        journal: None,
    };
    let done = backup::run(&store, &spec, hooks).await?;
    eprintln!("backup timeline: {}", timeline.await?);
    println!(
        "{:.2} {} {} {}",
        started.elapsed().as_secs_f64(),
        peak_rss_kib(),
        done.manifest.stored_bytes(),
        spec.prefix()
    );
    Ok(())
}
