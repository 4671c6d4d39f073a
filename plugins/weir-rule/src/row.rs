//! Building typed rows, by hand or from `serde_json` values.

use crate::{Row, Value};

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
    /// A row for the declared table `table`.
    pub fn new(table: &str) -> Self {
        RowBuilder {
            row: Row {
                table: table.to_string(),
                cells: Vec::new(),
            },
        }
    }

    /// Sets `column` to any value.
    pub fn value(mut self, column: &str, value: Value) -> Self {
        self.row.cells.push((column.to_string(), value));
        self
    }

    /// Sets a `varchar` column.
    pub fn text(self, column: &str, text: impl Into<String>) -> Self {
        self.value(column, Value::Text(text.into()))
    }

    /// Sets a `varchar` column, or NULL for `None`.
    pub fn opt_text(self, column: &str, text: Option<impl Into<String>>) -> Self {
        let value = text.map_or(Value::Null, |t| Value::Text(t.into()));
        self.value(column, value)
    }

    /// Sets an integer column.
    pub fn integer(self, column: &str, n: i64) -> Self {
        self.value(column, Value::Integer(n))
    }

    /// Sets a floating-point column.
    pub fn float(self, column: &str, x: f64) -> Self {
        self.value(column, Value::Float(x))
    }

    /// Sets a boolean column.
    pub fn boolean(self, column: &str, b: bool) -> Self {
        self.value(column, Value::Boolean(b))
    }

    /// Sets a `decimal(p,s)` column from its exact decimal text, such as `"19.99"`.
    pub fn decimal(self, column: &str, text: impl Into<String>) -> Self {
        self.value(column, Value::Decimal(text.into()))
    }

    /// Sets a timestamp column, in microseconds since the Unix epoch (UTC).
    pub fn timestamp_us(self, column: &str, micros: i64) -> Self {
        self.value(column, Value::TimestampUs(micros))
    }

    /// Sets a `super` column to a JSON value (`null` becomes SQL NULL).
    pub fn json(self, column: &str, json: &serde_json::Value) -> Self {
        let value = if json.is_null() {
            Value::Null
        } else {
            Value::Json(json.to_string())
        };
        self.value(column, value)
    }

    /// Sets `column` to SQL NULL.
    pub fn null(self, column: &str) -> Self {
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
pub fn row_from_json(table: &str, object: &serde_json::Value) -> Option<Row> {
    let map = object.as_object()?;
    Some(Row {
        table: table.to_string(),
        cells: map
            .iter()
            .map(|(k, v)| (k.clone(), json_to_value(v)))
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
