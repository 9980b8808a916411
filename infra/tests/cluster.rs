//! `cluster plan` and `cluster apply` with the DigitalOcean provider, against a local server
//! that implements the endpoints it uses and checks every request and response against
//! DigitalOcean's published OpenAPI spec (`do_fake`). Every test ends with no violation.
//!
//! `--nocapture` prints the API calls of a fresh and of a no-op apply.
mod do_fake;

use do_fake::{Fake, Fault};
use infra::cluster::{
    self,
    apply::apply,
    desired::Desired,
    digitalocean::{ApiError, Client, Token},
    plan::{Change, Plan, plan},
    spec::Checked,
};
use std::time::Duration;

const TOKEN: &str = "dop_v1_0123456789abcdef0123456789abcdef0123456789abcdef0123456789ab";

fn spec_text() -> String {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/cluster.toml");
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn desired_from(text: &str) -> Desired {
    Desired::from_spec(&Checked::parse(text).unwrap_or_else(|e| panic!("{e}")))
}

fn desired() -> Desired {
    desired_from(&spec_text())
}

fn client(fake: &Fake) -> Client {
    let mut c = Client::new(&fake.base, Token::new(fake.token.clone()))
        .unwrap_or_else(|e| panic!("client: {e:#}"));
    c.poll_interval = Duration::ZERO;
    c.backoff = Duration::from_millis(1);
    c.max_wait = Duration::from_millis(5);
    c
}

async fn plan_of(c: &Client, d: &Desired) -> Plan {
    let o = cluster::observe(c, d)
        .await
        .unwrap_or_else(|e| panic!("observe: {e:#}"));
    plan(d, &o)
}

/// One `apply` as the CLI runs it: observe, plan, apply. The progress lines are returned.
async fn run_apply(
    c: &Client,
    d: &Desired,
    allow_destroy: bool,
) -> (anyhow::Result<()>, Vec<String>) {
    let mut lines = Vec::new();
    let r = async {
        let o = cluster::observe(c, d).await?;
        let p = plan(d, &o);
        apply(c, d, &o, &p, allow_destroy, &mut |l| {
            lines.push(l.to_owned())
        })
        .await
    }
    .await;
    (r, lines)
}

fn assert_clean(fake: &Fake) {
    let v = fake.violations();
    assert!(
        v.is_empty(),
        "{} spec violations:\n{}",
        v.len(),
        v.join("\n")
    );
}

fn count(p: &Plan, f: impl Fn(&Change) -> bool) -> usize {
    p.changes.iter().filter(|c| f(c)).count()
}

#[tokio::test]
async fn plan_on_an_empty_account_creates_the_whole_cluster() {
    let fake = Fake::start(TOKEN).await;
    let c = client(&fake);
    let d = desired();
    let p = plan_of(&c, &d).await;
    assert_eq!(
        count(&p, |c| matches!(c, Change::CreateDroplet(_))),
        33,
        "{p}"
    );
    assert_eq!(count(&p, |c| matches!(c, Change::CreateVolume(_))), 5);
    assert_eq!(count(&p, |c| matches!(c, Change::CreateFirewall(_))), 6);
    assert_eq!(count(&p, |c| matches!(c, Change::CreateLoadBalancer(_))), 1);
    assert_eq!(count(&p, |c| matches!(c, Change::CreateVpc(_))), 1);
    assert_eq!(count(&p, |c| matches!(c, Change::CreateTag(_))), 8);
    assert_eq!(p.changes.len(), 54);
    assert!(
        p.to_string()
            .ends_with("plan: 54 to create, 0 to change, 0 to destroy")
    );
    // Looking changed nothing.
    assert_eq!(fake.counts(), [0, 0, 0, 0, 0]);
    assert_clean(&fake);
}

#[tokio::test]
async fn apply_builds_the_cluster_and_a_second_apply_changes_nothing() {
    let fake = Fake::start(TOKEN).await;
    let c = client(&fake);
    let d = desired();
    let (r, lines) = run_apply(&c, &d, false).await;
    r.unwrap_or_else(|e| panic!("apply: {e:#}\n{}", fake.violations().join("\n")));
    let fresh_calls = c.calls();
    let fresh = fake.take_calls();
    // Progress for every resource.
    for name in [
        "pd-prod-worker-17",
        "pd-prod-database-03-data",
        "pd-prod-edge",
        "pd-prod-storage",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(name)),
            "no progress line for {name}"
        );
    }
    assert_eq!(fake.counts(), [33, 5, 6, 1, 1]);
    let mut names = fake.droplet_names();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 33, "droplet names are unique");
    // What was made is what the spec says.
    let o = cluster::observe(&c, &d)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    for v in &o.volumes {
        let owner = v.name.trim_end_matches("-data");
        let droplet = o.droplets.iter().find(|x| x.name == owner).map(|x| x.id);
        assert_eq!(
            v.droplet_ids,
            droplet.into_iter().collect::<Vec<_>>(),
            "{}",
            v.name
        );
    }
    assert!(o.droplets.iter().all(|x| x.status == "active"));
    let lb = &o.load_balancers[0];
    let manager_fw = o.firewalls.iter().find(|f| f.fw.name == "pd-prod-manager");
    assert!(manager_fw.is_some_and(|f| {
        f.fw.inbound
            .iter()
            .any(|r| r.ports == "443" && r.sources.load_balancers == [lb.id.clone()])
    }));
    let after = plan(&d, &o);
    assert!(after.is_empty(), "plan after apply:\n{after}");

    let before = c.calls();
    let (r, lines) = run_apply(&c, &d, false).await;
    r.unwrap_or_else(|e| panic!("second apply: {e:#}"));
    let noop = fake.take_calls();
    assert!(lines.is_empty(), "{lines:?}");
    assert!(noop.iter().all(|c| c.starts_with("GET ")), "{noop:?}");
    // `observe` above plus the second apply's.
    let noop_calls = c.calls() - before;
    assert_clean(&fake);
    let posts = fresh.iter().filter(|c| !c.starts_with("GET")).count();
    println!(
        "fresh apply: {fresh_calls} API calls ({posts} changes, {} GETs: lists and polls); no-op apply: {noop_calls} calls, all GETs",
        fresh.len() - posts
    );
    let mut by_op = std::collections::BTreeMap::new();
    for c in &fresh {
        *by_op.entry(c.clone()).or_insert(0) += 1;
    }
    for (op, n) in by_op {
        println!("  {n:>3} {op}");
    }
}

#[tokio::test]
async fn an_interrupted_apply_converges_when_run_again() {
    let faults = [
        // Refused before anything happened.
        ("POST", "/v2/volumes", 2, false),
        // Carried out, but the answer is lost: the re-run must find them, not make twins.
        ("POST", "/v2/droplets", 3, true),
        ("POST", "/v2/firewalls", 2, true),
        ("POST", "/v2/load_balancers", 1, true),
        ("POST", "/v2/tags", 4, true),
        ("POST", "/v2/vpcs", 1, true),
    ];
    for (method, template, nth, after) in faults {
        let fake = Fake::start(TOKEN).await;
        fake.with(|s| {
            s.fault = Some(Fault {
                method,
                template,
                nth,
                after,
            })
        });
        let c = client(&fake);
        let d = desired();
        let (r, _) = run_apply(&c, &d, false).await;
        let e = r
            .err()
            .unwrap_or_else(|| panic!("{method} {template} #{nth}: apply did not fail"));
        let api = e
            .chain()
            .find_map(|x| x.downcast_ref::<ApiError>())
            .unwrap_or_else(|| panic!("no API error in {e:#}"));
        assert_eq!(
            (api.status, api.id.as_str()),
            (500, "server_error"),
            "{e:#}"
        );
        assert!(
            format!("{e:#}").contains("Unexpected server-side error"),
            "{e:#}"
        );
        let (r, _) = run_apply(&c, &d, false).await;
        r.unwrap_or_else(|e| panic!("{method} {template} #{nth}: re-run: {e:#}"));
        assert!(
            plan_of(&c, &d).await.is_empty(),
            "{method} {template} #{nth}"
        );
        assert_eq!(
            fake.counts(),
            [33, 5, 6, 1, 1],
            "{method} {template} #{nth}"
        );
        let mut names = fake.droplet_names();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 33);
        assert_clean(&fake);
    }
}

/// Like a saga's "fail at every step" test: the fresh apply makes 31 changes; fail each one in
/// turn (refused, or carried out with its answer lost), re-run, and the account must end up
/// exactly as the spec says, with nothing twice.
#[tokio::test]
async fn an_apply_failed_at_any_change_converges() {
    let d = desired();
    for nth in 1..=31 {
        for after in [false, true] {
            let fake = Fake::start(TOKEN).await;
            fake.with(|s| {
                s.fault = Some(Fault {
                    method: "*",
                    template: "*",
                    nth,
                    after,
                })
            });
            let c = client(&fake);
            let (r, _) = run_apply(&c, &d, false).await;
            assert!(
                r.is_err(),
                "change {nth} (after: {after}) did not fail the apply"
            );
            let (r, _) = run_apply(&c, &d, false).await;
            r.unwrap_or_else(|e| panic!("change {nth} (after: {after}): re-run: {e:#}"));
            let p = plan_of(&c, &d).await;
            assert!(
                p.is_empty() && p.notes.is_empty(),
                "change {nth} (after: {after}):\n{p}"
            );
            assert_eq!(
                fake.counts(),
                [33, 5, 6, 1, 1],
                "change {nth} (after: {after})"
            );
            assert_eq!(
                fake.with(|s| s.tag_count()),
                8,
                "change {nth} (after: {after})"
            );
            assert_clean(&fake);
        }
    }
}

#[tokio::test]
async fn a_failed_get_is_retried() {
    let fake = Fake::start(TOKEN).await;
    fake.with(|s| {
        s.fault = Some(Fault {
            method: "GET",
            template: "/v2/actions/{action_id}",
            nth: 5,
            after: false,
        })
    });
    let c = client(&fake);
    let d = desired();
    let (r, _) = run_apply(&c, &d, false).await;
    r.unwrap_or_else(|e| panic!("{e:#}"));
    let calls = fake.take_calls();
    assert!(calls.iter().filter(|c| c.contains("/v2/actions/")).count() > 33);
    assert!(plan_of(&c, &d).await.is_empty());
    assert_clean(&fake);
}

#[tokio::test]
async fn lists_follow_every_page() {
    let fake = Fake::start(TOKEN).await;
    let mut c = client(&fake);
    let d = desired();
    run_apply(&c, &d, false)
        .await
        .0
        .unwrap_or_else(|e| panic!("{e:#}"));
    c.per_page = 4;
    fake.take_calls();
    let o = cluster::observe(&c, &d)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(o.droplets.len(), 33);
    assert_eq!(o.volumes.len(), 5);
    assert_eq!(o.firewalls.len(), 6);
    assert_eq!(o.tags.len(), 8);
    let calls = fake.take_calls();
    let pages = |op: &str| calls.iter().filter(|c| *c == op).count();
    assert_eq!(pages("GET /v2/droplets"), 9); // 33 / 4
    assert_eq!(pages("GET /v2/tags"), 2);
    assert_eq!(pages("GET /v2/firewalls"), 2);
    assert!(plan(&d, &o).is_empty());
    assert_clean(&fake);
}

#[tokio::test]
async fn rate_limits_are_waited_out_and_reported_when_they_persist() {
    let fake = Fake::start(TOKEN).await;
    let mut c = client(&fake);
    let d = desired();
    fake.with(|s| s.rate_limit_next = 3);
    let p = plan_of(&c, &d).await;
    assert_eq!(p.changes.len(), 54);
    assert_eq!(c.rate_limited(), 3);
    // Beyond the retries: DigitalOcean's error, with its id and message.
    c.max_retries = 2;
    fake.with(|s| s.rate_limit_next = 10);
    let e = cluster::observe(&c, &d)
        .await
        .err()
        .unwrap_or_else(|| panic!("no error"));
    let api = e
        .chain()
        .find_map(|x| x.downcast_ref::<ApiError>())
        .unwrap_or_else(|| panic!("{e:#}"));
    assert_eq!((api.status, api.id.as_str()), (429, "too_many_requests"));
    assert!(
        format!("{e:#}").contains("API Rate limit exceeded."),
        "{e:#}"
    );
    // Every 429 was checked against the operation's 429 response in the spec.
    assert_clean(&fake);
}

#[tokio::test]
async fn the_token_never_shows() {
    let fake = Fake::start(TOKEN).await;
    fake.with(|s| {
        s.fault = Some(Fault {
            method: "POST",
            template: "/v2/droplets",
            nth: 2,
            after: false,
        })
    });
    let c = client(&fake);
    let d = desired();
    let (r, lines) = run_apply(&c, &d, false).await;
    let e = r.err().unwrap_or_else(|| panic!("no error"));
    let texts = [
        format!("{e:#}"),
        format!("{e:?}"),
        format!("{c:?}"),
        lines.join("\n"),
    ];
    for t in &texts {
        assert!(
            !t.contains(TOKEN) && !t.contains(&TOKEN[10..30]),
            "token in: {t}"
        );
    }
    assert!(format!("{c:?}").contains("<redacted>"));
    // A link to another origin (a pagination `next` could say anything) never gets it.
    let e = c
        .call(
            reqwest::Method::GET,
            "https://elsewhere.example/v2/droplets?page=2",
            None,
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("followed a foreign link"));
    assert!(
        format!("{e:#}").contains("refusing to send the token"),
        "{e:#}"
    );
    // Only in the Authorization header: never in a query or a body.
    assert!(fake.with(|s| s.raw.iter().all(|r| !r.contains(&TOKEN[10..30]))));
    // A wrong token: DigitalOcean's 401, which does not echo it either.
    let bad = Client::new(&fake.base, Token::new("dop_v1_wrong".into()))
        .unwrap_or_else(|e| panic!("{e}"));
    let e = cluster::observe(&bad, &d)
        .await
        .err()
        .unwrap_or_else(|| panic!("no error"));
    assert!(
        format!("{e:#}").contains("401 unauthorized: Unable to authenticate you"),
        "{e:#}"
    );
    assert!(!format!("{e:#}{e:?}").contains("dop_v1_wrong"));
    assert_clean(&fake);
}

#[tokio::test]
async fn requests_and_responses_the_spec_rejects_are_caught() {
    // The checker is not vacuous: a misspelt field, a missing required one, an unknown
    // query parameter and a droplet missing required fields are all violations.
    let fake = Fake::start(TOKEN).await;
    let c = client(&fake);
    let bad = [
        (
            reqwest::Method::POST,
            "/v2/vpcs",
            Some(serde_json::json!({"name": "x", "region": "fra1", "ip_rnge": "10.0.0.0/20"})),
        ),
        (
            reqwest::Method::POST,
            "/v2/volumes",
            Some(serde_json::json!({"name": "x", "region": "fra1"})),
        ),
        (reqwest::Method::GET, "/v2/droplets?tag=x", None),
        (reqwest::Method::GET, "/v2/droplets?per_page=500", None),
        (
            reqwest::Method::POST,
            "/v2/droplet",
            Some(serde_json::json!({})),
        ),
    ];
    for (m, path, body) in bad {
        let before = fake.violations().len();
        let e = c.call(m.clone(), path, body.as_ref()).await.err();
        assert!(e.is_some(), "{m} {path} was accepted");
        assert!(
            fake.violations().len() > before,
            "{m} {path}: no violation recorded"
        );
    }
    let spec = do_fake::openapi::Spec::get();
    let op = spec
        .find("GET", "/v2/droplets")
        .unwrap_or_else(|e| panic!("{e}"));
    let v = spec.check_response(
        &op,
        200,
        &[],
        Some(&serde_json::json!({"droplets": [{"id": 1, "name": "x"}], "links": {}, "meta": {"total": 1}})),
    );
    assert!(v.iter().any(|e| e.contains("memory")), "{v:?}");
    let v = spec.check_response(&op, 418, &[], None);
    assert!(!v.is_empty());
}

/// The binary, as an operator runs it: `cluster plan` with the token in the environment.
#[tokio::test]
async fn the_cli_plans_and_applies_and_never_prints_the_token() {
    let fake = Fake::start(TOKEN).await;
    let run = |args: &'static [&'static str]| {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_pressdock-infra"));
        c.args(args)
            .arg("--spec")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../configs/cluster.toml"
            ))
            .env("DIGITALOCEAN_TOKEN", TOKEN)
            .env("PRESSDOCK_DO_API", &fake.base)
            .env("PRESSDOCK_DO_POLL_MS", "0");
        c.output()
    };
    let out = run(&["cluster", "plan"])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("+ droplet pd-prod-worker-20 s-8vcpu-16gb debian-12-x64"),
        "{stdout}"
    );
    assert!(
        stdout.contains("plan: 54 to create, 0 to change, 0 to destroy"),
        "{stdout}"
    );
    let out = run(&["cluster", "apply"])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let stdout2 = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr2 = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout2}{stderr2}");
    assert!(stderr2.contains("[54/54]"), "{stderr2}");
    assert!(stdout2.contains("plan now: nothing to do"), "{stdout2}");
    let out = run(&["cluster", "apply"])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let stdout3 = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(stdout3.contains("nothing to do (8 API calls)"), "{stdout3}");
    // The cost, from the (test server's) prices of /v2/sizes.
    let out = run(&["cluster", "cost"])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let cost = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cost}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let words = |l: &str| l.split_whitespace().collect::<Vec<_>>().join(" ");
    let lines: Vec<String> = cost.lines().map(words).collect();
    for want in [
        "worker droplets (s-8vcpu-16gb) 20 × 96.00 = 1920.00",
        "total 3374.00 USD a month",
        "per site at 500 sites (20 workers × 25 slots): 6.75 USD a month",
    ] {
        assert!(lines.contains(&want.to_owned()), "{want:?} not in:\n{cost}");
    }
    // The swarm steps for those machines, from their addresses.
    let out = run(&["cluster", "swarm", "--dry-run"])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let swarm = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{swarm}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        swarm.starts_with("swarm init on pd-prod-manager-01 (10.110.0."),
        "{swarm}"
    );
    assert!(swarm.contains("pd-prod-manager-02 (10.110.0."), "{swarm}");
    assert!(swarm.contains("label pd-prod-worker-20: pressdock.node=pd-prod-worker-20 pressdock.role=worker pressdock.slots=25 pressdock.pool=wp"), "{swarm}");
    // init, 32 joins, 33 labels, 2 networks, 4 stacks (edge, cache, database, monitoring).
    assert!(swarm.contains("\nswarm: 72 steps\n"), "{swarm}");
    assert!(
        swarm.contains("\nstack database from stacks/database.yml\n"),
        "{swarm}"
    );
    assert!(swarm.contains("label pd-prod-database-03: pressdock.node=pd-prod-database-03 pressdock.role=database pressdock.database=true pressdock.galera=3"), "{swarm}");
    // Then the storage tier: probe, create, start, quota, 4 options, 23 mounts.
    assert!(
        swarm.contains("> gluster volume sites replica 2: 10.110.0."),
        "{swarm}"
    );
    assert!(swarm.contains("\nstorage: 31 steps\n"), "{swarm}");
    // Last, the platform's configuration on the managers.
    assert!(
        swarm.ends_with(
            "\nplatform: /etc/pressdock/pressdock.toml on every manager (`cluster platform-config` prints it)\n"
        ),
        "{swarm}"
    );
    for t in [&stdout, &stderr, &stdout2, &stderr2, &stdout3] {
        assert!(!t.contains(&TOKEN[10..30]), "token printed: {t}");
    }
    // Without a token: a clear error, before any call.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pressdock-infra"))
        .args(["cluster", "plan", "--spec"])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../configs/cluster.toml"
        ))
        .env_remove("DIGITALOCEAN_TOKEN")
        .env("PRESSDOCK_DO_API", &fake.base)
        .output()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("DIGITALOCEAN_TOKEN is not set"));
    assert_clean(&fake);
}

/// A failed database node replaced: destroyed and created again, its volume (the data) moved
/// over; two at once refused (Galera's quorum).
#[tokio::test]
async fn a_node_is_replaced_with_its_volume() {
    let fake = Fake::start(TOKEN).await;
    let c = client(&fake);
    let d = desired();
    run_apply(&c, &d, false)
        .await
        .0
        .unwrap_or_else(|e| panic!("{e:#}"));
    let before = cluster::observe(&c, &d)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let old = before
        .droplets
        .iter()
        .find(|x| x.name == "pd-prod-database-02")
        .map(|x| x.id);
    let vol = before
        .volumes
        .iter()
        .find(|v| v.name == "pd-prod-database-02-data")
        .map(|v| v.id.clone());
    let o = cluster::observe(&c, &d)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let p = cluster::plan::plan_replacing(&d, &o, &["pd-prod-database-02".into()]);
    assert_eq!(
        p.to_string(),
        "± droplet pd-prod-database-02: destroyed and created again, its volume moved over\nplan: 0 to create, 0 to change, 0 to destroy, 1 to replace"
    );
    let mut lines = Vec::new();
    apply(&c, &d, &o, &p, false, &mut |l| lines.push(l.to_owned()))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", fake.violations().join("\n")));
    let after = cluster::observe(&c, &d)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let new = after
        .droplets
        .iter()
        .find(|x| x.name == "pd-prod-database-02")
        .map(|x| x.id);
    assert!(new.is_some() && new != old, "{old:?} → {new:?}");
    let v = after
        .volumes
        .iter()
        .find(|v| v.name == "pd-prod-database-02-data");
    assert_eq!(v.map(|v| v.id.clone()), vol, "the same volume");
    assert_eq!(
        v.map(|v| v.droplet_ids.clone()),
        Some(new.into_iter().collect())
    );
    assert_eq!(fake.counts(), [33, 5, 6, 1, 1]);
    assert!(plan(&d, &after).is_empty());
    // Two database nodes at once: refused, nothing touched.
    let p = cluster::plan::plan_replacing(
        &d,
        &after,
        &["pd-prod-database-01".into(), "pd-prod-database-03".into()],
    );
    let e = apply(&c, &d, &after, &p, true, &mut |_| {}).await.err();
    assert!(e.is_some_and(|e| format!("{e:#}").contains("quorum")));
    let same = cluster::observe(&c, &d)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        same.droplets.iter().map(|x| x.id).collect::<Vec<_>>(),
        after.droplets.iter().map(|x| x.id).collect::<Vec<_>>()
    );
    assert_clean(&fake);
}

/// A replacement interrupted at each of its changes (detach, destroy, create), refused or with
/// its answer lost, converges when the same command runs again (the destroy is a DELETE,
/// which the client retries itself): one droplet of that name, on
/// the same volume.
#[tokio::test]
async fn an_interrupted_replacement_converges() {
    let d = desired();
    let name = "pd-prod-storage-02";
    for k in 1..=3 {
        for after in [false, true] {
            let fake = Fake::start(TOKEN).await;
            let c = client(&fake);
            run_apply(&c, &d, false)
                .await
                .0
                .unwrap_or_else(|e| panic!("{e:#}"));
            let vol = fake.with(|s| s.volume_id(&format!("{name}-data")));
            // The first apply made 31 changes.
            fake.with(|s| {
                s.fault = Some(Fault {
                    method: "*",
                    template: "*",
                    nth: 31 + k,
                    after,
                })
            });
            let replace = [name.to_owned()];
            let run = || async {
                let o = cluster::observe(&c, &d).await?;
                let p = cluster::plan::plan_replacing(&d, &o, &replace);
                apply(&c, &d, &o, &p, false, &mut |_| {}).await
            };
            // The DELETE (change 2) is retried by the client and succeeds; the POSTs fail.
            let first = run().await;
            assert_eq!(first.is_err(), k != 2, "change {k} (after: {after})");
            run()
                .await
                .unwrap_or_else(|e| panic!("change {k} (after: {after}): {e:#}"));
            let o = cluster::observe(&c, &d)
                .await
                .unwrap_or_else(|e| panic!("{e:#}"));
            assert!(plan(&d, &o).is_empty(), "change {k} (after: {after})");
            let ids = fake.with(|s| s.droplets_named(name));
            assert_eq!(ids.len(), 1, "change {k} (after: {after})");
            let v = o.volumes.iter().find(|v| v.name == format!("{name}-data"));
            assert_eq!(v.map(|v| v.id.clone()), Some(vol.clone()));
            assert_eq!(v.map(|v| v.droplet_ids.clone()), Some(ids));
            assert_clean(&fake);
        }
    }
}

#[tokio::test]
async fn drift_is_repaired_and_workers_are_added() {
    let fake = Fake::start(TOKEN).await;
    let c = client(&fake);
    let d = desired();
    run_apply(&c, &d, false)
        .await
        .0
        .unwrap_or_else(|e| panic!("{e:#}"));
    // Someone opened a port by hand.
    fake.open_port_on("pd-prod-database", "3306");
    let p = plan_of(&c, &d).await;
    assert_eq!(p.changes.len(), 1, "{p}");
    assert!(
        matches!(&p.changes[0], Change::UpdateFirewall { fw, .. } if fw.name == "pd-prod-database")
    );
    run_apply(&c, &d, false)
        .await
        .0
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(plan_of(&c, &d).await.is_empty());
    // A role tag (its firewall) lost, a volume detached.
    // The cluster's own tag removed by hand: found by its name, tagged again, not made twice.
    fake.untag("pd-prod-worker-03", "pd-prod");
    let p = plan_of(&c, &d).await;
    assert_eq!(
        p.to_string().lines().next(),
        Some("~ droplet pd-prod-worker-03: tag pd-prod"),
        "{p}"
    );
    assert_eq!(p.changes.len(), 1, "{p}");
    run_apply(&c, &d, false)
        .await
        .0
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(plan_of(&c, &d).await.is_empty());
    fake.untag("pd-prod-cache-02", "pd-prod-cache");
    fake.detach("pd-prod-storage-01-data");
    let p = plan_of(&c, &d).await;
    assert_eq!(
        p.to_string().lines().take(2).collect::<Vec<_>>(),
        [
            "~ droplet pd-prod-cache-02: tag pd-prod-cache",
            "~ volume pd-prod-storage-01-data: attach to pd-prod-storage-01"
        ],
        "{p}"
    );
    assert_eq!(p.changes.len(), 2, "{p}");
    run_apply(&c, &d, false)
        .await
        .0
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(plan_of(&c, &d).await.is_empty());
    // Workers 20 → 24: four droplets, nothing else.
    let d24 = desired_from(&spec_text().replacen("count = 20", "count = 24", 1));
    let p = plan_of(&c, &d24).await;
    assert_eq!(p.changes.len(), 4, "{p}");
    assert!(
        p.changes.iter().all(
            |c| matches!(c, Change::CreateDroplet(x) if x.name.as_str() > "pd-prod-worker-20")
        )
    );
    fake.take_calls();
    run_apply(&c, &d24, false)
        .await
        .0
        .unwrap_or_else(|e| panic!("{e:#}"));
    let posts: Vec<String> = fake
        .take_calls()
        .into_iter()
        .filter(|c| c.starts_with("POST"))
        .collect();
    assert_eq!(posts, ["POST /v2/droplets"], "one request for the four");
    assert_eq!(fake.counts()[0], 37);
    // Back to 20: destroying needs --allow-destroy.
    let (r, _) = run_apply(&c, &d, false).await;
    let e = r
        .err()
        .unwrap_or_else(|| panic!("destroy without --allow-destroy"));
    assert!(format!("{e:#}").contains("--allow-destroy"), "{e:#}");
    assert_eq!(fake.counts()[0], 37);
    run_apply(&c, &d, true)
        .await
        .0
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(fake.counts()[0], 33);
    // A twin (two applies at once): found, and apply refuses to guess which one is meant.
    fake.twin("pd-prod-worker-05");
    let p = plan_of(&c, &d).await;
    assert!(
        p.to_string()
            .contains("!! 2 droplets are named pd-prod-worker-05"),
        "{p}"
    );
    let (r, _) = run_apply(&c, &d, true).await;
    let e = r.err().unwrap_or_else(|| panic!("applied with a twin"));
    assert!(
        format!("{e:#}").contains("destroy the extra one by hand"),
        "{e:#}"
    );
    let twin = fake.with(|s| s.droplets_named("pd-prod-worker-05"));
    fake.with(|s| s.remove_droplet(twin[1]));
    assert!(plan_of(&c, &d).await.is_empty());
    // Managers 3 → 1 destroys two at once: refused even with --allow-destroy (raft quorum).
    let d1 = desired_from(&spec_text().replacen("count = 3 # managers", "count = 1 # managers", 1));
    let (r, _) = run_apply(&c, &d1, true).await;
    let e = r
        .err()
        .unwrap_or_else(|| panic!("two managers destroyed at once"));
    assert!(format!("{e:#}").contains("quorum"), "{e:#}");
    assert_eq!(fake.counts()[0], 33);
    assert_clean(&fake);
}
