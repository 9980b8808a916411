//! The README's "Using it" section, run as written against the lab (issue 10): every
//! command of its `sh` block runs with this workspace's `pressdock` on the `PATH`, each
//! `<…-id>` replaced by the `ID` an earlier command printed, and each must succeed; the
//! site it creates must be active when `sites create --wait` returns and be served through
//! the edge. A README that drifts from the CLI or the lab fails here.
//!
//! Gated by `PRESSDOCK_LAB_TESTS=1` and a lab that is up, its own platform answering on
//! 127.0.0.1:23500 (the lab's `lab_sites` tests stop it: this test runs `pressdock-infra lab
//! up` first, which starts it again).
//! It uses the README's names (tenant `acme`, domain `blog.acme.test`, node `worker-9`):
//! what a failed run left of them is removed before and after.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

fn enabled() -> bool {
    e2e::lab_tests_enabled(&Path::new(e2e::LAB_STATE).join("secrets.toml"))
}

/// The directory of this workspace's binaries (`cargo build --workspace --bins` first), or
/// that of `PRESSDOCK_BIN`.
fn bin_dir() -> PathBuf {
    let binary = e2e::pressdock_binary();
    assert!(
        binary.exists(),
        "{} is missing: build it first",
        binary.display()
    );
    binary.parent().unwrap().canonicalize().unwrap()
}

/// The commands of the first `sh` block under `## Using it`, comments removed.
fn usage_commands(readme: &str) -> Vec<String> {
    let section = readme
        .split("\n## Using it")
        .nth(1)
        .expect("README.md has a \"## Using it\" section");
    let section = section.split("\n## ").next().unwrap();
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("the section has a ```sh block");
    block
        .lines()
        .map(strip_comment)
        .filter(|l| !l.is_empty())
        .collect()
}

/// A line without its trailing `# comment` (a `#` outside quotes after white space).
fn strip_comment(line: &str) -> String {
    let (mut single, mut double) = (false, false);
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && prev.is_whitespace() => {
                return line[..i].trim().to_owned();
            }
            _ => {}
        }
        prev = c;
    }
    line.trim().to_owned()
}

/// The first cell of the first data row of the first table in `output` (the `ID` column
/// of what a `create` printed).
fn first_id(output: &str) -> Option<String> {
    output
        .lines()
        .filter(|l| l.starts_with('│'))
        .nth(1)
        .and_then(|row| row.trim_start_matches('│').split(['┆', '│']).next())
        .map(|cell| cell.trim().to_owned())
        .filter(|cell| !cell.is_empty())
}

/// `pressdock tenants create …` records `<tenant-id>`; `users invite` `<user-id>`.
fn placeholder_of(command: &str) -> Option<String> {
    let words: Vec<&str> = command.split_whitespace().collect();
    match words.as_slice() {
        ["pressdock", noun, "create" | "invite", ..] => {
            Some(format!("<{}-id>", noun.trim_end_matches('s')))
        }
        _ => None,
    }
}

/// Removes what the README makes, should an earlier run have stopped half-way.
async fn reset(api: &e2e::Api) {
    let (_, tenants) = api.call(reqwest::Method::GET, "/v1/tenants", None).await;
    let tenants = tenants["items"]
        .as_array()
        .or(tenants.as_array())
        .cloned()
        .unwrap_or_default();
    for tenant in tenants.iter().filter(|t| t["slug"] == "acme") {
        let id = tenant["id"].as_str().unwrap();
        let (_, sites) = api
            .call(
                reqwest::Method::GET,
                &format!("/v1/tenants/{id}/sites"),
                None,
            )
            .await;
        for site in sites["items"].as_array().cloned().unwrap_or_default() {
            if site["state"] == "deleted" {
                continue;
            }
            let (_, accepted) = api
                .call(
                    reqwest::Method::DELETE,
                    &format!("/v1/sites/{}", site["id"].as_str().unwrap()),
                    None,
                )
                .await;
            if let Some(op) = accepted["operation"]["id"].as_str() {
                api.finished_operation(op, Duration::from_secs(300)).await;
            }
        }
        api.call(reqwest::Method::DELETE, &format!("/v1/tenants/{id}"), None)
            .await;
    }
    let (_, nodes) = api.call(reqwest::Method::GET, "/v1/nodes", None).await;
    for node in nodes.as_array().cloned().unwrap_or_default() {
        if node["name"] == "worker-9" {
            api.call(
                reqwest::Method::DELETE,
                &format!("/v1/nodes/{}", node["id"].as_str().unwrap()),
                None,
            )
            .await;
        }
    }
}

#[test]
fn usage_section_parses_into_commands_with_placeholders() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let commands = usage_commands(&readme);
    assert!(
        commands[0].starts_with(
            "pressdock-infra lab password staff | pressdock login --url http://127.0.0.1:23500 \
             --email admin@pressdock.test"
        ),
        "{commands:#?}"
    );
    // Every placeholder is made by an earlier command.
    let mut known: Vec<String> = Vec::new();
    for command in &commands {
        for part in command.split('<').skip(1) {
            let name = format!("<{}>", part.split('>').next().unwrap());
            if name.ends_with("-id>") {
                assert!(
                    known.contains(&name),
                    "{name} used before any command makes it: {command}"
                );
            }
        }
        known.extend(placeholder_of(command));
    }
    assert_eq!(
        strip_comment("pressdock a \"x # y\"   # note"),
        "pressdock a \"x # y\""
    );
    assert_eq!(
        first_id("\n┌──┐\n│ ID         ┆ NAME │\n╞══╡\n│ k3v9q2m8xa ┆ Blog │\n└──┘\n"),
        Some("k3v9q2m8xa".to_owned())
    );
}

/// `pressdock-infra lab up`: converges the lab and starts its platform, which the
/// `lab_sites` tests (run before this one) leave stopped.
fn lab_up_with_platform() {
    let status = Command::new(bin_dir().join("pressdock-infra"))
        .args(["lab", "up"])
        .stdout(Stdio::null())
        .status()
        .expect("run pressdock-infra lab up");
    assert!(status.success(), "pressdock-infra lab up: {status}");
}

#[tokio::test]
async fn readme_usage_runs_as_written_on_the_lab() {
    if !enabled() {
        return;
    }
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let commands = usage_commands(&readme);
    lab_up_with_platform();
    let api = e2e::Api::lab_staff().await;
    reset(&api).await;

    let home = std::env::temp_dir().join(format!(
        "pressdock-readme-{}",
        platform::domain::Id::generate()
    ));
    std::fs::create_dir_all(&home).unwrap();
    let path = format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let password = e2e::lab_staff_password();
    let mut ids: Vec<(String, String)> = Vec::new();
    let mut failure = None;
    for written in &commands {
        let mut command = written.clone();
        for (name, value) in &ids {
            command = command.replace(name, value);
        }
        if let Some(missing) = command.split('<').nth(1).filter(|p| p.contains("-id>")) {
            failure = Some(format!(
                "{written}: no value for <{}",
                missing.split('>').next().unwrap()
            ));
            break;
        }
        eprintln!("$ {command}");
        let mut child = Command::new("sh")
            .args(["-c", &command])
            .env("PATH", &path)
            .env("PRESSDOCK_CLI_CONFIG", home.join("cli.toml"))
            .env_remove("PRESSDOCK_TOKEN")
            .env_remove("PRESSDOCK_URL")
            .env_remove("PRESSDOCK_PASSWORD")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // `login` reads the password from standard input, as the README says.
        let _ = child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{password}\n").as_bytes());
        let out = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!("{stdout}{stderr}");
        if !out.status.success() {
            failure = Some(format!(
                "{written}: exit {:?}\n{stdout}{stderr}",
                out.status.code()
            ));
            break;
        }
        if let Some(name) = placeholder_of(&command) {
            match first_id(&stdout) {
                Some(id) => ids.push((name, id)),
                None => {
                    failure = Some(format!("{written}: no ID in its output\n{stdout}"));
                    break;
                }
            }
        }
        // The site is active when `--wait` returns, and WordPress answers through the edge.
        if command.contains("sites create") && command.contains("--wait") {
            let row = stdout
                .lines()
                .find(|l| l.starts_with('│') && l.contains("blog.acme.test"));
            if !row.is_some_and(|r| r.contains("active")) {
                failure = Some(format!("{written}: the site is not active\n{stdout}"));
                break;
            }
            if !stdout.contains("password: ") || !stderr.contains("will not be shown again") {
                failure = Some(format!(
                    "{written}: no one-time password with its warning\n{stdout}{stderr}"
                ));
                break;
            }
            // Over HTTPS once the domain has its certificate (the edge redirects).
            let (status, body) = e2e::edge_get("blog.acme.test", "/")
                .await
                .unwrap_or_else(|e| (0, e));
            if status != 200 || !body.contains("<title>") {
                failure = Some(format!(
                    "the edge answered {status} for blog.acme.test:\n{}",
                    &body[..body.len().min(400)]
                ));
                break;
            }
        }
    }
    if failure.is_some() {
        reset(&api).await;
    }
    std::fs::remove_dir_all(&home).ok();
    if let Some(failure) = failure {
        panic!("README usage: {failure}");
    }
    let (_, tenants) = api.call(reqwest::Method::GET, "/v1/tenants", None).await;
    assert!(
        !tenants.to_string().contains("\"acme\""),
        "the README's last command deleted its tenant: {tenants}"
    );
}
