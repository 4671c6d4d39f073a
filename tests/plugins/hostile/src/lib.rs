//! A hostile contract 0.2 rule, written against the WIT directly rather than through the SDK, so that nothing
//! checks what it writes. For every record it emits `rows` rows (the `rows` setting, default 6,000) of the first
//! declared table whose first column is set to `x` and every other column is NULL: one byte in the buffer that a
//! host would turn into a whole cell. It is the output that costs a host most per byte of the instance's memory.

wit_bindgen::generate!({
    path: "../../../wit/v0.2",
    world: "rule",
});

use std::cell::Cell;

thread_local! {
    static WIDTH: Cell<usize> = const { Cell::new(0) };
    static ROWS: Cell<u32> = const { Cell::new(6000) };
}

struct Hostile;

impl Guest for Hostile {
    fn init(
        tables: Vec<weir::rules::types::Table>,
        settings: Vec<(String, String)>,
    ) -> Result<(), String> {
        let first = tables.first().ok_or("declare a table")?;
        WIDTH.set(first.columns.len());
        if let Some((_, v)) = settings.iter().find(|(k, _)| k == "rows") {
            ROWS.set(v.parse().map_err(|_| "rows: not a number")?);
        }
        Ok(())
    }

    fn process(batch: Vec<weir::rules::types::SourceRecord>) -> Vec<u8> {
        let (width, rows) = (WIDTH.get(), ROWS.get());
        let row_bytes = 4 + 6 + (width - 1);
        let mut out = Vec::with_capacity(batch.len() * (5 + rows as usize * row_bytes));
        for _ in &batch {
            out.push(0);
            out.extend_from_slice(&rows.to_le_bytes());
            for _ in 0..rows {
                out.extend_from_slice(&0u32.to_le_bytes());
                out.extend_from_slice(&[5, 1, 0, 0, 0, b'x']);
                out.resize(out.len() + width - 1, 0);
            }
        }
        out
    }
}

export!(Hostile);
