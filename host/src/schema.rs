//! Declared tables, column types, and the check of every value a rule emits.
//!
//! Types are the subset that means the same on Redshift and PostgreSQL (see the Redshift portability notes);
//! the SQLite sink maps them onto SQLite storage classes. A value is checked here, once, before any sink
//! sees it, so a bad value rejects one record with the table and column named instead of failing a batch.

use std::fmt;
use std::str::FromStr;

use crate::contract::Value;

/// A declared column type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// 16-bit integer.
    SmallInt,
    /// 32-bit integer.
    Integer,
    /// 64-bit integer.
    BigInt,
    /// Exact decimal with `precision` digits, `scale` of them after the point (precision ≤ 38).
    Decimal {
        /// Total digits.
        precision: u8,
        /// Digits after the point.
        scale: u8,
    },
    /// 32-bit float.
    Real,
    /// 64-bit float.
    Double,
    /// Boolean.
    Boolean,
    /// Text of at most `n` UTF-8 bytes (Redshift counts bytes).
    Varchar(u32),
    /// Timestamp without time zone (UTC by convention).
    Timestamp,
    /// Timestamp with time zone.
    TimestampTz,
    /// Semi-structured JSON (Redshift `SUPER`).
    Super,
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnType::SmallInt => write!(f, "smallint"),
            ColumnType::Integer => write!(f, "integer"),
            ColumnType::BigInt => write!(f, "bigint"),
            ColumnType::Decimal { precision, scale } => write!(f, "decimal({precision},{scale})"),
            ColumnType::Real => write!(f, "real"),
            ColumnType::Double => write!(f, "double precision"),
            ColumnType::Boolean => write!(f, "boolean"),
            ColumnType::Varchar(n) => write!(f, "varchar({n})"),
            ColumnType::Timestamp => write!(f, "timestamp"),
            ColumnType::TimestampTz => write!(f, "timestamptz"),
            ColumnType::Super => write!(f, "super"),
        }
    }
}

const TYPE_LIST: &str = "smallint, integer, bigint, decimal(p,s), real, double precision, boolean, varchar(n), \
                         timestamp, timestamptz, super";

impl FromStr for ColumnType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let norm = s
            .trim()
            .to_ascii_lowercase()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let simple = match norm.as_str() {
            "smallint" | "int2" => Some(ColumnType::SmallInt),
            "integer" | "int" | "int4" => Some(ColumnType::Integer),
            "bigint" | "int8" => Some(ColumnType::BigInt),
            "real" | "float4" => Some(ColumnType::Real),
            "double precision" | "float8" | "float" => Some(ColumnType::Double),
            "boolean" | "bool" => Some(ColumnType::Boolean),
            "timestamp" | "timestamp without time zone" => Some(ColumnType::Timestamp),
            "timestamptz" | "timestamp with time zone" => Some(ColumnType::TimestampTz),
            "super" => Some(ColumnType::Super),
            "varchar" | "text" | "character varying" => {
                return Err(format!(
                    "`{s}` has no length; Redshift turns it into varchar(256). Write varchar(n) with n from 1 to 65535"
                ));
            }
            _ => None,
        };
        if let Some(t) = simple {
            return Ok(t);
        }
        let args = |prefix: &str| -> Option<Vec<u32>> {
            let inner = norm
                .strip_prefix(prefix)?
                .trim()
                .strip_prefix('(')?
                .strip_suffix(')')?;
            inner.split(',').map(|p| p.trim().parse().ok()).collect()
        };
        if let Some(a) = args("varchar").or_else(|| args("character varying")) {
            return match a.as_slice() {
                [n] if (1..=65535).contains(n) => Ok(ColumnType::Varchar(*n)),
                _ => Err(format!(
                    "`{s}`: the varchar length must be from 1 to 65535 (bytes)"
                )),
            };
        }
        if let Some(a) = args("decimal").or_else(|| args("numeric")) {
            let (p, sc) = match a.as_slice() {
                [p] => (*p, 0),
                [p, sc] => (*p, *sc),
                _ => (0, 0),
            };
            if !(1..=38).contains(&p) || sc > p {
                return Err(format!(
                    "`{s}`: decimal(p,s) needs 1 ≤ p ≤ 38 and 0 ≤ s ≤ p"
                ));
            }
            return Ok(ColumnType::Decimal {
                precision: p as u8,
                scale: sc as u8,
            });
        }
        Err(format!(
            "unknown column type `{s}`; use one of: {TYPE_LIST}"
        ))
    }
}

/// Names that weir keeps for itself.
pub const RESERVED_TABLES: [&str; 3] = ["weir_batches", "weir_dead_letters", "weir_checkpoints"];

/// Checks a table or column name: what reaches SQL is only ever a declared, checked identifier.
pub fn check_identifier(name: &str) -> Result<(), String> {
    let ok_start = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
    let ok_rest = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !ok_start || !ok_rest || name.len() > 127 {
        return Err(format!(
            "`{name}` is not a valid name; use lowercase letters, digits and `_`, starting with a letter or `_`, \
             at most 127 characters"
        ));
    }
    if name.starts_with("_weir_") || RESERVED_TABLES.contains(&name) {
        return Err(format!("`{name}` is reserved by weir; choose another name"));
    }
    Ok(())
}

/// The lineage columns weir adds to every declared table.
pub const LINEAGE_COLUMNS: [&str; 4] = [
    "_weir_record_id",
    "_weir_batch_id",
    "_weir_rule_digest",
    "_weir_loaded_at",
];

/// The types of [`LINEAGE_COLUMNS`], in the same order (every lineage column is `NOT NULL`).
pub const LINEAGE_TYPES: [ColumnType; 4] = [
    ColumnType::Varchar(1024),
    ColumnType::Varchar(1024),
    ColumnType::Varchar(64),
    ColumnType::TimestampTz,
];

/// One declared table.
#[derive(Debug, Clone)]
pub struct TableSpec {
    /// Table name.
    pub name: String,
    /// Columns in declaration order.
    pub columns: Vec<(String, ColumnType)>,
    /// Primary-key columns.
    pub primary_key: Vec<String>,
    /// Redshift distribution key column (`DISTSTYLE KEY DISTKEY`), if any.
    pub distkey: Option<String>,
    /// Redshift compound sort key columns, if any.
    pub sortkey: Vec<String>,
    /// Redshift column compression encodings (`ENCODE …`), by column.
    pub encode: Vec<(String, String)>,
    /// The column that orders versions of a row, if any (see `version_column` in the config).
    pub version_column: Option<String>,
}

impl TableSpec {
    /// A table spec; names must already be checked.
    pub fn new(name: String, columns: Vec<(String, ColumnType)>, primary_key: Vec<String>) -> Self {
        TableSpec {
            name,
            columns,
            primary_key,
            distkey: None,
            sortkey: Vec::new(),
            encode: Vec::new(),
            version_column: None,
        }
    }

    /// The same table with Redshift distribution and sort keys (used only when the sink is Redshift).
    pub fn with_redshift_keys(mut self, distkey: Option<String>, sortkey: Vec<String>) -> Self {
        self.distkey = distkey;
        self.sortkey = sortkey;
        self
    }

    /// The index of `column`, if declared.
    pub fn column_index(&self, column: &str) -> Option<usize> {
        self.columns.iter().position(|(c, _)| c == column)
    }

    /// Whether `column` is part of the primary key.
    pub fn is_key(&self, column: &str) -> bool {
        self.primary_key.iter().any(|k| k == column)
    }
}

/// A checked value, ready to bind.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Cell {
    /// SQL NULL.
    Null,
    /// Boolean.
    Bool(bool),
    /// Any integer type (range already checked).
    Int(i64),
    /// Any float type (finite).
    Float(f64),
    /// Decimal text normalized to the column's scale, e.g. `44.90` for `decimal(18,2)`.
    Decimal(String),
    /// Text within the column's byte length.
    Text(String),
    /// Microseconds since the Unix epoch, UTC.
    TimestampUs(i64),
    /// Valid JSON text.
    Json(String),
}

impl Cell {
    /// The value as text for a text-typed store (SQLite, RAW-compatible JSON), `None` for NULL.
    pub fn to_text(&self) -> Option<String> {
        match self {
            Cell::Null => None,
            Cell::Bool(b) => Some(b.to_string()),
            Cell::Int(i) => Some(i.to_string()),
            Cell::Float(x) => Some(x.to_string()),
            Cell::Decimal(s) | Cell::Text(s) | Cell::Json(s) => Some(s.clone()),
            Cell::TimestampUs(us) => Some(format_timestamp_us(*us)),
        }
    }
}

impl std::hash::Hash for Cell {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        match self {
            Cell::Null => {}
            Cell::Bool(b) => b.hash(state),
            Cell::Int(i) | Cell::TimestampUs(i) => i.hash(state),
            Cell::Float(x) => x.to_bits().hash(state),
            Cell::Decimal(s) | Cell::Text(s) | Cell::Json(s) => s.hash(state),
        }
    }
}

impl Eq for Cell {}

/// `1700000000000000` → `2023-11-14T22:13:20.000000Z`.
pub fn format_timestamp_us(us: i64) -> String {
    match chrono::DateTime::from_timestamp_micros(us) {
        Some(t) => t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        None => us.to_string(),
    }
}

/// A cell value borrowed from wherever the rule put it: a 0.1 WIT [`Value`] or a 0.2 packed buffer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    /// SQL NULL.
    Null,
    /// A boolean.
    Boolean(bool),
    /// An integer.
    Integer(i64),
    /// A float.
    Float(f64),
    /// Decimal text.
    Decimal(&'a str),
    /// Text.
    Text(&'a str),
    /// Microseconds since the Unix epoch, UTC.
    TimestampUs(i64),
    /// JSON text.
    Json(&'a str),
}

impl<'a> From<&'a Value> for ValueRef<'a> {
    fn from(v: &'a Value) -> Self {
        match v {
            Value::Null => ValueRef::Null,
            Value::Boolean(b) => ValueRef::Boolean(*b),
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Float(x) => ValueRef::Float(*x),
            Value::Decimal(s) => ValueRef::Decimal(s),
            Value::Text(s) => ValueRef::Text(s),
            Value::TimestampUs(us) => ValueRef::TimestampUs(*us),
            Value::Json(s) => ValueRef::Json(s),
        }
    }
}

impl ValueRef<'_> {
    /// The kind of the value, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            ValueRef::Null => "null",
            ValueRef::Boolean(_) => "boolean",
            ValueRef::Integer(_) => "integer",
            ValueRef::Float(_) => "float",
            ValueRef::Decimal(_) => "decimal",
            ValueRef::Text(_) => "text",
            ValueRef::TimestampUs(_) => "timestamp",
            ValueRef::Json(_) => "json",
        }
    }
}

/// Checks `value` against `ty`; the error says what is wrong (the caller adds table and column).
pub fn check_value(ty: ColumnType, value: &Value) -> Result<Cell, String> {
    check_value_ref(ty, value.into())
}

/// [`check_value`] of a borrowed value: the one set of checks for rules of every contract version.
pub fn check_value_ref(ty: ColumnType, value: ValueRef<'_>) -> Result<Cell, String> {
    use ValueRef as V;
    match (ty, value) {
        (_, V::Null) => Ok(Cell::Null),
        (ColumnType::Boolean, V::Boolean(b)) => Ok(Cell::Bool(b)),
        (ColumnType::SmallInt, V::Integer(i)) => range(i, i16::MIN as i64, i16::MAX as i64, ty),
        (ColumnType::Integer, V::Integer(i)) => range(i, i32::MIN as i64, i32::MAX as i64, ty),
        (ColumnType::BigInt, V::Integer(i)) => Ok(Cell::Int(i)),
        (ColumnType::Real | ColumnType::Double, V::Float(x)) => {
            if !x.is_finite() {
                return Err(format!("{x} is not a finite number"));
            }
            if ty == ColumnType::Real && x.abs() > f32::MAX as f64 {
                return Err(format!("{x} is out of range for real"));
            }
            Ok(Cell::Float(x))
        }
        (ColumnType::Real | ColumnType::Double, V::Integer(i)) => Ok(Cell::Float(i as f64)),
        (ColumnType::Decimal { precision, scale }, V::Decimal(s)) => {
            normalize_decimal(s, precision, scale).map(Cell::Decimal)
        }
        (ColumnType::Decimal { precision, scale }, V::Integer(i)) => {
            normalize_decimal(&i.to_string(), precision, scale).map(Cell::Decimal)
        }
        (ColumnType::Varchar(n), V::Text(s)) => {
            if s.len() > n as usize {
                return Err(format!(
                    "text is {} UTF-8 bytes, longer than varchar({n})",
                    s.len()
                ));
            }
            if s.contains('\0') {
                return Err("text contains a NUL character".into());
            }
            Ok(Cell::Text(s.to_string()))
        }
        (ColumnType::Timestamp | ColumnType::TimestampTz, V::TimestampUs(us)) => {
            // Years 1..=9999 are what both databases accept.
            const MIN: i64 = -62_135_596_800_000_000;
            const MAX: i64 = 253_402_300_799_999_999;
            if !(MIN..=MAX).contains(&us) {
                return Err(format!("timestamp {us} µs is outside years 1 to 9999"));
            }
            Ok(Cell::TimestampUs(us))
        }
        (ColumnType::Super, V::Json(s)) => {
            if s.len() > 16 * 1024 * 1024 {
                return Err(format!(
                    "JSON is {} bytes, more than the 16 MiB a super value holds",
                    s.len()
                ));
            }
            serde_json::from_str::<serde::de::IgnoredAny>(s)
                .map_err(|e| format!("not valid JSON: {e}"))?;
            Ok(Cell::Json(s.to_string()))
        }
        _ => Err(format!("expected {ty}, got {}", value.kind())),
    }
}

fn range(i: i64, min: i64, max: i64, ty: ColumnType) -> Result<Cell, String> {
    if i < min || i > max {
        Err(format!("{i} is out of range for {ty}"))
    } else {
        Ok(Cell::Int(i))
    }
}

/// The kind of a value, for messages.
pub fn value_kind(value: &Value) -> &'static str {
    ValueRef::from(value).kind()
}

/// Checks a plain decimal string (`-12.5`) against `decimal(p,s)` and pads it to the scale (`-12.50`).
pub fn normalize_decimal(s: &str, precision: u8, scale: u8) -> Result<String, String> {
    let bad = || {
        format!(
            "`{}` is not a plain decimal number",
            s.chars().take(40).collect::<String>()
        )
    };
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) {
        return Err(bad());
    }
    let frac_trimmed = frac.trim_end_matches('0');
    if frac_trimmed.len() > scale as usize {
        return Err(format!(
            "{s} has more than {scale} decimals for decimal({precision},{scale})"
        ));
    }
    let int_trimmed = int.trim_start_matches('0');
    if int_trimmed.len() + scale as usize > precision as usize {
        return Err(format!("{s} does not fit decimal({precision},{scale})"));
    }
    let is_zero = int_trimmed.is_empty() && frac_trimmed.is_empty();
    // What rules usually send is already in the normal form (`44.90` for scale 2): then it is copied as is.
    // The normal form drops a `+` and the sign of zero, and has one integer digit `0` or no leading zero,
    // and exactly `scale` decimals after a point (none, and no point, for scale 0).
    let sign_dropped = s.starts_with('+') || (neg && is_zero);
    let int_normal = int == "0" || (!int.is_empty() && int_trimmed.len() == int.len());
    let frac_normal = frac.len() == scale as usize && (scale > 0) == body.contains('.');
    if !sign_dropped && int_normal && frac_normal {
        return Ok(s.to_owned());
    }
    let mut out = String::with_capacity(int_trimmed.len() + scale as usize + 2);
    if neg && !is_zero {
        out.push('-');
    }
    out.push_str(if int_trimmed.is_empty() {
        "0"
    } else {
        int_trimmed
    });
    if scale > 0 {
        out.push('.');
        out.push_str(frac_trimmed);
        for _ in frac_trimmed.len()..scale as usize {
            out.push('0');
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Column types parse, print back, and refuse what Redshift would change.
    #[test]
    fn column_types() {
        for t in [
            "varchar(36)",
            "decimal(18,2)",
            "integer",
            "timestamptz",
            "super",
            "double precision",
        ] {
            assert_eq!(t.parse::<ColumnType>().unwrap().to_string(), t);
        }
        assert!(
            "varchar"
                .parse::<ColumnType>()
                .unwrap_err()
                .contains("no length")
        );
        assert!("decimal(40,2)".parse::<ColumnType>().is_err());
        assert!(
            "money"
                .parse::<ColumnType>()
                .unwrap_err()
                .contains("unknown column type")
        );
    }

    /// Decimals are normalized to the scale and checked against the precision.
    #[test]
    fn decimals() {
        assert_eq!(normalize_decimal("44.9", 18, 2).unwrap(), "44.90");
        assert_eq!(normalize_decimal("-0.00", 18, 2).unwrap(), "0.00");
        assert_eq!(normalize_decimal("007", 5, 0).unwrap(), "7");
        assert!(normalize_decimal("1.234", 18, 2).is_err());
        assert!(normalize_decimal("1234", 5, 2).is_err());
        assert!(normalize_decimal("1e5", 18, 2).is_err());
        assert!(normalize_decimal("", 18, 2).is_err());
    }

    /// A decimal already in the normal form is copied as is; every other spelling of the same number takes
    /// the long way (a sign, a leading zero) and must come out the same.
    #[test]
    fn decimals_in_normal_form_are_kept_and_others_agree() {
        let samples = [
            "0",
            "7",
            "10",
            "0.5",
            "0.50",
            "44.9",
            "44.90",
            "44.900",
            "1.",
            ".5",
            "0.00",
            "00.10",
            "120.00",
            "9999999999999999.99",
            "5.0",
            "0.0",
        ];
        // Errors quote the input, so only the values are compared.
        let normal = |s: &str, scale: u8| normalize_decimal(s, 18, scale).ok();
        for scale in [0u8, 1, 2, 3] {
            for s in samples {
                let plain = normal(s, scale);
                assert_eq!(plain, normal(&format!("+{s}"), scale), "+{s} scale {scale}");
                assert_eq!(plain, normal(&format!("0{s}"), scale), "0{s} scale {scale}");
                let negative = normal(&format!("-{s}"), scale);
                assert_eq!(
                    negative,
                    normal(&format!("-0{s}"), scale),
                    "-{s} scale {scale}"
                );
                if let Some(n) = &plain {
                    // The normal form is a fixed point.
                    assert_eq!(normal(n, scale).as_ref(), Some(n), "{n} scale {scale}");
                    let zero = n.bytes().all(|b| b == b'0' || b == b'.');
                    let want = if zero { n.clone() } else { format!("-{n}") };
                    assert_eq!(negative, Some(want), "-{s} scale {scale}");
                } else {
                    assert_eq!(negative, None, "-{s} scale {scale}");
                }
            }
        }
        assert_eq!(normalize_decimal("-0.00", 18, 2).unwrap(), "0.00");
        assert_eq!(normalize_decimal("1.", 18, 0).unwrap(), "1");
        assert_eq!(normalize_decimal("5.0", 18, 2).unwrap(), "5.00");
    }

    /// Values are checked against their column type with a precise message.
    #[test]
    fn values() {
        let v = ColumnType::Varchar(3);
        assert!(check_value(v, &Value::Text("abc".into())).is_ok());
        assert!(
            check_value(v, &Value::Text("äbc".into()))
                .unwrap_err()
                .contains("4 UTF-8 bytes")
        );
        assert!(
            check_value(v, &Value::Integer(1))
                .unwrap_err()
                .contains("expected varchar(3), got integer")
        );
        assert!(check_value(ColumnType::Integer, &Value::Integer(1 << 40)).is_err());
        assert!(check_value(ColumnType::Super, &Value::Json("{".into())).is_err());
        assert!(check_value(ColumnType::Double, &Value::Float(f64::NAN)).is_err());
        assert_eq!(
            check_value(ColumnType::Boolean, &Value::Null).unwrap(),
            Cell::Null
        );
    }

    /// Only plain lowercase identifiers are accepted.
    #[test]
    fn identifiers() {
        assert!(check_identifier("order_lines").is_ok());
        for bad in [
            "Orders",
            "a-b",
            "x\"; drop table y; --",
            "",
            "1a",
            "_weir_x",
            "weir_batches",
        ] {
            assert!(check_identifier(bad).is_err(), "{bad}");
        }
    }
}
