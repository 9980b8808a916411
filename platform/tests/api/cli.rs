//! The `pressdock` CLI as a user runs it: the real binary as a child process against a
//! `TestApp`, with its login kept in a config file of a temporary directory.

use std::{os::unix::fs::PermissionsExt, path::PathBuf, process::Output};

use serde_json::Value;

use crate::support::{self, ADMIN_EMAIL, PASSWORD, TestApp};

/// One CLI user: a config file of their own, pointed at one server.
struct Cli {
    dir: tempfile::TempDir,
    base: String,
}

impl Cli {
    fn new(app: &TestApp) -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            base: app.base.clone(),
        }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("pressdock").join("cli.toml")
    }

    /// Runs `pressdock <args>` with extra variables. Async, so the in-process server on
    /// this runtime keeps answering while the child waits for it.
    async fn run_with(&self, args: &[&str], envs: &[(&str, &str)]) -> Output {
        let mut command = tokio::process::Command::new(support::binary());
        command
            .args(args)
            .env("PRESSDOCK_CLI_CONFIG", self.config())
            .env_remove("PRESSDOCK_TOKEN")
            .env_remove("PRESSDOCK_URL")
            .env_remove("PRESSDOCK_PASSWORD")
            .kill_on_drop(true);
        for (k, v) in envs {
            command.env(k, v);
        }
        command.output().await.expect("run pressdock")
    }

    async fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, &[]).await
    }

    /// Runs a command that must succeed and returns its standard output.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "pressdock {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs a command with `--json` and parses its output.
    async fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        let text = self.ok(&args).await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }

    async fn login(&self) {
        let out = self
            .run_with(
                &["login", "--url", &self.base, "--email", ADMIN_EMAIL],
                &[("PRESSDOCK_PASSWORD", PASSWORD)],
            )
            .await;
        assert!(
            out.status.success(),
            "login: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn login_keeps_the_tokens_in_a_private_file_without_the_password() {
    let app = TestApp::spawn().await;
    let cli = Cli::new(&app);

    let out = cli.run(&["tenants", "list"]).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not logged in"), "{}", stderr(&out));

    let out = cli
        .run_with(
            &["login", "--url", &app.base, "--email", ADMIN_EMAIL],
            &[("PRESSDOCK_PASSWORD", "wrong-password-here")],
        )
        .await;
    assert!(!out.status.success(), "a wrong password must fail");
    assert!(stderr(&out).contains("401"), "{}", stderr(&out));
    assert!(!cli.config().exists(), "a failed login stores nothing");

    cli.login().await;
    let meta = std::fs::metadata(cli.config()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let stored = std::fs::read_to_string(cli.config()).unwrap();
    assert!(!stored.contains(PASSWORD), "the password is never stored");
    let stored: toml::Table = toml::from_str(&stored).unwrap();
    assert_eq!(stored["url"].as_str(), Some(app.base.as_str()));
    let access = stored["access_token"].as_str().unwrap();
    assert!(!access.is_empty());
    assert!(
        stored["refresh_token"]
            .as_str()
            .unwrap()
            .starts_with("pdr_")
    );

    // Later commands use the stored server and token: no --url, no variables.
    let (_, me) = app.get("/v1/me", access).await;
    assert_eq!(me["email"], ADMIN_EMAIL);
    let tenants = cli.json(&["tenants", "list"]).await;
    assert!(tenants.as_array().is_some(), "{tenants}");

    let out = cli.run(&["logout"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!cli.config().exists(), "logout forgets the login");
    app.finish().await;
}

#[tokio::test]
async fn tenants_print_a_table_and_json() {
    let app = TestApp::spawn().await;
    let cli = Cli::new(&app);
    cli.login().await;

    let created = cli
        .json(&["tenants", "create", "--slug", "acme", "--name", "Acme Corp"])
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["slug"], "acme");

    let table = cli.ok(&["tenants", "list"]).await;
    let header = table.lines().find(|l| l.contains("SLUG")).unwrap_or("");
    for column in ["ID", "SLUG", "NAME", "STATE", "CREATED_AT"] {
        assert!(header.contains(column), "no {column} in:\n{table}");
    }
    let row = table
        .lines()
        .find(|l| l.contains(&id))
        .unwrap_or_else(|| panic!("no row for {id} in:\n{table}"));
    assert!(row.contains("acme") && row.contains("Acme Corp") && row.contains("active"));

    let list = cli.json(&["tenants", "list"]).await;
    let found: Vec<&Value> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["id"] == id.as_str())
        .collect();
    assert_eq!(found.len(), 1, "{list}");
    assert_eq!(found[0]["name"], "Acme Corp");
    assert_eq!(found[0]["state"], "active");

    let shown = cli.json(&["tenants", "show", &id]).await;
    assert_eq!(shown["slug"], "acme");
    app.finish().await;
}

#[tokio::test]
async fn sites_create_waits_for_the_operation_and_lists_the_site() {
    let app = TestApp::spawn().await;
    let cli = Cli::new(&app);
    cli.login().await;
    let node = cli
        .json(&[
            "nodes", "register", "--name", "worker-1", "--role", "worker", "--slots", "10",
        ])
        .await;
    assert_eq!(node["slots"], 10);
    assert_eq!(node["availability"], "pending", "{node}");
    // No swarm behind this server: staff activate the node, by name.
    let node = cli.json(&["nodes", "activate", "worker-1"]).await;
    assert_eq!(node["availability"], "active", "{node}");
    let tenant = cli
        .json(&["tenants", "create", "--slug", "shop", "--name", "Shop"])
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let created = cli
        .json(&[
            "sites",
            "create",
            "--tenant",
            &tenant,
            "--name",
            "Blog",
            "--domain",
            "Blog.Example.COM",
            "--alias",
            "www.blog.example.com",
            "--plan",
            "starter",
            "--wait",
        ])
        .await;
    assert_eq!(created["operation"]["state"], "succeeded", "{created}");
    assert_eq!(created["site"]["state"], "active", "{created}");
    assert_eq!(created["site"]["node"], "worker-1", "{created}");
    assert_eq!(created["admin"]["user"], "admin", "{created}");
    assert_eq!(created["admin"]["email"], ADMIN_EMAIL, "{created}");
    assert!(
        created["admin"]["password"].as_str().unwrap().len() >= 16,
        "{created}"
    );
    let site = created["site"]["id"].as_str().unwrap().to_owned();

    let list = cli.json(&["sites", "list", "--tenant", &tenant]).await;
    let items = list.as_array().unwrap();
    assert_eq!(items.len(), 1, "{list}");
    assert_eq!(items[0]["id"], site.as_str());
    assert_eq!(items[0]["domain"], "blog.example.com");
    assert_eq!(items[0]["aliases"][0], "www.blog.example.com");
    assert_eq!(items[0]["plan"], "starter");

    // The table after --wait shows the site as it is now, not as it was accepted.
    let table = cli
        .ok(&[
            "sites",
            "create",
            "--tenant",
            &tenant,
            "--name",
            "Shop",
            "--domain",
            "shop.example.com",
            "--plan",
            "starter",
            "--wait",
        ])
        .await;
    let row = table
        .lines()
        .find(|l| l.starts_with('│') && l.contains("shop.example.com"))
        .unwrap_or_else(|| panic!("no site row in:\n{table}"));
    assert!(
        row.contains("active") && row.contains("worker-1"),
        "{table}"
    );
    assert!(table.contains("succeeded"), "{table}");

    let table = cli
        .ok(&["sites", "list", "--tenant", &tenant, "--state", "active"])
        .await;
    assert!(table.contains("DOMAIN") && table.contains("blog.example.com"));
    assert!(table.contains("shop.example.com"), "{table}");

    // A second worker: `placement rebalance` shows the move, `--apply` makes it, `placement
    // show` prints the balanced map.
    cli.json(&[
        "nodes", "register", "--name", "worker-2", "--role", "worker", "--slots", "10",
    ])
    .await;
    cli.json(&["nodes", "activate", "worker-2"]).await;
    let dry = cli.ok(&["placement", "rebalance"]).await;
    assert!(
        dry.contains("worker-2") && dry.contains("balance") && dry.contains("dry run"),
        "{dry}"
    );
    let applied = cli.json(&["placement", "rebalance", "--apply"]).await;
    let ops = applied["operations"].as_array().unwrap();
    assert_eq!(ops.len(), 1, "{applied}");
    let admin = app.admin_token().await;
    let done = app.wait_operation(&admin, ops[0].as_str().unwrap()).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let map = cli.ok(&["placement", "show"]).await;
    for want in [
        "worker-1",
        "worker-2",
        "10%",
        "max/mean utilisation 1.000",
        "done",
    ] {
        assert!(map.contains(want), "{want} missing in:\n{map}");
    }
    app.finish().await;
}

#[tokio::test]
async fn api_token_secret_is_printed_once_and_never_listed() {
    let app = TestApp::spawn().await;
    let cli = Cli::new(&app);
    cli.login().await;

    let out = cli
        .run(&["tokens", "create", "--name", "ci", "--scope", "read"])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let secret = table
        .split(|c: char| c.is_whitespace() || c == '│' || c == '┆')
        .find(|w| w.starts_with("pdt_"))
        .unwrap_or_else(|| panic!("no secret in:\n{table}"))
        .to_owned();
    assert!(stderr(&out).contains("only once"));

    let listed = cli.ok(&["tokens", "list"]).await;
    assert!(listed.contains("ci") && listed.contains("read"), "{listed}");
    assert!(!listed.contains(&secret) && !listed.contains("pdt_"));
    let listed = cli.json(&["tokens", "list"]).await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert!(listed[0].get("secret").is_none(), "{listed}");
    assert!(!listed.to_string().contains(&secret));

    // The token works from PRESSDOCK_TOKEN, read-only: writes are refused with the reason.
    let other = Cli::new(&app);
    let out = other
        .run_with(
            &["tenants", "list", "--url", &app.base],
            &[("PRESSDOCK_TOKEN", &secret)],
        )
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = other
        .run_with(
            &[
                "tenants", "create", "--slug", "nope", "--name", "Nope", "--url", &app.base,
            ],
            &[("PRESSDOCK_TOKEN", &secret)],
        )
        .await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("403") && stderr(&out).contains("read scope"),
        "{}",
        stderr(&out)
    );
    app.finish().await;
}

#[tokio::test]
async fn errors_exit_non_zero_and_name_the_field() {
    let app = TestApp::spawn().await;
    let cli = Cli::new(&app);
    cli.login().await;
    let tenant = cli
        .json(&["tenants", "create", "--slug", "errs", "--name", "Errs"])
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let out = cli
        .run(&[
            "sites",
            "create",
            "--tenant",
            &tenant,
            "--name",
            "Bad",
            "--domain",
            "bad_label.example",
            "--plan",
            "gold",
        ])
        .await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.starts_with("error: 422"), "{err}");
    assert!(
        err.lines().any(|l| l.trim_start().starts_with("domain:")),
        "{err}"
    );
    assert!(
        err.lines().any(|l| l.trim_start().starts_with("plan:")),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "nothing on stdout on error");

    let out = cli.run(&["sites", "list", "--tenant", "aaaaaaaaaa"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("404"), "{}", stderr(&out));

    // An unreachable server is an error with the address, not a panic.
    let out = cli
        .run(&[
            "tenants",
            "list",
            "--url",
            &format!("http://127.0.0.1:{}", support::free_port()),
        ])
        .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("connecting to"), "{}", stderr(&out));
    app.finish().await;
}

/// The administrator's password of a new site is in the create answer only: the CLI prints
/// it exactly once, with a warning, in a table and in JSON; `--wait` shows progress on
/// standard error and ends when the site is active.
#[tokio::test]
async fn sites_create_prints_the_admin_password_once_with_a_warning() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    app.add_worker(&admin, "worker-1", 25).await;
    let cli = Cli::new(&app);
    cli.login().await;
    let tenant = cli
        .json(&["tenants", "create", "--slug", "pw", "--name", "Pw"])
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // A table, with --wait: the credentials at once, the progress on stderr.
    let out = cli
        .run(&[
            "sites",
            "create",
            "--tenant",
            &tenant,
            "--name",
            "Blog",
            "--domain",
            "blog.pw.test",
            "--plan",
            "starter",
            "--admin-user",
            "editor",
            "--wait",
        ])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8(out.stdout.clone()).unwrap();
    let password = table
        .lines()
        .find_map(|l| l.strip_prefix("password: "))
        .unwrap_or_else(|| panic!("no password line in:\n{table}"))
        .to_owned();
    assert!(password.len() >= 16, "{table}");
    assert_eq!(table.matches(password.as_str()).count(), 1, "{table}");
    assert!(
        table.contains(&format!("WordPress administrator: editor <{ADMIN_EMAIL}>")),
        "{table}"
    );
    assert!(table.contains("log in at: "), "{table}");
    let err = stderr(&out);
    assert_eq!(err.matches("will not be shown again").count(), 1, "{err}");
    assert!(
        !err.contains(&password),
        "the password only on stdout: {err}"
    );
    for progress in [
        "site.create: succeeded",
        "  reserve_slot: done",
        "site blog.pw.test: active",
    ] {
        assert!(
            err.lines().any(|l| l == progress),
            "{progress:?} in:\n{err}"
        );
    }
    let row = table
        .lines()
        .find(|l| l.starts_with('│') && l.contains("blog.pw.test"))
        .unwrap_or_else(|| panic!("no site row in:\n{table}"));
    assert!(row.contains("active"), "{table}");

    // JSON without --wait: the API's `admin` object, once; the warning on stderr.
    let out = cli
        .run(&[
            "sites",
            "create",
            "--tenant",
            &tenant,
            "--name",
            "Shop",
            "--domain",
            "shop.pw.test",
            "--plan",
            "starter",
            "--json",
        ])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    let created: Value = serde_json::from_str(&text).unwrap();
    let password = created["admin"]["password"].as_str().unwrap();
    assert_eq!(created["admin"]["user"], "admin", "{created}");
    assert_eq!(text.matches(password).count(), 1, "{text}");
    assert!(
        stderr(&out).contains("will not be shown again"),
        "{}",
        stderr(&out)
    );
    let site = created["site"]["id"].as_str().unwrap();

    // Never again: not by `sites show`, not by `operations show`.
    let shown = cli.ok(&["sites", "show", site, "--json"]).await;
    assert!(
        !shown.contains(password) && !shown.contains("password"),
        "{shown}"
    );
    let op = created["operation"]["id"].as_str().unwrap();
    let shown = cli.ok(&["operations", "show", op, "--json"]).await;
    assert!(!shown.contains(password), "{shown}");
    app.finish().await;
}

/// `--wait` on a site that cannot be placed (its only worker is pending) exits non-zero
/// with the operation's reason; the password was still printed, as the site exists.
#[tokio::test]
async fn sites_create_wait_fails_with_the_reason() {
    let app = TestApp::spawn().await;
    let cli = Cli::new(&app);
    cli.login().await;
    cli.ok(&["nodes", "register", "--name", "joining", "--role", "worker"])
        .await;
    let tenant = cli
        .json(&[
            "tenants", "create", "--slug", "nowhere", "--name", "Nowhere",
        ])
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = cli
        .run(&[
            "sites",
            "create",
            "--tenant",
            &tenant,
            "--name",
            "Lost",
            "--domain",
            "lost.example",
            "--plan",
            "starter",
            "--wait",
            "--json",
        ])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("error: the operation failed: ")
            && err.contains("no worker can take the site"),
        "{err}"
    );
    assert!(err.contains("site.create: failed\n"), "{err}");
    assert!(err.contains("  reserve_slot: undone\n"), "{err}");
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["site"]["state"], "failed", "{printed}");
    assert!(printed["admin"]["password"].is_string(), "{printed}");

    // `operations list` shows it, and `nodes remove` takes the empty pending node away.
    let table = cli.ok(&["operations", "list", "--state", "failed"]).await;
    assert!(
        table.contains("site.create") && table.contains("no worker"),
        "{table}"
    );
    let removed = cli.ok(&["nodes", "remove", "joining"]).await;
    assert_eq!(removed.trim(), "removed node joining");
    let nodes = cli.json(&["nodes", "list"]).await;
    assert_eq!(nodes, serde_json::json!([]));
    app.finish().await;
}

/// Every command and every flag says what it is for: walks the CLI's whole clap tree.
#[test]
fn every_command_and_flag_has_help() {
    use clap::Subcommand;
    let mut root = platform::cli::Command::augment_subcommands(clap::Command::new("pressdock"));
    root.build();
    let mut missing = Vec::new();
    let mut stack = vec![(String::from("pressdock"), root)];
    let mut commands = 0;
    while let Some((path, command)) = stack.pop() {
        commands += 1;
        if path != "pressdock" && command.get_about().is_none() {
            missing.push(path.clone());
        }
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            if arg.get_help().is_none() {
                missing.push(format!("{path} {id}"));
            }
        }
        for sub in command.get_subcommands() {
            if sub.get_name() == "help" {
                continue;
            }
            stack.push((format!("{path} {}", sub.get_name()), sub.clone()));
        }
    }
    assert!(commands >= 40, "walked only {commands} commands");
    assert!(missing.is_empty(), "without help: {missing:#?}");
}

/// The server's own commands, and `--help` of a leaf command as a user sees it.
#[tokio::test]
async fn help_is_printed_for_every_top_level_command() {
    let out = tokio::process::Command::new(support::binary())
        .arg("--help")
        .output()
        .await
        .unwrap();
    let help = String::from_utf8(out.stdout.clone()).unwrap();
    for command in [
        "serve",
        "migrate",
        "config",
        "openapi",
        "login",
        "logout",
        "tenants",
        "users",
        "plans",
        "sites",
        "operations",
        "tokens",
        "nodes",
        "placement",
    ] {
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{command} ")))
            .unwrap_or_else(|| panic!("{command} missing in:\n{help}"));
        assert!(
            line.trim_start()[command.len()..].trim().len() > 5,
            "{command} has no help: {line:?}"
        );
    }
    let out = tokio::process::Command::new(support::binary())
        .args(["sites", "create", "--help"])
        .output()
        .await
        .unwrap();
    let help = String::from_utf8(out.stdout.clone()).unwrap();
    for flag in [
        "--tenant",
        "--domain",
        "--plan",
        "--wait",
        "--timeout",
        "--json",
        "--url",
    ] {
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with(flag))
            .unwrap_or_else(|| panic!("{flag} missing in:\n{help}"));
        assert!(line.split_whitespace().count() > 2, "{flag}: {line:?}");
    }
}

/// `pressdock openapi | head -c 64`: the reader goes away after a few bytes; the command ends
/// quietly with 141 (as `cat` ends by SIGPIPE), no panic on standard error.
#[test]
fn output_into_a_closed_pipe_ends_quietly_without_a_panic() {
    use std::io::Read;
    let mut child = std::process::Command::new(support::binary())
        .arg("openapi")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 64];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains("openapi"));
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.is_empty(), "{err}");
    assert_eq!(out.status.code(), Some(141), "{err}");
}
