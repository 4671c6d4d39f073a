//! The EC2 deployment kit (`examples/deploy/ec2/`): the CloudFormation template passes `cfn-lint`, the systemd
//! unit passes `systemd-analyze verify`, and the unit's stop timeout covers the worker's shutdown grace.

mod common;

use common::*;
use std::process::Command;

/// cfn-lint (PyPI, installed by scripts/test.sh into `WEIR_CFN_VENV`) finds nothing in the fleet template.
#[test]
fn cloudformation_template_passes_cfn_lint() {
    let venv = std::env::var("WEIR_CFN_VENV").unwrap_or_else(|_| "/var/tmp/weir-cfn".into());
    let template = root().join("examples/deploy/ec2/weir-fleet.yaml");
    let out = Command::new(format!("{venv}/bin/cfn-lint"))
        .arg(&template)
        .output()
        .expect("cfn-lint is installed (scripts/test.sh)");
    assert!(out.status.success(), "{}", show(&out));
    // Least privilege: no wildcard actions, and every resource names the configured stream, queue, bucket,
    // cluster or parameter.
    let text = std::fs::read_to_string(&template).unwrap();
    assert!(
        !text.contains("Action: \"*\"")
            && !text.contains(":*\n")
            && !text.contains("Resource: \"*\"")
    );
    for needle in [
        "stream/${StreamName}",
        ":${QueueName}",
        "${RawBucket}/${RawPrefix}*",
        "dbuser:${RedshiftClusterId}/${RedshiftDbUser}",
        "parameter/${ConfigParameter}",
    ] {
        assert!(text.contains(needle), "{needle}");
    }
}

/// The unit verifies, restarts always, sends SIGTERM and waits longer than the default shutdown grace.
#[test]
fn systemd_unit_verifies() {
    let unit = std::fs::read_to_string(root().join("examples/deploy/ec2/weir.service")).unwrap();
    assert!(unit.contains("Restart=always") && unit.contains("KillSignal=SIGTERM"));
    let stop: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .unwrap()
        .parse()
        .unwrap();
    let grace = weir::config::WorkerConfig::default().shutdown_grace_secs;
    assert!(
        stop > grace,
        "TimeoutStopSec {stop} must exceed shutdown_grace_secs {grace}"
    );
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze is not installed here; skipping verify");
        return;
    }
    // The binary path must exist for verify: point the unit at the weir binary under test.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/weir", env!("CARGO_BIN_EXE_weir")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
}
