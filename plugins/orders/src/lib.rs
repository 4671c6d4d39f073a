//! The example `orders` rule.
//!
//! Input: one JSON order per record, for example
//! `{"order_id": "o-1", "customer_id": "c-1", "placed_at": "2026-11-21T10:15:30Z", "currency": "EUR",
//!   "test": false, "shipping": {"country": "ES"}, "lines": [{"sku": "SKU-1", "qty": 2, "unit_price": "19.99"}]}`.
//!
//! - reject (the reason names the field): payload not UTF-8 or not JSON; `order_id` missing or empty;
//!   `placed_at` not RFC 3339; `currency` not three letters; `lines` missing or empty; a line whose `qty` is not a
//!   positive integer or whose `unit_price` is not a decimal string with at most 2 decimals;
//! - drop with reason `test order` when `test` is true;
//! - emit one `orders` row and one `order_lines` row per line. Money is exact (integer cents, no floats).

use serde_json::Value as Json;
use weir_rule::{Outcome, RowBuilder, Rule, Settings, SourceRecord};

/// The orders rule. It has no settings.
pub struct Orders;

impl Rule for Orders {
    fn init(_settings: &Settings) -> Result<Self, String> {
        Ok(Orders)
    }

    fn process(&mut self, record: &SourceRecord) -> Outcome {
        match order_rows(&record.payload) {
            Ok(outcome) => outcome,
            Err(reason) => Outcome::Reject(reason),
        }
    }
}

weir_rule::export_rule!(Orders);

/// The outcome for one order payload; `Err` is a reject reason.
pub fn order_rows(payload: &[u8]) -> Result<Outcome, String> {
    let text =
        std::str::from_utf8(payload).map_err(|e| format!("payload: not valid UTF-8 ({e})"))?;
    let order: Json =
        serde_json::from_str(text).map_err(|e| format!("payload: not valid JSON ({e})"))?;
    if !order.is_object() {
        return Err("payload: not a JSON object".into());
    }

    let order_id = match order.get("order_id") {
        Some(Json::String(s)) if !s.trim().is_empty() => s.as_str(),
        Some(Json::String(_)) | None | Some(Json::Null) => {
            return Err("order_id: missing or empty".into());
        }
        Some(_) => return Err("order_id: must be a string".into()),
    };
    if order.get("test").and_then(Json::as_bool) == Some(true) {
        return Ok(Outcome::Drop("test order".into()));
    }
    let placed_at = match order.get("placed_at") {
        Some(Json::String(s)) => chrono::DateTime::parse_from_rfc3339(s)
            .map_err(|_| format!("placed_at: not an RFC 3339 timestamp: {s:?}"))?
            .timestamp_micros(),
        _ => return Err("placed_at: missing or not a string".into()),
    };
    let currency = match order.get("currency") {
        Some(Json::String(s)) if s.len() == 3 && s.bytes().all(|b| b.is_ascii_alphabetic()) => {
            s.as_str()
        }
        _ => return Err("currency: must be three letters".into()),
    };
    let lines = match order.get("lines") {
        Some(Json::Array(lines)) if !lines.is_empty() => lines,
        _ => return Err("lines: missing or empty".into()),
    };

    let mut rows = Vec::with_capacity(lines.len() + 1);
    let mut total_cents: i128 = 0;
    for (i, line) in lines.iter().enumerate() {
        let qty = match line.get("qty") {
            Some(Json::Number(n)) => match n.as_i64() {
                Some(q) if q > 0 => q,
                _ => return Err(format!("lines[{i}].qty: must be a positive integer")),
            },
            _ => return Err(format!("lines[{i}].qty: must be a positive integer")),
        };
        let unit_price = match line.get("unit_price") {
            Some(Json::String(s)) => parse_cents(s),
            _ => None,
        }
        .ok_or_else(|| {
            format!("lines[{i}].unit_price: must be a decimal string with at most 2 decimals")
        })?;
        let amount = unit_price * i128::from(qty);
        total_cents += amount;
        rows.push(
            RowBuilder::new("order_lines")
                .text("order_id", order_id)
                .integer("line_no", i as i64 + 1)
                .opt_text("sku", line.get("sku").and_then(Json::as_str))
                .integer("qty", qty)
                .decimal("unit_price", format_cents(unit_price))
                .decimal("amount", format_cents(amount))
                .build(),
        );
    }

    let shipping = order.get("shipping").unwrap_or(&Json::Null);
    let orders_row = RowBuilder::new("orders")
        .text("order_id", order_id)
        .opt_text(
            "customer_id",
            order.get("customer_id").and_then(Json::as_str),
        )
        .timestamp_us("placed_at", placed_at)
        .text("currency", currency)
        .decimal("total", format_cents(total_cents))
        .integer("line_count", lines.len() as i64)
        .opt_text("country", shipping.get("country").and_then(Json::as_str))
        .json("shipping", shipping)
        .build();
    rows.insert(0, orders_row);
    Ok(Outcome::Emit(rows))
}

/// `"19.99"` → 1999; at most 2 decimals, no sign, no exponent.
fn parse_cents(s: &str) -> Option<i128> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty()
        || int.len() > 30
        || !digits(int)
        || frac.len() > 2
        || !digits(frac)
        || s.ends_with('.')
    {
        return None;
    }
    let int: i128 = int.parse().ok()?;
    let frac: i128 = if frac.is_empty() {
        0
    } else {
        frac.parse().ok()?
    };
    let frac = if s.split_once('.').is_some_and(|(_, f)| f.len() == 1) {
        frac * 10
    } else {
        frac
    };
    Some(int * 100 + frac)
}

/// 1999 → `"19.99"`.
fn format_cents(cents: i128) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let abs = cents.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decimal strings parse to exact cents and format back.
    #[test]
    fn cents_round_trip() {
        assert_eq!(parse_cents("19.99"), Some(1999));
        assert_eq!(parse_cents("5"), Some(500));
        assert_eq!(parse_cents("5.5"), Some(550));
        assert_eq!(parse_cents("0.05"), Some(5));
        for bad in ["", ".5", "5.", "1.234", "-1", "1e3", "x"] {
            assert_eq!(parse_cents(bad), None, "{bad}");
        }
        assert_eq!(format_cents(4498), "44.98");
        assert_eq!(format_cents(5), "0.05");
    }

    /// A valid order emits the order row first, then its lines, with exact totals.
    #[test]
    fn emits_order_and_lines() {
        let payload = br#"{"order_id":"o-1","placed_at":"2026-11-21T10:15:30Z","currency":"EUR",
            "lines":[{"sku":"A","qty":2,"unit_price":"19.99"},{"sku":"B","qty":1,"unit_price":"5.00"}]}"#;
        let Ok(Outcome::Emit(rows)) = order_rows(payload) else {
            panic!("not emitted")
        };
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].table, "orders");
        let total = rows[0].cells.iter().find(|(k, _)| k == "total").unwrap();
        assert!(matches!(&total.1, weir_rule::Value::Decimal(s) if s == "44.98"));
    }

    /// Each malformed order is rejected with a reason naming the field.
    #[test]
    fn rejects_name_the_field() {
        let cases: [(&[u8], &str); 6] = [
            (b"\xff", "payload"),
            (b"{", "payload"),
            (br#"{"order_id":""}"#, "order_id"),
            (br#"{"order_id":"o","placed_at":"yesterday"}"#, "placed_at"),
            (br#"{"order_id":"o","placed_at":"2026-01-01T00:00:00Z","currency":"EURO"}"#, "currency"),
            (br#"{"order_id":"o","placed_at":"2026-01-01T00:00:00Z","currency":"EUR","lines":[{"qty":0}]}"#, "lines[0].qty"),
        ];
        for (payload, field) in cases {
            let err = order_rows(payload).err().expect("rejected");
            assert!(err.starts_with(field), "{err} should name {field}");
        }
    }
}
