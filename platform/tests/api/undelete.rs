//! Undelete: a deleted site brought back under its own id and domains from its final
//! backup (`POST /v1/sites/{site}/restores` on the deleted site, operation
//! `site.undelete`), against real servers: the machine's MariaDB (the site's database and
//! user made again), an `s3s-fs` of the test's own, sites' folders on `/dev/shm`.

use platform::domain::Id;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    backup_fixture::{BackupEnv, Setup, Site, positions, tree},
    support::random_name,
};

/// Gives the site its domains as a create writes them: `domains` rows and the copy of
/// its aliases in its row.
async fn add_domains(e: &BackupEnv, site: &Id, primary: &str, aliases: &[&str]) {
    for (domain, is_primary) in
        std::iter::once((primary, true)).chain(aliases.iter().map(|a| (*a, false)))
    {
        sqlx::query("INSERT INTO domains (domain, site_id, is_primary) VALUES (?, ?, ?)")
            .bind(domain)
            .bind(site.as_str())
            .bind(is_primary)
            .execute(&e.app.db)
            .await
            .unwrap();
    }
    let mut sorted = aliases.to_vec();
    sorted.sort_unstable();
    sqlx::query("UPDATE sites SET aliases = ?, aliases_generation = generation WHERE id = ?")
        .bind(sorted.join(" "))
        .bind(site.as_str())
        .execute(&e.app.db)
        .await
        .unwrap();
}

/// Deletes the site through the API (its final backup first) and returns that backup's
/// id, found as a tenant finds it: in the deleted site's own backup list.
async fn delete(e: &BackupEnv, site: &Id) -> String {
    let (status, body) = e
        .app
        .request(
            Method::DELETE,
            &format!("/v1/sites/{site}"),
            Some(&e.member),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let done = e
        .app
        .wait_operation(&e.member, body["operation"]["id"].as_str().unwrap())
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let (status, _) = e.app.get(&format!("/v1/sites/{site}"), &e.member).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, page) = e
        .app
        .get(&format!("/v1/sites/{site}/backups"), &e.member)
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let newest = &page["items"][0];
    assert_eq!(newest["kind"], "final", "{page}");
    assert_eq!(newest["state"], "complete", "{page}");
    newest["id"].as_str().unwrap().to_owned()
}

fn step_names(op: &Value) -> Vec<&str> {
    op["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect()
}

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
    add_domains(&e, &site.id, &domain, &[&kept, &taken]).await;
    let original_db = site.schema.fingerprint().await;
    let original_files = tree(&site.root);
    let deleted_with = delete(&e, &site.id).await;
    assert_eq!(
        leftovers(&e, &site).await,
        ("deleted".into(), 0, 0, 0, 0, false)
    );

    // Meanwhile another site takes one of its aliases.
    let (other, other_schema) = e.seed_site().await;
    sqlx::query("INSERT INTO domains (domain, site_id, is_primary) VALUES (?, ?, 0)")
        .bind(&taken)
        .bind(other.as_str())
        .execute(&e.app.db)
        .await
        .unwrap();

    let (status, body) = e
        .app
        .post(
            &format!("/v1/sites/{}/restores", site.id),
            member,
            json!({ "backup": deleted_with }),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
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

    let done = e
        .app
        .wait_operation(member, body["operation"]["id"].as_str().unwrap())
        .await;
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
    let second = delete(&e, &site.id).await;
    assert_ne!(second, deleted_with);
    sqlx::query("INSERT INTO domains (domain, site_id, is_primary) VALUES (?, ?, 0)")
        .bind(&domain)
        .bind(other.as_str())
        .execute(&e.app.db)
        .await
        .unwrap();
    let (status, headers, got) = e
        .app
        .request_full(
            Method::POST,
            &format!("/v1/sites/{}/restores", site.id),
            Some(member),
            Some(json!({ "backup": second })),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{got}");
    assert_eq!(headers["content-type"], "application/problem+json");
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
    let (status, headers, got) = e
        .app
        .request_full(
            Method::POST,
            &format!("/v1/sites/{}/restores", site.id),
            Some(member),
            Some(json!({ "backup": Id::generate().as_str() })),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{got}");
    assert_eq!(headers["content-type"], "application/problem+json");
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
    add_domains(&e, &site.id, &domain, &[]).await;
    let original_db = site.schema.fingerprint().await;
    let original_files = tree(&site.root);
    let fin = delete(&e, &site.id).await;
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

    let sql = e.dump_sql(&site.id, &fin).await;
    let inserts: Vec<usize> = positions(&sql, "\nINSERT INTO ")
        .into_iter()
        .map(|i| i + 1)
        .collect();
    let at = inserts[inserts.len() / 2];
    let failing = [
        &sql[..at],
        b"INSERT INTO wp_missing VALUES (1);\n",
        &sql[at..],
    ]
    .concat();
    e.replace_dump(&site.id, &fin, &failing).await;
    let (status, body) = e
        .app
        .post(
            &format!("/v1/sites/{}/restores", site.id),
            &e.member,
            json!({ "backup": fin }),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let done = e
        .app
        .wait_operation(&e.member, body["operation"]["id"].as_str().unwrap())
        .await;
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
    let out = tokio::process::Command::new(crate::support::binary())
        .args([
            "sites",
            "restore",
            site.id.as_str(),
            "--backup",
            &fin,
            "--wait",
        ])
        .args(["--url", &e.app.base])
        .env("PRESSDOCK_TOKEN", &e.member)
        .env("PRESSDOCK_CLI_CONFIG", "/nonexistent/pressdock-cli.toml")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let (stdout, progress) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{progress}");
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
