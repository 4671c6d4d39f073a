//! Contract 0.2's packed outcome buffer (layout in `wit/v0.2/rules.wit`): the rule's outcomes, with each row's
//! cells put in the declared column order of its table and no name left in the buffer.
//!
//! A row for an undeclared table or with an undeclared column cannot be packed; its record's outcome becomes
//! `invalid`, with the same wording as the host's own check, and the host dead-letters it as a validation
//! failure. Types are not checked here: every cell carries its type tag and the host checks it.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::bindings::weir::rules::types::Table;
use crate::{Outcome, Row, Value};

/// One declared table, ready for packing.
struct Declared {
    name: String,
    /// Column name → position.
    columns: HashMap<String, usize>,
    width: usize,
}

thread_local! {
    static TABLES: RefCell<Vec<Declared>> = const { RefCell::new(Vec::new()) };
}

/// Keeps the tables `init` received.
pub(crate) fn declare(tables: Vec<Table>) {
    let declared = tables
        .into_iter()
        .map(|t| Declared {
            width: t.columns.len(),
            columns: t
                .columns
                .into_iter()
                .enumerate()
                .map(|(i, c)| (c.name, i))
                .collect(),
            name: t.name,
        })
        .collect();
    TABLES.with(|cell| *cell.borrow_mut() = declared);
}

/// The declared tables' names, in the order the host sent them.
pub fn declared_tables() -> Vec<String> {
    TABLES.with(|cell| cell.borrow().iter().map(|t| t.name.clone()).collect())
}

const EMIT: u8 = 0;
const DROP: u8 = 1;
const REJECT: u8 = 2;
const INVALID: u8 = 3;

/// Packs a batch's outcomes against the declared tables.
pub fn pack(outcomes: &[Outcome]) -> Vec<u8> {
    TABLES.with(|cell| {
        let tables = cell.borrow();
        let mut out = Vec::with_capacity(outcomes.len() * 128);
        let mut slots: Vec<Option<&Value>> = Vec::new();
        for outcome in outcomes {
            match outcome {
                Outcome::Emit(rows) => {
                    let start = out.len();
                    out.push(EMIT);
                    out.extend_from_slice(&(rows.len() as u32).to_le_bytes());
                    for row in rows {
                        if let Err(reason) = pack_row(&tables, row, &mut slots, &mut out) {
                            out.truncate(start);
                            reason_of(&mut out, INVALID, &reason);
                            break;
                        }
                    }
                }
                Outcome::Drop(reason) => reason_of(&mut out, DROP, reason),
                Outcome::Reject(reason) => reason_of(&mut out, REJECT, reason),
            }
        }
        out
    })
}

fn reason_of(out: &mut Vec<u8>, tag: u8, reason: &str) {
    out.push(tag);
    string(out, reason);
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Printable for a message: at most 64 characters, escaped.
fn printable(s: &str) -> String {
    s.chars()
        .take(64)
        .collect::<String>()
        .escape_debug()
        .to_string()
}

fn pack_row<'a>(
    tables: &[Declared],
    row: &'a Row,
    slots: &mut Vec<Option<&'a Value>>,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let Some(t) = tables.iter().position(|t| t.name == row.table) else {
        return Err(format!(
            "table `{}` is not declared in the sink configuration",
            printable(&row.table)
        ));
    };
    let table = &tables[t];
    slots.clear();
    slots.resize(table.width, None);
    for (column, value) in &row.cells {
        let Some(&c) = table.columns.get(column.as_ref()) else {
            return Err(format!(
                "table {}, column `{}`: not a declared column",
                table.name,
                printable(column)
            ));
        };
        if slots[c].is_some() {
            return Err(format!(
                "table {}, column {column}: set twice in one row",
                table.name
            ));
        }
        slots[c] = Some(value);
    }
    out.extend_from_slice(&(t as u32).to_le_bytes());
    for slot in slots.iter() {
        match slot {
            None | Some(Value::Null) => out.push(0),
            Some(Value::Boolean(b)) => out.extend_from_slice(&[1, *b as u8]),
            Some(Value::Integer(i)) => {
                out.push(2);
                out.extend_from_slice(&i.to_le_bytes());
            }
            Some(Value::Float(x)) => {
                out.push(3);
                out.extend_from_slice(&x.to_le_bytes());
            }
            Some(Value::Decimal(s)) => {
                out.push(4);
                string(out, s);
            }
            Some(Value::Text(s)) => {
                out.push(5);
                string(out, s);
            }
            Some(Value::TimestampUs(us)) => {
                out.push(6);
                out.extend_from_slice(&us.to_le_bytes());
            }
            Some(Value::Json(s)) => {
                out.push(7);
                string(out, s);
            }
        }
    }
    Ok(())
}
