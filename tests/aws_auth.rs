//! AWS-native configuration, through the real `weir` binary against the local AWS server: secrets from
//! Secrets Manager and SSM Parameter Store in the configuration (never printed), and credentials from a
//! profile's `credential_process`.

mod common;

use std::path::Path;

use common::*;

/// A secret (JSON) and a SecureString parameter on the local AWS server; returns their names.
async fn put_secrets(token: &str, db: &Path, raw: &Path) -> (String, String) {
    let sdk = aws_sdk().await;
    let name = unique("weir/test-db");
    aws_sdk_secretsmanager::Client::new(&sdk)
        .create_secret()
        .name(&name)
        .secret_string(
            serde_json::json!({ "db": { "path": db.display().to_string() }, "token": token })
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    let parameter = format!("/{}", unique("weir/raw-dir"));
    aws_sdk_ssm::Client::new(&sdk)
        .put_parameter()
        .name(&parameter)
        .value(raw.display().to_string())
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .send()
        .await
        .unwrap();
    (name, parameter)
}

/// The quickstart whose SQLite path comes from a JSON field of a Secrets Manager secret, whose RAW directory
/// is an SSM SecureString, and whose rule gets a secret token as a setting.
fn secret_config(dir: &Path, secret: &str, parameter: &str, token_ref: &str) -> std::path::PathBuf {
    let cfg = quickstart_in(dir);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(
            "path = \"${WEIR_QUICKSTART_DB:-out/weir.db}\"",
            &format!("path = \"${{secretsmanager:{secret}#db.path}}\""),
        )
        .replace(
            "dir = \"out/raw\"",
            &format!("dir = \"${{ssm:{parameter}}}\""),
        )
        .replace(
            "batch_deadline_ms = 2000",
            &format!("batch_deadline_ms = 2000\nsettings = {{ note = \"{token_ref}\" }}"),
        )
        + &format!(
            "\n[aws]\nendpoint_url = \"{}\"\nregion = \"us-east-1\"\n",
            aws_endpoint()
        );
    assert!(text.contains("secretsmanager:") && text.contains("${ssm:"));
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// `${secretsmanager:NAME#path}` and `${ssm:/name}` resolve at start: the run writes its database and RAW
/// where the secrets say, and the secret token appears nowhere in its output, even at debug level; a
/// missing secret stops the worker with the reference and the field named.
#[tokio::test(flavor = "multi_thread")]
async fn secrets_from_secrets_manager_and_ssm() {
    needs!("secrets_from_secrets_manager_and_ssm": Aws, Plugins);
    let dir = tempfile::tempdir().unwrap();
    let (db, raw) = (
        dir.path().join("from-secret.db"),
        dir.path().join("raw-from-ssm"),
    );
    let token = unique("s3cr3t-token");
    let (secret, parameter) = put_secrets(&token, &db, &raw).await;
    let cfg = secret_config(
        dir.path(),
        &secret,
        &parameter,
        &format!("${{secretsmanager:{secret}#token}}"),
    );
    let mut env = AWS_TEST_ENV.to_vec();
    env.push(("WEIR_LOG", "debug"));
    for args in [
        vec!["validate", "-c", cfg.to_str().unwrap()],
        vec!["run", "-c", cfg.to_str().unwrap()],
    ] {
        let out = weir(&args, &env);
        assert!(out.status.success(), "{}", show(&out));
        assert!(!show(&out).contains(&token), "the secret was printed");
    }
    assert_eq!(count(&db, "SELECT count(*) FROM orders").await, 5);
    assert!(
        raw.join("orders").exists(),
        "RAW is not under the SSM directory"
    );

    let missing = secret_config(
        dir.path(),
        &secret,
        &parameter,
        "${secretsmanager:weir/no-such-secret#token}",
    );
    let out = weir(
        &["validate", "-c", missing.to_str().unwrap()],
        &AWS_TEST_ENV,
    );
    assert!(!out.status.success(), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("${secretsmanager:weir/no-such-secret#token}") && !err.contains(&token),
        "{}",
        show(&out)
    );
}

/// A profile whose credentials come from `credential_process` (no keys in the environment) signs the
/// worker's AWS calls: the process runs, and the run resolves its secrets.
#[tokio::test(flavor = "multi_thread")]
async fn credentials_from_a_credential_process_profile() {
    needs!("credentials_from_a_credential_process_profile": Aws, Plugins);
    let dir = tempfile::tempdir().unwrap();
    let (db, raw) = (dir.path().join("p.db"), dir.path().join("p-raw"));
    let (secret, parameter) = put_secrets("unused", &db, &raw).await;
    let cfg = secret_config(dir.path(), &secret, &parameter, "plain");
    let marker = dir.path().join("process-ran");
    let script = dir.path().join("creds.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ntouch '{}'\necho '{{\"Version\": 1, \"AccessKeyId\": \"test\", \"SecretAccessKey\": \"test\"}}'\n",
            marker.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let profiles = dir.path().join("aws-config");
    std::fs::write(
        &profiles,
        format!(
            "[profile weir-test]\ncredential_process = {}\nregion = us-east-1\n",
            script.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "-c", cfg.to_str().unwrap()])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env("AWS_CONFIG_FILE", &profiles)
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.path().join("none"))
        .env("AWS_PROFILE", "weir-test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("WEIR_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert!(marker.exists(), "credential_process did not run");
    assert_eq!(count(&db, "SELECT count(*) FROM orders").await, 5);
}

/// A profile from `aws sso login` (its token in the SSO cache, no keys anywhere) signs the worker's AWS calls:
/// the SDK trades the cached token for role credentials at the SSO portal — a stand-in here, reached through
/// `AWS_ENDPOINT_URL_SSO` — and the run resolves its secrets with them.
#[tokio::test(flavor = "multi_thread")]
async fn credentials_from_an_sso_login_profile() {
    use std::io::{Read, Write};
    needs!("credentials_from_an_sso_login_profile": Aws, Plugins);
    let dir = tempfile::tempdir().unwrap();
    let (db, raw) = (dir.path().join("p.db"), dir.path().join("p-raw"));
    let (secret, parameter) = put_secrets("unused", &db, &raw).await;
    let cfg = secret_config(dir.path(), &secret, &parameter, "plain");
    // The portal: `GET /federation/credentials?role_name=…&account_id=…` with the bearer token, answered with
    // role credentials the local AWS server accepts; the requests it saw are kept.
    let portal = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = portal.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in portal.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            log.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&request).to_lowercase());
            let expires_ms = (weir::record::wall_clock_us() / 1000) + 3_600_000;
            let body = format!(
                r#"{{"roleCredentials": {{"accessKeyId": "test", "secretAccessKey": "test", "sessionToken": "t", "expiration": {expires_ms}}}}}"#
            );
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    // What `aws sso login` leaves: the profile, and the token cached under the SHA-1 of the start URL.
    let home = dir.path().join("home");
    let cache = home.join(".aws/sso/cache");
    std::fs::create_dir_all(&cache).unwrap();
    let start_url = "https://weir-test.awsapps.com/start";
    let sha1 = std::process::Command::new("sh")
        .args(["-c", &format!("printf %s '{start_url}' | sha1sum")])
        .output()
        .unwrap();
    let sha1 = String::from_utf8_lossy(&sha1.stdout)[..40].to_string();
    let expires_at = chrono::Utc::now() + chrono::Duration::hours(1);
    std::fs::write(
        cache.join(format!("{sha1}.json")),
        serde_json::json!({
            "startUrl": start_url,
            "region": "us-east-1",
            "accessToken": "the-sso-token",
            "expiresAt": expires_at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        })
        .to_string(),
    )
    .unwrap();
    let profiles = dir.path().join("aws-config");
    std::fs::write(
        &profiles,
        format!(
            "[profile weir-sso]\nsso_start_url = {start_url}\nsso_region = us-east-1\n\
             sso_account_id = 123456789012\nsso_role_name = WeirDev\nregion = us-east-1\n"
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "-c", cfg.to_str().unwrap()])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env("HOME", &home)
        .env("AWS_CONFIG_FILE", &profiles)
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.path().join("none"))
        .env("AWS_PROFILE", "weir-sso")
        .env("AWS_ENDPOINT_URL_SSO", format!("http://127.0.0.1:{port}"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("WEIR_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|r| r.starts_with("get /federation/credentials?")
                && r.contains("role_name=weirdev")
                && r.contains("x-amz-sso_bearer_token: the-sso-token")),
        "{seen:?}"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM orders").await, 5);
}

/// `[raw] role_arn`: RAW's S3 calls assume that role through STS (the request names it) and are signed with
/// the temporary credentials it returns, while the rest of the worker keeps its own credentials.
#[tokio::test(flavor = "multi_thread")]
async fn raw_calls_assume_their_own_role() {
    needs!("raw_calls_assume_their_own_role": Aws, Plugins);
    let target = aws_endpoint().trim_start_matches("http://").to_string();
    // Two fronts in a row before the AWS server: one counts AssumeRole requests for the RAW role, the other
    // requests signed with temporary (assumed) credentials.
    let signed = TcpFront::counting(&target, b"Credential=ASIA").await;
    let assume = TcpFront::counting(&signed.addr, b"role%2Fweir-raw-test").await;
    let s3 = s3().await;
    let bucket = unique("weir-role-raw");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = quickstart_in(dir.path());
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "kind = \"local\"\ndir = \"out/raw\"",
        &format!(
            "kind = \"s3\"\nbucket = \"{bucket}\"\nrole_arn = \"arn:aws:iam::123456789012:role/weir-raw-test\""
        ),
    ) + &format!(
        "\n[aws]\nendpoint_url = \"http://{}\"\nregion = \"us-east-1\"\n",
        assume.addr
    );
    assert!(text.contains("weir-raw-test"));
    std::fs::write(&cfg, text).unwrap();
    let db = dir.path().join("weir.db");
    let mut env = AWS_TEST_ENV.to_vec();
    let db_text = db.display().to_string();
    env.push(("WEIR_QUICKSTART_DB", &db_text));
    let out = weir(&["run", "-c", cfg.to_str().unwrap()], &env);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(count(&db, "SELECT count(*) FROM orders").await, 5);
    assert!(assume.requests() >= 1, "no AssumeRole for the RAW role");
    assert!(
        signed.requests() >= 1,
        "no call signed with the assumed credentials"
    );
    let listed = s3.list_objects_v2().bucket(&bucket).send().await.unwrap();
    assert!(listed.key_count().unwrap_or(0) > 0, "RAW is empty");
}

/// `weir validate --aws` checks the queue or stream, the buckets and the coordinator table read-only: all
/// present passes; a missing queue, stream or bucket fails naming the backend and saying it does not exist.
#[tokio::test(flavor = "multi_thread")]
async fn validate_aws_names_what_is_missing() {
    needs!("validate_aws_names_what_is_missing": Aws, Kinesis, Plugins);
    let sdk = aws_sdk().await;
    let s3 = s3().await;
    let bucket = unique("weir-validate");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let queue_url = aws_sdk_sqs::Client::new(&sdk)
        .create_queue()
        .queue_name(unique("weir-validate"))
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let write = |source: &str, bucket: &str| {
        let cfg = quickstart_in(dir.path());
        let text = std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("kind = \"file\"\npath = \"orders.jsonl\"", source)
            .replace(
                "kind = \"local\"\ndir = \"out/raw\"",
                &format!("kind = \"s3\"\nbucket = \"{bucket}\""),
            )
            + &format!(
                "\n[aws]\nendpoint_url = \"{}\"\nregion = \"us-east-1\"\n",
                aws_endpoint()
            );
        assert!(text.contains(source) && text.contains(bucket));
        std::fs::write(&cfg, text).unwrap();
        cfg
    };
    let validate = |cfg: &std::path::Path| {
        weir(
            &["validate", "--aws", "-c", cfg.to_str().unwrap()],
            &AWS_TEST_ENV,
        )
    };

    let good = write(
        &format!("kind = \"sqs\"\nqueue_url = \"{queue_url}\""),
        &bucket,
    );
    let out = validate(&good);
    assert!(out.status.success(), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("source: SQS queue {queue_url}: ok"))
            && text.contains(&format!("raw: S3 bucket {bucket}")),
        "{text}"
    );

    let no_bucket = write(
        &format!("kind = \"sqs\"\nqueue_url = \"{queue_url}\""),
        "weir-no-such-bucket-here",
    );
    let out = validate(&no_bucket);
    assert!(!out.status.success(), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("raw: S3 bucket weir-no-such-bucket-here")
            && text.contains("FAILED: it does not exist"),
        "{text}"
    );

    let missing_queue = queue_url.rsplit_once('/').unwrap().0.to_string() + "/weir-no-such-queue";
    let no_queue = write(
        &format!("kind = \"sqs\"\nqueue_url = \"{missing_queue}\""),
        &bucket,
    );
    let out = validate(&no_queue);
    assert!(!out.status.success(), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "source: SQS queue {missing_queue}: FAILED: it does not exist"
        )),
        "{text}"
    );

    let kinesis =
        std::env::var("WEIR_KINESIS_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:4567".into());
    let no_stream = write(
        &format!(
            "kind = \"kinesis\"\nstream = \"weir-no-such-stream\"\nendpoint_url = \"{kinesis}\""
        ),
        &bucket,
    );
    let out = validate(&no_stream);
    assert!(!out.status.success(), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("source: Kinesis stream weir-no-such-stream: FAILED: it does not exist"),
        "{text}"
    );
}

/// With IAM enforcement on — a local AWS server of its own, started with `INITIAL_NO_AUTH_ACTION_COUNT` so that
/// every call after the set-up is authenticated and authorized against IAM policies — two users: one allowed
/// everything on S3, one whose policy also denies `s3:PutObject`. `weir validate --aws` fails as the second,
/// on the RAW bucket and the plugin store, naming the denied permission, and passes as the first.
#[tokio::test(flavor = "multi_thread")]
async fn validate_aws_names_a_denied_permission() {
    needs!("validate_aws_names_a_denied_permission": Aws, Plugins);
    let venv = std::env::var("WEIR_MOTO_VENV").unwrap_or_else(|_| "/var/tmp/weir-moto".into());
    let moto = Path::new(&venv).join("bin");
    assert!(
        moto.join("moto_server").exists(),
        "no moto server in {venv} (scripts/services.sh installs it)"
    );
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    // The set-up below makes exactly these calls; enforcement starts with the next one.
    const SETUP_CALLS: &str = "7";
    let mut cmd = std::process::Command::new(moto.join("moto_server"));
    cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .env("INITIAL_NO_AUTH_ACTION_COUNT", SETUP_CALLS);
    let _server = Background::spawn(cmd);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "moto did not start");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let bucket = unique("weir-iam");
    // boto3 comes with moto: two users with their keys and policies, and the bucket (7 calls).
    let setup = format!(
        r#"
import boto3, json
kw = dict(endpoint_url="{endpoint}", region_name="us-east-1",
          aws_access_key_id="setup", aws_secret_access_key="setup")
iam = boto3.client("iam", **kw)
allow = {{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}}
deny = {{"Effect": "Deny", "Action": "s3:PutObject", "Resource": "*"}}
keys = {{}}
for user, statements in (("allowed", [allow]), ("denied", [allow, deny])):
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    iam.put_user_policy(UserName=user, PolicyName="s3",
        PolicyDocument=json.dumps({{"Version": "2012-10-17", "Statement": statements}}))
    keys[user] = [key["AccessKeyId"], key["SecretAccessKey"]]
boto3.client("s3", **kw).create_bucket(Bucket="{bucket}")
print(json.dumps(keys))
"#
    );
    let out = std::process::Command::new(moto.join("python"))
        .args(["-c", &setup])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let keys: std::collections::HashMap<String, [String; 2]> =
        serde_json::from_slice(&out.stdout).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let cfg = quickstart_in(dir.path());
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "kind = \"local\"\ndir = \"out/raw\"",
        &format!("kind = \"s3\"\nbucket = \"{bucket}\"\nsse = \"s3\""),
    ) + &format!("\n[aws]\nendpoint_url = \"{endpoint}\"\nregion = \"us-east-1\"\n");
    std::fs::write(&cfg, text).unwrap();
    let validate_as = |user: &str| {
        let [id, secret] = &keys[user];
        weir(
            &["validate", "--aws", "-c", cfg.to_str().unwrap()],
            &[
                ("AWS_ACCESS_KEY_ID", id.as_str()),
                ("AWS_SECRET_ACCESS_KEY", secret.as_str()),
                ("AWS_CONFIG_FILE", "/nonexistent"),
                ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent"),
                ("AWS_EC2_METADATA_DISABLED", "true"),
            ],
        )
    };
    // Denied first: the plugin store does not hold the rule yet, so storing it needs s3:PutObject too.
    let out = validate_as("denied");
    assert!(!out.status.success(), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let raw_line = text
        .lines()
        .find(|l| l.starts_with(&format!("raw: S3 bucket {bucket}")))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        raw_line.contains(&format!(
            "FAILED: permission denied: this identity needs s3:PutObject on s3://{bucket}/"
        )) && raw_line.contains("weir-validate/probe.txt"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("rule.store:") && l.contains("FAILED: permission denied")),
        "{text}"
    );

    let out = validate_as("allowed");
    assert!(out.status.success(), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with(&format!("raw: S3 bucket {bucket}")) && l.ends_with(": ok"))
            && text.contains(&format!(
                "rule.store: plugin store s3://{bucket}/weir-plugins/: ok"
            )),
        "{text}"
    );
}
