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

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
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
    let order = match serde_json::from_str(text) {
        Ok(Document::Order(order)) => order,
        Ok(Document::NotObject) => return Err("payload: not a JSON object".into()),
        Err(e) => return Err(format!("payload: not valid JSON ({e})")),
    };

    let order_id = match &order.order_id {
        Field::Str(s) if !s.trim().is_empty() => s.as_ref(),
        Field::Str(_) | Field::Absent | Field::Null => {
            return Err("order_id: missing or empty".into());
        }
        _ => return Err("order_id: must be a string".into()),
    };
    if matches!(order.test, Field::Bool(true)) {
        return Ok(Outcome::Drop("test order".into()));
    }
    let placed_at = match &order.placed_at {
        Field::Str(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map_err(|_| format!("placed_at: not an RFC 3339 timestamp: {s:?}"))?
            .timestamp_micros(),
        _ => return Err("placed_at: missing or not a string".into()),
    };
    let currency = match &order.currency {
        Field::Str(s) if s.len() == 3 && s.bytes().all(|b| b.is_ascii_alphabetic()) => s.as_ref(),
        _ => return Err("currency: must be three letters".into()),
    };
    let lines = match &order.lines {
        Lines::Array(lines) if !lines.is_empty() => lines,
        _ => return Err("lines: missing or empty".into()),
    };

    let mut rows = Vec::with_capacity(lines.len() + 1);
    let mut total_cents: i128 = 0;
    for (i, line) in lines.iter().enumerate() {
        let qty = match line.qty {
            Field::Int(q) if q > 0 => q,
            _ => return Err(format!("lines[{i}].qty: must be a positive integer")),
        };
        let unit_price = match &line.unit_price {
            Field::Str(s) => parse_cents(s),
            _ => None,
        }
        .ok_or_else(|| {
            format!("lines[{i}].unit_price: must be a decimal string with at most 2 decimals")
        })?;
        let amount = times(unit_price, qty);
        total_cents += amount;
        rows.push(
            RowBuilder::new("order_lines")
                .text("order_id", order_id)
                .integer("line_no", i as i64 + 1)
                .opt_text("sku", line.sku.as_str())
                .integer("qty", qty)
                .decimal("unit_price", format_cents(unit_price))
                .decimal("amount", format_cents(amount))
                .build(),
        );
    }

    let shipping = order.shipping.as_ref().unwrap_or(&Json::Null);
    let orders_row = RowBuilder::new("orders")
        .text("order_id", order_id)
        .opt_text("customer_id", order.customer_id.as_str())
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

// The payload is read straight into the few fields the rule looks at, with strings borrowed from the payload:
// no map of every member, no string copied that is not emitted. The fields keep the JSON type they arrived
// with, so the checks above see exactly what a `serde_json::Value` would show them (a repeated member: the
// last one counts, as in a `Value`), and every other member is only checked to be well-formed JSON.

/// A payload: an order object, or some other JSON value.
enum Document<'a> {
    Order(Order<'a>),
    NotObject,
}

/// The members of an order the rule reads.
#[derive(Default)]
struct Order<'a> {
    order_id: Field<'a>,
    customer_id: Field<'a>,
    test: Field<'a>,
    placed_at: Field<'a>,
    currency: Field<'a>,
    lines: Lines<'a>,
    /// Loaded as JSON text into a `super` column, so kept whole.
    shipping: Option<Json>,
}

/// The members of an order line the rule reads.
#[derive(Default)]
struct Line<'a> {
    sku: Field<'a>,
    qty: Field<'a>,
    unit_price: Field<'a>,
}

/// One member's value, as far as the rule cares.
#[derive(Default)]
enum Field<'a> {
    /// Not in the object.
    #[default]
    Absent,
    Null,
    Bool(bool),
    /// An integer that fits `i64`.
    Int(i64),
    Str(Cow<'a, str>),
    /// Any other number, an array or an object.
    Other,
}

impl Field<'_> {
    fn as_str(&self) -> Option<&str> {
        match self {
            Field::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// `lines`: an array of lines, or anything else.
#[derive(Default)]
enum Lines<'a> {
    #[default]
    Absent,
    Array(Vec<Line<'a>>),
    Other,
}

/// Consumes the rest of an array, checking only that it is well-formed.
fn skip_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<Skip>()?.is_some() {}
    Ok(())
}

/// Consumes the rest of an object, checking only that it is well-formed.
fn skip_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<Skip, Skip>()?.is_some() {}
    Ok(())
}

/// Implements every `Visitor` method but maps and sequences with one value: whatever is not an object.
macro_rules! scalars_are {
    ($value:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
}

/// A JSON value read over and dropped, strings not copied. Unlike serde's `IgnoredAny`, which serde_json skips
/// without looking at its depth, it goes through `deserialize_any`: the same nesting limit and number range as
/// a `serde_json::Value` apply, so a payload too deep to be a `Value` is not JSON here either.
struct Skip;

impl<'de> de::Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Skip;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            scalars_are!(Skip);
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                skip_seq(seq).map(|()| Skip)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                skip_map(map).map(|()| Skip)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> de::Deserialize<'de> for Document<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Document<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            scalars_are!(Document::NotObject);
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                skip_seq(seq).map(|()| Document::NotObject)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut order = Order::default();
                while let Some(key) = map.next_key::<Key<'de>>()? {
                    match key.0.as_ref() {
                        "order_id" => order.order_id = map.next_value()?,
                        "customer_id" => order.customer_id = map.next_value()?,
                        "test" => order.test = map.next_value()?,
                        "placed_at" => order.placed_at = map.next_value()?,
                        "currency" => order.currency = map.next_value()?,
                        "lines" => order.lines = map.next_value()?,
                        "shipping" => order.shipping = Some(map.next_value()?),
                        _ => {
                            map.next_value::<Skip>()?;
                        }
                    }
                }
                Ok(Document::Order(order))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> de::Deserialize<'de> for Lines<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Lines<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            scalars_are!(Lines::Other);
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                skip_map(map).map(|()| Lines::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut lines = Vec::with_capacity(seq.size_hint().unwrap_or(2));
                while let Some(line) = seq.next_element()? {
                    lines.push(line);
                }
                Ok(Lines::Array(lines))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> de::Deserialize<'de> for Line<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Line<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            // A line that is not an object has no `qty`: it is rejected by the first check.
            scalars_are!(Line::default());
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                skip_seq(seq).map(|()| Line::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut line = Line::default();
                while let Some(key) = map.next_key::<Key<'de>>()? {
                    match key.0.as_ref() {
                        "sku" => line.sku = map.next_value()?,
                        "qty" => line.qty = map.next_value()?,
                        "unit_price" => line.unit_price = map.next_value()?,
                        _ => {
                            map.next_value::<Skip>()?;
                        }
                    }
                }
                Ok(line)
            }
        }
        d.deserialize_any(V)
    }
}

/// A member name, borrowed from the payload unless it holds an escape. (serde's own `Cow<str>` always copies:
/// one allocation per member read.)
struct Key<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> de::Deserialize<'de> for Field<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Field<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Field::Null)
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
                Ok(Field::Bool(b))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
                Ok(Field::Int(n))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
                Ok(i64::try_from(n).map_or(Field::Other, Field::Int))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Field::Other)
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Field::Str(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Field::Str(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(Field::Str(Cow::Owned(s)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                skip_seq(seq).map(|()| Field::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                skip_map(map).map(|()| Field::Other)
            }
        }
        d.deserialize_any(V)
    }
}

/// `"19.99"` → 1999; at most 2 decimals, no sign, no exponent.
///
/// Cents are `i128` (30 integer digits), but a component has no 128-bit instructions: every multiply and
/// divide is a library call. Amounts that fit in 64 bits, which is all real ones, are worked out in 64 bits.
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
    let value = |t: &str| t.bytes().fold(0u64, |n, b| n * 10 + u64::from(b - b'0'));
    let frac = value(frac) * if frac.len() == 1 { 10 } else { 1 };
    if int.len() <= 16 {
        return Some(i128::from(value(int) * 100 + frac));
    }
    let int: i128 = int.parse().ok()?;
    Some(int * 100 + i128::from(frac))
}

/// `cents × qty`, in 64 bits when it fits.
fn times(cents: i128, qty: i64) -> i128 {
    match i64::try_from(cents).ok().and_then(|c| c.checked_mul(qty)) {
        Some(product) => i128::from(product),
        None => cents * i128::from(qty),
    }
}

/// 1999 → `"19.99"`, written digit by digit (no `format!`, no 128-bit division when the amount fits in 64
/// bits).
fn format_cents(cents: i128) -> String {
    let mut out = String::with_capacity(16);
    if cents < 0 {
        out.push('-');
    }
    let abs = cents.unsigned_abs();
    let (mut units, hundredths) = match u64::try_from(abs) {
        Ok(abs) => (u128::from(abs / 100), (abs % 100) as u8),
        Err(_) => (abs / 100, (abs % 100) as u8),
    };
    let mut digits = [0u8; 40];
    let mut at = digits.len();
    // 128-bit steps only while the rest does not fit in 64 bits.
    while u64::try_from(units).is_err() {
        at -= 1;
        digits[at] = b'0' + (units % 10) as u8;
        units /= 10;
    }
    let mut n = units as u64;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&digits[at..]).expect("ASCII digits"));
    out.push('.');
    out.push((b'0' + hundredths / 10) as char);
    out.push((b'0' + hundredths % 10) as char);
    out
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
        assert_eq!(parse_cents("1234567890123456.78"), Some(123456789012345678));
        assert_eq!(
            parse_cents("123456789012345678901234567890.12"),
            Some(12345678901234567890123456789012)
        );
        assert_eq!(times(1999, 3), 5997);
        assert_eq!(times(i128::from(i64::MAX), 2), i128::from(i64::MAX) * 2);
        for bad in ["", ".5", "5.", "1.234", "-1", "1e3", "x"] {
            assert_eq!(parse_cents(bad), None, "{bad}");
        }
        for cents in [4498, 5, 0, -7, -12345, 100, i128::from(u64::MAX) * 1000 + 1] {
            let abs = cents.unsigned_abs();
            let sign = if cents < 0 { "-" } else { "" };
            assert_eq!(
                format_cents(cents),
                format!("{sign}{}.{:02}", abs / 100, abs % 100)
            );
        }
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

    /// The typed reading sees what a `serde_json::Value` shows: the last of repeated members, escapes decoded,
    /// integers beyond `i64` not integers, non-objects named as such, `shipping` kept whole in its order.
    #[test]
    fn typed_reading_matches_json_values() {
        let order = |extra: &str, lines: &str| {
            format!(
                r#"{{"order_id":"o-1","placed_at":"2026-11-21T10:15:30Z","currency":"EUR",{extra}"lines":{lines}}}"#
            )
        };
        let emitted = |payload: &str| match order_rows(payload.as_bytes()) {
            Ok(Outcome::Emit(rows)) => rows,
            other => panic!("{payload}: {other:?}"),
        };
        let cell = |row: &weir_rule::Row, name: &str| {
            row.cells.iter().find(|(k, _)| k == name).unwrap().1.clone()
        };
        let line = r#"[{"sku":"A","qty":2,"unit_price":"1.50"}]"#;

        let rows = emitted(&order(r#""order_id":"o-2","#, line));
        assert_eq!(
            cell(&rows[0], "order_id"),
            weir_rule::Value::Text("o-2".into())
        );
        // A member name with an escape is the name it decodes to.
        let rows = emitted(&order(r#""order\u005fid":"o-3","#, line));
        assert_eq!(
            cell(&rows[0], "order_id"),
            weir_rule::Value::Text("o-3".into())
        );
        let rows = emitted(&order(
            r#""customer_id":"c\u002d1","ignored":[{"x":[1e5,null]}],"#,
            line,
        ));
        assert_eq!(
            cell(&rows[0], "customer_id"),
            weir_rule::Value::Text("c-1".into())
        );
        let rows = emitted(&order(
            r#""shipping": {"country": "ES", "city": "M"},"#,
            line,
        ));
        assert_eq!(
            cell(&rows[0], "shipping"),
            weir_rule::Value::Json(r#"{"country":"ES","city":"M"}"#.into())
        );
        assert_eq!(
            cell(&rows[0], "country"),
            weir_rule::Value::Text("ES".into())
        );
        assert_eq!(
            order_rows(order(r#""test":false,"test":true,"#, line).as_bytes()),
            Ok(Outcome::Drop("test order".into()))
        );

        let rejected = |payload: &str| order_rows(payload.as_bytes()).err().expect(payload);
        assert_eq!(rejected("[1,2]"), "payload: not a JSON object");
        assert_eq!(rejected(r#""text""#), "payload: not a JSON object");
        assert!(rejected(&order("", "[5]")).starts_with("lines[0].qty"));
        let huge = r#"[{"sku":"A","qty":18446744073709551615,"unit_price":"1.50"}]"#;
        assert!(rejected(&order("", huge)).starts_with("lines[0].qty"));
        assert!(rejected(&order(r#""order_id":7,"#, line)).starts_with("order_id: must be"));
        assert!(rejected(&order("", r#"{"a":1}"#)).starts_with("lines: missing"));
        assert!(
            rejected(&order("", line).replace("}]}", "}]")).starts_with("payload: not valid JSON")
        );
        // Members the rule does not read are held to a `Value`'s limits too: nesting and number range.
        let deep = format!(r#""x":{}1{},"#, "[".repeat(200), "]".repeat(200));
        assert!(rejected(&order(&deep, line)).contains("recursion limit"));
        assert!(rejected(&order(r#""x":[1e400],"#, line)).contains("number out of range"));
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
