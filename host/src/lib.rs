//! weir: ETL worker fleets whose business rules are WebAssembly plugins.
//!
//! Data flows one way — `Source → RawStore → Rules → Sink → Ack` — and a source position is acknowledged only
//! after the RAW copy and the final rows have committed.
//!
//! The crate map — modules, the traits each backend implements, where a new source or sink goes — is
//! `docs/ARCHITECTURE.md`. Backends are cargo features (`sqs`, `kinesis`, `s3`, `postgres`, `redshift-iam`,
//! `mongodb`, `dynamodb`), all on by default.

pub mod admin;
pub mod aws;
pub mod config;
pub mod contract;
pub mod coordinator;
pub mod crash;
#[cfg(feature = "kinesis")]
pub mod fleet;
pub mod group;
pub mod iam;
pub mod metrics;
pub mod pipeline;
pub mod plugin_fetch;
pub mod plugin_store;
pub mod preflight;
pub mod raw;
pub mod reconcile;
pub mod record;
pub mod retry;
pub mod rules;
pub mod scaffold;
pub mod schema;
pub mod sink;
pub mod source;
#[cfg(any(feature = "postgres", feature = "https-plugins"))]
pub mod tls;
pub mod worker;
