//! A rule that misbehaves on purpose. The payload says what to do:
//!
//! | payload   | behaviour                                                              |
//! |-----------|------------------------------------------------------------------------|
//! | `ok:ID`   | emit `t(id = ID, n = 1)`                                               |
//! | `trap`    | panic (a trap)                                                         |
//! | `loop`    | loop forever (the deadline must stop it)                               |
//! | `alloc`   | allocate 512 MiB (the memory cap must stop it)                         |
//! | `badcol`  | emit a row with an undeclared column                                   |
//! | `badtable`| emit a row for an undeclared, SQL-looking table name                   |
//! | `badcolsql` | emit a row with an undeclared, SQL-looking column name               |
//! | `sqlid:ID`| emit `t(id = ID, n = 2)` (SQL-looking ids are data like any other)     |
//! | `badtype` | emit text into the integer column `n`                                  |
//! | `extra`   | return two outcomes for this one record (a miscount)                   |
//! | `drop`    | drop with reason `asked to drop`                                       |
//! | `dropas:R`| drop with reason `R`                                                   |
//! | `ver:ID:V`| emit `t(id = ID, n = V)`                                               |
//! | `sleep:MS:ID` | sleep MS milliseconds (a blocking WASI call), then emit `t(id = ID, n = 1)` |
//! | `clock:ID`| emit `t(id = ID@<wall clock ms>@<monotonic ns>, n = 1)`: keyed on the clocks |
//! | `random:ID` | emit `t(id = ID#<wasi:random number>, n = 1)`: keyed on random       |
//! | anything else | reject with reason `unknown command`                               |

use weir_rule::{Outcome, RowBuilder, Rule, Settings, SourceRecord, Value};

struct Misbehave;

thread_local! {
    /// The monotonic clock when the instance first read it.
    static START: std::time::Instant = std::time::Instant::now();
}

impl Rule for Misbehave {
    fn init(_settings: &Settings) -> Result<Self, String> {
        Ok(Misbehave)
    }

    fn process(&mut self, record: &SourceRecord) -> Outcome {
        let payload = String::from_utf8_lossy(&record.payload);
        let payload = payload.trim();
        if let Some(id) = payload.strip_prefix("sqlid:") {
            return Outcome::Emit(vec![
                RowBuilder::new("t").text("id", id).integer("n", 2).build(),
            ]);
        }
        if let Some(rest) = payload.strip_prefix("ver:") {
            let (id, v) = rest.rsplit_once(':').unwrap_or((rest, "0"));
            return Outcome::Emit(vec![
                RowBuilder::new("t")
                    .text("id", id)
                    .integer("n", v.parse().unwrap_or(0))
                    .build(),
            ]);
        }
        if let Some(reason) = payload.strip_prefix("dropas:") {
            return Outcome::Drop(reason.to_string());
        }
        if let Some(rest) = payload.strip_prefix("sleep:") {
            let (ms, id) = rest.split_once(':').unwrap_or((rest, "slept"));
            std::thread::sleep(std::time::Duration::from_millis(ms.parse().unwrap_or(0)));
            return Outcome::Emit(vec![
                RowBuilder::new("t").text("id", id).integer("n", 1).build(),
            ]);
        }
        if let Some(id) = payload.strip_prefix("clock:") {
            let wall = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0);
            let mono = START.with(|s| s.elapsed().as_nanos());
            let id = format!("{id}@{wall}@{mono}");
            return Outcome::Emit(vec![
                RowBuilder::new("t").text("id", &id).integer("n", 1).build(),
            ]);
        }
        if let Some(id) = payload.strip_prefix("random:") {
            let mut bytes = [0u8; 8];
            getrandom::fill(&mut bytes).expect("random bytes");
            let id = format!("{id}#{}", u64::from_le_bytes(bytes));
            return Outcome::Emit(vec![
                RowBuilder::new("t").text("id", &id).integer("n", 1).build(),
            ]);
        }
        if let Some(id) = payload.strip_prefix("ok:") {
            return Outcome::Emit(vec![
                RowBuilder::new("t").text("id", id).integer("n", 1).build(),
            ]);
        }
        match payload {
            "trap" => panic!("boom on purpose in {}", record.id),
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "alloc" => {
                let mut v: Vec<u8> = Vec::new();
                v.resize(512 << 20, 1);
                Outcome::Drop(format!("allocated {}", v.len()))
            }
            "badcol" => Outcome::Emit(vec![
                RowBuilder::new("t")
                    .text("id", "x")
                    .text("evil", "1")
                    .build(),
            ]),
            "badcolsql" => Outcome::Emit(vec![
                RowBuilder::new("t")
                    .text("id", "x")
                    .text("n\" = 0; DROP TABLE t; --", "1")
                    .build(),
            ]),
            "badtable" => Outcome::Emit(vec![
                RowBuilder::new("t\"; DROP TABLE t; --")
                    .text("id", "x")
                    .build(),
            ]),
            "badtype" => Outcome::Emit(vec![
                RowBuilder::new("t")
                    .text("id", "x")
                    .value("n", Value::Text("one".into()))
                    .build(),
            ]),
            "drop" => Outcome::Drop("asked to drop".into()),
            _ => Outcome::Reject("unknown command".into()),
        }
    }

    fn process_batch(&mut self, batch: &[SourceRecord]) -> Vec<Outcome> {
        let mut out = Vec::with_capacity(batch.len());
        for record in batch {
            if record.payload.trim_ascii() == b"extra" {
                out.push(Outcome::Drop("one".into()));
            }
            out.push(self.process(record));
        }
        out
    }
}

weir_rule::export_rule!(Misbehave);
