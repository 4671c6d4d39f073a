//! Contract 0.2's packed outcome buffer (layout in `wit/v0.2/rules.wit` and docs/CONTRACT.md), read in one
//! pass straight into checked rows.
//!
//! - The buffer is copied out of the instance's linear memory once, so its size is bounded by the memory cap.
//! - What the host builds from it is bounded too: the decoded rows may take at most
//!   [`DECODE_BUDGET_PER_CAP`] × the memory cap. A buffer of nothing but NULL cells would otherwise turn each
//!   byte into a 32-byte cell; past the budget the call fails like a trap, and the batch is split until the
//!   pieces fit (or one record is dead-lettered with the reason).
//! - A buffer that does not parse fails the whole call (the caller isolates the records by bisection); a cell
//!   that parses but does not fit its column rejects only its record, with the table and column named, by the
//!   same checks as a 0.1 value ([`crate::schema::check_value_ref`]).

use super::SourceRecord;
use super::validate::{CheckedRow, RecordOutcome, RejectStage, check_keys};
use crate::schema::{Cell, TableSpec, ValueRef, check_value_ref};

/// The decoded rows of one call may take at most this many times the instance's memory cap.
pub const DECODE_BUDGET_PER_CAP: usize = 4;

/// Outcome tags.
const EMIT: u8 = 0;
const DROP: u8 = 1;
const REJECT: u8 = 2;
const INVALID: u8 = 3;

/// Cell tags.
const NULL: u8 = 0;
const BOOLEAN: u8 = 1;
const INTEGER: u8 = 2;
const FLOAT: u8 = 3;
const DECIMAL: u8 = 4;
const TEXT: u8 = 5;
const TIMESTAMP: u8 = 6;
const JSON: u8 = 7;

/// What a packed buffer is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Declared<'a> {
    /// The declared tables, in the order `init` received them.
    pub tables: &'a [TableSpec],
    /// Most rows one record may emit.
    pub max_rows: usize,
    /// Most bytes the decoded rows may take.
    pub budget_bytes: usize,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn malformed(&self, what: &str) -> String {
        format!(
            "rule returned a malformed packed buffer ({what} at byte {} of {})",
            self.pos,
            self.buf.len()
        )
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        match self.buf.get(self.pos..).and_then(|rest| rest.get(..n)) {
            Some(bytes) => {
                self.pos += n;
                Ok(bytes)
            }
            None => Err(self.malformed(&format!("{what} runs past the end"))),
        }
    }

    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    /// A `str`: its bytes, not yet checked as UTF-8.
    fn bytes(&mut self, what: &str) -> Result<&'a [u8], String> {
        let n = self.u32(what)? as usize;
        self.take(n, what)
    }

    fn reason(&mut self) -> Result<String, String> {
        Ok(String::from_utf8_lossy(self.bytes("reason")?).into_owned())
    }
}

/// The batch as the `rule-packed-batch` world takes it (layout in `wit/v0.2/rules.wit`): one buffer, the
/// records' fields in order, so an interpreted guest reads in place what its generated bindings would otherwise
/// lift string by string. `Err` names a field longer than a `u32` length can say (the call then fails like a
/// trap, and the record that causes it is isolated and dead-lettered).
pub fn encode_batch(records: &[SourceRecord]) -> Result<Vec<u8>, String> {
    fn len(out: &mut Vec<u8>, n: usize, what: &str) -> Result<(), String> {
        let n = u32::try_from(n)
            .map_err(|_| format!("record {what} of {n} bytes is too large for a rule"))?;
        out.extend_from_slice(&n.to_le_bytes());
        Ok(())
    }
    fn bytes(out: &mut Vec<u8>, b: &[u8], what: &str) -> Result<(), String> {
        len(out, b.len(), what)?;
        out.extend_from_slice(b);
        Ok(())
    }
    let size: usize = records
        .iter()
        .map(|r| {
            24 + r.id.len()
                + r.partition_key.len()
                + r.payload.len()
                + r.attributes
                    .iter()
                    .map(|(k, v)| 8 + k.len() + v.len())
                    .sum::<usize>()
        })
        .sum();
    let mut out = Vec::with_capacity(4 + size);
    len(&mut out, records.len(), "count")?;
    for r in records {
        bytes(&mut out, r.id.as_bytes(), "id")?;
        bytes(&mut out, r.partition_key.as_bytes(), "partition key")?;
        out.extend_from_slice(&r.arrived_at_ms.to_le_bytes());
        len(&mut out, r.attributes.len(), "attribute count")?;
        for (name, value) in &r.attributes {
            bytes(&mut out, name.as_bytes(), "attribute")?;
            bytes(&mut out, value.as_bytes(), "attribute")?;
        }
        bytes(&mut out, &r.payload, "payload")?;
    }
    Ok(out)
}

/// Decodes a call's packed buffer into one checked outcome per record.
pub fn decode(
    buf: &[u8],
    records: usize,
    declared: Declared<'_>,
) -> Result<Vec<RecordOutcome>, String> {
    let mut r = Reader { buf, pos: 0 };
    let mut spent = records.saturating_mul(size_of::<RecordOutcome>());
    let over_budget = || {
        format!(
            "rule output decodes to more than {} MiB ({DECODE_BUDGET_PER_CAP} × the memory cap)",
            declared.budget_bytes >> 20
        )
    };
    if spent > declared.budget_bytes {
        return Err(over_budget());
    }
    let mut out = Vec::with_capacity(records);
    for n in 0..records {
        if r.pos == buf.len() {
            return Err(miscount(n, records));
        }
        let outcome = match r.u8("outcome tag")? {
            EMIT => {
                let rows = r.u32("row count")? as usize;
                let mut verdict: Result<Vec<CheckedRow>, String> = if rows > declared.max_rows {
                    Err(format!(
                        "rule emitted {rows} rows for one record; the limit is {}",
                        declared.max_rows
                    ))
                } else {
                    Ok(Vec::with_capacity(rows))
                };
                spent = spent.saturating_add(rows.min(declared.max_rows) * size_of::<CheckedRow>());
                for _ in 0..rows {
                    // Once the record is rejected, its remaining rows are only skipped over.
                    let keep = verdict.is_ok();
                    match row(&mut r, declared.tables, keep, &mut spent)? {
                        Some(Ok(checked)) => {
                            if let Ok(rows) = verdict.as_mut() {
                                rows.push(checked)
                            }
                        }
                        Some(Err(reason)) => verdict = Err(reason),
                        None => {}
                    }
                    if spent > declared.budget_bytes {
                        return Err(over_budget());
                    }
                }
                match verdict {
                    Ok(rows) => RecordOutcome::Emit(rows),
                    Err(reason) => RecordOutcome::Reject(RejectStage::Validate, reason),
                }
            }
            DROP => RecordOutcome::Drop(r.reason()?),
            REJECT => RecordOutcome::Reject(RejectStage::Rule, r.reason()?),
            INVALID => RecordOutcome::Reject(RejectStage::Validate, r.reason()?),
            tag => {
                r.pos -= 1;
                return Err(r.malformed(&format!("unknown outcome tag {tag}")));
            }
        };
        if let RecordOutcome::Drop(s) | RecordOutcome::Reject(_, s) = &outcome {
            spent = spent.saturating_add(s.len());
            if spent > declared.budget_bytes {
                return Err(over_budget());
            }
        }
        out.push(outcome);
    }
    if r.pos != buf.len() {
        // Whole outcomes after the last one: say how many, as for a 0.1 rule that miscounts.
        let at = r.pos;
        let mut extra = 0;
        let whole = loop {
            if r.pos == buf.len() {
                break true;
            }
            if skip_outcome(&mut r, declared.tables).is_err() {
                break false;
            }
            extra += 1;
        };
        if whole {
            return Err(miscount(records + extra, records));
        }
        r.pos = at;
        return Err(r.malformed(&format!(
            "{} bytes after the last of {records} outcomes",
            buf.len() - r.pos
        )));
    }
    Ok(out)
}

fn miscount(got: usize, records: usize) -> String {
    format!(
        "rule returned {got} outcomes for {records} records (it must return exactly one per record)"
    )
}

/// Reads over one outcome without keeping it.
fn skip_outcome(r: &mut Reader<'_>, tables: &[TableSpec]) -> Result<(), String> {
    match r.u8("outcome tag")? {
        EMIT => {
            let mut spent = 0;
            for _ in 0..r.u32("row count")? {
                row(r, tables, false, &mut spent)?;
            }
        }
        DROP | REJECT | INVALID => {
            r.bytes("reason")?;
        }
        tag => return Err(format!("unknown outcome tag {tag}")),
    }
    Ok(())
}

/// One row: `Ok(None)` when only skipped over (`keep` false), `Ok(Some(Err))` when it breaks its table,
/// `Err` when the buffer does not parse.
fn row(
    r: &mut Reader<'_>,
    tables: &[TableSpec],
    keep: bool,
    spent: &mut usize,
) -> Result<Option<Result<CheckedRow, String>>, String> {
    let t = r.u32("table index")? as usize;
    let Some(spec) = tables.get(t) else {
        r.pos -= 4;
        return Err(r.malformed(&format!(
            "table index {t}, but {} tables are declared",
            tables.len()
        )));
    };
    let mut cells: Vec<Cell> = Vec::with_capacity(if keep { spec.columns.len() } else { 0 });
    let mut error: Option<String> = None;
    if keep {
        *spent = spent.saturating_add(spec.columns.len() * size_of::<Cell>());
    }
    for (column, ty) in &spec.columns {
        let value = cell(r)?;
        if !keep || error.is_some() {
            continue;
        }
        let checked = match value {
            Ok(v) => check_value_ref(*ty, v),
            Err(what) => Err(what),
        };
        match checked {
            Ok(c) => {
                if let Cell::Decimal(s) | Cell::Text(s) | Cell::Json(s) = &c {
                    *spent = spent.saturating_add(s.len());
                }
                cells.push(c)
            }
            Err(m) => error = Some(format!("table {}, column {column}: {m}", spec.name)),
        }
    }
    if !keep {
        return Ok(None);
    }
    if let Some(reason) = error {
        return Ok(Some(Err(reason)));
    }
    Ok(Some(
        check_keys(spec, &cells).map(|()| CheckedRow { table: t, cells }),
    ))
}

/// One cell: `Ok(Err)` for text that is not UTF-8 (the record's fault), `Err` when the buffer does not parse.
fn cell<'a>(r: &mut Reader<'a>) -> Result<Result<ValueRef<'a>, String>, String> {
    let text = |bytes: &'a [u8]| {
        std::str::from_utf8(bytes).map_err(|e| format!("text is not valid UTF-8 ({e})"))
    };
    Ok(Ok(match r.u8("cell tag")? {
        NULL => ValueRef::Null,
        BOOLEAN => match r.u8("boolean")? {
            0 => ValueRef::Boolean(false),
            1 => ValueRef::Boolean(true),
            b => {
                r.pos -= 1;
                return Err(r.malformed(&format!("boolean byte {b}")));
            }
        },
        INTEGER => ValueRef::Integer(r.u64("integer")? as i64),
        FLOAT => ValueRef::Float(f64::from_bits(r.u64("float")?)),
        TIMESTAMP => ValueRef::TimestampUs(r.u64("timestamp")? as i64),
        tag @ (DECIMAL | TEXT | JSON) => {
            let s = match text(r.bytes("string")?) {
                Ok(s) => s,
                Err(e) => return Ok(Err(e)),
            };
            match tag {
                DECIMAL => ValueRef::Decimal(s),
                TEXT => ValueRef::Text(s),
                _ => ValueRef::Json(s),
            }
        }
        tag => {
            r.pos -= 1;
            return Err(r.malformed(&format!("unknown cell tag {tag}")));
        }
    }))
}

/// Encodes outcomes in the packed layout: what the guest SDKs do, for the host's own tests and benches.
#[cfg(test)]
pub mod encode {
    use super::*;

    /// One cell to encode.
    #[derive(Debug, Clone)]
    pub enum V<'a> {
        /// NULL.
        Null,
        /// Boolean.
        Bool(bool),
        /// Integer.
        Int(i64),
        /// Float.
        Float(f64),
        /// Decimal text.
        Decimal(&'a str),
        /// Text (bytes, so that tests can send bytes that are not UTF-8).
        Text(&'a [u8]),
        /// Timestamp, µs.
        Ts(i64),
        /// JSON text.
        Json(&'a str),
    }

    fn str(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s);
    }

    /// Appends an emit of `rows` (table index, cells).
    pub fn emit(out: &mut Vec<u8>, rows: &[(u32, Vec<V<'_>>)]) {
        out.push(EMIT);
        out.extend_from_slice(&(rows.len() as u32).to_le_bytes());
        for (t, cells) in rows {
            out.extend_from_slice(&t.to_le_bytes());
            for c in cells {
                match c {
                    V::Null => out.push(NULL),
                    V::Bool(b) => out.extend_from_slice(&[BOOLEAN, *b as u8]),
                    V::Int(i) => {
                        out.push(INTEGER);
                        out.extend_from_slice(&i.to_le_bytes())
                    }
                    V::Float(x) => {
                        out.push(FLOAT);
                        out.extend_from_slice(&x.to_le_bytes())
                    }
                    V::Ts(us) => {
                        out.push(TIMESTAMP);
                        out.extend_from_slice(&us.to_le_bytes())
                    }
                    V::Decimal(s) => {
                        out.push(DECIMAL);
                        str(out, s.as_bytes())
                    }
                    V::Text(s) => {
                        out.push(TEXT);
                        str(out, s)
                    }
                    V::Json(s) => {
                        out.push(JSON);
                        str(out, s.as_bytes())
                    }
                }
            }
        }
    }

    /// Appends a drop (1), reject (2) or invalid (3) with `reason`.
    pub fn reason(out: &mut Vec<u8>, tag: u8, reason: &str) {
        out.push(tag);
        str(out, reason.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::encode::{V, emit, reason};
    use super::*;
    use crate::schema::ColumnType;

    fn tables() -> Vec<TableSpec> {
        vec![
            TableSpec::new(
                "t".into(),
                vec![
                    ("id".into(), ColumnType::Varchar(4)),
                    ("n".into(), ColumnType::Integer),
                    (
                        "amount".into(),
                        ColumnType::Decimal {
                            precision: 6,
                            scale: 2,
                        },
                    ),
                ],
                vec!["id".into()],
            ),
            TableSpec::new(
                "u".into(),
                vec![("at".into(), ColumnType::Timestamp)],
                vec!["at".into()],
            ),
        ]
    }

    fn run(buf: &[u8], records: usize, max_rows: usize) -> Result<Vec<RecordOutcome>, String> {
        let t = tables();
        decode(
            buf,
            records,
            Declared {
                tables: &t,
                max_rows,
                budget_bytes: 1 << 20,
            },
        )
    }

    fn reject(o: &RecordOutcome) -> &str {
        match o {
            RecordOutcome::Reject(RejectStage::Validate, r) => r,
            other => panic!("not a validation reject: {other:?}"),
        }
    }

    /// The packed batch is laid out byte for byte as `wit/v0.2/rules.wit` specifies.
    #[test]
    fn a_batch_packs_as_specified() {
        let records = [
            SourceRecord {
                id: "a".into(),
                partition_key: "pk".into(),
                arrived_at_ms: -2,
                attributes: vec![("k".into(), "v".into())],
                payload: b"{}".to_vec(),
            },
            SourceRecord {
                id: String::new(),
                partition_key: String::new(),
                arrived_at_ms: 1,
                attributes: vec![],
                payload: vec![0xff],
            },
        ];
        let mut want = vec![2, 0, 0, 0];
        want.extend([1, 0, 0, 0, b'a', 2, 0, 0, 0, b'p', b'k']);
        want.extend((-2i64).to_le_bytes());
        want.extend([1, 0, 0, 0, 1, 0, 0, 0, b'k', 1, 0, 0, 0, b'v']);
        want.extend([2, 0, 0, 0, b'{', b'}']);
        want.extend([0, 0, 0, 0, 0, 0, 0, 0]);
        want.extend(1i64.to_le_bytes());
        want.extend([0, 0, 0, 0, 1, 0, 0, 0, 0xff]);
        assert_eq!(encode_batch(&records).unwrap(), want);
        assert_eq!(encode_batch(&[]).unwrap(), vec![0, 0, 0, 0]);
    }

    /// Every outcome kind decodes; cells are checked and normalized as 0.1 values are.
    #[test]
    fn outcomes_decode_and_cells_are_checked() {
        let mut b = Vec::new();
        emit(
            &mut b,
            &[
                (0, vec![V::Text(b"a"), V::Int(7), V::Decimal("1.5")]),
                (1, vec![V::Ts(1_700_000_000_000_000)]),
            ],
        );
        emit(&mut b, &[]);
        reason(&mut b, 1, "test order");
        reason(&mut b, 2, "payload: not JSON");
        reason(
            &mut b,
            3,
            "table `x` is not declared in the sink configuration",
        );
        let o = run(&b, 5, 10).unwrap();
        assert_eq!(
            o[0],
            RecordOutcome::Emit(vec![
                CheckedRow {
                    table: 0,
                    cells: vec![
                        Cell::Text("a".into()),
                        Cell::Int(7),
                        Cell::Decimal("1.50".into())
                    ]
                },
                CheckedRow {
                    table: 1,
                    cells: vec![Cell::TimestampUs(1_700_000_000_000_000)]
                }
            ])
        );
        assert_eq!(o[1], RecordOutcome::Emit(vec![]));
        assert_eq!(o[2], RecordOutcome::Drop("test order".into()));
        assert_eq!(
            o[3],
            RecordOutcome::Reject(RejectStage::Rule, "payload: not JSON".into())
        );
        assert!(reject(&o[4]).contains("not declared"));
    }

    /// Every cell that does not fit its column rejects its record only, naming table and column; the next
    /// record still decodes.
    #[test]
    fn bad_cells_reject_their_record_with_the_column_named() {
        let cases: Vec<(Vec<V>, &str)> = vec![
            (
                vec![V::Text(b"toolong"), V::Null, V::Null],
                "table t, column id: text is 7 UTF-8 bytes, longer than varchar(4)",
            ),
            (
                vec![V::Text(b"a\0"), V::Null, V::Null],
                "table t, column id: text contains a NUL",
            ),
            (
                vec![V::Text(&[0xff, 0xfe]), V::Null, V::Null],
                "table t, column id: text is not valid UTF-8",
            ),
            (
                vec![V::Text(b"a"), V::Int(1 << 40), V::Null],
                "table t, column n: 1099511627776 is out of range for integer",
            ),
            (
                vec![V::Text(b"a"), V::Text(b"1"), V::Null],
                "table t, column n: expected integer, got text",
            ),
            (
                vec![V::Text(b"a"), V::Null, V::Decimal("1.234")],
                "table t, column amount:",
            ),
            (
                vec![V::Null, V::Int(1), V::Null],
                "table t, column id: primary key column is null or missing",
            ),
            (
                vec![V::Text(b"a"), V::Null, V::Json("{")],
                "table t, column amount: expected decimal(6,2), got json",
            ),
        ];
        for (cells, want) in cases {
            let mut b = Vec::new();
            emit(&mut b, &[(0, cells.clone()), (0, cells.clone())]);
            emit(&mut b, &[(0, vec![V::Text(b"ok"), V::Null, V::Null])]);
            let o = run(&b, 2, 10).unwrap();
            assert!(
                reject(&o[0]).starts_with(want),
                "{:?}: {}",
                cells,
                reject(&o[0])
            );
            assert!(matches!(&o[1], RecordOutcome::Emit(rows) if rows.len() == 1));
        }
        let mut b = Vec::new();
        emit(&mut b, &[(1, vec![V::Ts(i64::MAX)])]);
        assert!(reject(&run(&b, 1, 10).unwrap()[0]).starts_with("table u, column at: timestamp"));
    }

    /// Too many rows reject the record, and its rows are skipped so the next record decodes.
    #[test]
    fn too_many_rows() {
        let row = (0, vec![V::Text(b"a"), V::Null, V::Null]);
        let mut b = Vec::new();
        emit(&mut b, &[row.clone(), row.clone(), row.clone()]);
        emit(&mut b, std::slice::from_ref(&row));
        let o = run(&b, 2, 2).unwrap();
        assert_eq!(
            reject(&o[0]),
            "rule emitted 3 rows for one record; the limit is 2"
        );
        assert!(matches!(&o[1], RecordOutcome::Emit(rows) if rows.len() == 1));
    }

    /// A buffer that does not parse fails the call, saying where.
    #[test]
    fn malformed_buffers_fail_the_call() {
        let good = {
            let mut b = Vec::new();
            emit(&mut b, &[(0, vec![V::Text(b"a"), V::Null, V::Null])]);
            b
        };
        let cases: Vec<(Vec<u8>, usize, &str)> = vec![
            (good[..good.len() - 1].to_vec(), 1, "runs past the end"),
            (
                [good.clone(), vec![0]].concat(),
                1,
                "1 bytes after the last of 1 outcomes",
            ),
            (vec![9], 1, "unknown outcome tag 9"),
            (
                vec![0, 1, 0, 0, 0, 7, 0, 0, 0],
                1,
                "table index 7, but 2 tables are declared",
            ),
            (
                vec![0, 1, 0, 0, 0, 1, 0, 0, 0, 42],
                1,
                "unknown cell tag 42",
            ),
            (vec![1, 255, 255, 255, 255], 1, "reason runs past the end"),
            (vec![0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 2], 1, "boolean byte 2"),
        ];
        for (buf, records, want) in cases {
            let e = run(&buf, records, 10).unwrap_err();
            assert!(
                e.contains("malformed packed buffer") && e.contains(want),
                "{want}: {e}"
            );
        }
    }

    /// Too few or too many whole outcomes are counted, as for a 0.1 rule.
    #[test]
    fn miscounts_are_named() {
        let mut b = Vec::new();
        reason(&mut b, 1, "one");
        reason(&mut b, 1, "two");
        assert_eq!(
            run(&b, 1, 10).unwrap_err(),
            "rule returned 2 outcomes for 1 records (it must return exactly one per record)"
        );
        assert_eq!(
            run(&b, 3, 10).unwrap_err(),
            "rule returned 2 outcomes for 3 records (it must return exactly one per record)"
        );
    }

    /// Decoding stops at the budget instead of building rows without bound.
    #[test]
    fn decoding_is_bounded() {
        let t = vec![TableSpec::new(
            "wide".into(),
            (0..100)
                .map(|i| (format!("c{i}"), ColumnType::Integer))
                .collect(),
            vec![],
        )];
        let mut b = Vec::new();
        let rows: Vec<(u32, Vec<V>)> = (0..1000).map(|_| (0, vec![V::Null; 100])).collect();
        emit(&mut b, &rows);
        // 100 KB of buffer would be 3.2 MB of cells.
        let declared = |budget_bytes| Declared {
            tables: &t,
            max_rows: 1000,
            budget_bytes,
        };
        let e = decode(&b, 1, declared(1 << 20)).unwrap_err();
        assert!(e.contains("decodes to more than 1 MiB"), "{e}");
        assert!(decode(&b, 1, declared(8 << 20)).is_ok());
    }
}
