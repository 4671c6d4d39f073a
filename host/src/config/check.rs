//! What types cannot express: limits, identifiers, column types and combinations of fields, each error
//! naming its field and the fix.

use super::*;

pub(super) fn check(config: &Config) -> Result<Vec<TableSpec>, ConfigError> {
    check_limits(config)?;
    check_rule(&config.rule)?;
    check_sink(config)?;
    check_features(config)?;
    check_source(&config.source, &config.aws)?;
    if let Some(serve) = &config.serve {
        if matches!(config.source, SourceConfig::Http(_)) {
            return Err(ConfigError::field(
                "serve",
                "[serve] configures a forwarding tier in front of a Kinesis or SQS [source]; with `[source] kind = \"http\"` put these settings in [source]",
            ));
        }
        check_http(serve, "serve")?;
    }
    check_raw(&config.raw)?;
    check_roles(config)?;
    if config.sink.tables.is_empty() {
        return Err(ConfigError::field(
            "sink.tables",
            "no table declared; add a [[sink.tables]] section for each table the rule emits",
        ));
    }
    let mut specs: Vec<TableSpec> = Vec::new();
    for (i, t) in config.sink.tables.iter().enumerate() {
        let spec = check_table(&specs, i, t)?;
        specs.push(spec);
    }
    Ok(specs)
}

/// Every `role_arn` is an IAM role's ARN, and no `external_id` goes without one.
fn check_roles(config: &Config) -> Result<(), ConfigError> {
    for (section, role) in config.roles() {
        match (&role.role_arn, &role.external_id) {
            (None, Some(_)) => {
                return Err(ConfigError::field(
                    format!("{section}.external_id"),
                    "goes with a role: set role_arn beside it, or remove it",
                ));
            }
            (Some(arn), _) if !is_role_arn(arn) => {
                return Err(ConfigError::field(
                    format!("{section}.role_arn"),
                    format!(
                        "`{arn}` is not an IAM role ARN; write arn:aws:iam::123456789012:role/NAME"
                    ),
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

fn is_role_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    parts.len() == 6
        && parts[0] == "arn"
        && parts[1].starts_with("aws")
        && parts[2] == "iam"
        && parts[4].len() == 12
        && parts[4].bytes().all(|b| b.is_ascii_digit())
        && parts[5]
            .strip_prefix("role/")
            .is_some_and(|n| !n.is_empty())
}

/// `[batch]` and `[retry]` limits.
fn check_limits(config: &Config) -> Result<(), ConfigError> {
    let b = &config.batch;
    if b.max_records == 0 {
        return Err(ConfigError::field(
            "batch.max_records",
            "must be at least 1",
        ));
    }
    if b.max_bytes == 0 {
        return Err(ConfigError::field("batch.max_bytes", "must be at least 1"));
    }
    if b.queue_depth == 0 {
        return Err(ConfigError::field(
            "batch.queue_depth",
            "must be at least 1",
        ));
    }
    if config.worker.metrics_interval_secs == 0 {
        return Err(ConfigError::field(
            "worker.metrics_interval_secs",
            "must be at least 1 (seconds)",
        ));
    }
    if config.retry.max_attempts == 0 {
        return Err(ConfigError::field(
            "retry.max_attempts",
            "must be at least 1",
        ));
    }
    Ok(())
}

/// `[rule]` limits.
fn check_rule(r: &RuleConfig) -> Result<(), ConfigError> {
    if r.memory_limit_mib == 0 || r.memory_limit_mib > 4096 {
        return Err(ConfigError::field(
            "rule.memory_limit_mib",
            format!(
                "{} is out of range; use 1 to 4096 (MiB)",
                r.memory_limit_mib
            ),
        ));
    }
    if r.instances == 0 || r.instances > 256 {
        return Err(ConfigError::field(
            "rule.instances",
            format!("{} is out of range; use 1 to 256", r.instances),
        ));
    }
    if r.batch_deadline_ms == 0 {
        return Err(ConfigError::field(
            "rule.batch_deadline_ms",
            "must be at least 1 (milliseconds)",
        ));
    }
    match &r.plugin {
        PluginLocation::Local(p) if p.as_os_str().is_empty() => {
            return Err(ConfigError::field(
                "rule.plugin",
                "is empty; give the path of the rule's .wasm file, s3://bucket/key.wasm or https://…",
            ));
        }
        PluginLocation::S3 { bucket, key } if bucket.is_empty() || key.is_empty() => {
            return Err(ConfigError::field(
                "rule.plugin",
                format!("{} names no object; write s3://bucket/key.wasm", r.plugin),
            ));
        }
        PluginLocation::Local(_) => {}
        PluginLocation::S3 { .. } | PluginLocation::Web(_) if r.sha256.is_none() => {
            return Err(ConfigError::field(
                "rule.sha256",
                format!(
                    "is required for a plugin fetched from {}: add `sha256 = \"…\"` to [rule] \
                     (`weir plugin publish` prints it; `sha256sum rule.wasm` computes it)",
                    r.plugin
                ),
            ));
        }
        PluginLocation::S3 { .. } | PluginLocation::Web(_) => {}
    }
    if let Some(d) = &r.sha256
        && (d.len() != 64 || !d.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(ConfigError::field(
            "rule.sha256",
            format!(
                "{d:?} is not a SHA-256 digest; give its 64 hex digits (`sha256sum rule.wasm`)"
            ),
        ));
    }
    if r.fetch_timeout_secs == 0 {
        return Err(ConfigError::field(
            "rule.fetch_timeout_secs",
            "must be at least 1 (seconds)",
        ));
    }
    Ok(())
}

/// `[sink]`: the kind with its path or URL, IAM, the stage fill, connections.
fn check_sink(config: &Config) -> Result<(), ConfigError> {
    match (&config.sink.kind, &config.sink.path, &config.sink.url) {
        (SinkKind::Sqlite, None, _) => {
            return Err(ConfigError::field(
                "sink.path",
                "missing; the sqlite sink needs the database file, e.g. `path = \"weir.db\"`",
            ));
        }
        (SinkKind::Sqlite, _, Some(_)) => {
            return Err(ConfigError::field(
                "sink.url",
                "the sqlite sink takes `path`, not `url`; remove `url`",
            ));
        }
        (SinkKind::Sqlite, Some(_), None) => {}
        (SinkKind::Postgres | SinkKind::Redshift, _, None) => {
            return Err(ConfigError::field(
                "sink.url",
                "missing; give the connection URL, e.g. `url = \"${WEIR_REDSHIFT_URL}\"` with \
                 WEIR_REDSHIFT_URL=postgres://user:password@host:5439/database",
            ));
        }
        (SinkKind::Postgres | SinkKind::Redshift, Some(_), _) => {
            return Err(ConfigError::field(
                "sink.path",
                "only the sqlite sink takes `path`; remove it",
            ));
        }
        (SinkKind::Postgres | SinkKind::Redshift, None, Some(url)) => {
            // Without the `postgres` feature the kind is refused by `check_features`.
            #[cfg(not(feature = "postgres"))]
            let _ = url;
            #[cfg(feature = "postgres")]
            if let Err(e) = url.parse::<tokio_postgres::Config>() {
                return Err(ConfigError::field(
                    "sink.url",
                    format!(
                        "not a valid connection URL ({e}); write postgres://user:password@host:port/database"
                    ),
                ));
            }
            check_identifier(&config.sink.schema)
                .map_err(|m| ConfigError::field("sink.schema", m))?;
        }
    }
    if let Some(iam) = &config.sink.iam {
        if config.sink.kind != SinkKind::Redshift {
            return Err(ConfigError::field(
                "sink.iam",
                "IAM credentials are for `kind = \"redshift\"` only",
            ));
        }
        if iam.cluster_id.is_some() == iam.workgroup.is_some() {
            return Err(ConfigError::field(
                "sink.iam",
                "give exactly one of `cluster_id` (provisioned) or `workgroup` (Serverless)",
            ));
        }
        if !(900..=3600).contains(&iam.duration_secs) {
            return Err(ConfigError::field(
                "sink.iam.duration_secs",
                "must be from 900 to 3600 (seconds)",
            ));
        }
    }
    if matches!(config.sink.stage_fill, StageFillConfig::Copy { .. })
        && config.sink.kind != SinkKind::Redshift
    {
        return Err(ConfigError::field(
            "sink.stage_fill",
            "`kind = \"copy\"` needs Redshift (`[sink] kind = \"redshift\"`); PostgreSQL cannot COPY from S3",
        ));
    }
    if matches!(config.sink.stage_fill, StageFillConfig::Binary)
        && config.sink.kind != SinkKind::Postgres
    {
        return Err(ConfigError::field(
            "sink.stage_fill",
            "`kind = \"binary\"` needs PostgreSQL (`[sink] kind = \"postgres\"`); Redshift has no `COPY FROM \
             STDIN`: use `kind = \"insert\"` or `kind = \"copy\"` (from S3)",
        ));
    }
    if config.sink.connections == 0 {
        return Err(ConfigError::field("sink.connections", "must be at least 1"));
    }
    check_group_commit(config)
}

/// `[sink.group_commit]`: sizes of at least one, and a lease that outlives two intervals.
fn check_group_commit(config: &Config) -> Result<(), ConfigError> {
    let g = &config.sink.group_commit;
    check_coordinator(config)?;
    if !g.on() {
        return Ok(());
    }
    if g.interval_ms == 0 || g.max_batches == 0 || g.max_bytes == 0 {
        return Err(ConfigError::field(
            "sink.group_commit",
            "interval_ms, max_batches and max_bytes must be at least 1",
        ));
    }
    if g.lease_secs * 1000 <= 2 * g.interval_ms {
        return Err(ConfigError::field(
            "sink.group_commit.lease_secs",
            format!(
                "{} s must be more than twice interval_ms ({} ms), so that the loader renews its lease between merges",
                g.lease_secs, g.interval_ms
            ),
        ));
    }
    if let StagingConfig::S3 { bucket, .. } = &g.staging()
        && bucket.is_empty()
    {
        return Err(ConfigError::field(
            "sink.group_commit.staging.bucket",
            "empty; name the bucket staged batches go to",
        ));
    }
    Ok(())
}

/// `[coordinator]`: a coordinator of its own holds Kinesis shard leases and grouped commits' registry, so it
/// is only accepted where one of them is used.
fn check_coordinator(config: &Config) -> Result<(), ConfigError> {
    let used =
        config.sink.group_commit.on() || matches!(config.source, SourceConfig::Kinesis { .. });
    if !used && !matches!(config.coordinator, CoordinatorConfig::Sink) {
        return Err(ConfigError::field(
            "coordinator.kind",
            "a coordinator of its own holds Kinesis shard leases and the grouped commits' registry, and this \
             configuration has neither: set `[sink.group_commit] enabled = true`, or remove `[coordinator]`",
        ));
    }
    match &config.coordinator {
        CoordinatorConfig::Sink => {}
        CoordinatorConfig::Postgres { url, schema } => {
            if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
                return Err(ConfigError::field(
                    "coordinator.url",
                    "must be a `postgres://user:password@host:5432/db` URL",
                ));
            }
            check_identifier(schema).map_err(|m| ConfigError::field("coordinator.schema", m))?;
        }
        CoordinatorConfig::Dynamodb { table, .. } => {
            let valid = (3..=255).contains(&table.len())
                && table
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            if !valid {
                return Err(ConfigError::field(
                    "coordinator.table",
                    format!(
                        "`{table}` is not a DynamoDB table name: 3 to 255 letters, digits, `_`, `-` or `.`"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// One `[[sink.tables]]` entry (the `i`th) against the ones before it.
fn check_table(specs: &[TableSpec], i: usize, t: &TableConfig) -> Result<TableSpec, ConfigError> {
    let at = format!("sink.tables[{i}]");
    check_identifier(&t.name).map_err(|m| ConfigError::field(format!("{at}.name"), m))?;
    if specs.iter().any(|s| s.name == t.name) {
        return Err(ConfigError::field(
            format!("{at}.name"),
            format!("table `{}` is declared twice", t.name),
        ));
    }
    if t.columns.is_empty() {
        return Err(ConfigError::field(
            format!("{at}.columns"),
            "no columns; declare `columns = { name = \"type\" }`",
        ));
    }
    let columns = check_columns(&at, t)?;
    check_keys(&at, t, &columns)?;
    check_version(&at, t, &columns)?;
    let mut spec = TableSpec::new(t.name.clone(), columns, t.primary_key.clone())
        .with_redshift_keys(t.distkey.clone(), t.sortkey.clone());
    spec.version_column = t.version_column.clone();
    check_encodings(&at, t, &mut spec)?;
    Ok(spec)
}

/// The declared columns, each name an identifier and each type one weir knows.
fn check_columns(at: &str, t: &TableConfig) -> Result<Vec<(String, ColumnType)>, ConfigError> {
    let mut columns = Vec::new();
    for (name, ty) in &t.columns {
        let field = format!("{at}.columns.{name}");
        check_identifier(name).map_err(|m| ConfigError::field(&field, m))?;
        let ty = ty.as_str().ok_or_else(|| {
            ConfigError::field(&field, "the type must be a string such as \"varchar(36)\"")
        })?;
        let ty: ColumnType = ty
            .parse()
            .map_err(|m: String| ConfigError::field(&field, m))?;
        columns.push((name.clone(), ty));
    }
    Ok(columns)
}

/// The primary key, distkey and sortkey name declared columns.
fn check_keys(
    at: &str,
    t: &TableConfig,
    columns: &[(String, ColumnType)],
) -> Result<(), ConfigError> {
    if t.primary_key.is_empty() {
        return Err(ConfigError::field(
            format!("{at}.primary_key"),
            "empty; name the columns that identify a row, e.g. `primary_key = [\"id\"]`",
        ));
    }
    for key in &t.primary_key {
        if !columns.iter().any(|(c, _)| c == key) {
            return Err(ConfigError::field(
                format!("{at}.primary_key"),
                format!(
                    "`{key}` is not a declared column of `{}`; add it to `columns` or fix the name",
                    t.name
                ),
            ));
        }
    }
    let keys = t.distkey.iter().map(|k| ("distkey", k));
    for (field, key) in keys.chain(t.sortkey.iter().map(|k| ("sortkey", k))) {
        if !columns.iter().any(|(c, _)| c == key) {
            return Err(ConfigError::field(
                format!("{at}.{field}"),
                format!("`{key}` is not a declared column of `{}`", t.name),
            ));
        }
    }
    Ok(())
}

/// The version column is declared, can be ordered, and is not part of the key.
fn check_version(
    at: &str,
    t: &TableConfig,
    columns: &[(String, ColumnType)],
) -> Result<(), ConfigError> {
    if let Some(v) = &t.version_column {
        let field = format!("{at}.version_column");
        match columns.iter().find(|(c, _)| c == v) {
            None => {
                return Err(ConfigError::field(
                    field,
                    format!(
                        "`{v}` is not a declared column of `{}`; add it to `columns` or fix the name",
                        t.name
                    ),
                ));
            }
            Some((_, ColumnType::Super | ColumnType::Boolean)) => {
                return Err(ConfigError::field(
                    field,
                    format!(
                        "`{v}` cannot order versions (super and boolean columns do not); use a timestamp, \
                         integer, decimal or varchar column"
                    ),
                ));
            }
            Some(_) if t.primary_key.contains(v) => {
                return Err(ConfigError::field(
                    field,
                    format!("`{v}` is part of the primary key; a version column must not be"),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Every column encoding names a declared column and one of Redshift's encodings.
fn check_encodings(at: &str, t: &TableConfig, spec: &mut TableSpec) -> Result<(), ConfigError> {
    const ENCODINGS: [&str; 13] = [
        "raw",
        "az64",
        "bytedict",
        "delta",
        "delta32k",
        "lzo",
        "mostly8",
        "mostly16",
        "mostly32",
        "runlength",
        "text255",
        "text32k",
        "zstd",
    ];
    for (column, encoding) in &t.encode {
        let field = format!("{at}.encode.{column}");
        if spec.column_index(column).is_none() {
            return Err(ConfigError::field(
                field,
                format!("`{column}` is not a declared column of `{}`", t.name),
            ));
        }
        if !ENCODINGS.contains(&encoding.as_str()) {
            return Err(ConfigError::field(
                field,
                format!(
                    "unknown encoding `{encoding}`; use one of {}",
                    ENCODINGS.join(", ")
                ),
            ));
        }
        spec.encode.push((column.clone(), encoding.clone()));
    }
    Ok(())
}

/// The message for a backend this build of weir was compiled without.
pub fn not_compiled(field: &str, kind: &str, feature: &str) -> String {
    format!(
        "`{field} = \"{kind}\"` is not in this build of weir: rebuild with `cargo build --release --features {feature}` \
         (or the default features, which include every backend)"
    )
}

/// Every backend the configuration names is compiled in; otherwise the field, and the feature to enable.
fn check_features(config: &Config) -> Result<(), ConfigError> {
    let missing = |field: &str, kind: &str, feature: &str| {
        Err(ConfigError::field(
            field,
            not_compiled(field, kind, feature),
        ))
    };
    match &config.source {
        SourceConfig::Sqs { .. } if !cfg!(feature = "sqs") => {
            return missing("source.kind", "sqs", "sqs");
        }
        SourceConfig::Kinesis { .. } if !cfg!(feature = "kinesis") => {
            return missing("source.kind", "kinesis", "kinesis");
        }
        SourceConfig::Http(_) if !cfg!(feature = "http") => {
            return missing("source.kind", "http", "http");
        }
        SourceConfig::S3 { .. } if !cfg!(feature = "s3-source") => {
            return missing("source.kind", "s3", "s3-source");
        }
        _ => {}
    }
    match &config.raw {
        RawConfig::Local {
            format: crate::raw::RawFormat::Parquet,
            ..
        }
        | RawConfig::S3 {
            format: crate::raw::RawFormat::Parquet,
            ..
        } if !cfg!(feature = "parquet") => {
            return missing("raw.format", "parquet", "parquet");
        }
        _ => {}
    }
    match &config.raw {
        RawConfig::S3 { .. } if !cfg!(feature = "s3") => return missing("raw.kind", "s3", "s3"),
        RawConfig::Mongodb { .. } if !cfg!(feature = "mongodb") => {
            return missing("raw.kind", "mongodb", "mongodb");
        }
        _ => {}
    }
    if let CoordinatorConfig::Dynamodb { .. } = config.coordinator
        && !cfg!(feature = "dynamodb")
    {
        return missing("coordinator.kind", "dynamodb", "dynamodb");
    }
    if let CoordinatorConfig::Postgres { .. } = config.coordinator
        && !cfg!(feature = "postgres")
    {
        return missing("coordinator.kind", "postgres", "postgres");
    }
    match config.sink.kind {
        SinkKind::Postgres if !cfg!(feature = "postgres") => {
            return missing("sink.kind", "postgres", "postgres");
        }
        SinkKind::Redshift if !cfg!(feature = "postgres") => {
            return missing("sink.kind", "redshift", "postgres");
        }
        _ => {}
    }
    match &config.rule.plugin {
        PluginLocation::S3 { .. } if !cfg!(feature = "s3") => {
            return Err(ConfigError::field(
                "rule.plugin",
                not_compiled("rule.plugin", "s3://…", "s3"),
            ));
        }
        PluginLocation::Web(_) if !cfg!(feature = "https-plugins") => {
            return Err(ConfigError::field(
                "rule.plugin",
                not_compiled("rule.plugin", "https://…", "https-plugins"),
            ));
        }
        _ => {}
    }
    if config.sink.iam.is_some() && !cfg!(feature = "redshift-iam") {
        return Err(ConfigError::field(
            "sink.iam",
            not_compiled("sink.iam", "…", "redshift-iam"),
        ));
    }
    if matches!(config.sink.stage_fill, StageFillConfig::Copy { .. }) && !cfg!(feature = "s3") {
        return Err(ConfigError::field(
            "sink.stage_fill",
            not_compiled("sink.stage_fill", "copy", "s3"),
        ));
    }
    if matches!(config.sink.group_commit.staging(), StagingConfig::S3 { .. })
        && !cfg!(feature = "s3")
    {
        return Err(ConfigError::field(
            "sink.group_commit.staging.kind",
            not_compiled("sink.group_commit.staging.kind", "s3", "s3"),
        ));
    }
    if config
        .rule
        .store
        .as_deref()
        .is_some_and(|s| s.starts_with("s3://"))
        && !cfg!(feature = "s3")
    {
        return Err(ConfigError::field(
            "rule.store",
            not_compiled("rule.store", "s3://…", "s3"),
        ));
    }
    Ok(())
}
