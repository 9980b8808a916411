//! Undelete: a deleted site brought back under its own id and domains from its final
//! backup (`POST /v1/sites/{site}/restores` on the deleted site, operation
//! `site.undelete`), against real servers: the machine's MariaDB (the site's database and
//! user made again), an `s3s-fs` of the test's own, sites' folders on `/dev/shm`.

use platform::domain::Id;
use reqwest::StatusCode;
use serde_json::json;

use crate::{
    backup_fixture::{BackupEnv, Setup, Site, tree},
    support::{SECRET_KEY, random_name, step_names},
};

/// What is left of the site in the control plane and on the servers.
async fn leftovers(e: &BackupEnv, site: &Site) -> (String, i64, i64, i64, i64, bool) {
    let db = &e.app.db;
    let id = site.id.as_str();
    let count = |sql: &'static str| async move {
        sqlx::query_scalar::<_, i64>(sql)
            .bind(id)
            .fetch_one(db)
            .await
            .unwrap()
    };
    let state: String = sqlx::query_scalar("SELECT state FROM sites WHERE id = ?")
        .bind(id)
        .fetch_one(db)
        .await
        .unwrap();
    let schema: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
    )
    .bind(&site.schema.name)
    .fetch_one(&site.schema.admin)
    .await
    .unwrap();
    (
        state,
        count("SELECT COUNT(*) FROM domains WHERE site_id = ?").await,
        count("SELECT COUNT(*) FROM placements WHERE site_id = ?").await,
        count("SELECT COUNT(*) FROM site_secrets WHERE site_id = ?").await,
        schema,
        site.root.exists(),
    )
}

/// A deleted site comes back from its final backup: the same id, its primary domain and
/// the alias no other site took meanwhile (the one taken is named in the answer), its
/// database (made again, with its own user) and files equal to what was deleted. Deleted
/// again with its domain taken meanwhile, it is refused with a 409 naming `domain` and
/// nothing changes; a backup that is not its own is a 422 naming `backup`; another
/// tenant's caller gets a 404.
#[tokio::test]
async fn a_deleted_site_comes_back_under_its_id_and_domains_from_its_final_backup() {
    let e = Setup::new("ud").creates_sites().start().await;
    let member = e.member.as_str();
    let site = e.provisioned_site().await;
    let domain = format!("{}.example", site.id);
    let (kept, taken) = (format!("www.{domain}"), format!("shop.{domain}"));
    e.add_domains(&site.id, &domain, &[&kept, &taken]).await;
    let original_db = site.schema.fingerprint().await;
    let original_files = tree(&site.root);
    let deleted_with = e.delete_site(&site.id).await;
    assert_eq!(
        leftovers(&e, &site).await,
        ("deleted".into(), 0, 0, 0, 0, false)
    );

    // Meanwhile another site takes one of its aliases.
    let (other, other_schema) = e.seed_site().await;
    e.take_domain(&other, &taken).await;

    let body = e.request_restore(&site.id, &deleted_with).await;
    assert_eq!(body["operation"]["kind"], "site.undelete", "{body}");
    assert_eq!(body["operation"]["target_id"], site.id.as_str(), "{body}");
    assert_eq!(body["restore"]["kind"], "restore", "{body}");
    assert_eq!(body["restore"]["site_id"], site.id.as_str(), "{body}");
    assert_eq!(
        body["restore"]["backup_id"],
        deleted_with.as_str(),
        "{body}"
    );
    assert_eq!(body["aliases_taken"], json!([taken]), "{body}");
    // Back at once, as a site being created is.
    let (status, got) = e.app.get(&format!("/v1/sites/{}", site.id), member).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["state"], "provisioning", "{got}");
    assert_eq!(got["domain"], domain.as_str(), "{got}");
    assert_eq!(got["aliases"], json!([kept]), "{got}");

    let done = e.wait_accepted(&body).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(
        step_names(&done),
        [
            "record_site",
            "wait_for_site",
            "verify_backup",
            "reserve_slot",
            "generate_secrets",
            "ensure_database",
            "ensure_router_user",
            "ensure_storage",
            "restore_database",
            "restore_files",
        ],
        "{done}"
    );
    let (_, got) = e.app.get(&format!("/v1/sites/{}", site.id), member).await;
    assert_eq!(got["state"], "active", "{got}");
    assert_eq!(got["aliases"], json!([kept]), "{got}");
    assert!(got["node"].is_string(), "placed again: {got}");
    let restore_id = body["restore"]["id"].as_str().unwrap();
    let (status, row) = e
        .app
        .get(&format!("/v1/restores/{restore_id}"), member)
        .await;
    assert_eq!(status, StatusCode::OK, "{row}");
    assert_eq!(row["state"], "complete", "{row}");
    assert!(row["pre_restore_backup_id"].is_null(), "{row}");
    assert_eq!(
        row["files_restored"].as_i64().unwrap() as usize,
        original_files.len(),
        "{row}"
    );
    let deleted_at: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT deleted_at FROM sites WHERE id = ?")
            .bind(site.id.as_str())
            .fetch_one(&e.app.db)
            .await
            .unwrap();
    assert_eq!(deleted_at, None);
    // The same rows and files as when it was deleted.
    assert_eq!(site.schema.fingerprint().await, original_db);
    assert_eq!(tree(&site.root), original_files);

    // Deleted again; this time its primary domain is taken before it is brought back.
    let second = e.delete_site(&site.id).await;
    assert_ne!(second, deleted_with);
    e.take_domain(&other, &domain).await;
    let (status, got) = e.refused_restore(&site.id, &second).await;
    assert_eq!(status, StatusCode::CONFLICT, "{got}");
    assert_eq!(got["errors"][0]["field"], "domain", "{got}");
    let detail = got["detail"].as_str().unwrap();
    assert!(
        detail.contains(&domain) && detail.contains("used by another site"),
        "{detail}"
    );
    assert_eq!(
        leftovers(&e, &site).await,
        ("deleted".into(), 0, 0, 0, 0, false),
        "nothing changed"
    );
    let restores: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM restores WHERE site_id = ?")
        .bind(site.id.as_str())
        .fetch_one(&e.app.db)
        .await
        .unwrap();
    assert_eq!(restores, 1, "no restore recorded for the refused request");

    // A backup that is not the site's: 422 naming `backup`. Another tenant's caller: 404.
    let (status, got) = e.refused_restore(&site.id, Id::generate().as_str()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{got}");
    assert_eq!(got["errors"][0]["field"], "backup", "{got}");
    let outsider_tenant = e
        .app
        .create_tenant(&e.admin, &random_name("ot").replace('_', "-"))
        .await;
    let (outsider, _) = e
        .app
        .user_with_role(&e.admin, &outsider_tenant, "owner")
        .await;
    for path in ["restores", "backups"] {
        let (status, got) = if path == "restores" {
            e.app
                .post(
                    &format!("/v1/sites/{}/{path}", site.id),
                    &outsider,
                    json!({ "backup": second }),
                )
                .await
        } else {
            e.app
                .get(&format!("/v1/sites/{}/{path}", site.id), &outsider)
                .await
        };
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {got}");
        assert_eq!(got["detail"], "site not found", "{path}: {got}");
    }

    other_schema.drop().await;
    site.remove(&e.provisioner).await;
    e.finish().await;
}

/// An undelete whose restore fails part-way through the rows (a statement the server
/// refuses, retried, then unwound) takes back every resource it made — database and user,
/// folder, secrets, slot, domains — and leaves the site `deleted` as it was, its
/// `deleted_at` unchanged (the final backup's retention still counts from the delete).
/// With the backup whole again, `pressdock sites restore SITE --backup ID --wait` brings
/// it back, showing the operation's steps.
#[tokio::test]
async fn a_failed_undelete_takes_back_what_it_made_and_the_cli_brings_the_site_back() {
    let e = Setup::new("uf")
        .creates_sites()
        .max_attempts(2)
        .start()
        .await;
    let site = e.provisioned_site().await;
    let domain = format!("{}.example", site.id);
    e.add_domains(&site.id, &domain, &[]).await;
    let original_db = site.schema.fingerprint().await;
    let original_files = tree(&site.root);
    let fin = e.delete_site(&site.id).await;
    let deleted_at = || async {
        sqlx::query_scalar::<_, Option<chrono::DateTime<chrono::Utc>>>(
            "SELECT deleted_at FROM sites WHERE id = ?",
        )
        .bind(site.id.as_str())
        .fetch_one(&e.app.db)
        .await
        .unwrap()
    };
    let when_deleted = deleted_at().await;
    assert!(when_deleted.is_some());

    let sql = e.fail_dump_midway(&site.id, &fin).await.original;
    let body = e.request_restore(&site.id, &fin).await;
    let done = e.wait_accepted(&body).await;
    assert_eq!(done["state"], "failed", "{done}");
    let states: Vec<(&str, &str)> = done["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        [
            ("record_site", "undone"),
            ("wait_for_site", "undone"),
            ("verify_backup", "undone"),
            ("reserve_slot", "undone"),
            ("generate_secrets", "undone"),
            ("ensure_database", "undone"),
            ("ensure_router_user", "undone"),
            ("ensure_storage", "undone"),
            ("restore_database", "undone"),
            ("restore_files", "pending"),
        ],
        "{done}"
    );
    assert_eq!(
        leftovers(&e, &site).await,
        ("deleted".into(), 0, 0, 0, 0, false),
        "everything it made taken back"
    );
    assert_eq!(deleted_at().await, when_deleted);
    let (status, _) = e
        .app
        .get(&format!("/v1/sites/{}", site.id), &e.member)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The failed restore stays readable, with its reason, though its site is deleted.
    let restore_id = body["restore"]["id"].as_str().unwrap();
    let (status, row) = e
        .app
        .get(&format!("/v1/restores/{restore_id}"), &e.member)
        .await;
    assert_eq!(status, StatusCode::OK, "{row}");
    assert_eq!(row["state"], "failed", "{row}");
    assert!(
        row["error"]
            .as_str()
            .unwrap()
            .contains("database could not be restored"),
        "{row}"
    );

    // The backup whole again: the CLI brings the site back, with progress.
    e.replace_dump(&site.id, &fin, &sql).await;
    let (stdout, progress) = e
        .cli(&[
            "sites",
            "restore",
            site.id.as_str(),
            "--backup",
            &fin,
            "--wait",
        ])
        .await;
    assert!(progress.contains("site.undelete: succeeded"), "{progress}");
    assert!(progress.contains("ensure_database: done"), "{progress}");
    assert!(progress.contains("restore_files: done"), "{progress}");
    assert!(stdout.contains("complete"), "{stdout}");
    let (_, got) = e
        .app
        .get(&format!("/v1/sites/{}", site.id), &e.member)
        .await;
    assert_eq!(got["state"], "active", "{got}");
    assert_eq!(site.schema.fingerprint().await, original_db);
    assert_eq!(tree(&site.root), original_files);

    site.remove(&e.provisioner).await;
    e.finish().await;
}

/// An undelete that fails after its request gave the site back the aliases still free
/// leaves the site `deleted` with the aliases it kept before the request — the one another
/// site took meanwhile included — and holding no domain. Once that site lets the alias go,
/// the next undelete gets every alias back. (Before `restores.kept_aliases`, the unwind
/// kept only what the request had given back: the taken alias was forgotten for good.)
#[tokio::test]
async fn a_failed_undelete_keeps_the_aliases_the_deleted_site_kept_before_it() {
    let e = Setup::new("uk")
        .creates_sites()
        .max_attempts(2)
        .start()
        .await;
    let member = e.member.as_str();
    let site = e.provisioned_site().await;
    let domain = format!("{}.example", site.id);
    let (free, taken) = (format!("www.{domain}"), format!("shop.{domain}"));
    e.add_domains(&site.id, &domain, &[&free, &taken]).await;
    let fin = e.delete_site(&site.id).await;
    let db = &e.app.db;
    let id = site.id.as_str();
    let kept = move || async move {
        sqlx::query_as::<_, (Option<String>, Option<i64>)>(
            "SELECT aliases, aliases_generation FROM sites WHERE id = ?",
        )
        .bind(id)
        .fetch_one(db)
        .await
        .unwrap()
    };
    let held = move |domain: String| async move {
        sqlx::query_scalar::<_, String>("SELECT site_id FROM domains WHERE domain = ?")
            .bind(domain)
            .fetch_optional(db)
            .await
            .unwrap()
    };
    let before = kept().await;
    assert_eq!(before, (Some(format!("{taken} {free}")), None));

    // Another site takes one alias; the undelete fails in the middle of the rows.
    let (other, other_schema) = e.seed_site().await;
    e.take_domain(&other, &taken).await;
    let sql = e.fail_dump_midway(&site.id, &fin).await.original;
    let body = e.request_restore(&site.id, &fin).await;
    assert_eq!(body["aliases_taken"], json!([taken]), "{body}");
    let done = e.wait_accepted(&body).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert_eq!(done["steps"][0]["name"], "record_site", "{done}");
    assert_eq!(done["steps"][0]["state"], "undone", "{done}");

    assert_eq!(
        kept().await,
        before,
        "the aliases kept as before the undelete"
    );
    assert_eq!(
        leftovers(&e, &site).await,
        ("deleted".into(), 0, 0, 0, 0, false),
        "no domain or resource left held"
    );
    for name in [&domain, &free] {
        assert_eq!(held(name.clone()).await, None, "{name} is free");
    }
    assert_eq!(held(taken.clone()).await.as_deref(), Some(other.as_str()));
    let (status, _) = e.app.get(&format!("/v1/sites/{}", site.id), member).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The other site lets the alias go; the next undelete gets every alias back.
    sqlx::query("DELETE FROM domains WHERE domain = ? AND site_id = ?")
        .bind(&taken)
        .bind(other.as_str())
        .execute(&e.app.db)
        .await
        .unwrap();
    e.replace_dump(&site.id, &fin, &sql).await;
    let body = e.request_restore(&site.id, &fin).await;
    assert!(body["aliases_taken"].is_null(), "none taken: {body}");
    let done = e.wait_accepted(&body).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let (_, got) = e.app.get(&format!("/v1/sites/{}", site.id), member).await;
    assert_eq!(got["state"], "active", "{got}");
    assert_eq!(got["domain"], domain.as_str(), "{got}");
    assert_eq!(got["aliases"], json!([taken, free]), "{got}");
    for name in [&domain, &free, &taken] {
        assert_eq!(
            held(name.clone()).await.as_deref(),
            Some(site.id.as_str()),
            "{name}"
        );
    }

    other_schema.drop().await;
    site.remove(&e.provisioner).await;
    e.finish().await;
}

/// The certificates of an undeleted site's domains (issue 14 with 13), at the level of the
/// control plane's records: deleted, its domains' certificates start their grace and the
/// edge is no longer given them; brought back within the grace, each domain's row is taken
/// again as it was (same chain, same validity) and given to the edge, and nothing is
/// ordered again. (The lab test `lab_https::an_undeleted_site_is_served_the_certificate_it_held_again`
/// checks the same through pebble and Traefik.)
#[tokio::test]
async fn an_undeleted_site_gets_back_the_certificates_its_domains_held() {
    use platform::certs::store::{self, Issued, Material};
    let e = Setup::new("uc").creates_sites().start().await;
    let site = e.provisioned_site().await;
    let domain = format!("{}.example", site.id);
    let alias = format!("www.{domain}");
    e.add_domains(&site.id, &domain, &[&alias]).await;
    let db = &e.app.db;
    let secrets = platform::crypto::SecretBox::new(SECRET_KEY.as_bytes());
    // A day of grace, as configured by default; an order's lease of five minutes.
    let sync = || async { store::sync_domains(db, 86_400, 300).await.unwrap() };
    let served = || async {
        store::for_edge(db, &secrets, std::time::Duration::from_secs(10))
            .await
            .unwrap()
            .into_iter()
            .map(|c| (c.domain, c.material.chain_pem))
            .collect::<Vec<_>>()
    };
    let not_after = || async {
        sqlx::query_scalar::<_, Option<chrono::DateTime<chrono::Utc>>>(
            "SELECT not_after FROM certificates WHERE domain = ?",
        )
        .bind(&domain)
        .fetch_one(db)
        .await
        .unwrap()
    };
    assert_eq!(sync().await.added, 2);
    let now = chrono::Utc::now();
    let issued = Issued {
        issuer: "Test CA".into(),
        not_before: now - chrono::Duration::hours(1),
        not_after: now + chrono::Duration::days(60),
        renew_at: now + chrono::Duration::days(40),
    };
    for name in [&domain, &alias] {
        let material = Material {
            chain_pem: format!("chain of {name}"),
            key_pem: format!("key of {name}"),
        };
        store::store_issued(db, &secrets, name, &material, &issued)
            .await
            .unwrap();
    }
    let held = served().await;
    assert_eq!(
        held,
        [
            (domain.clone(), format!("chain of {domain}")),
            (alias.clone(), format!("chain of {alias}")),
        ]
    );
    let valid_until = not_after().await;
    assert!(valid_until.is_some());

    // Deleted: the rows start their grace, and the edge is not given them.
    let fin = e.delete_site(&site.id).await;
    assert_eq!(sync().await.unused, 2);
    assert_eq!(served().await, []);
    assert!(store::due(db, 10).await.unwrap().is_empty());

    // Brought back: the rows are taken again as they were, nothing is ordered.
    let body = e.request_restore(&site.id, &fin).await;
    let done = e.wait_accepted(&body).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let (_, got) = e
        .app
        .get(&format!("/v1/sites/{}", site.id), &e.member)
        .await;
    assert_eq!(got["state"], "active", "{got}");
    let synced = sync().await;
    assert_eq!((synced.added, synced.taken_again), (0, 2), "{synced:?}");
    assert_eq!(served().await, held);
    assert_eq!(not_after().await, valid_until);
    assert!(
        store::due(db, 10).await.unwrap().is_empty(),
        "nothing ordered again"
    );

    site.remove(&e.provisioner).await;
    e.finish().await;
}
