//! The stack deployer (`infra::cluster::stack`) against a real dockerd in swarm mode.
//!
//! Gated: runs only with `PRESSDOCK_TEST_DOCKER_SOCK=/path/to/docker.sock`, a swarm manager
//! (Docker 20.10 answers API 1.41) with the overlay networks `pd-edge` and `pd-sites` and
//! the image `local/traefik:dev` (the lab's nodes have all three; so does a scratch
//! `dockerd` + `swarm init` + `docker import` of the lab's cached image). The lab tests
//! run the same code on the lab itself (`infra/tests/lab.rs`). The stack is first deployed by
//! the `docker` CLI (`/usr/bin/docker stack deploy`), as the lab's stacks were before.
use infra::cluster::stack::{self, Outcome};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

fn socket() -> Option<PathBuf> {
    let s = std::env::var_os("PRESSDOCK_TEST_DOCKER_SOCK");
    if s.is_none() {
        eprintln!("skipped: set PRESSDOCK_TEST_DOCKER_SOCK to a swarm manager's socket");
    }
    s.map(PathBuf::from)
}

fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

const ROLL: &str = r#"version: "3.8"
services:
  a:
    image: local/traefik:dev
    command: ["--entrypoints.web.address=:8099"]
    environment:
      V: ${V}
    networks: [edge]
    secrets: [s]
    deploy:
      replicas: 2
      endpoint_mode: dnsrr
      update_config: { parallelism: 1, order: start-first }
      labels:
        pressdock.test: "yes"
EXTRA
networks:
  edge:
    external: true
    name: pd-edge
secrets:
  s:
    file: ./secret.txt
"#;

#[test]
fn a_stack_is_created_left_alone_rolled_and_pruned_on_a_real_swarm() {
    let Some(sock) = socket() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("secret.txt"), "s3cr3t\n").expect("secret");
    let name = format!("t{}", std::process::id());
    let write = |extra: bool| {
        let extra = if extra {
            "  b:\n    image: local/traefik:dev\n    command: [\"--entrypoints.web.address=:8098\"]\n    deploy: { replicas: 1 }\n"
        } else {
            ""
        };
        std::fs::write(dir.path().join("s.yml"), ROLL.replace("EXTRA\n", extra)).expect("write");
    };
    let deploy = |v: &str| {
        stack::deploy_file(
            &sock,
            &name,
            dir.path(),
            "s.yml",
            &vars(&[("V", v)]),
            Duration::from_secs(120),
        )
        .unwrap_or_else(|e| panic!("deploy {v}: {e:#}"))
    };
    let a = format!("{name}_a");
    let b = format!("{name}_b");
    write(true);
    // First as the CLI deploys it (the lab's stacks before this deployer): taken over by an
    // update that completes.
    let cli = std::process::Command::new("/usr/bin/docker")
        .arg("-H")
        .arg(format!("unix://{}", sock.display()))
        .args([
            "stack",
            "deploy",
            "--resolve-image",
            "never",
            "-c",
            "s.yml",
            &name,
        ])
        .current_dir(dir.path())
        .env("V", "0")
        .output()
        .expect("docker stack deploy");
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let t = std::time::Instant::now();
    let out = deploy("1");
    let created = t.elapsed();
    assert_eq!(out[&a], Outcome::Updated);
    assert_eq!(out[&b], Outcome::Updated);
    assert_eq!(deploy("1")[&a], Outcome::Unchanged);
    let t = std::time::Instant::now();
    write(false);
    let out = deploy("2");
    let rolled = t.elapsed();
    assert_eq!(out[&a], Outcome::Updated);
    assert_eq!(out[&b], Outcome::Removed);
    // What the swarm holds: the CLI's labels, our spec hash, the new variable, the secret.
    let docker = stack::connect(&sock).expect("connect");
    let (spec, secrets) = stack::block_on(|| async {
        let s = docker
            .inspect_service(&a, None::<bollard::query_parameters::InspectServiceOptions>)
            .await?;
        let secrets = docker
            .list_secrets(None::<bollard::query_parameters::ListSecretsOptions>)
            .await?;
        Ok((s, secrets))
    })
    .expect("inspect");
    let spec = spec.spec.expect("spec");
    let labels = spec.labels.clone().unwrap_or_default();
    assert_eq!(labels[stack::NAMESPACE_LABEL], name);
    assert_eq!(labels["pressdock.test"], "yes");
    assert_eq!(labels[stack::SPEC_LABEL].len(), 64);
    let c = spec
        .task_template
        .and_then(|t| t.container_spec)
        .expect("container");
    assert_eq!(c.env, Some(vec!["V=2".to_owned()]));
    assert_eq!(
        c.secrets.unwrap_or_default()[0].secret_name.as_deref(),
        Some(format!("{name}_s").as_str())
    );
    assert!(
        secrets
            .iter()
            .any(|s| s.spec.as_ref().and_then(|x| x.name.as_deref()) == Some(&format!("{name}_s")))
    );
    // The edge stack itself is accepted by the daemon as it is.
    let edge_dir = tempfile::tempdir().expect("tempdir");
    let p = |x: &str| {
        let d = edge_dir.path().join(x);
        std::fs::create_dir_all(&d).expect("dir");
        d.to_string_lossy().into_owned()
    };
    let secret = edge_dir.path().join("varnish-secret");
    std::fs::write(&secret, "x\n").expect("secret");
    let edge_name = format!("e{}", std::process::id());
    let edge = stack::deploy_file(
        &sock,
        &edge_name,
        &infra::lab::repo_root(),
        "stacks/edge.yml",
        &vars(&[
            ("PD_VCL_DIR", &p("vcl")),
            ("PD_TRAEFIK_DYNAMIC", &p("dynamic")),
            ("PD_TRAEFIK_STATIC", &p("static")),
            ("PD_TRAEFIK_STATIC_SHA", "0"),
            ("PD_VARNISH_SECRET", &secret.to_string_lossy()),
            ("PD_EDGE_NET", "pd-edge"),
            ("PD_SITES_NET", "pd-sites"),
        ])
        .into_iter()
        // The lab's own images, as `lab up` deploys it.
        .chain(infra::cluster::images::Images::lab().vars())
        .collect(),
        Duration::from_secs(60),
    );
    // Clean up before asserting.
    let _ = stack::block_on(|| async {
        for s in [
            a.clone(),
            format!("{edge_name}_traefik"),
            format!("{edge_name}_traefik-b"),
            format!("{edge_name}_varnish"),
        ] {
            let _ = docker.delete_service(&s).await;
        }
        // A secret can go once no task of its services is left.
        for s in [format!("{name}_s"), format!("{edge_name}_varnish_secret")] {
            for _ in 0..20 {
                if docker.delete_secret(&s).await.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        Ok(())
    });
    let edge = edge.unwrap_or_else(|e| panic!("edge stack: {e:#}"));
    assert_eq!(edge.len(), 3);
    assert!(edge.values().all(|o| *o == Outcome::Created));
    eprintln!(
        "stack of 2 services made by the CLI taken over (rolled) in {:.1}s; rolling update of 2 start-first tasks + prune completed in {:.1}s",
        created.as_secs_f64(),
        rolled.as_secs_f64()
    );
}
