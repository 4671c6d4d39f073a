//! One conformance suite for every warehouse backend, run against each implementation of the three roles
//! (`Sink`, `Coordinator`, `SinkReader`): the embedded SQLite sink, and PostgreSQL (the `postgres` kind of the
//! Redshift sink, against the local server). A new backend adds one `#[tokio::test]` calling [`conformance`].

mod common;

use std::sync::Arc;

use common::*;
use weir::record::Batch;
use weir::rules::validate::{CheckedRow, RecordOutcome, RejectStage};
use weir::schema::{Cell, ColumnType, TableSpec};
use weir::sink::redshift::{RedshiftOptions, RedshiftSink};
use weir::sink::sqlite::SqliteSink;
use weir::sink::{Commit, Coordinator, Load, RowFilter, Sink, SinkReader, Warehouse};

fn tables() -> Vec<TableSpec> {
    vec![TableSpec::new(
        "items".into(),
        vec![
            ("id".into(), ColumnType::Varchar(16)),
            ("n".into(), ColumnType::Integer),
        ],
        vec!["id".into()],
    )]
}

/// A batch of partition `p` after checkpoint `prev`: records `first..` with `(id, n)` rows; `n < 0` rejects the
/// record.
struct Fixture {
    batch: Batch,
    outcomes: Vec<RecordOutcome>,
    raw_refs: Vec<String>,
}

fn fixture(prev: &str, first: usize, rows: &[(&str, i64)]) -> Fixture {
    let outcomes = rows
        .iter()
        .map(|(id, n)| {
            if *n < 0 {
                RecordOutcome::Reject(RejectStage::Rule, "negative".into())
            } else {
                RecordOutcome::Emit(vec![CheckedRow {
                    table: 0,
                    cells: vec![Cell::Text(id.to_string()), Cell::Int(*n)],
                }])
            }
        })
        .collect();
    Fixture {
        batch: mem_batch(prev, first, rows.len()),
        outcomes,
        raw_refs: (1..=rows.len()).map(|i| format!("k{first}#{i}")).collect(),
    }
}

fn load<'a>(f: &'a Fixture, tables: &'a [TableSpec]) -> Load<'a> {
    Load {
        batch: &f.batch,
        raw_refs: &f.raw_refs,
        outcomes: &f.outcomes,
        tables,
        rule_digest: "d",
        loaded_at_us: 1_795_256_970_000_000,
        redrive: None,
    }
}

/// What every warehouse must do, through its three roles only.
async fn conformance(w: Arc<dyn Warehouse>) {
    let tables = tables();
    let sink: Arc<dyn Sink> = w.clone();
    let coordinator: Arc<dyn Coordinator> = w.clone();
    let reader: Arc<dyn SinkReader> = w.clone();

    // Sink: preparing creates the tables; planning again finds nothing to do.
    assert!(sink.prepare(&tables, true).await.unwrap().is_empty());
    assert!(sink.plan(&tables).await.unwrap().statements.is_empty());

    // Coordinator: a new partition starts empty.
    assert_eq!(coordinator.checkpoint("mem", "p").await.unwrap(), "");

    // Sink: a batch commits rows, a dead letter and the checkpoint together.
    let one = fixture("", 1, &[("a", 1), ("b", 2), ("bad", -1)]);
    assert_eq!(
        sink.commit(&load(&one, &tables)).await.unwrap(),
        Commit::Committed
    );
    assert_eq!(coordinator.checkpoint("mem", "p").await.unwrap(), "3");
    // The same batch again from its old checkpoint (a second worker, a zombie) is fenced and writes nothing.
    let again = sink.commit(&load(&one, &tables)).await.unwrap();
    assert_eq!(again, Commit::NotOwner);
    // So is another batch from a stale checkpoint.
    let zombie = fixture("", 1, &[("a", 100)]);
    assert_eq!(
        sink.commit(&load(&zombie, &tables)).await.unwrap(),
        Commit::NotOwner
    );
    // The next batch upserts by key.
    let two = fixture("3", 4, &[("a", 10), ("c", 3)]);
    assert_eq!(
        sink.commit(&load(&two, &tables)).await.unwrap(),
        Commit::Committed
    );
    assert_eq!(coordinator.checkpoint("mem", "p").await.unwrap(), "5");

    // SinkReader: the ledger in commit order, the rows with their lineage, the dead letter.
    let ledger = reader.ledger().await.unwrap();
    let ids: Vec<&str> = ledger.iter().map(|l| l.batch_id.as_str()).collect();
    assert_eq!(ids, [one.batch.id.as_str(), two.batch.id.as_str()]);
    let mut rows = reader
        .stored_rows(
            &tables[0],
            &RowFilter::BatchIds(vec![one.batch.id.clone(), two.batch.id.clone()]),
        )
        .await
        .unwrap();
    rows.sort_by(|x, y| x.cells.cmp(&y.cells));
    let cells: Vec<Vec<Option<String>>> = rows.iter().map(|r| r.cells.clone()).collect();
    let text = |v: &[&str]| v.iter().map(|s| Some(s.to_string())).collect::<Vec<_>>();
    assert_eq!(
        cells,
        [text(&["a", "10"]), text(&["b", "2"]), text(&["c", "3"])]
    );
    let a = rows
        .iter()
        .find(|r| r.cells[0].as_deref() == Some("a"))
        .unwrap();
    assert_eq!(
        (a.record_id.as_str(), a.batch_id.as_str()),
        ("mem/p/4", two.batch.id.as_str())
    );
    let dead = reader
        .dead_letters(&RowFilter::BatchIds(vec![one.batch.id.clone()]))
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].record_id.as_str(), dead[0].reason.as_str()),
        ("mem/p/3", "negative")
    );
    assert_eq!(reader.rows_without_batch(&tables[0]).await.unwrap(), 0);
    let by_key = reader
        .stored_rows(&tables[0], &RowFilter::Keys(vec![vec!["b".into()]]))
        .await
        .unwrap();
    assert_eq!(by_key.len(), 1);

    redrive(&*sink, &*reader, &tables, &one).await;

    // Coordinator: leases by compare-and-set.
    let (now, later) = (1_000_000_i64, 2_000_000_i64);
    assert!(
        coordinator
            .claim("kinesis", "s/1", "w1", now, later, None)
            .await
            .unwrap()
    );
    assert!(
        coordinator
            .claim("kinesis", "s/1", "w1", now, later, None)
            .await
            .unwrap(),
        "renewal"
    );
    assert!(
        !coordinator
            .claim("kinesis", "s/1", "w2", now, later, None)
            .await
            .unwrap(),
        "held"
    );
    let leases = coordinator.leases("kinesis", now).await.unwrap();
    let lease = leases.iter().find(|l| l.partition == "s/1").unwrap();
    assert_eq!((lease.owner.as_str(), lease.expired), ("w1", false));
    // Expired: anyone may claim it; a steal names the owner it takes from.
    assert!(
        coordinator
            .claim("kinesis", "s/1", "w2", later + 1, later + 10, None)
            .await
            .unwrap()
    );
    assert!(
        coordinator
            .claim("kinesis", "s/1", "w3", later + 2, later + 10, Some("w2"))
            .await
            .unwrap()
    );
    // Releasing someone else's lease does nothing; releasing one's own frees it.
    coordinator.release("kinesis", "s/1", "w2").await.unwrap();
    let owner =
        |l: Vec<weir::sink::Lease>| l.into_iter().find(|l| l.partition == "s/1").unwrap().owner;
    assert_eq!(
        owner(coordinator.leases("kinesis", later + 3).await.unwrap()),
        "w3"
    );
    coordinator.release("kinesis", "s/1", "w3").await.unwrap();
    assert_eq!(
        owner(coordinator.leases("kinesis", later + 3).await.unwrap()),
        ""
    );
    // A checkpoint moved outside a batch, by compare-and-set.
    let at = coordinator.checkpoint("kinesis", "s/1").await.unwrap();
    assert!(
        coordinator
            .set_checkpoint("kinesis", "s/1", &at, "SHARD_END")
            .await
            .unwrap()
    );
    assert!(
        !coordinator
            .set_checkpoint("kinesis", "s/1", &at, "x")
            .await
            .unwrap(),
        "stale"
    );
    assert_eq!(
        coordinator.checkpoint("kinesis", "s/1").await.unwrap(),
        "SHARD_END"
    );
}

/// A dead-letter redrive: a redriven record replaces the row of a record that committed before its own
/// batch, or one this run wrote, and never the row of a record that committed later; the dead letters of
/// records that now emit go in the same transaction.
async fn redrive(sink: &dyn Sink, reader: &dyn SinkReader, tables: &[TableSpec], one: &Fixture) {
    // One batch later than `one` and `two`, with a record rejected.
    let three = fixture("5", 6, &[("d", 4), ("bad2", -1)]);
    let base = 1_795_256_970_000_000;
    let mut three_load = load(&three, tables);
    three_load.loaded_at_us = base + 10;
    assert_eq!(sink.commit(&three_load).await.unwrap(), Commit::Committed);
    // `record`, dead-lettered by `original`, redriven by run `run` with `rows`, at `at`.
    let redriven = |run: u32, original: &Fixture, record: usize, rows: &[(&str, i64)]| {
        let mut batch = mem_batch("", record, 1);
        batch.id = format!("redrive-{run}/{}", original.batch.id);
        batch.ordered = false;
        let row = |(id, n): &(&str, i64)| CheckedRow {
            table: 0,
            cells: vec![Cell::Text(id.to_string()), Cell::Int(*n)],
        };
        Fixture {
            batch,
            outcomes: vec![RecordOutcome::Emit(rows.iter().map(row).collect())],
            raw_refs: vec![format!("k{record}#1")],
        }
    };
    let commit = async |f: &Fixture, original: &Fixture, pattern: &str, at: i64| {
        let mut l = load(f, tables);
        l.loaded_at_us = at;
        l.redrive = Some(weir::sink::Redrive {
            original_batch: &original.batch.id,
            run_pattern: pattern,
        });
        sink.commit(&l).await.unwrap()
    };
    // Run 1, in original order: record 3 (of `one`) gives a = 99 (held by record 4 of `two`, which committed
    // no earlier than `one`: kept) and e = 7 (new); record 7 (of `three`) gives b = 50 (held by record 2 of
    // `one`, which committed before `three`: replaced) and e = 8 (written by this run: replaced).
    let r3 = redriven(1, one, 3, &[("a", 99), ("e", 7)]);
    let r7 = redriven(1, &three, 7, &[("b", 50), ("e", 8)]);
    assert_eq!(
        commit(&r3, one, "redrive-1/%", base + 20).await,
        Commit::Committed
    );
    assert_eq!(
        commit(&r7, &three, "redrive-1/%", base + 30).await,
        Commit::Committed
    );
    // Run 2 redrives record 3 again: e is now held by a record of another run that committed later.
    let again = redriven(2, one, 3, &[("a", 99), ("e", 7)]);
    assert_eq!(
        commit(&again, one, "redrive-2/%", base + 40).await,
        Commit::Committed
    );
    let keys: Vec<Vec<String>> = ["a", "b", "e"]
        .iter()
        .map(|k| vec![k.to_string()])
        .collect();
    let mut rows = reader
        .stored_rows(&tables[0], &RowFilter::Keys(keys))
        .await
        .unwrap();
    rows.sort_by(|x, y| x.cells.cmp(&y.cells));
    let got: Vec<(String, String)> = rows
        .iter()
        .map(|r| {
            let cells: Vec<&str> = r.cells.iter().map(|c| c.as_deref().unwrap()).collect();
            (cells.join("="), r.record_id.clone())
        })
        .collect();
    let want = |kv: &str, record: &str| (kv.to_string(), record.to_string());
    assert_eq!(
        got,
        [
            want("a=10", "mem/p/4"),
            want("b=50", "mem/p/7"),
            want("e=8", "mem/p/7")
        ]
    );
    // Records 3 and 7 emit now: their dead letters are gone.
    let batches = [one.batch.id.clone(), three.batch.id.clone()];
    let dead = reader
        .dead_letters(&RowFilter::BatchIds(batches.to_vec()))
        .await
        .unwrap();
    assert!(dead.is_empty(), "{dead:?}");
}

#[tokio::test]
async fn sqlite_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let w = SqliteSink::open(&dir.path().join("weir.db")).await.unwrap();
    conformance(Arc::new(w)).await;
}

#[tokio::test]
async fn postgres_conformance() {
    needs!("postgres_conformance": Postgres);
    let db = TestDb::new().await;
    let w = RedshiftSink::new(&db.url, RedshiftOptions::default()).unwrap();
    conformance(Arc::new(w)).await;
}
