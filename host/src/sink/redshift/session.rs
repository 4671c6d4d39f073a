//! The session with the warehouse: connecting (TLS, IAM credentials), one bounded call at a time, and what
//! an error means (by SQLSTATE and error kind, never by message text).

use super::*;

pub(super) fn classify(e: tokio_postgres::Error) -> SinkError {
    let message = match e.as_db_error() {
        Some(d) => format!("{}: {}", d.code().code(), d.message()),
        None => {
            // The causes carry the useful part (a refused certificate, a reset connection).
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            text
        }
    };
    match class_of(&e) {
        ErrorClass::Transient => SinkError::Transient(message),
        ErrorClass::Data => SinkError::Data(message),
        ErrorClass::Tls => SinkError::Permanent(format!(
            "{message} (check the host name in sink.url and sink.tls_ca_file)"
        )),
        ErrorClass::Permanent => SinkError::Permanent(message),
    }
}

/// What an error from the database or the client means for a retry, decided by SQLSTATE and error kind only
/// (never by words in a message a user's value could contain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ErrorClass {
    /// Connection loss, a server going away, a serialization failure or deadlock: retry.
    Transient,
    /// Class 22 (data exception) or 23 (integrity): a value the database refuses; isolated and dead-lettered.
    Data,
    /// The server's certificate was refused: fix the configuration.
    Tls,
    /// Anything else.
    Permanent,
}

pub(super) fn class_of(e: &tokio_postgres::Error) -> ErrorClass {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        // Redshift reports a serializable isolation violation as XX000 with its own error number first.
        let redshift_1023 = code == "XX000" && db.message().trim_start().starts_with("1023");
        return match code {
            "40001" | "40P01" => ErrorClass::Transient,
            c if c.starts_with("08") => ErrorClass::Transient,
            "57P01" | "57P02" | "57P03" | "53300" => ErrorClass::Transient,
            _ if redshift_1023 => ErrorClass::Transient,
            c if c.starts_with("22") || c.starts_with("23") => ErrorClass::Data,
            _ => ErrorClass::Permanent,
        };
    }
    if e.is_closed() {
        return ErrorClass::Transient;
    }
    // The error's causes, by type: I/O (a reset, refused or timed-out connection) is worth retrying; a TLS
    // certificate error is not.
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            let tls = io
                .get_ref()
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
            return if tls {
                ErrorClass::Tls
            } else {
                ErrorClass::Transient
            };
        }
        if cause.downcast_ref::<rustls::Error>().is_some() {
            return ErrorClass::Tls;
        }
        source = cause.source();
    }
    ErrorClass::Permanent
}

/// Like [`classify`], for statements whose integrity errors can only come from another worker writing the
/// same rows at the same moment (the merge of a deduplicated stage, weir's own ledger and dead letters): a
/// unique violation there is a conflict to retry, never a value to dead-letter.
pub(super) fn classify_conflict(e: tokio_postgres::Error) -> SinkError {
    match classify(e) {
        SinkError::Data(m) if m.starts_with("23505") => SinkError::Transient(format!(
            "{m} (a concurrent writer of the same keys; retrying)"
        )),
        other => other,
    }
}

/// `Some(warning)` when a connection without TLS goes to a host other than loopback or a Unix socket (with
/// `sslmode=prefer`, the default, or `disable`): the password and every row would cross the network in clear.
pub(super) fn plaintext_warning(config: &tokio_postgres::Config) -> Option<String> {
    use tokio_postgres::config::Host;
    let remote: Vec<String> = config
        .get_hosts()
        .iter()
        .filter_map(|h| match h {
            Host::Tcp(name) => {
                let loopback = name == "localhost"
                    || name
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback());
                (!loopback).then(|| name.clone())
            }
            Host::Unix(_) => None,
        })
        .collect();
    (!remote.is_empty()).then(|| {
        format!(
            "sink.url: connections to {} run WITHOUT TLS (sslmode is not `require`): add `?sslmode=require` to \
             the URL (and sink.tls_ca_file for a private CA)",
            remote.join(", ")
        )
    })
}

/// Every statement weir sends passes through here: `WEIR_LOG=weir::sql=trace` logs each one.
pub(super) fn traced<T: AsRef<str>>(statement: T) -> T {
    tracing::trace!(target: "weir::sql", sql = statement.as_ref());
    statement
}

impl RedshiftSink {
    /// Runs one read query with text parameters on the session.
    pub(super) async fn read(
        &self,
        sql: String,
        params: Vec<(String, Type)>,
    ) -> Result<Vec<tokio_postgres::Row>, SinkError> {
        let mut guard = self.session().await?;
        let conn = guard.as_mut().expect("connected");
        let result = self
            .bounded("database call", async {
                let refs: Vec<(&(dyn tokio_postgres::types::ToSql + Sync), Type)> = params
                    .iter()
                    .map(|(v, t)| (v as &(dyn tokio_postgres::types::ToSql + Sync), t.clone()))
                    .collect();
                conn.client
                    .query_typed(traced(&sql), &refs)
                    .await
                    .map_err(classify)
            })
            .await;
        Self::settle(&mut guard, result)
    }

    /// A sink for `url` (`postgres://user:password@host:port/database[?sslmode=…]`); connects lazily.
    ///
    /// TLS (rustls, certificate and hostname verified against the public web roots plus
    /// `options.tls_ca_file`, a PEM bundle) is used with `sslmode=require`, and by default for Redshift;
    /// `sslmode=disable` turns it off. For PostgreSQL without `sslmode`, connections are plain.
    pub fn new(url: &str, options: RedshiftOptions) -> Result<Self, SinkError> {
        use tokio_postgres::config::SslMode;
        let mut config = tokio_postgres::Config::from_str(url).map_err(|e| {
            SinkError::Permanent(format!("sink.url is not a valid connection URL: {e}"))
        })?;
        let tls = match config.get_ssl_mode() {
            SslMode::Disable => false,
            SslMode::Require => true,
            _ => options.redshift,
        };
        // A dead peer is noticed by TCP itself too, not only by the call timeouts.
        config
            .connect_timeout(options.connect_timeout)
            .keepalives(true)
            .keepalives_idle(std::time::Duration::from_secs(30))
            .keepalives_interval(std::time::Duration::from_secs(10))
            .keepalives_retries(3)
            .tcp_user_timeout(
                options
                    .call_timeout
                    .min(std::time::Duration::from_secs(120)),
            );
        let tls = if tls {
            config.ssl_mode(SslMode::Require);
            Some(tls_connector(options.tls_ca_file.as_deref())?)
        } else {
            None
        };
        if tls.is_none()
            && let Some(warning) = plaintext_warning(&config)
        {
            tracing::warn!("{warning}");
        }
        Ok(RedshiftSink {
            config,
            tls,
            schema: options.schema,
            redshift: options.redshift,
            pool: (0..options.connections.max(1))
                .map(|_| Mutex::new(None))
                .collect(),
            tables: std::sync::OnceLock::new(),
            iam: options.iam,
            stage_fill: options.stage_fill,
            aws: options.aws,
            merge: options.merge,
            #[cfg(feature = "aws")]
            sdk: tokio::sync::OnceCell::new(),
            connect_timeout: options.connect_timeout,
            call_timeout: options.call_timeout,
            in_doubt: crate::sink::InDoubt::default(),
        })
    }

    /// Whether stages are filled by binary `COPY FROM STDIN` (PostgreSQL only; the `postgres` kind's default).
    pub(super) fn binary_fill(&self) -> bool {
        !self.redshift
            && matches!(
                self.stage_fill,
                StageFillConfig::Auto | StageFillConfig::Binary
            )
    }

    /// The SQL of one declared table for this sink's database.
    pub(super) fn table_sql(&self, spec: &TableSpec) -> TableSql {
        TableSql::new(&self.schema, spec)
            .comparing(self.key_equality())
            .on_postgres(!self.redshift)
    }

    /// How this sink's database compares key values.
    pub(super) fn key_equality(&self) -> KeyEquality {
        if self.redshift {
            KeyEquality::Redshift
        } else {
            KeyEquality::Standard
        }
    }

    /// A warning when the sink's sessions run without TLS to a host that is not this machine.
    pub fn plaintext_warning(&self) -> Option<String> {
        if self.tls.is_some() {
            return None;
        }
        plaintext_warning(&self.config)
    }

    #[cfg(feature = "aws")]
    pub(super) async fn sdk(&self) -> &aws_config::SdkConfig {
        self.sdk.get_or_init(|| self.aws.load()).await
    }

    /// Temporary database credentials from IAM (`GetClusterCredentials` or Serverless `GetCredentials`).
    #[cfg(feature = "redshift-iam")]
    pub(super) async fn iam_credentials(
        &self,
        iam: &IamConfig,
    ) -> Result<(String, String), SinkError> {
        let db = self.config.get_dbname().unwrap_or("dev").to_string();
        let duration = iam.duration_secs as i32;
        let sdk = self.sdk().await;
        let (user, password) = if let Some(cluster) = &iam.cluster_id {
            let user = iam
                .db_user
                .clone()
                .or_else(|| self.config.get_user().map(str::to_string))
                .ok_or_else(|| {
                    SinkError::Permanent("sink.iam: set `db_user` or a user in sink.url".into())
                })?;
            let out = aws_sdk_redshift::Client::new(sdk)
                .get_cluster_credentials()
                .cluster_identifier(cluster)
                .db_user(user)
                .db_name(db)
                .duration_seconds(duration)
                .auto_create(iam.auto_create)
                .send()
                .await
                .map_err(|e| aws_error("GetClusterCredentials", e))?;
            (
                out.db_user().map(str::to_string),
                out.db_password().map(str::to_string),
            )
        } else {
            let workgroup = iam.workgroup.as_deref().expect("checked by config");
            let out = aws_sdk_redshiftserverless::Client::new(sdk)
                .get_credentials()
                .workgroup_name(workgroup)
                .db_name(db)
                .duration_seconds(duration)
                .send()
                .await
                .map_err(|e| aws_error("GetCredentials", e))?;
            (
                out.db_user().map(str::to_string),
                out.db_password().map(str::to_string),
            )
        };
        match (user, password) {
            (Some(u), Some(p)) => Ok((u, p)),
            _ => Err(SinkError::Permanent(
                "IAM returned no database user or password".into(),
            )),
        }
    }

    pub(super) async fn connect(&self) -> Result<Conn, SinkError> {
        // With IAM, fresh temporary credentials for every new connection.
        let mut config = self.config.clone();
        #[cfg(feature = "redshift-iam")]
        if let Some(iam) = &self.iam {
            let (user, password) = self.iam_credentials(iam).await?;
            config.user(&user).password(password);
        }
        #[cfg(not(feature = "redshift-iam"))]
        if self.iam.is_some() {
            return Err(SinkError::Permanent(crate::config::not_compiled(
                "sink.iam",
                "…",
                "redshift-iam",
            )));
        }
        let closed =
            |e: tokio_postgres::Error| tracing::warn!(error = %e, "database connection closed");
        let client = match &self.tls {
            Some(tls) => {
                let (client, connection) = config.connect(tls.clone()).await.map_err(classify)?;
                tokio::spawn(async move { connection.await.map_err(closed) });
                client
            }
            None => {
                let (client, connection) = config.connect(NoTls).await.map_err(classify)?;
                tokio::spawn(async move { connection.await.map_err(closed) });
                client
            }
        };
        Ok(Conn {
            client,
            staged: HashSet::new(),
            analyzed: HashSet::new(),
            prepared: HashMap::new(),
        })
    }

    /// The session, connected when needed.
    pub(super) async fn session(
        &self,
    ) -> Result<tokio::sync::MutexGuard<'_, Option<Conn>>, SinkError> {
        // A free session if there is one, else wait for the first.
        let free = self.pool.iter().find_map(|slot| slot.try_lock().ok());
        let mut guard = match free {
            Some(g) => g,
            None => self.pool[0].lock().await,
        };
        if guard.as_ref().is_none_or(|c| c.client.is_closed()) {
            let connected = tokio::time::timeout(self.connect_timeout, self.connect())
                .await
                .map_err(|_| {
                    SinkError::Transient(format!(
                        "no database connection within {} s (sink.connect_timeout_secs)",
                        self.connect_timeout.as_secs()
                    ))
                })??;
            *guard = Some(connected);
        }
        Ok(guard)
    }

    /// Runs one call on a session under `call_timeout`: past it, the session is dropped (whatever state
    /// it was in) and the call fails as transient, so a black-holed connection is retried on a new one.
    pub(super) async fn bounded<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = Result<T, SinkError>>,
    ) -> Result<T, SinkError> {
        match tokio::time::timeout(self.call_timeout, call).await {
            Ok(result) => {
                crate::admin::set_sink_reachable(
                    !result.as_ref().is_err_and(SinkError::is_transient),
                );
                result
            }
            Err(_) => {
                crate::admin::set_sink_reachable(false);
                Err(SinkError::Transient(format!(
                    "{what}: no answer from the database within {} s (sink.call_timeout_secs); reconnecting",
                    self.call_timeout.as_secs()
                )))
            }
        }
    }

    /// After a transient error the session is dropped, so the next attempt reconnects.
    pub(super) fn settle<T>(
        guard: &mut Option<Conn>,
        result: Result<T, SinkError>,
    ) -> Result<T, SinkError> {
        if result.as_ref().is_err_and(SinkError::is_transient) {
            *guard = None;
        }
        result
    }

    /// `None` when the table does not exist, else the declared columns it lacks. A column of another type
    /// is an error.
    pub(super) async fn check_table(
        &self,
        client: &Client,
        spec: &TableSpec,
    ) -> Result<Option<Vec<(String, ColumnType)>>, SinkError> {
        let rows = client
            .query_typed(
                traced("SELECT column_name, data_type, character_maximum_length, numeric_precision, numeric_scale, domain_name \
                 FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2"),
                &[(&self.schema, Type::VARCHAR), (&spec.name, Type::VARCHAR)],
            )
            .await
            .map_err(classify)?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut missing = Vec::new();
        for (column, ty) in &spec.columns {
            let Some(row) = rows.iter().find(|r| r.get::<_, String>(0) == *column) else {
                if spec.is_key(column) {
                    return Err(crate::sink::key_column_missing(spec, column));
                }
                missing.push((column.clone(), *ty));
                continue;
            };
            let data_type: String = row.get(1);
            let len: Option<i32> = row.get(2);
            let precision: Option<i32> = row.get(3);
            let scale: Option<i32> = row.get(4);
            let domain: Option<String> = row.get(5);
            let ok = match ty {
                ColumnType::Varchar(n) => {
                    data_type == "character varying" && len == Some(*n as i32)
                }
                ColumnType::Decimal {
                    precision: p,
                    scale: s,
                } => {
                    data_type == "numeric"
                        && precision == Some(*p as i32)
                        && scale == Some(*s as i32)
                }
                ColumnType::SmallInt => data_type == "smallint",
                ColumnType::Integer => data_type == "integer",
                ColumnType::BigInt => data_type == "bigint",
                ColumnType::Real => data_type == "real",
                ColumnType::Double => data_type == "double precision",
                ColumnType::Boolean => data_type == "boolean",
                ColumnType::Timestamp => data_type == "timestamp without time zone",
                ColumnType::TimestampTz => data_type == "timestamp with time zone",
                ColumnType::Super => {
                    data_type.eq_ignore_ascii_case("super") || domain.as_deref() == Some("super")
                }
            };
            if !ok {
                let have = match (len, precision, scale) {
                    (Some(l), _, _) => format!("{data_type}({l})"),
                    (_, Some(p), Some(s)) if data_type == "numeric" => format!("numeric({p},{s})"),
                    _ => data_type.clone(),
                };
                return Err(SinkError::Schema(format!(
                    "table {}, column {column}: the database has {have}, the config declares {ty}",
                    spec.name
                )));
            }
        }
        Ok(Some(missing))
    }
}

/// A rustls connector trusting the public web roots (Redshift's certificates chain to them) and the
/// certificates of `ca_file`.
pub(super) fn tls_connector(
    ca_file: Option<&std::path::Path>,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, SinkError> {
    let config =
        crate::tls::client_config(ca_file, "sink.tls_ca_file").map_err(SinkError::Permanent)?;
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}
