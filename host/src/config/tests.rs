use super::*;

const GOOD: &str = r#"
[source]
kind = "file"
path = "in.jsonl"
[raw]
kind = "local"
dir = "raw"
[rule]
plugin = "rule.wasm"
settings = { currency = "${CUR:-EUR}" }
[sink]
kind = "sqlite"
path = "${DB}"
[[sink.tables]]
name = "orders"
primary_key = ["id"]
columns = { id = "varchar(36)", total = "decimal(18,2)" }
"#;

const SQS: &str = "kind = \"sqs\"\nqueue_url = \"https://sqs.eu-west-1.amazonaws.com/1/orders\"";

/// SQS and S3 settings load with their documented defaults.
#[test]
fn sqs_and_s3_defaults() {
    let text = GOOD
        .replace("kind = \"file\"\npath = \"in.jsonl\"", SQS)
        .replace(
            "kind = \"local\"\ndir = \"raw\"",
            "kind = \"s3\"\nbucket = \"b\"",
        );
    let l = parse(&text, Path::new("/base"), Path::new("t.toml"), &env).unwrap();
    let SourceConfig::Sqs {
        receivers,
        wait_secs,
        max_messages,
        visibility_timeout_secs,
        idle_exit_secs,
        ..
    } = l.config.source
    else {
        panic!("sqs source expected")
    };
    assert_eq!(
        (
            receivers,
            wait_secs,
            max_messages,
            visibility_timeout_secs,
            idle_exit_secs
        ),
        (4, 20, 10, 60, None)
    );
    let RawConfig::S3 {
        sse,
        multipart_threshold_bytes,
        part_size_bytes,
        ..
    } = l.config.raw
    else {
        panic!("s3 raw expected")
    };
    assert_eq!(
        (sse, multipart_threshold_bytes, part_size_bytes),
        (Sse::None, 64 << 20, 16 << 20)
    );
}

fn env(name: &str) -> Option<String> {
    (name == "DB").then(|| "w.db".to_string())
}

fn err(text: &str) -> String {
    parse(text, Path::new("/base"), Path::new("t.toml"), &env)
        .unwrap_err()
        .to_string()
}

/// A good config loads, interpolates and resolves paths against the config's directory.
#[test]
fn good_config_loads() {
    let l = parse(GOOD, Path::new("/base"), Path::new("t.toml"), &env).unwrap();
    assert_eq!(l.config.sink.path.as_deref(), Some(Path::new("/base/w.db")));
    assert_eq!(l.config.rule.settings["currency"], "EUR");
    assert_eq!(l.tables[0].columns.len(), 2);
    assert_eq!(l.config.batch.max_records, 5000);
}

/// Each malformed config names the offending field.
#[test]
fn bad_configs_name_the_field() {
    let cases = [
        (
            GOOD.replace("[batch]", "") + "[batch]\nmax_record = 5\n",
            "batch.max_record",
        ),
        (
            GOOD.replace("decimal(18,2)", "money"),
            "sink.tables[0].columns.total",
        ),
        (GOOD.replace("\"${DB}\"", "\"${NOPE}\""), "sink.path"),
        (
            GOOD.replace("kind = \"sqlite\"", "kind = \"oracle\""),
            "sink.kind",
        ),
        (
            GOOD.replace("primary_key = [\"id\"]", "primary_key = [\"oid\"]"),
            "sink.tables[0].primary_key",
        ),
        (GOOD.replace("plugin = \"rule.wasm\"\n", ""), "rule"),
        (
            GOOD.replace("name = \"orders\"", "name = \"drop table\""),
            "sink.tables[0].name",
        ),
        (
            GOOD.replace(
                "[[sink.tables]]",
                "[batch]\nmax_records = 0\n[[sink.tables]]",
            ),
            "batch.max_records",
        ),
        (GOOD.replace("kind = \"file\"", "kind = \"ftp\""), "source"),
        (GOOD.replace("path = \"${DB}\"", "path = \"${DB}\"\niam = { cluster_id = \"c\" }"), "sink.iam"),
        (
            GOOD.replace("kind = \"sqlite\"\npath = \"${DB}\"", "kind = \"redshift\"\nurl = \"postgres://u@h/d\"\niam = { cluster_id = \"c\", duration_secs = 60 }"),
            "sink.iam.duration_secs",
        ),
        (
            GOOD.replace("kind = \"sqlite\"\npath = \"${DB}\"", "kind = \"postgres\"\nurl = \"postgres://u@h/d\"\nstage_fill = { kind = \"copy\", bucket = \"b\", iam_role = \"r\" }"),
            "sink.stage_fill",
        ),
        (GOOD.replace("kind = \"sqlite\"\npath = \"${DB}\"", "kind = \"redshift\""), "sink.url"),
        (GOOD.replace("columns = {", "encode = { total = \"gzip9\" }\ncolumns = {"), "sink.tables[0].encode.total"),
        (GOOD.replace("columns = {", "sortkey = [\"placed_at\"]\ncolumns = {"), "sink.tables[0].sortkey"),
        (GOOD.replace("kind = \"file\"\npath = \"in.jsonl\"", "kind = \"sqs\"\nqueue_url = \"orders\""), "source.queue_url"),
        (GOOD.replace("kind = \"file\"\npath = \"in.jsonl\"", &format!("{SQS}\nwait_secs = 30")), "source.wait_secs"),
        (GOOD.replace("kind = \"file\"\npath = \"in.jsonl\"", &format!("{SQS}\nmax_messages = 11")), "source.max_messages"),
        (GOOD.replace("kind = \"file\"\npath = \"in.jsonl\"", &format!("{SQS}\nvisibility_timeout_secs = 0")), "source.visibility_timeout_secs"),
        (GOOD.replace("kind = \"file\"\npath = \"in.jsonl\"", &format!("{SQS}\nreceivers = 0")), "source.receivers"),
        (GOOD.replace("kind = \"file\"\npath = \"in.jsonl\"", &format!("{SQS}\npoll_secs = 1")), "source"),
        (GOOD.replace("kind = \"local\"\ndir = \"raw\"", "kind = \"s3\"\nbucket = \"s3://b\""), "raw.bucket"),
        (GOOD.replace("kind = \"local\"\ndir = \"raw\"", "kind = \"s3\"\nbucket = \"b\"\nkms_key_id = \"k\""), "raw.kms_key_id"),
        (GOOD.replace("kind = \"local\"\ndir = \"raw\"", "kind = \"s3\"\nbucket = \"b\"\nsse = \"aes\""), "raw"),
        (GOOD.replace("kind = \"local\"\ndir = \"raw\"", "kind = \"s3\"\nbucket = \"b\"\npart_size_bytes = 1000"), "raw.part_size_bytes"),
        (GOOD.replace("plugin = \"rule.wasm\"", "plugin = \"rule.wasm\"\ninstances = 0"), "rule.instances"),
        (GOOD.replace("plugin = \"rule.wasm\"", "plugin = \"s3://bucket/rule.wasm\""), "rule.sha256"),
        (GOOD.replace("plugin = \"rule.wasm\"", "plugin = \"https://example.com/rule.wasm\""), "rule.sha256"),
        (GOOD.replace("plugin = \"rule.wasm\"", "plugin = \"s3://bucket\"\nsha256 = \"00\""), "rule.plugin"),
        (GOOD.replace("plugin = \"rule.wasm\"", "plugin = \"rule.wasm\"\nsha256 = \"not-hex\""), "rule.sha256"),
        (GOOD.replace("plugin = \"rule.wasm\"", "plugin = \"rule.wasm\"\nfetch_timeout_secs = 0"), "rule.fetch_timeout_secs"),
        (GOOD.to_string() + "[aws]\nrole_arn = \"weir-role\"\n", "aws.role_arn"),
        (GOOD.to_string() + "[aws]\nexternal_id = \"x\"\n", "aws.external_id"),
        (GOOD.replace("kind = \"local\"\ndir = \"raw\"", "kind = \"s3\"\nbucket = \"b\"\nrole_arn = \"arn:aws:iam::12:role/r\""), "raw.role_arn"),
        (GOOD.to_string() + "[coordinator]\nkind = \"dynamodb\"\ntable = \"t\"\n", "coordinator.kind"),
        (GOOD.replace("kind = \"file\"\npath = \"in.jsonl\"", "kind = \"kinesis\"\nstream = \"s\"") + "[coordinator]\nkind = \"dynamodb\"\ntable = \"t\"\n", "coordinator.table"),
        (GOOD.replace("kind = \"file\"\npath = \"in.jsonl\"", "kind = \"kinesis\"\nstream = \"s\"") + "[coordinator]\nkind = \"postgres\"\nurl = \"mysql://x\"\n", "coordinator.url"),
        (GOOD.replace("kind = \"file\"\npath = \"in.jsonl\"", "kind = \"kinesis\"\nstream = \"s\"\nendpoint_url = \"127.0.0.1:4567\""), "source.endpoint_url"),
        (GOOD.replace("kind = \"file\"\npath = \"in.jsonl\"", &format!("{SQS}\nendpoint_url = \"localhost\"")), "source.endpoint_url"),
    ];
    for (text, field) in cases {
        let message = err(&text);
        assert!(
            message.contains(&format!("`{field}")),
            "{message:?} should name {field}"
        );
    }
}

/// Interpolation handles defaults, literals and missing variables.
#[test]
fn interpolation() {
    let e = |n: &str| (n == "A").then(|| "1".to_string());
    assert_eq!(interpolate("x${A}y", "f", &e).unwrap(), "x1y");
    assert_eq!(interpolate("${B:-2}", "f", &e).unwrap(), "2");
    assert_eq!(interpolate("$${A} $5", "f", &e).unwrap(), "${A} $5");
    assert!(
        interpolate("${B}", "f", &e)
            .unwrap_err()
            .to_string()
            .contains("`B` is not set")
    );
    assert!(interpolate("${A", "f", &e).is_err());
}

/// `initial_position` and `initial_timestamp` parse into one start, or fail naming the field to fix.
#[test]
fn kinesis_initial_position() {
    let kinesis = |extra: &str| {
        let source = format!("kind = \"kinesis\"\nstream = \"orders\"\n{extra}");
        let text = GOOD.replace("kind = \"file\"\npath = \"in.jsonl\"", &source);
        parse(&text, Path::new("/base"), Path::new("t.toml"), &env)
    };
    let start = |extra: &str| match kinesis(extra).unwrap().config.source {
        SourceConfig::Kinesis {
            initial_position,
            initial_timestamp,
            ..
        } => InitialPosition::from_config(initial_position, initial_timestamp).unwrap(),
        _ => panic!("kinesis source expected"),
    };
    assert_eq!(start(""), InitialPosition::TrimHorizon);
    assert_eq!(
        start("initial_position = \"latest\""),
        InitialPosition::Latest
    );
    assert_eq!(
        start(
            "initial_position = \"at_timestamp\"\ninitial_timestamp = \"1970-01-01T00:00:01.5Z\""
        ),
        InitialPosition::AtTimestamp(1500)
    );
    for (extra, field, says) in [
        (
            "initial_position = \"oldest\"",
            "initial_position",
            "trim_horizon",
        ),
        (
            "initial_position = \"at_timestamp\"",
            "source.initial_timestamp",
            "missing",
        ),
        (
            "initial_position = \"at_timestamp\"\ninitial_timestamp = \"yesterday\"",
            "initial_timestamp",
            "not an RFC 3339 time",
        ),
        (
            "initial_timestamp = \"2026-11-21T00:00:00Z\"",
            "source.initial_timestamp",
            "remove it",
        ),
    ] {
        let e = kinesis(extra).unwrap_err().to_string();
        assert!(e.contains(field) && e.contains(says), "{extra}: {e}");
    }
}

/// `stream_arn` names a stream in another account: the name comes from it; a malformed ARN, or a
/// `stream` naming another stream, fails naming the field.
#[test]
fn kinesis_stream_arn() {
    let kinesis = |lines: &str| {
        let source = format!("kind = \"kinesis\"\n{lines}");
        let text = GOOD.replace("kind = \"file\"\npath = \"in.jsonl\"", &source);
        parse(&text, Path::new("/base"), Path::new("t.toml"), &env)
    };
    let arn = "arn:aws:kinesis:eu-west-1:210987654321:stream/orders";
    match kinesis(&format!("stream_arn = \"{arn}\""))
        .unwrap()
        .config
        .source
    {
        SourceConfig::Kinesis {
            stream, stream_arn, ..
        } => assert_eq!(
            (stream.as_str(), stream_arn.as_deref()),
            ("orders", Some(arn))
        ),
        _ => panic!("kinesis source expected"),
    }
    assert!(kinesis(&format!("stream = \"orders\"\nstream_arn = \"{arn}\"")).is_ok());
    for (lines, field) in [
        (
            "stream_arn = \"arn:aws:sqs:eu-west-1:210987654321:orders\"",
            "source.stream_arn",
        ),
        (
            "stream_arn = \"arn:aws:kinesis:eu-west-1:2109:stream/orders\"",
            "source.stream_arn",
        ),
        (
            "stream = \"other\"\nstream_arn = \"arn:aws:kinesis:eu-west-1:210987654321:stream/orders\"",
            "source.stream",
        ),
        (
            "stream = \"arn:aws:kinesis:eu-west-1:210987654321:stream/orders\"",
            "stream_arn",
        ),
        ("initial_position = \"latest\"", "source.stream"),
    ] {
        let e = kinesis(lines).unwrap_err().to_string();
        assert!(e.contains(field), "{lines}: {e}");
    }
}

/// Kinesis leases in Redshift are warned about (a fleet's renewals and commits conflict there); with a
/// coordinator of its own, or on PostgreSQL, nothing is said.
#[test]
fn kinesis_leases_in_redshift_are_warned_about() {
    let kinesis = GOOD.replace(
        "kind = \"file\"\npath = \"in.jsonl\"",
        "kind = \"kinesis\"\nstream = \"s\"",
    );
    let redshift = kinesis.replace(
        "kind = \"sqlite\"\npath = \"${DB}\"",
        "kind = \"redshift\"\nurl = \"postgres://u@h:5439/d\"",
    );
    let load = |text: &str| parse(text, Path::new("/base"), Path::new("t.toml"), &env).unwrap();
    let leases = |text: &str| -> Vec<String> {
        warnings(&load(text).config)
            .into_iter()
            .filter(|w| w.contains("Kinesis shard leases"))
            .collect()
    };
    let w = leases(&redshift);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("[coordinator]"), "{w:?}");
    let coordinated =
        redshift.clone() + "[coordinator]\nkind = \"dynamodb\"\ntable = \"weir-coordinator\"\n";
    assert_eq!(leases(&coordinated), Vec::<String>::new());
    assert_eq!(warnings(&load(&kinesis).config), Vec::<String>::new());
}

/// Grouped commits are on by default for Redshift only; staging defaults to the COPY stage fill's bucket,
/// else an S3 RAW store's bucket, else a local directory (with a warning naming the fix), and a registry kept
/// in Redshift is warned about.
#[test]
fn group_commit_defaults_follow_the_sink() {
    let sink = |kind: &str| {
        GOOD.replace(
            "kind = \"sqlite\"\npath = \"${DB}\"",
            &format!("kind = \"{kind}\"\nurl = \"postgres://u@h:5439/d\""),
        )
    };
    let load = |text: &str| parse(text, Path::new("/base"), Path::new("t.toml"), &env).unwrap();
    assert!(!load(GOOD).config.sink.group_commit.on());
    assert!(!load(&sink("postgres")).config.sink.group_commit.on());
    let redshift = load(&sink("redshift"));
    let g = &redshift.config.sink.group_commit;
    assert!(g.on());
    assert!(
        matches!(g.staging(), StagingConfig::Local { dir } if dir == Path::new("/base/weir-staged")),
        "{:?}",
        g.staging()
    );
    let w = warnings(&redshift.config);
    assert!(
        w.iter()
            .any(|w| w.contains("registration is a write transaction")),
        "{w:?}"
    );
    assert!(
        w.iter().any(|w| w.contains("kind = \"s3\"")),
        "local staging names the fix: {w:?}"
    );
    let off = load(&(sink("redshift") + "[sink.group_commit]\nenabled = false\n"));
    assert!(!off.config.sink.group_commit.on());
    assert_eq!(warnings(&off.config), Vec::<String>::new());
    let s3_raw = sink("redshift").replace(
        "kind = \"local\"\ndir = \"raw\"",
        "kind = \"s3\"\nbucket = \"raw-bucket\"",
    );
    let staged = load(&s3_raw).config.sink.group_commit.staging();
    assert!(
        matches!(&staged, StagingConfig::S3 { bucket, prefix } if bucket == "raw-bucket" && prefix == "weir-staged"),
        "{staged:?}"
    );
    let copy = s3_raw.replace(
        "url = \"postgres://u@h:5439/d\"",
        "url = \"postgres://u@h:5439/d\"\nstage_fill = { kind = \"copy\", bucket = \"copy-bucket\", iam_role = \"r\" }",
    ) + "[coordinator]\nkind = \"dynamodb\"\ntable = \"weir-coordinator\"\n";
    let loaded = load(&copy);
    let staged = loaded.config.sink.group_commit.staging();
    assert!(
        matches!(&staged, StagingConfig::S3 { bucket, .. } if bucket == "copy-bucket"),
        "{staged:?}"
    );
    assert_eq!(warnings(&loaded.config), Vec::<String>::new());
    // An explicit staging wins over every default.
    let explicit =
        copy + "[sink.group_commit.staging]\nkind = \"s3\"\nbucket = \"mine\"\nprefix = \"p\"\n";
    let staged = load(&explicit).config.sink.group_commit.staging();
    assert!(
        matches!(&staged, StagingConfig::S3 { bucket, prefix } if bucket == "mine" && prefix == "p"),
        "{staged:?}"
    );
}

/// `[rule] plugin`: a path (made absolute against the config's directory), an S3 object or a URL (left as
/// they are), each with the rule's name.
#[test]
fn plugin_locations_parse_and_name_the_rule() {
    assert_eq!(
        PluginLocation::parse("s3://b/dir/orders.wasm"),
        PluginLocation::S3 {
            bucket: "b".into(),
            key: "dir/orders.wasm".into()
        }
    );
    assert_eq!(
        PluginLocation::parse("s3://b/dir/orders.wasm").name(),
        "orders"
    );
    assert_eq!(
        PluginLocation::parse("https://h/x/rule.wasm?sig=1").name(),
        "rule"
    );
    assert_eq!(PluginLocation::parse("https://h/").name(), "rule");
    let remote = GOOD.replace(
        "plugin = \"rule.wasm\"",
        &format!(
            "plugin = \"s3://bucket/r/rule.wasm\"\nsha256 = \"{}\"",
            "0f".repeat(32)
        ),
    );
    let l = parse(&remote, Path::new("/base"), Path::new("t.toml"), &env).unwrap();
    assert_eq!(l.config.rule.plugin.to_string(), "s3://bucket/r/rule.wasm");
    let l = parse(GOOD, Path::new("/base"), Path::new("t.toml"), &env).unwrap();
    assert_eq!(
        l.config.rule.plugin,
        PluginLocation::Local(PathBuf::from("/base/rule.wasm"))
    );
}
