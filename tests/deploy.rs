//! `deploy/`: every file checked by its real tool (kubernetes-validate,
//! systemd-analyze, docker-compose), and the CronJobs and cron lines run as
//! written against the test cluster, so they cannot drift from the CLI.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::Value;

/// The Kubernetes version the manifests are validated against.
const KUBERNETES: &str = "1.30.0";

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// A YAML file as JSON (PyYAML, which kubernetes-validate brings).
fn yaml(path: &Path) -> Value {
    let out = run_ok(Command::new("python3").args([
        "-c",
        "import sys, json, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        path.to_str().unwrap(),
    ]));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_kubernetes_manifests_validate() {
    require_tool(
        "kubernetes-validate",
        "kubernetes-validate (pip install kubernetes-validate)",
    );
    let dir = deploy().join("kubernetes");
    let files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    assert!(files.len() >= 5, "{files:?}");
    for f in &files {
        let out = run_ok(
            Command::new("kubernetes-validate")
                .args(["--strict", "-k", KUBERNETES])
                .arg(f),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("passed"), "{}: {text}", f.display());
    }
    let cron = yaml(&dir.join("backup-cronjob.yaml"));
    assert_eq!(cron["spec"]["concurrencyPolicy"], "Forbid");
    assert_eq!(cron["spec"]["schedule"], "0 * * * *");
    let pod = &cron["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"],
        true
    );
}

/// The container's command and environment as Kubernetes would give them:
/// the ConfigMap's data, then `env` with the Secret's values substituted.
fn container_of(cronjob: &str) -> (Vec<String>, BTreeMap<String, String>) {
    let dir = deploy().join("kubernetes");
    let job = yaml(&dir.join(cronjob));
    let configmap = yaml(&dir.join("configmap.yaml"));
    let secret = yaml(&dir.join("secret.example.yaml"));
    let c = &job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0];
    let command: Vec<String> = c["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    let mut env = BTreeMap::new();
    for from in c["envFrom"].as_array().unwrap() {
        assert_eq!(from["configMapRef"]["name"], configmap["metadata"]["name"]);
        for (k, v) in configmap["data"].as_object().unwrap() {
            env.insert(k.clone(), v.as_str().unwrap().to_string());
        }
    }
    for e in c["env"].as_array().unwrap() {
        let value = match (&e["value"], &e["valueFrom"]["secretKeyRef"]) {
            (Value::String(v), _) => v.clone(),
            (_, r) if r.is_object() => {
                assert_eq!(r["name"], secret["metadata"]["name"]);
                secret["stringData"][r["key"].as_str().unwrap()]
                    .as_str()
                    .unwrap()
                    .to_string()
            }
            other => panic!("unexpected env entry {other:?}"),
        };
        env.insert(e["name"].as_str().unwrap().to_string(), value);
    }
    (command, env)
}

#[test]
fn the_cronjobs_run_as_written() {
    let c = cluster();
    let db = c.sample_db("k8s");
    let store = tempfile::tempdir().unwrap();
    for cronjob in ["backup-cronjob.yaml", "verify-cronjob.yaml"] {
        let (command, mut env) = container_of(cronjob);
        assert_eq!(command[0], "kbackup");
        // What the test's world decides (where the server and the volume are,
        // the image's client tools); every other setting as written.
        let world = [
            ("DB_NAME", db.clone()),
            ("POSTGRES_HOST", c.socket.display().to_string()),
            ("POSTGRES_PORT", c.port.to_string()),
            (
                "BACKUP_DIR",
                store.path().join("store").display().to_string(),
            ),
        ];
        for (k, v) in &world {
            assert!(env.contains_key(*k), "{cronjob} sets {k}");
            env.insert(k.to_string(), v.clone());
        }
        env.insert("POSTGRES_BIN_DIR".into(), pg_bin().display().to_string());
        let out = Command::new(env!("CARGO_BIN_EXE_kbackup"))
            .args(&command[1..])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .envs(&env)
            .current_dir(store.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cronjob}: {command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // JSON log lines, as the ConfigMap asks.
        let first = String::from_utf8_lossy(&out.stderr)
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        assert!(serde_json::from_str::<Value>(&first).is_ok(), "{first}");
    }
    let dumps: Vec<String> = files_under(&store.path().join("store"))
        .into_iter()
        .filter(|f| f.starts_with("hourly/") && f.ends_with(".dump.zst"))
        .collect();
    assert_eq!(dumps.len(), 1, "the backup CronJob took one backup");
}

#[test]
fn the_systemd_units_verify() {
    require_tool(
        "systemd-analyze",
        "systemd-analyze (Debian package systemd)",
    );
    let dir = deploy().join("systemd");
    let tmp = tempfile::tempdir().unwrap();
    // The units as shipped, the binary's path pointed at this build (verify
    // checks that ExecStart exists), the man page installed where
    // Documentation= finds it (as the README says to install it).
    let mut units = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("/usr/local/bin/kbackup", env!("CARGO_BIN_EXE_kbackup"));
        let to = tmp.path().join(path.file_name().unwrap());
        std::fs::write(&to, text).unwrap();
        units.push(to);
    }
    assert_eq!(units.len(), 4);
    let man = tmp.path().join("man");
    std::fs::create_dir_all(man.join("man1")).unwrap();
    let page = run_ok(Command::new(env!("CARGO_BIN_EXE_kbackup")).arg("man"));
    std::fs::write(man.join("man1/kbackup.1"), page.stdout).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .env("MANPATH", &man)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let backup = std::fs::read_to_string(dir.join("kbackup-backup.service")).unwrap();
    for hardening in [
        "ProtectSystem=strict",
        "PrivateTmp=true",
        "NoNewPrivileges=true",
        "ReadWritePaths=",
    ] {
        assert!(backup.contains(hardening), "{hardening}");
    }
    let timer = std::fs::read_to_string(dir.join("kbackup-backup.timer")).unwrap();
    for line in [
        "OnCalendar=hourly",
        "Persistent=true",
        "RandomizedDelaySec=",
    ] {
        assert!(timer.contains(line), "{line}");
    }
}

#[test]
fn the_compose_file_is_valid() {
    require_tool(
        "docker-compose",
        "docker-compose (Debian package docker-compose)",
    );
    let out = run_ok(
        Command::new("docker-compose")
            .arg("-f")
            .arg(deploy().join("docker-compose.yml"))
            .args(["--profile", "sidecar", "config"]),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("container_name: postgres-db"), "{text}");
    assert!(text.contains("kbackup backup"), "{text}");
}

/// The crontab lines: the README quotes this file, and each line's command
/// runs as written (the folder and binary path aside) against the test cluster.
#[test]
fn the_cron_lines_are_the_readmes_and_run() {
    let lines = std::fs::read_to_string(deploy().join("cron/kbackup")).unwrap();
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let db = cluster().sample_db("cronlines");
    let kb = Kb::direct(&db);
    let mut ran = 0;
    for line in lines
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        assert!(readme.contains(line), "the README does not quote: {line}");
        let fields: Vec<&str> = line.split_whitespace().collect();
        for (i, f) in fields[..5].iter().enumerate() {
            let max = [59, 23, 31, 12, 7][i];
            let ok = f.split(',').all(|part| {
                let part = part.strip_prefix("*/").unwrap_or(part);
                part == "*" || part.parse::<u32>().is_ok_and(|n| n <= max)
            });
            assert!(ok, "field {} of {line:?} is not a cron field", i + 1);
        }
        let command = line
            .split("/usr/local/bin/kbackup ")
            .nth(1)
            .expect("the binary by its absolute path");
        assert!(line.contains("cd /root/kairon && "), "{line}");
        let args: Vec<&str> = command
            .split(['>', '|', '#'])
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        kb.ok(&args);
        ran += 1;
    }
    assert_eq!(ran, 4);
}
