//! What `deploy/` ships is checked here, without an engine or a cluster:
//! `scripts/check-deploy.sh` validates the Kubernetes manifests against the
//! Kubernetes schemas (strictly), the systemd unit with `systemd-analyze
//! verify`, and every configuration file deploy/ ships with `agent config
//! check`. (`.ci/run` also runs it with `--build`: the Dockerfile's build
//! stage, as written.)

use std::path::Path;
use std::process::Command;

use crate::harness::{agent_bin, text};

#[test]
fn the_manifests_the_unit_and_the_shipped_configuration_validate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let validator = root.join("target/kube-validate/bin/kubernetes-validate");
    if !validator.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install kubernetes-validate at {} (see .ci/run)",
            validator.display()
        );
        eprintln!("skipped: kubernetes-validate is not installed");
        return;
    }
    let output = Command::new(root.join("scripts/check-deploy.sh"))
        .env("AGENT_BIN", agent_bin())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    assert!(text(&output.stdout).contains("deploy/ is valid"));
}

/// The checks are not a formality: a manifest with a wrong type, a unit
/// with a value systemd cannot parse, each fails.
#[test]
fn a_broken_manifest_or_unit_is_refused() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let validator = root.join("target/kube-validate/bin/kubernetes-validate");
    if !validator.exists() {
        assert!(std::env::var_os("CI").is_none(), "see .ci/run");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let manifest = std::fs::read_to_string(root.join("deploy/kubernetes/statefulset.yaml"))
        .unwrap()
        .replace(
            "readOnlyRootFilesystem: true",
            "readOnlyRootFilesystem: \"yes\"",
        );
    let bad = dir.path().join("statefulset.yaml");
    std::fs::write(&bad, manifest).unwrap();
    let output = Command::new(&validator)
        .args(["--strict", "--quiet"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        text(&output.stdout).contains("readOnlyRootFilesystem"),
        "{output:?}"
    );

    let unit = std::fs::read_to_string(root.join("deploy/systemd/agent.service"))
        .unwrap()
        .replace("/usr/local/bin/agent", agent_bin().to_str().unwrap())
        .replace("KillSignal=SIGTERM", "KillSignal=SIGFOO");
    let bad = dir.path().join("agent.service");
    std::fs::write(&bad, unit).unwrap();
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&bad)
        .output()
        .unwrap();
    let said = format!("{}{}", text(&output.stdout), text(&output.stderr));
    assert!(said.contains("SIGFOO"), "systemd-analyze said: {said}");
}
