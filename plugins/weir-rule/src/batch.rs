//! Contract 0.2's packed batch (world `rule-packed-batch`, layout in `wit/v0.2/rules.wit`): the host writes a
//! batch's records into one buffer, lowered into the instance with one allocation and one copy, instead of a
//! `list<source-record>` whose every string the host lowers with a call into the guest's allocator. The records
//! are read back into the same [`SourceRecord`] values a rule has always been given; their strings and payloads
//! come from the batch arena (see [`crate::arena`]), so a record costs a few bump allocations and copies.

use crate::SourceRecord;

/// Reads a packed batch. The host wrote it, so a malformed buffer is a host defect: it panics, which the host
/// treats as a trap.
pub fn records(batch: &[u8]) -> Vec<SourceRecord> {
    let mut r = Reader(batch);
    let n = r.u32() as usize;
    // Each record takes at least 24 bytes, so a count the buffer cannot hold is not believed for the capacity.
    let mut out = Vec::with_capacity(n.min(batch.len() / 24));
    for _ in 0..n {
        let id = r.string();
        let partition_key = r.string();
        let arrived_at_ms = i64::from_le_bytes(r.take(8).try_into().expect("8 bytes"));
        let attributes = (0..r.u32()).map(|_| (r.string(), r.string())).collect();
        let payload = r.bytes().to_vec();
        out.push(SourceRecord {
            id,
            partition_key,
            arrived_at_ms,
            attributes,
            payload,
        });
    }
    assert!(
        r.0.is_empty(),
        "packed batch: {} bytes after the last record",
        r.0.len()
    );
    out
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        assert!(n <= self.0.len(), "packed batch: ends inside a record");
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().expect("4 bytes"))
    }

    fn bytes(&mut self) -> &'a [u8] {
        let n = self.u32() as usize;
        self.take(n)
    }

    fn string(&mut self) -> String {
        match std::str::from_utf8(self.bytes()) {
            Ok(s) => s.to_owned(),
            Err(e) => panic!("packed batch: a string field is not UTF-8 ({e})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(buf: &mut Vec<u8>, b: &[u8]) {
        buf.extend_from_slice(&(b.len() as u32).to_le_bytes());
        buf.extend_from_slice(b);
    }

    #[test]
    fn a_packed_batch_reads_back_every_field() {
        let mut buf = 2u32.to_le_bytes().to_vec();
        put(&mut buf, b"file/a/1");
        put(&mut buf, "clé".as_bytes());
        buf.extend_from_slice(&(-5i64).to_le_bytes());
        buf.extend_from_slice(&1u32.to_le_bytes());
        put(&mut buf, b"line");
        put(&mut buf, b"1");
        put(&mut buf, &[0xff, 0x00]);
        put(&mut buf, b"file/a/2");
        put(&mut buf, b"");
        buf.extend_from_slice(&1_700_000_000_000i64.to_le_bytes());
        buf.extend_from_slice(&0u32.to_le_bytes());
        put(&mut buf, b"");

        let got = records(&buf);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].id, "file/a/1");
        assert_eq!(got[0].partition_key, "clé");
        assert_eq!(got[0].arrived_at_ms, -5);
        assert_eq!(got[0].attributes, vec![("line".into(), "1".into())]);
        assert_eq!(got[0].payload, vec![0xff, 0x00]);
        assert_eq!(got[1].id, "file/a/2");
        assert_eq!(got[1].partition_key, "");
        assert_eq!(got[1].arrived_at_ms, 1_700_000_000_000);
        assert!(got[1].attributes.is_empty());
        assert!(got[1].payload.is_empty());
    }

    #[test]
    #[should_panic(expected = "ends inside a record")]
    fn a_truncated_batch_panics() {
        let mut buf = 1u32.to_le_bytes().to_vec();
        buf.extend_from_slice(&9u32.to_le_bytes());
        buf.extend_from_slice(b"short");
        records(&buf);
    }
}
