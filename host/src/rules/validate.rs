//! Checks every outcome a rule returns against the declared tables before anything reaches a sink.
//!
//! A row for an undeclared table, a cell for an undeclared column, a value that does not fit its column
//! type, a NULL key column or too many rows reject that one record, with the table and column named.

use super::{Outcome, RawOutcome, RuleOutput};
use crate::schema::{Cell, TableSpec, check_value};

/// A checked row: the table's index among the declared tables and one cell per declared column, in
/// declaration order (columns the rule did not set are NULL).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CheckedRow {
    /// Index into the declared tables.
    pub table: usize,
    /// One cell per declared column.
    pub cells: Vec<Cell>,
}

/// Where a reject came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RejectStage {
    /// The rule returned `reject`.
    Rule,
    /// The rule trapped, timed out, ran out of memory or miscounted its outcomes.
    Sandbox,
    /// The rule's rows broke the declared schema.
    Validate,
    /// The database refused the record's rows.
    Sink,
}

impl RejectStage {
    /// The stage name stored with the dead letter.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectStage::Rule => "rule",
            RejectStage::Sandbox => "sandbox",
            RejectStage::Validate => "validate",
            RejectStage::Sink => "sink",
        }
    }
}

/// The final, checked outcome of one record.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum RecordOutcome {
    /// Rows to load (possibly none).
    Emit(Vec<CheckedRow>),
    /// Deliberately not loaded, with the rule's reason.
    Drop(String),
    /// Dead-lettered, with the stage and the reason.
    Reject(RejectStage, String),
}

/// Checks one raw outcome.
pub fn check(raw: RawOutcome, tables: &[TableSpec], max_rows: usize) -> RecordOutcome {
    match raw {
        Err(reason) => RecordOutcome::Reject(RejectStage::Sandbox, reason),
        // Contract 0.2: decoded from the packed buffer and checked against the same tables already.
        Ok(RuleOutput::Checked(outcome)) => outcome,
        Ok(RuleOutput::Wit(outcome)) => check_wit(outcome, tables, max_rows),
    }
}

/// Checks a contract 0.1 outcome.
fn check_wit(outcome: Outcome, tables: &[TableSpec], max_rows: usize) -> RecordOutcome {
    match outcome {
        Outcome::Drop(reason) => RecordOutcome::Drop(reason),
        Outcome::Reject(reason) => RecordOutcome::Reject(RejectStage::Rule, reason),
        Outcome::Emit(rows) => {
            if rows.len() > max_rows {
                return RecordOutcome::Reject(
                    RejectStage::Validate,
                    format!(
                        "rule emitted {} rows for one record; the limit is {max_rows}",
                        rows.len()
                    ),
                );
            }
            let mut checked = Vec::with_capacity(rows.len());
            for row in rows {
                match check_row(row, tables) {
                    Ok(r) => checked.push(r),
                    Err(reason) => return RecordOutcome::Reject(RejectStage::Validate, reason),
                }
            }
            RecordOutcome::Emit(checked)
        }
    }
}

fn check_row(row: super::Row, tables: &[TableSpec]) -> Result<CheckedRow, String> {
    let printable = |s: &str| {
        s.chars()
            .take(64)
            .collect::<String>()
            .escape_debug()
            .to_string()
    };
    let Some(t) = tables.iter().position(|t| t.name == row.table) else {
        return Err(format!(
            "table `{}` is not declared in the sink configuration",
            printable(&row.table)
        ));
    };
    let spec = &tables[t];
    let mut cells = vec![Cell::Null; spec.columns.len()];
    let mut set = vec![false; spec.columns.len()];
    for (column, value) in &row.cells {
        let Some(c) = spec.column_index(column) else {
            return Err(format!(
                "table {}, column `{}`: not a declared column",
                spec.name,
                printable(column)
            ));
        };
        if set[c] {
            return Err(format!(
                "table {}, column {column}: set twice in one row",
                spec.name
            ));
        }
        set[c] = true;
        cells[c] = check_value(spec.columns[c].1, value)
            .map_err(|m| format!("table {}, column {column}: {m}", spec.name))?;
    }
    check_keys(spec, &cells)?;
    Ok(CheckedRow { table: t, cells })
}

/// Every primary-key column of a checked row is set.
pub(super) fn check_keys(spec: &TableSpec, cells: &[Cell]) -> Result<(), String> {
    for key in &spec.primary_key {
        let c = spec
            .column_index(key)
            .expect("primary key columns are declared");
        if cells[c] == Cell::Null {
            return Err(format!(
                "table {}, column {key}: primary key column is null or missing",
                spec.name
            ));
        }
    }
    Ok(())
}

/// Runs a batch's records through the rule and checks the outcomes: contiguous slices on `instances`
/// parallel instances, outcomes in record order. Blocking. Replay and reconcile call it with the same
/// `instances` as the worker, so every rule call sees the same records — and the same deterministic world
/// (`rules::world`) — as when the batch was loaded.
pub fn run_checked(
    rule: &super::RulePlugin,
    batch_id: &str,
    records: &[crate::contract::SourceRecord],
    tables: &[TableSpec],
    max_rows: usize,
    instances: usize,
) -> Vec<RecordOutcome> {
    let run = |records: &[crate::contract::SourceRecord]| -> Vec<RecordOutcome> {
        rule.process(batch_id, records)
            .into_iter()
            .map(|raw| check(raw, tables, max_rows))
            .collect()
    };
    let slice = records.len().div_ceil(instances.max(1)).max(1);
    if instances <= 1 || records.len() <= slice {
        return run(records);
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = records
            .chunks(slice)
            .map(|chunk| scope.spawn(move || run(chunk)))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("rule slices do not panic"))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{Row, Value};
    use crate::schema::ColumnType;

    fn tables() -> Vec<TableSpec> {
        vec![TableSpec::new(
            "t".into(),
            vec![
                ("id".into(), ColumnType::Varchar(4)),
                ("n".into(), ColumnType::Integer),
            ],
            vec!["id".into()],
        )]
    }

    fn emit(cells: Vec<(&str, Value)>, table: &str) -> RawOutcome {
        Ok(RuleOutput::Wit(Outcome::Emit(vec![Row {
            table: table.into(),
            cells: cells.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        }])))
    }

    fn reason(o: RecordOutcome) -> String {
        match o {
            RecordOutcome::Reject(RejectStage::Validate, r) => r,
            other => panic!("not a validation reject: {other:?}"),
        }
    }

    /// Good rows are checked into declaration order with NULLs for unset columns.
    #[test]
    fn good_row() {
        let o = check(
            emit(vec![("id", Value::Text("a".into()))], "t"),
            &tables(),
            10,
        );
        assert_eq!(
            o,
            RecordOutcome::Emit(vec![CheckedRow {
                table: 0,
                cells: vec![Cell::Text("a".into()), Cell::Null]
            }])
        );
    }

    /// Each violation names the table and column.
    #[test]
    fn violations_name_table_and_column() {
        let t = tables();
        let r = reason(check(
            emit(vec![("id", Value::Text("a".into()))], "x\"; drop"),
            &t,
            10,
        ));
        assert!(r.contains("not declared"), "{r}");
        let r = reason(check(
            emit(
                vec![("id", Value::Text("a".into())), ("evil", Value::Null)],
                "t",
            ),
            &t,
            10,
        ));
        assert!(r.contains("table t, column `evil`"), "{r}");
        let r = reason(check(
            emit(
                vec![
                    ("id", Value::Text("a".into())),
                    ("n", Value::Text("1".into())),
                ],
                "t",
            ),
            &t,
            10,
        ));
        assert!(
            r.contains("table t, column n: expected integer, got text"),
            "{r}"
        );
        let r = reason(check(emit(vec![("n", Value::Integer(1))], "t"), &t, 10));
        assert!(r.contains("column id: primary key"), "{r}");
        let r = reason(check(
            emit(vec![("id", Value::Text("a".into()))], "t"),
            &t,
            0,
        ));
        assert!(r.contains("limit is 0"), "{r}");
    }
}
