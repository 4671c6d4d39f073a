//! SQL text: column types, DDL, bind parameters and the statements of one table, portable between Redshift
//! and PostgreSQL except where the `kind` says otherwise.

use super::*;

/// The SQL type of a declared column.
pub fn sql_type(ty: ColumnType) -> String {
    match ty {
        ColumnType::Varchar(n) => format!("VARCHAR({n})"),
        ColumnType::Decimal { precision, scale } => format!("DECIMAL({precision},{scale})"),
        ColumnType::Double => "DOUBLE PRECISION".into(),
        ColumnType::SmallInt => "SMALLINT".into(),
        ColumnType::Integer => "INTEGER".into(),
        ColumnType::BigInt => "BIGINT".into(),
        ColumnType::Real => "REAL".into(),
        ColumnType::Boolean => "BOOLEAN".into(),
        ColumnType::Timestamp => "TIMESTAMP".into(),
        ColumnType::TimestampTz => "TIMESTAMPTZ".into(),
        ColumnType::Super => "SUPER".into(),
    }
}

/// A bound value and its wire type.
pub(super) enum Bind {
    Text(Option<String>),
    Int(Option<i64>),
    Float(Option<f64>),
    Bool(Option<bool>),
}

impl Bind {
    pub(super) fn param(&self) -> (&(dyn ToSql + Sync), Type) {
        match self {
            Bind::Text(v) => (v, Type::VARCHAR),
            Bind::Int(v) => (v, Type::INT8),
            Bind::Float(v) => (v, Type::FLOAT8),
            Bind::Bool(v) => (v, Type::BOOL),
        }
    }

    pub(super) fn size(&self) -> usize {
        match self {
            Bind::Text(Some(s)) => s.len() + 4,
            _ => 12,
        }
    }
}

/// The placeholder for a value of `ty` at `$n`, with the cast that makes the statement portable.
pub(super) fn placeholder(ty: ColumnType, n: usize) -> String {
    match ty {
        ColumnType::Super => format!("JSON_PARSE(${n})"),
        ColumnType::SmallInt | ColumnType::Integer | ColumnType::BigInt | ColumnType::Boolean => {
            format!("${n}")
        }
        ColumnType::Real | ColumnType::Double => format!("${n}"),
        other => format!("CAST(${n} AS {})", sql_type(other)),
    }
}

pub(super) fn bind(ty: ColumnType, cell: &Cell) -> Bind {
    match (ty, cell) {
        (ColumnType::SmallInt | ColumnType::Integer | ColumnType::BigInt, Cell::Int(i)) => {
            Bind::Int(Some(*i))
        }
        (ColumnType::SmallInt | ColumnType::Integer | ColumnType::BigInt, _) => Bind::Int(None),
        (ColumnType::Real | ColumnType::Double, Cell::Float(x)) => Bind::Float(Some(*x)),
        (ColumnType::Real | ColumnType::Double, _) => Bind::Float(None),
        (ColumnType::Boolean, Cell::Bool(b)) => Bind::Bool(Some(*b)),
        (ColumnType::Boolean, _) => Bind::Bool(None),
        (_, Cell::TimestampUs(us)) => Bind::Text(Some(sql_timestamp(*us))),
        (_, other) => Bind::Text(other.to_text()),
    }
}

/// `2026-11-21 10:15:30.000000+00`: a literal both databases cast to `TIMESTAMP` and `TIMESTAMPTZ` alike.
pub(super) fn sql_timestamp(us: i64) -> String {
    let iso = format_timestamp_us(us);
    format!("{}+00", iso.replace('T', " ").trim_end_matches('Z'))
}

/// SQL for one declared table.
pub(super) struct TableSql {
    pub(super) target: String,
    pub(super) stage: String,
    /// Grouped merges with the COPY fill: the temp table COPY loads every batch's rows into, before the latest
    /// row per key goes to `stage`.
    pub(super) copy_stage: String,
    /// Declared columns then lineage columns, quoted.
    pub(super) columns: Vec<String>,
    pub(super) types: Vec<ColumnType>,
    pub(super) key: Vec<usize>,
    /// The version column, if the table has one.
    pub(super) version: Option<usize>,
    /// How the database compares key values.
    pub(super) equality: KeyEquality,
    /// The `postgres` kind (PostgreSQL-only statements allowed), not Redshift.
    pub(super) postgres: bool,
}

impl TableSql {
    pub(super) fn new(schema: &str, spec: &TableSpec) -> Self {
        let mut columns: Vec<String> = spec.columns.iter().map(|(c, _)| quote(c)).collect();
        columns.extend(LINEAGE_COLUMNS.iter().map(|c| c.to_string()));
        let mut types: Vec<ColumnType> = spec.columns.iter().map(|(_, t)| *t).collect();
        types.extend(LINEAGE_TYPES);
        TableSql {
            target: format!("{}.{}", quote(schema), quote(&spec.name)),
            stage: quote(&format!("weir_stage_{}", spec.name)),
            copy_stage: quote(&format!("weir_copy_{}", spec.name)),
            columns,
            types,
            key: spec
                .primary_key
                .iter()
                .map(|k| spec.column_index(k).expect("declared"))
                .collect(),
            version: spec
                .version_column
                .as_deref()
                .and_then(|v| spec.column_index(v)),
            equality: KeyEquality::Standard,
            postgres: false,
        }
    }

    /// The same for the `postgres` kind (`true`) or Redshift.
    pub(super) fn on_postgres(mut self, postgres: bool) -> Self {
        self.postgres = postgres;
        self
    }

    /// Empties the stage before a fill. On PostgreSQL `TRUNCATE`: a temp table is never vacuumed, so a stage
    /// emptied by `DELETE` keeps every earlier batch's dead rows, and each fill, `ANALYZE` and merge scan of
    /// it reads more pages as the session goes on (measured: 39k records/s at the start of a 1,000,000-record
    /// load, 14k at its end). On Redshift `DELETE`: its `TRUNCATE` commits the transaction.
    pub(super) fn empty_stage(&self) -> String {
        if self.postgres {
            format!("TRUNCATE {}", self.stage)
        } else {
            format!("DELETE FROM {}", self.stage)
        }
    }

    /// The same for a sink whose key equality is `equality`.
    pub(super) fn comparing(mut self, equality: KeyEquality) -> Self {
        self.equality = equality;
        self
    }

    pub(super) fn create_stage(&self) -> String {
        format!("CREATE TEMP TABLE {} (LIKE {})", self.stage, self.target)
    }

    pub(super) fn create_copy_stage(&self) -> String {
        format!(
            "CREATE TEMP TABLE {} (LIKE {})",
            self.copy_stage, self.target
        )
    }

    /// From the copy stage into the stage, the latest row per key across the merged batches: the highest
    /// version first (NULL lowest), then the later batch in merge order (`order`: batch id → ordinal). Each
    /// worker's file holds one row per key already. Rows of batches missing from `order` are left out. Every
    /// row takes the merge's load time (`$1`), as the INSERT fill gives it.
    pub(super) fn rank_into_stage(&self, order: &str) -> String {
        let loaded_at = LINEAGE_COLUMNS[3];
        let batch = LINEAGE_COLUMNS[1];
        let kept: Vec<&String> = self.columns.iter().filter(|c| *c != loaded_at).collect();
        let inner: Vec<String> = kept.iter().map(|c| format!("c.{c}")).collect();
        let outer: Vec<String> = kept.iter().map(|c| c.to_string()).collect();
        let partition: Vec<String> = self
            .key
            .iter()
            .map(|k| format!("c.{}", self.columns[*k]))
            .collect();
        let mut order_by = Vec::new();
        if let Some(v) = self.version {
            order_by.push(format!("c.{} DESC NULLS LAST", self.columns[v]));
        }
        order_by.push("o.ordinal DESC".to_string());
        format!(
            "INSERT INTO {stage} ({outer}, {loaded_at}) SELECT {outer}, CAST($1 AS TIMESTAMPTZ) FROM \
             (SELECT {inner}, ROW_NUMBER() OVER (PARTITION BY {partition} ORDER BY {order_by}) AS weir_rank \
             FROM {copy} c JOIN {order} o ON c.{batch} = o.batch_id) ranked WHERE weir_rank = 1",
            stage = self.stage,
            outer = outer.join(", "),
            inner = inner.join(", "),
            partition = partition.join(", "),
            order_by = order_by.join(", "),
            copy = self.copy_stage,
        )
    }

    pub(super) fn insert_stage(&self, rows: usize) -> String {
        let width = self.columns.len();
        let values: Vec<String> = (0..rows)
            .map(|r| {
                let cells: Vec<String> = self
                    .types
                    .iter()
                    .enumerate()
                    .map(|(c, ty)| placeholder(*ty, r * width + c + 1))
                    .collect();
                format!("({})", cells.join(", "))
            })
            .collect();
        format!(
            "INSERT INTO {} ({}) VALUES {}",
            self.stage,
            self.columns.join(", "),
            values.join(", ")
        )
    }

    /// `target.k = stage.k AND …` over the primary key.
    pub(super) fn key_match(&self) -> String {
        let on: Vec<String> = self
            .key
            .iter()
            .map(|k| {
                format!(
                    "{t}.{c} = {s}.{c}",
                    t = self.target,
                    s = self.stage,
                    c = self.columns[*k]
                )
            })
            .collect();
        on.join(" AND ")
    }

    /// `MERGE INTO target USING stage …`: one statement instead of delete + insert (PostgreSQL ≥ 15 and
    /// Redshift; the stage is a table and deduplicated, as Redshift requires).
    pub(super) fn merge_statement(&self) -> String {
        let on = self.key_match();
        let set: Vec<String> = (0..self.columns.len())
            .filter(|i| !self.key.contains(i))
            .map(|i| format!("{c} = {s}.{c}", c = self.columns[i], s = self.stage))
            .collect();
        let values: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("{}.{c}", self.stage))
            .collect();
        format!(
            "MERGE INTO {t} USING {s} ON {on} WHEN MATCHED THEN UPDATE SET {set} \
             WHEN NOT MATCHED THEN INSERT ({cols}) VALUES ({values})",
            t = self.target,
            s = self.stage,
            on = on,
            set = set.join(", "),
            cols = self.columns.join(", "),
            values = values.join(", ")
        )
    }

    /// A redrive's stage rows that must not replace the stored row of their key leave the stage first (see
    /// [`crate::sink::Redrive`]): where another record's row is held, written by a batch that did not commit
    /// before the record's original batch (`$1`) and is not of this run (`$2`, a `LIKE` pattern). `None` for
    /// a versioned table: its version guard decides.
    pub(super) fn redrive_guard(&self, schema: &str) -> Option<String> {
        if self.version.is_some() {
            return None;
        }
        let (t, st, s) = (&self.target, &self.stage, quote(schema));
        let (record, batch) = (LINEAGE_COLUMNS[0], LINEAGE_COLUMNS[1]);
        Some(format!(
            "DELETE FROM {st} USING {t}, {s}.weir_batches holder, {s}.weir_batches original \
             WHERE {on} AND {t}.{record} <> {st}.{record} AND {t}.{batch} NOT LIKE $2 \
             AND holder.batch_id = {t}.{batch} AND original.batch_id = $1 \
             AND holder.loaded_at >= original.loaded_at",
            on = self.key_match()
        ))
    }

    pub(super) fn merge(&self) -> [String; 2] {
        let on = self.key_match();
        let cols = self.columns.join(", ");
        let Some(v) = self.version else {
            return [
                format!(
                    "DELETE FROM {} USING {} WHERE {on}",
                    self.target, self.stage
                ),
                format!(
                    "INSERT INTO {} ({cols}) SELECT {cols} FROM {}",
                    self.target, self.stage
                ),
            ];
        };
        // Version-guarded: a stored row goes only for a version at least as high (a NULL stored version always
        // goes, a NULL staged one never replaces a value); staged rows are inserted only where no row remains.
        let (t, s, c) = (&self.target, &self.stage, &self.columns[v]);
        [
            format!(
                "DELETE FROM {t} USING {s} WHERE {on} AND ({s}.{c} >= {t}.{c} OR {t}.{c} IS NULL)"
            ),
            format!(
                "INSERT INTO {t} ({cols}) SELECT {cols} FROM {s} WHERE NOT EXISTS (SELECT 1 FROM {t} WHERE {on})"
            ),
        ]
    }
}

/// DDL of weir's own tables.
pub fn weir_tables_ddl(schema: &str) -> Vec<String> {
    let s = quote(schema);
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {s}.weir_checkpoints (source VARCHAR(256) NOT NULL, \"partition\" VARCHAR(256) NOT NULL, \
             position VARCHAR(256) NOT NULL, owner VARCHAR(256), lease_expires_at TIMESTAMPTZ, \
             updated_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (source, \"partition\"))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {s}.weir_batches (batch_id VARCHAR(1024) NOT NULL, source VARCHAR(256) NOT NULL, \
             \"partition\" VARCHAR(256) NOT NULL, first_position VARCHAR(256) NOT NULL, last_position VARCHAR(256) NOT NULL, \
             raw_ref VARCHAR(1024) NOT NULL, rule_digest VARCHAR(64) NOT NULL, records_in INTEGER NOT NULL, \
             emitted INTEGER NOT NULL, dropped INTEGER NOT NULL, rejected INTEGER NOT NULL, rows_out INTEGER NOT NULL, \
             drop_reasons VARCHAR(65535) NOT NULL, loaded_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (batch_id))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {s}.weir_dead_letters (record_id VARCHAR(1024) NOT NULL, batch_id VARCHAR(1024) NOT NULL, \
             raw_ref VARCHAR(1024) NOT NULL, stage VARCHAR(32) NOT NULL, reason VARCHAR(65535) NOT NULL, \
             payload_preview VARCHAR(1024) NOT NULL, at TIMESTAMPTZ NOT NULL, PRIMARY KEY (record_id))"
        ),
    ]
}

/// DDL of a declared table, with lineage columns; `DISTKEY`/`SORTKEY` options only for Redshift.
pub fn table_ddl(schema: &str, spec: &TableSpec, redshift: bool) -> String {
    let mut cols: Vec<String> = spec
        .columns
        .iter()
        .map(|(c, ty)| {
            let not_null = if spec.is_key(c) { " NOT NULL" } else { "" };
            let encode = match spec.encode.iter().find(|(name, _)| name == c) {
                Some((_, e)) if redshift => format!(" ENCODE {e}"),
                _ => String::new(),
            };
            format!("{} {}{not_null}{encode}", quote(c), sql_type(*ty))
        })
        .collect();
    cols.extend(lineage_ddl(sql_type));
    let key: Vec<String> = spec.primary_key.iter().map(|k| quote(k)).collect();
    let mut options = String::new();
    if redshift {
        if let Some(d) = &spec.distkey {
            options.push_str(&format!(" DISTSTYLE KEY DISTKEY ({})", quote(d)));
        }
        if !spec.sortkey.is_empty() {
            let cols: Vec<String> = spec.sortkey.iter().map(|c| quote(c)).collect();
            options.push_str(&format!(" COMPOUND SORTKEY ({})", cols.join(", ")));
        }
    }
    format!(
        "CREATE TABLE IF NOT EXISTS {}.{} ({}, PRIMARY KEY ({})){options}",
        quote(schema),
        quote(&spec.name),
        cols.join(", "),
        key.join(", ")
    )
}

/// The `WHERE` condition of a read and its text parameters: an `IN` list of lineage ids, or primary keys
/// (`(k1 = CAST($1 AS …) AND k2 = …) OR …`).
pub(super) fn read_condition(
    spec: &TableSpec,
    filter: &RowFilter,
) -> (String, Vec<(String, Type)>) {
    match filter {
        RowFilter::BatchIds(ids) | RowFilter::RecordIds(ids) => {
            let marks: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
            let column = filter.column().expect("an id filter");
            (
                format!("{} IN ({})", quote(column), marks.join(", ")),
                ids.iter().map(|v| (v.clone(), Type::VARCHAR)).collect(),
            )
        }
        RowFilter::Keys(keys) => {
            let mut params = Vec::new();
            let mut ors = Vec::new();
            for key in keys {
                let mut ands = Vec::new();
                for (column, value) in spec.primary_key.iter().zip(key) {
                    let ty = spec
                        .columns
                        .iter()
                        .find(|(c, _)| c == column)
                        .map(|(_, t)| *t)
                        .expect("key columns are declared");
                    params.push((value.clone(), Type::VARCHAR));
                    ands.push(format!(
                        "{} = CAST(${} AS {})",
                        quote(column),
                        params.len(),
                        sql_type(ty)
                    ));
                }
                ors.push(format!("({})", ands.join(" AND ")));
            }
            if ors.is_empty() {
                ors.push("1 = 0".into());
            }
            (ors.join(" OR "), params)
        }
    }
}
