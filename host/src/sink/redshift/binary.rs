//! The `postgres` kind's stage fill: `COPY stage FROM STDIN (FORMAT binary)`. PostgreSQL only (Redshift has no
//! `COPY FROM STDIN`); the `redshift` kind keeps its portable INSERT and COPY-from-S3 fills.
//!
//! The stream follows PostgreSQL's documented binary copy format (header, one tuple per row — a 16-bit field
//! count, then per field a 32-bit length, -1 for NULL, and the value in the type's binary send/receive form —
//! and a trailer). Rows are written straight from the validated cells into one buffer per chunk: no bind per
//! cell, no SQL text to parse, no casts; the server checks lengths, ranges and precision as an INSERT does.

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::SinkExt;

use super::*;

/// The binary copy signature, flags (none) and header extension length (none).
const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 00:00:00 UTC).
const PG_EPOCH_US: i64 = 946_684_800_000_000;
/// Bytes sent to the server per `CopyData` message, about.
const CHUNK_BYTES: usize = 1 << 20;

/// The `COPY … FROM STDIN (FORMAT binary)` statement for `sql`'s stage.
pub(super) fn copy_binary_sql(sql: &TableSql) -> String {
    format!(
        "COPY {} ({}) FROM STDIN (FORMAT binary)",
        sql.stage,
        sql.columns.join(", ")
    )
}

/// Fills the (emptied) stage with `rows` by binary `COPY`. `loaded_at_us` is every row's load time.
pub(super) async fn copy_binary_stage(
    tx: &tokio_postgres::Transaction<'_>,
    sql: &TableSql,
    rows: &[(&CheckedRow, Lineage<'_>)],
    loaded_at_us: i64,
) -> Result<(), SinkError> {
    let sink = tx
        .copy_in::<_, Bytes>(traced(&copy_binary_sql(sql)))
        .await
        .map_err(classify)?;
    let mut sink = std::pin::pin!(sink);
    let mut buf = BytesMut::with_capacity(CHUNK_BYTES + 64 * 1024);
    buf.put_slice(HEADER);
    for (row, lineage) in rows {
        encode_row(&mut buf, sql, &row.cells, lineage, loaded_at_us)?;
        if buf.len() >= CHUNK_BYTES {
            sink.feed(buf.split().freeze()).await.map_err(classify)?;
        }
    }
    buf.put_i16(-1);
    sink.feed(buf.freeze()).await.map_err(classify)?;
    sink.as_mut().finish().await.map_err(classify)?;
    Ok(())
}

/// One tuple: the declared columns' cells, then the lineage columns.
fn encode_row(
    buf: &mut BytesMut,
    sql: &TableSql,
    cells: &[Cell],
    lineage: &Lineage<'_>,
    loaded_at_us: i64,
) -> Result<(), SinkError> {
    let width = sql.columns.len();
    buf.put_i16(i16::try_from(width).map_err(|_| SinkError::Permanent("too many columns".into()))?);
    for (c, (cell, ty)) in cells.iter().zip(&sql.types).enumerate() {
        encode_cell(buf, *ty, cell)
            .map_err(|e| SinkError::Data(format!("column {}: {e}", sql.columns[c])))?;
    }
    for text in [lineage.record, lineage.batch, lineage.rule] {
        put_field(buf, text.as_bytes());
    }
    buf.put_i32(8);
    buf.put_i64(loaded_at_us - PG_EPOCH_US);
    Ok(())
}

fn put_field(buf: &mut BytesMut, bytes: &[u8]) {
    buf.put_i32(bytes.len() as i32);
    buf.put_slice(bytes);
}

/// One validated cell in the binary form of its column type. Validation gives each type one kind of cell
/// (`schema::check_value`); anything else would be a bug, reported as a refused value, never a panic.
pub(super) fn encode_cell(buf: &mut BytesMut, ty: ColumnType, cell: &Cell) -> Result<(), String> {
    match (ty, cell) {
        (_, Cell::Null) => buf.put_i32(-1),
        (ColumnType::Boolean, Cell::Bool(b)) => {
            buf.put_i32(1);
            buf.put_u8(u8::from(*b));
        }
        (ColumnType::SmallInt, Cell::Int(i)) => {
            let v = i16::try_from(*i).map_err(|_| format!("{i} is out of range for smallint"))?;
            buf.put_i32(2);
            buf.put_i16(v);
        }
        (ColumnType::Integer, Cell::Int(i)) => {
            let v = i32::try_from(*i).map_err(|_| format!("{i} is out of range for integer"))?;
            buf.put_i32(4);
            buf.put_i32(v);
        }
        (ColumnType::BigInt, Cell::Int(i)) => {
            buf.put_i32(8);
            buf.put_i64(*i);
        }
        (ColumnType::Real, Cell::Float(x)) => {
            buf.put_i32(4);
            buf.put_f32(*x as f32);
        }
        (ColumnType::Double, Cell::Float(x)) => {
            buf.put_i32(8);
            buf.put_f64(*x);
        }
        (ColumnType::Decimal { scale, .. }, Cell::Decimal(text)) => numeric(buf, text, scale)?,
        (ColumnType::Varchar(_), Cell::Text(text)) => put_field(buf, text.as_bytes()),
        (ColumnType::Timestamp | ColumnType::TimestampTz, Cell::TimestampUs(us)) => {
            buf.put_i32(8);
            buf.put_i64(us - PG_EPOCH_US);
        }
        (ColumnType::Super, Cell::Json(text)) => {
            // jsonb's binary form: a version byte (1), then the JSON text.
            buf.put_i32(text.len() as i32 + 1);
            buf.put_u8(1);
            buf.put_slice(text.as_bytes());
        }
        (ty, cell) => return Err(format!("a {} value for a {ty} column", cell_kind(cell))),
    }
    Ok(())
}

fn cell_kind(cell: &Cell) -> &'static str {
    match cell {
        Cell::Null => "null",
        Cell::Bool(_) => "boolean",
        Cell::Int(_) => "integer",
        Cell::Float(_) => "float",
        Cell::Decimal(_) => "decimal",
        Cell::Text(_) => "text",
        Cell::TimestampUs(_) => "timestamp",
        Cell::Json(_) => "json",
    }
}

/// A normalized decimal (`-?digits(.digits)?`) in `numeric`'s binary form: digit count, weight (of the first
/// base-10,000 digit), sign, display scale, then the base-10,000 digits without leading or trailing zeros.
fn numeric(buf: &mut BytesMut, text: &str, scale: u8) -> Result<(), String> {
    let (negative, body) = match text.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, text),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return Err(format!("`{text}` is not a normalized decimal"));
    }
    let int = int.trim_start_matches('0');
    // Base-10,000 digits: the integer part padded on the left, the fraction on the right, to whole groups.
    let int_pad = (4 - int.len() % 4) % 4;
    let frac_pad = (4 - frac.len() % 4) % 4;
    let digits: Vec<u8> = std::iter::repeat_n(b'0', int_pad)
        .chain(int.bytes())
        .chain(frac.bytes())
        .chain(std::iter::repeat_n(b'0', frac_pad))
        .collect();
    let mut groups: Vec<i16> = digits
        .chunks(4)
        .map(|g| g.iter().fold(0i16, |n, d| n * 10 + i16::from(d - b'0')))
        .collect();
    let mut weight = ((int_pad + int.len()) / 4) as i32 - 1;
    let leading = groups.iter().take_while(|g| **g == 0).count();
    groups.drain(..leading);
    weight -= leading as i32;
    while groups.last() == Some(&0) {
        groups.pop();
    }
    if groups.is_empty() {
        weight = 0;
    }
    let len = 8 + 2 * groups.len();
    buf.put_i32(len as i32);
    buf.put_i16(groups.len() as i16);
    buf.put_i16(weight as i16);
    buf.put_u16(if negative && !groups.is_empty() {
        0x4000
    } else {
        0
    });
    buf.put_u16(u16::from(scale));
    for g in groups {
        buf.put_i16(g);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(ty: ColumnType, cell: Cell) -> Vec<u8> {
        let mut buf = BytesMut::new();
        encode_cell(&mut buf, ty, &cell).unwrap();
        buf.to_vec()
    }

    /// `numeric` as PostgreSQL's `numeric_send` writes it (digits, weight, sign, dscale, base-10,000 digits).
    #[test]
    fn numeric_binary_form() {
        let dec = |t: &str, scale: u8| {
            encoded(
                ColumnType::Decimal {
                    precision: 38,
                    scale,
                },
                Cell::Decimal(t.into()),
            )
        };
        // 44.90: digits 44 | 9000, weight 0, scale 2.
        assert_eq!(
            dec("44.90", 2),
            [0, 0, 0, 12, 0, 2, 0, 0, 0, 0, 0, 2, 0, 44, 0x23, 0x28]
        );
        // -12345.5: 1 | 2345 | 5000, weight 1, negative.
        assert_eq!(
            dec("-12345.5", 1),
            [
                0, 0, 0, 14, 0, 3, 0, 1, 0x40, 0, 0, 1, 0, 1, 0x09, 0x29, 0x13, 0x88
            ]
        );
        // 0.0001: one digit 1 at weight -1.
        assert_eq!(
            dec("0.0001", 4),
            [0, 0, 0, 10, 0, 1, 0xff, 0xff, 0, 0, 0, 4, 0, 1]
        );
        // 0.00000: no digits; zero is never negative.
        assert_eq!(dec("-0.00000", 5), [0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 5]);
        // 10000: one digit 1 at weight 1 (trailing zero digits dropped).
        assert_eq!(dec("10000", 0), [0, 0, 0, 10, 0, 1, 0, 1, 0, 0, 0, 0, 0, 1]);
        let mut buf = BytesMut::new();
        assert!(
            encode_cell(
                &mut buf,
                ColumnType::Decimal {
                    precision: 5,
                    scale: 0
                },
                &Cell::Decimal("1e5".into())
            )
            .is_err()
        );
    }

    /// Timestamps count from 2000-01-01; jsonb carries its version byte; a mismatched cell is refused.
    #[test]
    fn other_binary_forms() {
        assert_eq!(
            encoded(ColumnType::TimestampTz, Cell::TimestampUs(PG_EPOCH_US + 1)),
            [0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1]
        );
        assert_eq!(
            encoded(ColumnType::Super, Cell::Json("[]".into())),
            [0, 0, 0, 3, 1, b'[', b']']
        );
        assert_eq!(
            encoded(ColumnType::SmallInt, Cell::Int(-2)),
            [0, 0, 0, 2, 0xff, 0xfe]
        );
        assert_eq!(
            encoded(ColumnType::Integer, Cell::Null),
            [0xff, 0xff, 0xff, 0xff]
        );
        let mut buf = BytesMut::new();
        assert!(encode_cell(&mut buf, ColumnType::Integer, &Cell::Text("1".into())).is_err());
        assert!(encode_cell(&mut buf, ColumnType::SmallInt, &Cell::Int(1 << 20)).is_err());
    }
}
