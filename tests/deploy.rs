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

/// `scripts/dist.sh` ships weir without debug info or symbols, the debug info split beside it and linked by
/// `.gnu_debuglink`, with SHA-256 sums that check; the shipped binary runs.
#[test]
fn dist_ships_a_stripped_binary_and_its_debug_info() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new(root().join("scripts/dist.sh"))
        .args(["--binary", env!("CARGO_BIN_EXE_weir")])
        .arg(out_dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let sections = |file: &str| {
        let out = Command::new("readelf")
            .args(["-S", "-W"])
            .arg(out_dir.path().join(file))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", show(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let shipped = sections("weir");
    // (`.debug_gdb_scripts` is loaded code for gdb's pretty printers, not debug info.)
    for gone in [".debug_line", ".debug_info", ".debug_str", ".symtab"] {
        assert!(!shipped.contains(gone), "{gone} in {shipped}");
    }
    assert!(shipped.contains(".gnu_debuglink"), "{shipped}");
    assert!(sections("weir.debug").contains(".debug_line"));
    let original = std::fs::metadata(env!("CARGO_BIN_EXE_weir")).unwrap().len();
    let stripped = std::fs::metadata(out_dir.path().join("weir"))
        .unwrap()
        .len();
    assert!(stripped < original, "{stripped} bytes, from {original}");
    let sums = Command::new("sha256sum")
        .args(["-c", "SHA256SUMS"])
        .current_dir(out_dir.path())
        .output()
        .unwrap();
    assert!(sums.status.success(), "{}", show(&sums));
    let version = Command::new(out_dir.path().join("weir"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(version.status.success(), "{}", show(&version));
}
