//! Contract 0.2's packed outcome buffer (layout in `wit/v0.2/rules.wit`): the rule's outcomes, with each row's
//! cells put in the declared column order of its table and no name left in the buffer.
//!
//! A row for an undeclared table or with an undeclared column cannot be packed; its record's outcome becomes
//! `invalid`, with the same wording as the host's own check, and the host dead-letters it as a validation
//! failure. Types are not checked here: every cell carries its type tag and the host checks it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use crate::bindings::weir::rules::types::Table;
use crate::row::Name;
use crate::{Outcome, Row, Value};

/// One declared table, ready for packing.
struct Declared {
    name: String,
    /// The literal this table was last named by.
    literal: Literal,
    /// Column names in declared order.
    names: Vec<String>,
    /// For each column, the literal it was last named by.
    literals: Vec<Literal>,
    /// Column name → position, for cells set out of the declared order.
    columns: HashMap<String, usize>,
}

impl Declared {
    /// The position of `column`. A rule names columns with the same literals row after row, usually in
    /// declared order: the literal last seen at the column after the previous one is tried first (no bytes
    /// compared), then that column's name, then every name.
    fn position(&self, column: &Name, expected: usize) -> Option<usize> {
        if self.literals.get(expected).is_some_and(|l| l.is(column)) {
            return Some(expected);
        }
        let c = if self.names.get(expected).is_some_and(|n| n == column) {
            expected
        } else {
            *self.columns.get(column.as_ref())?
        };
        self.literals[c].remember(column);
        Some(c)
    }
}

/// The address and length of the `'static` string a name was last given as. Such a string never changes
/// and is never freed, so the same address and length is the same name, without comparing its bytes.
#[derive(Default)]
struct Literal(Cell<(usize, usize)>);

impl Literal {
    fn is(&self, name: &Name) -> bool {
        matches!(name, Name::Borrowed(s) if self.0.get() == (s.as_ptr() as usize, s.len()))
    }

    fn remember(&self, name: &Name) {
        if let Name::Borrowed(s) = name {
            self.0.set((s.as_ptr() as usize, s.len()));
        }
    }
}

thread_local! {
    static TABLES: RefCell<Vec<Declared>> = const { RefCell::new(Vec::new()) };
}

/// Keeps the tables `init` received. The SDK calls it inside a component; a native test or benchmark calls it
/// to pack outcomes the way the component would.
pub fn declare(tables: Vec<Table>) {
    let declared = tables
        .into_iter()
        .map(|t| {
            let names: Vec<String> = t.columns.into_iter().map(|c| c.name).collect();
            Declared {
                columns: names
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.clone(), i))
                    .collect(),
                literals: names.iter().map(|_| Literal::default()).collect(),
                names,
                literal: Literal::default(),
                name: t.name,
            }
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
    let found = tables
        .iter()
        .position(|t| t.literal.is(&row.table))
        .or_else(|| {
            let t = tables.iter().position(|t| t.name == row.table)?;
            tables[t].literal.remember(&row.table);
            Some(t)
        });
    let Some(t) = found else {
        return Err(format!(
            "table `{}` is not declared in the sink configuration",
            printable(&row.table)
        ));
    };
    let table = &tables[t];
    slots.clear();
    slots.resize(table.names.len(), None);
    let mut expected = 0;
    for (column, value) in &row.cells {
        let Some(c) = table.position(column, expected) else {
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
        expected = c + 1;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RowBuilder;
    use crate::bindings::weir::rules::types::{Column, ColumnType};

    fn declare_orders() {
        let column = |name: &str| Column {
            name: name.into(),
            type_: ColumnType::Varchar(64),
        };
        declare(vec![
            Table {
                name: "other".into(),
                columns: vec![column("x")],
                key: vec!["x".into()],
            },
            Table {
                name: "orders".into(),
                columns: vec![column("id"), column("customer"), column("country")],
                key: vec!["id".into()],
            },
        ]);
    }

    /// The same row packs to the same bytes whether its names are literals (remembered after the first row)
    /// or owned strings, in declared order or not.
    #[test]
    fn names_however_given_pack_the_same() {
        declare_orders();
        let literal = RowBuilder::new("orders")
            .text("id", "o-1")
            .text("country", "ES")
            .build();
        let owned = RowBuilder::new(String::from("orders"))
            .text(String::from("country"), "ES")
            .text(String::from("id"), "o-1")
            .build();
        let expected = {
            let mut out = vec![EMIT, 1, 0, 0, 0, 1, 0, 0, 0];
            out.push(5);
            string(&mut out, "o-1");
            out.push(0); // customer: NULL
            out.push(5);
            string(&mut out, "ES");
            out
        };
        for _ in 0..3 {
            for row in [&literal, &owned] {
                assert_eq!(pack(&[Outcome::Emit(vec![row.clone()])]), expected);
            }
        }
    }

    /// An undeclared table or column, or a column set twice, makes the record `invalid`, naming it.
    #[test]
    fn unpackable_rows_are_invalid() {
        declare_orders();
        let invalid = |row: Row| {
            let out = pack(&[Outcome::Emit(vec![row])]);
            assert_eq!(out[0], INVALID);
            String::from_utf8(out[5..].to_vec()).unwrap()
        };
        assert!(invalid(RowBuilder::new("nope").build()).contains("table `nope`"));
        assert!(
            invalid(RowBuilder::new("orders").text("idd", "x").build()).contains("column `idd`")
        );
        assert!(
            invalid(
                RowBuilder::new("orders")
                    .text("id", "x")
                    .text("id", "y")
                    .build()
            )
            .contains("set twice")
        );
    }
}
