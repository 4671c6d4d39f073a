//! What a rule returns — outcomes, rows, typed cells — and building rows by hand or from `serde_json`
//! values. These types are the SDK's own, the same for both contract versions; the SDK turns them into the
//! contract's form when the batch is done (packed bytes for 0.2, WIT values for 0.1).

use std::borrow::Cow;

/// A table or column name: borrowed when it is a literal, as it usually is, so naming it costs nothing.
pub type Name = Cow<'static, str>;

/// A typed cell. The host checks it against the declared column type.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A boolean column.
    Boolean(bool),
    /// A `smallint`, `integer` or `bigint` column (range-checked by the host); also a `real`, `double` or
    /// `decimal` column.
    Integer(i64),
    /// A `real` or `double precision` column.
    Float(f64),
    /// A `decimal(p,s)` column, as a plain decimal string such as `-12.50` (exact, never a float).
    Decimal(String),
    /// A `varchar(n)` column; `n` counts UTF-8 bytes.
    Text(String),
    /// A `timestamp` or `timestamptz` column, in microseconds since the Unix epoch, UTC.
    TimestampUs(i64),
    /// A `super` (semi-structured) column, as JSON text.
    Json(String),
}

/// One row for one declared table. Cells not listed are NULL.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Name of a table declared in the worker's configuration.
    pub table: Name,
    /// Column name and value pairs; every column must be declared for that table.
    pub cells: Vec<(Name, Value)>,
}

/// What the rule decided for one record.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The record becomes these rows (possibly none).
    Emit(Vec<Row>),
    /// The record is deliberately not loaded, for this reason (for example `test order`).
    Drop(String),
    /// The record is bad data, for this reason; it goes to the dead-letter store. Name the offending field.
    Reject(String),
}

#[cfg(feature = "contract-0-1")]
impl Outcome {
    /// The outcome as contract 0.1's WIT value.
    pub(crate) fn into_wit(self) -> crate::bindings::weir::rules::types::Outcome {
        use crate::bindings::weir::rules::types as w;
        let value = |v: Value| match v {
            Value::Null => w::Value::Null,
            Value::Boolean(b) => w::Value::Boolean(b),
            Value::Integer(i) => w::Value::Integer(i),
            Value::Float(x) => w::Value::Float(x),
            Value::Decimal(s) => w::Value::Decimal(s),
            Value::Text(s) => w::Value::Text(s),
            Value::TimestampUs(us) => w::Value::TimestampUs(us),
            Value::Json(s) => w::Value::Json(s),
        };
        match self {
            Outcome::Emit(rows) => w::Outcome::Emit(
                rows.into_iter()
                    .map(|r| w::Row {
                        table: r.table.into_owned(),
                        cells: r
                            .cells
                            .into_iter()
                            .map(|(k, v)| (k.into_owned(), value(v)))
                            .collect(),
                    })
                    .collect(),
            ),
            Outcome::Drop(r) => w::Outcome::Drop(r),
            Outcome::Reject(r) => w::Outcome::Reject(r),
        }
    }
}

/// Builds one [`Row`] cell by cell.
///
/// ```
/// # use weir_rule::RowBuilder;
/// let row = RowBuilder::new("orders")
///     .text("order_id", "o-1")
///     .decimal("total", "44.98")
///     .integer("line_count", 2)
///     .build();
/// assert_eq!(row.cells.len(), 3);
/// ```
#[derive(Debug, Clone)]
pub struct RowBuilder {
    row: Row,
}

impl RowBuilder {
    /// A row for the declared table `table` (a literal, or any owned `String`).
    pub fn new(table: impl Into<Name>) -> Self {
        RowBuilder {
            row: Row {
                table: table.into(),
                cells: Vec::with_capacity(8),
            },
        }
    }

    /// Sets `column` to any value.
    pub fn value(mut self, column: impl Into<Name>, value: Value) -> Self {
        self.row.cells.push((column.into(), value));
        self
    }

    /// Sets a `varchar` column.
    pub fn text(self, column: impl Into<Name>, text: impl Into<String>) -> Self {
        self.value(column, Value::Text(text.into()))
    }

    /// Sets a `varchar` column, or NULL for `None`.
    pub fn opt_text(self, column: impl Into<Name>, text: Option<impl Into<String>>) -> Self {
        let value = text.map_or(Value::Null, |t| Value::Text(t.into()));
        self.value(column, value)
    }

    /// Sets an integer column.
    pub fn integer(self, column: impl Into<Name>, n: i64) -> Self {
        self.value(column, Value::Integer(n))
    }

    /// Sets a floating-point column.
    pub fn float(self, column: impl Into<Name>, x: f64) -> Self {
        self.value(column, Value::Float(x))
    }

    /// Sets a boolean column.
    pub fn boolean(self, column: impl Into<Name>, b: bool) -> Self {
        self.value(column, Value::Boolean(b))
    }

    /// Sets a `decimal(p,s)` column from its exact decimal text, such as `"19.99"`.
    pub fn decimal(self, column: impl Into<Name>, text: impl Into<String>) -> Self {
        self.value(column, Value::Decimal(text.into()))
    }

    /// Sets a timestamp column, in microseconds since the Unix epoch (UTC).
    pub fn timestamp_us(self, column: impl Into<Name>, micros: i64) -> Self {
        self.value(column, Value::TimestampUs(micros))
    }

    /// Sets a `super` column to a JSON value (`null` becomes SQL NULL).
    pub fn json(self, column: impl Into<Name>, json: &serde_json::Value) -> Self {
        let value = if json.is_null() {
            Value::Null
        } else {
            // Straight into a `Vec<u8>`: `to_string` would go through `fmt`, several times slower.
            Value::Json(serde_json::to_string(json).expect("a JSON value always serializes"))
        };
        self.value(column, value)
    }

    /// Sets `column` to SQL NULL.
    pub fn null(self, column: impl Into<Name>) -> Self {
        self.value(column, Value::Null)
    }

    /// The finished row.
    pub fn build(self) -> Row {
        self.row
    }
}

/// Maps a JSON value to the closest typed value: null → NULL, bool → boolean, integral numbers → integer,
/// other numbers → float, strings → text, arrays and objects → JSON (for a `super` column).
pub fn json_to_value(json: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match json {
        J::Null => Value::Null,
        J::Bool(b) => Value::Boolean(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => Value::Text(s.clone()),
        J::Array(_) | J::Object(_) => Value::Json(json.to_string()),
    }
}

/// A row for `table` with one cell per member of a JSON object, mapped by [`json_to_value`].
/// Returns `None` when `object` is not a JSON object.
pub fn row_from_json(table: impl Into<Name>, object: &serde_json::Value) -> Option<Row> {
    let map = object.as_object()?;
    Some(Row {
        table: table.into(),
        cells: map
            .iter()
            .map(|(k, v)| (Name::Owned(k.clone()), json_to_value(v)))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// JSON members map to the expected typed cells.
    #[test]
    fn row_from_json_maps_types() {
        let json =
            serde_json::json!({"a": 1, "b": "x", "c": true, "d": null, "e": {"k": 1}, "f": 1.5});
        let row = row_from_json("t", &json).unwrap();
        let get = |name: &str| row.cells.iter().find(|(k, _)| k == name).unwrap().1.clone();
        assert!(matches!(get("a"), Value::Integer(1)));
        assert!(matches!(get("b"), Value::Text(ref s) if s == "x"));
        assert!(matches!(get("c"), Value::Boolean(true)));
        assert!(matches!(get("d"), Value::Null));
        assert!(matches!(get("e"), Value::Json(ref s) if s == r#"{"k":1}"#));
        assert!(matches!(get("f"), Value::Float(x) if x == 1.5));
        assert!(row_from_json("t", &serde_json::json!([1])).is_none());
    }
}
