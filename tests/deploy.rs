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
    // The binary is verified before it is installed, the AWS CLI the user data calls is installed, and the
    // compiled-plugin cache is private to the worker's user — in the template and in the stand-alone kit.
    let user_data =
        std::fs::read_to_string(root().join("examples/deploy/ec2/user-data.yaml")).unwrap();
    let unit = std::fs::read_to_string(root().join("examples/deploy/ec2/weir.service")).unwrap();
    for (name, text, needles) in [
        (
            "weir-fleet.yaml",
            &text,
            &[
                "| sha256sum -c - && install -m 0755",
                "packages: [awscli, curl]",
                "CacheDirectoryMode=0700",
            ][..],
        ),
        (
            "user-data.yaml",
            &user_data,
            &[
                "| sha256sum -c - && install -m 0755",
                "packages: [awscli, curl]",
            ][..],
        ),
        ("weir.service", &unit, &["CacheDirectoryMode=0700"][..]),
    ] {
        for needle in needles {
            assert!(text.contains(needle), "{name} lacks {needle}");
        }
        assert!(
            !text.contains("-o /usr/local/bin/weir &&"),
            "{name} installs the binary unverified"
        );
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

/// A fleet configuration of the kind the EC2 kit runs, for `weir iam-policy`.
fn fleet_config(dir: &std::path::Path, source: &str) -> std::path::PathBuf {
    let text = format!(
        "{source}\n\
         [raw]\nkind = \"s3\"\nbucket = \"acme-raw\"\nprefix = \"orders/\"\n\
         [rule]\nplugin = \"s3://acme-raw/weir-plugins/orders-1a2b3c4d5e6f.wasm\"\nsha256 = \"{}\"\n\
         settings = {{ key = \"${{ssm:/weir/rule-key}}\" }}\n\
         [sink]\nkind = \"redshift\"\nurl = \"postgres://weir:${{secretsmanager:prod/redshift#password}}@analytics.example.com:5439/dev\"\n\
         iam = {{ cluster_id = \"analytics\" }}\n\
         stage_fill = {{ kind = \"copy\", bucket = \"acme-raw\", iam_role = \"arn:aws:iam::123456789012:role/copy\" }}\n\
         [[sink.tables]]\nname = \"orders\"\nprimary_key = [\"order_id\"]\ncolumns = {{ order_id = \"varchar(36)\" }}\n\
         [coordinator]\nkind = \"dynamodb\"\ntable = \"weir-coordinator\"\n",
        "ab".repeat(32)
    );
    let path = dir.join("weir.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn iam_policy(cfg: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["iam-policy", "-c", cfg.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = weir(&args, &[]);
    assert!(out.status.success(), "{}", show(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every (action, resource) pair of a policy.
fn grants(policy: &serde_json::Value) -> Vec<(String, String)> {
    let list = |v: &serde_json::Value| -> Vec<String> {
        match v {
            serde_json::Value::Array(a) => {
                a.iter().map(|x| x.as_str().unwrap().to_string()).collect()
            }
            other => vec![other.as_str().unwrap().to_string()],
        }
    };
    let mut out = Vec::new();
    for s in policy["Statement"].as_array().unwrap() {
        assert_eq!(s["Effect"], "Allow");
        for a in list(&s["Action"]) {
            assert!(!a.contains('*'), "wildcard action {a}");
            for r in list(&s["Resource"]) {
                out.push((a.clone(), r));
            }
        }
    }
    out
}

/// `weir iam-policy` grants exactly what a Kinesis → S3 RAW → Redshift (IAM, COPY fill, grouped commits)
/// fleet with a DynamoDB coordinator calls, on the resources it names; the kit's template grants at least
/// every action it lists. An SQS configuration takes its account from the queue URL.
#[test]
fn iam_policy_is_least_privilege_and_the_template_grants_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = fleet_config(
        dir.path(),
        "[source]\nkind = \"kinesis\"\nstream = \"orders\"",
    );
    let missing = weir(&["iam-policy", "-c", cfg.to_str().unwrap()], &[]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("--account-id")
            || String::from_utf8_lossy(&missing.stderr).contains("--region"),
        "{}",
        show(&missing)
    );
    let policy = iam_policy(
        &cfg,
        &["--account-id", "123456789012", "--region", "eu-west-1"],
    );
    let got = grants(&policy);
    let expect = |action: &str, resource: &str| {
        assert!(
            got.contains(&(action.to_string(), resource.to_string())),
            "{action} on {resource} missing from {got:#?}"
        );
    };
    let stream = "arn:aws:kinesis:eu-west-1:123456789012:stream/orders";
    for a in [
        "kinesis:ListShards",
        "kinesis:GetShardIterator",
        "kinesis:GetRecords",
    ] {
        expect(a, stream);
    }
    expect("s3:PutObject", "arn:aws:s3:::acme-raw/orders/*");
    expect("s3:ListBucket", "arn:aws:s3:::acme-raw");
    expect("s3:PutObject", "arn:aws:s3:::acme-raw/weir-plugins/*");
    expect(
        "s3:GetObject",
        "arn:aws:s3:::acme-raw/weir-plugins/orders-1a2b3c4d5e6f.wasm",
    );
    expect("s3:DeleteObject", "arn:aws:s3:::acme-raw/weir-staged/*");
    expect("s3:DeleteObject", "arn:aws:s3:::acme-raw/weir-stage/*");
    expect(
        "redshift:GetClusterCredentials",
        "arn:aws:redshift:eu-west-1:123456789012:dbuser:analytics/weir",
    );
    expect(
        "redshift:GetClusterCredentials",
        "arn:aws:redshift:eu-west-1:123456789012:dbname:analytics/dev",
    );
    // The configuration's secrets, read without fetching them (iam-policy runs before the role exists).
    expect(
        "secretsmanager:GetSecretValue",
        "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/redshift-??????",
    );
    expect(
        "ssm:GetParameter",
        "arn:aws:ssm:eu-west-1:123456789012:parameter/weir/rule-key",
    );
    let table = "arn:aws:dynamodb:eu-west-1:123456789012:table/weir-coordinator";
    expect("dynamodb:UpdateItem", table);
    expect("dynamodb:Query", &format!("{table}/index/*"));
    // Nothing outside the named resources, and no delete where nothing is deleted.
    for (action, resource) in &got {
        assert!(
            resource.contains("acme-raw")
                || resource.contains(":stream/orders")
                || resource.contains("analytics")
                || resource.contains("table/weir-coordinator")
                || resource.contains(":secret:prod/redshift-")
                || resource.ends_with(":parameter/weir/rule-key"),
            "{action} on {resource}"
        );
        if action == "s3:DeleteObject" {
            assert!(resource.contains("weir-stage"), "{resource}");
        }
    }
    let template =
        std::fs::read_to_string(root().join("examples/deploy/ec2/weir-fleet.yaml")).unwrap();
    // (The template grants the configuration's own parameter; a configuration's secrets are the deployer's.)
    for (action, _) in got
        .iter()
        .filter(|(a, _)| a != "secretsmanager:GetSecretValue")
    {
        assert!(
            template.contains(&format!("- {action}\n"))
                || template.contains(&format!("Action: {action}\n")),
            "the template does not grant {action}"
        );
    }

    let sqs = fleet_config(
        dir.path(),
        "[source]\nkind = \"sqs\"\nqueue_url = \"https://sqs.us-east-2.amazonaws.com/210987654321/orders\"",
    );
    let got = grants(&iam_policy(&sqs, &[]));
    for a in [
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility",
    ] {
        assert!(
            got.contains(&(a.into(), "arn:aws:sqs:us-east-2:210987654321:orders".into())),
            "{got:#?}"
        );
    }
    assert!(
        got.iter()
            .any(|(_, r)| r == "arn:aws:dynamodb:us-east-2:210987654321:table/weir-coordinator"),
        "{got:#?}"
    );

    // A stream in another account (`stream_arn`): the grants name that stream, not one in this account.
    let shared = "arn:aws:kinesis:eu-west-1:210987654321:stream/orders";
    let cross = fleet_config(
        dir.path(),
        &format!("[source]\nkind = \"kinesis\"\nstream_arn = \"{shared}\""),
    );
    let got = grants(&iam_policy(
        &cross,
        &["--account-id", "123456789012", "--region", "eu-west-1"],
    ));
    for a in [
        "kinesis:ListShards",
        "kinesis:GetShardIterator",
        "kinesis:GetRecords",
    ] {
        assert!(got.contains(&(a.into(), shared.into())), "{got:#?}");
    }
    assert!(
        !got.iter().any(|(_, r)| r.contains("123456789012:stream/")),
        "{got:#?}"
    );
}

/// The monitoring examples (`examples/monitoring/`): the dashboard is valid JSON, and every metric the alert
/// rules and the dashboard name is one the worker exports.
#[test]
fn monitoring_examples_name_only_exported_metrics() {
    let dir = root().join("examples/monitoring");
    let alerts = std::fs::read_to_string(dir.join("weir-alerts.yaml")).unwrap();
    let dashboard = std::fs::read_to_string(dir.join("weir-dashboard.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    assert!(parsed["panels"].as_array().unwrap().len() >= 10);
    let exported: Vec<&str> = weir::metrics::names().collect();
    let mut named = std::collections::BTreeSet::new();
    for text in [&alerts, &dashboard] {
        let bytes = text.as_bytes();
        let mut i = 0;
        while let Some(at) = text[i..].find("weir_") {
            let start = i + at;
            let mut end = start;
            while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
                end += 1;
            }
            named.insert(text[start..end].to_string());
            i = end;
        }
    }
    for name in &named {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| exported.contains(b)))
            .unwrap_or(name);
        assert!(
            exported.contains(&base),
            "{name} is not a metric weir exports"
        );
    }
    for needed in [
        "weir_seconds_since_last_commit",
        "weir_kinesis_millis_behind_latest",
        "weir_sqs_oldest_in_flight_seconds",
        "weir_dead_letters_total",
        "weir_retries_total",
    ] {
        assert!(alerts.contains(needed), "the alerts lack {needed}");
        assert!(dashboard.contains(needed), "the dashboard lacks {needed}");
    }
}

/// The template installs `weir-lifecycle.sh` and its unit exactly as in the kit (CloudFormation's `${!`
/// escapes aside), grants the two Auto Scaling actions on the one group, and scales on the source's age.
#[test]
fn template_embeds_the_lifecycle_companion() {
    let kit = root().join("examples/deploy/ec2");
    let template = std::fs::read_to_string(kit.join("weir-fleet.yaml")).unwrap();
    for file in ["weir-lifecycle.sh", "weir-lifecycle.service"] {
        let text = std::fs::read_to_string(kit.join(file)).unwrap();
        let embedded: String = text
            .replace("${", "${!")
            .lines()
            .map(|l| {
                if l.is_empty() {
                    "\n".to_string()
                } else {
                    format!("{}{l}\n", " ".repeat(18))
                }
            })
            .collect();
        assert!(
            template.contains(&embedded),
            "the template's {file} differs from the kit's"
        );
    }
    for needle in [
        "autoscaling:CompleteLifecycleAction",
        "autoscaling:SetInstanceHealth",
        "autoScalingGroupName/${AWS::StackName}-weir",
        "AutoScalingGroupName: !Sub ${AWS::StackName}-weir",
        "WEIR_GROUP=${AWS::StackName}-weir",
        "[systemctl, enable, --now, weir-lifecycle]",
        "MetricName: GetRecords.IteratorAgeMilliseconds",
        "MetricName: ApproximateAgeOfOldestMessage",
    ] {
        assert!(template.contains(needle), "the template lacks {needle}");
    }
}

/// `weir-lifecycle.sh` against a stand-in instance metadata service and weir admin endpoint, with `aws` and
/// `systemctl` recorded: a /readyz that keeps failing reports the instance unhealthy; once the group marks
/// the instance Terminated, the script stops weir, then completes the lifecycle hook, then exits.
#[tokio::test]
async fn lifecycle_companion_drains_then_completes_the_hook() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let calls = dir.path().join("calls.log");
    for tool in ["aws", "systemctl"] {
        let path = dir.path().join(tool);
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\necho \"{tool} $*\" >> '{}'\nexit 0\n",
                calls.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let terminated = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let state = terminated.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let state = state.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = conn.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                }
                let text = String::from_utf8_lossy(&request).to_string();
                let mut words = text.split_whitespace();
                let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                let token_ok = text.contains("X-aws-ec2-metadata-token: tok");
                let (status, body) = match (method, path) {
                    ("PUT", "/latest/api/token") => ("200 OK", "tok".to_string()),
                    ("GET", "/latest/meta-data/instance-id") if token_ok => {
                        ("200 OK", "i-0abc".into())
                    }
                    ("GET", "/latest/meta-data/autoscaling/target-lifecycle-state") if token_ok => {
                        (
                            "200 OK",
                            if state.load(Ordering::SeqCst) {
                                "Terminated"
                            } else {
                                "InService"
                            }
                            .into(),
                        )
                    }
                    ("GET", "/readyz") => ("503 Service Unavailable", "stopping".into()),
                    _ => ("401 Unauthorized", String::new()),
                };
                let answer = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(answer.as_bytes()).await;
            });
        }
    });
    let base = format!("http://127.0.0.1:{port}");
    let mut child = tokio::process::Command::new("sh")
        .arg(root().join("examples/deploy/ec2/weir-lifecycle.sh"))
        .env("WEIR_GROUP", "orders-weir")
        .env("WEIR_IMDS_URL", &base)
        .env("WEIR_READYZ_URL", format!("{base}/readyz"))
        .env("WEIR_CHECK_SECS", "0.1")
        .env("WEIR_UNHEALTHY_AFTER", "3")
        .env("WEIR_AWS_CLI", dir.path().join("aws"))
        .env("WEIR_SYSTEMCTL", dir.path().join("systemctl"))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(&calls).unwrap_or_default();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !log().contains("set-instance-health") {
        assert!(
            std::time::Instant::now() < deadline,
            "no health report: {}",
            log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    terminated.store(true, Ordering::SeqCst);
    let status = tokio::time::timeout(std::time::Duration::from_secs(120), child.wait())
        .await
        .expect("the script exits once the hook is completed")
        .unwrap();
    assert!(status.success());
    let log = log();
    assert!(
        log.contains(
            "aws autoscaling set-instance-health --instance-id i-0abc --health-status Unhealthy"
        ),
        "{log}"
    );
    let stop = log
        .find("systemctl stop weir.service")
        .expect("weir stopped");
    let complete = log
        .find(
            "aws autoscaling complete-lifecycle-action --auto-scaling-group-name orders-weir \
             --lifecycle-hook-name weir-drain --instance-id i-0abc --lifecycle-action-result CONTINUE",
        )
        .expect("hook completed");
    assert!(
        stop < complete,
        "the hook completed before weir stopped: {log}"
    );
}
