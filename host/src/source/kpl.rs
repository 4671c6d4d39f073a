//! De-aggregation of Kinesis Producer Library (KPL) aggregated records.
//!
//! An aggregated record is the magic `F3 89 9A C2`, a protobuf `AggregatedRecord`, and the MD5 of that protobuf.
//! Like the KCL, a record whose magic or MD5 does not match is not aggregated: it is passed on as one user
//! record. User records keep their index in the aggregate as sub-sequence number, which makes their record ids
//! (`kinesis/{stream}/{shard}/{sequence}/{sub}`) stable.

use md5::{Digest, Md5};
use prost::Message;

/// The KPL magic prefix.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];

/// `AggregatedRecord` of the KPL's `messages.proto`.
#[derive(Clone, PartialEq, Message)]
pub struct AggregatedRecord {
    /// Partition keys, referenced by index.
    #[prost(string, repeated, tag = "1")]
    pub partition_key_table: Vec<String>,
    /// Explicit hash keys, referenced by index.
    #[prost(string, repeated, tag = "2")]
    pub explicit_hash_key_table: Vec<String>,
    /// The user records.
    #[prost(message, repeated, tag = "3")]
    pub records: Vec<UserRecord>,
}

/// `Record` of the KPL's `messages.proto`.
#[derive(Clone, PartialEq, Message)]
pub struct UserRecord {
    /// Index into `partition_key_table`.
    #[prost(uint64, required, tag = "1")]
    pub partition_key_index: u64,
    /// Index into `explicit_hash_key_table`.
    #[prost(uint64, optional, tag = "2")]
    pub explicit_hash_key_index: Option<u64>,
    /// The user payload.
    #[prost(bytes = "vec", required, tag = "3")]
    pub data: Vec<u8>,
}

/// One user record out of a Kinesis record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deaggregated {
    /// Sub-sequence number (index in the aggregate); `None` for a record that was not aggregated.
    pub sub: Option<u64>,
    /// The user record's partition key.
    pub partition_key: String,
    /// The user payload.
    pub data: Vec<u8>,
}

/// Splits a Kinesis record into its user records (one, unchanged, when it is not a valid aggregate).
pub fn deaggregate(partition_key: &str, data: &[u8]) -> Vec<Deaggregated> {
    let single = || {
        vec![Deaggregated {
            sub: None,
            partition_key: partition_key.to_string(),
            data: data.to_vec(),
        }]
    };
    if data.len() < MAGIC.len() + 16 || data[..4] != MAGIC {
        return single();
    }
    let (body, digest) = data[4..].split_at(data.len() - 4 - 16);
    if Md5::digest(body).as_slice() != digest {
        return single();
    }
    let Ok(aggregate) = AggregatedRecord::decode(body) else {
        return single();
    };
    let mut out = Vec::with_capacity(aggregate.records.len());
    for (i, r) in aggregate.records.into_iter().enumerate() {
        let Some(key) = aggregate
            .partition_key_table
            .get(r.partition_key_index as usize)
        else {
            return single(); // an index out of range: not a well-formed aggregate
        };
        out.push(Deaggregated {
            sub: Some(i as u64),
            partition_key: key.clone(),
            data: r.data,
        });
    }
    out
}

/// Builds an aggregated record from `(partition key, data)` pairs, as the KPL does (for producers and tests).
pub fn aggregate(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut keys: Vec<String> = Vec::new();
    let mut user = Vec::new();
    for (key, data) in records {
        let index = match keys.iter().position(|k| k == key) {
            Some(i) => i,
            None => {
                keys.push(key.to_string());
                keys.len() - 1
            }
        };
        user.push(UserRecord {
            partition_key_index: index as u64,
            explicit_hash_key_index: None,
            data: data.to_vec(),
        });
    }
    let body = AggregatedRecord {
        partition_key_table: keys,
        explicit_hash_key_table: Vec::new(),
        records: user,
    }
    .encode_to_vec();
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&body);
    out.extend_from_slice(&Md5::digest(&body));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixture built byte by byte from the KPL wire format (not by `aggregate`): two keys, three records.
    fn fixture() -> Vec<u8> {
        let mut body = Vec::new();
        for key in ["pk-a", "pk-b"] {
            body.push(0x0A); // field 1, length-delimited
            body.push(key.len() as u8);
            body.extend_from_slice(key.as_bytes());
        }
        for (index, data) in [
            (0u8, &b"{\"n\":1}"[..]),
            (1, b"{\"n\":2}"),
            (0, b"\xff\x00"),
        ] {
            let mut rec = vec![0x08, index]; // field 1, varint
            rec.push(0x1A); // field 3, length-delimited
            rec.push(data.len() as u8);
            rec.extend_from_slice(data);
            body.push(0x1A); // field 3 of the aggregate
            body.push(rec.len() as u8);
            body.extend_from_slice(&rec);
        }
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&body);
        out.extend_from_slice(&Md5::digest(&body));
        out
    }

    /// The fixture splits into its user records with their keys and sub-sequence numbers.
    #[test]
    fn deaggregates_fixture() {
        let users = deaggregate("outer", &fixture());
        assert_eq!(
            users,
            vec![
                Deaggregated {
                    sub: Some(0),
                    partition_key: "pk-a".into(),
                    data: b"{\"n\":1}".to_vec()
                },
                Deaggregated {
                    sub: Some(1),
                    partition_key: "pk-b".into(),
                    data: b"{\"n\":2}".to_vec()
                },
                Deaggregated {
                    sub: Some(2),
                    partition_key: "pk-a".into(),
                    data: b"\xff\x00".to_vec()
                },
            ]
        );
        assert_eq!(
            aggregate(&[
                ("pk-a", b"{\"n\":1}"),
                ("pk-b", b"{\"n\":2}"),
                ("pk-a", b"\xff\x00")
            ]),
            fixture()
        );
    }

    /// A wrong MD5, a missing magic or a plain record pass through as one record.
    #[test]
    fn non_aggregates_pass_through() {
        let mut bad = fixture();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        for data in [bad, b"{\"plain\":true}".to_vec(), MAGIC.to_vec()] {
            let users = deaggregate("k", &data);
            assert_eq!(users.len(), 1);
            assert_eq!(users[0].sub, None);
            assert_eq!(users[0].data, data);
        }
    }
}
