//! weir: ETL worker fleets whose business rules are WebAssembly plugins.
//!
//! Data flows one way — `Source → RawStore → Rules → Sink → Ack` — and a source position is acknowledged only
//! after the RAW copy and the final rows have committed.
//!
//! Layout:
//! - [`admin`]: the admin endpoint: `/healthz`, `/readyz`, `/metrics` (Prometheus).
//! - [`aws`]: AWS settings shared by the AWS backends.
//! - [`config`]: the TOML configuration, `${ENV}` interpolation, checks that name the field.
//! - [`fleet`]: Kinesis shards shared by workers through leases; resharding order.
//! - [`metrics`]: what a worker measures about itself (latency histograms).
//! - [`record`]: records and batches.
//! - [`source`]: where records come from (`file`: lines of a file or stdin; `sqs`: an SQS queue).
//! - [`raw`]: the RAW copy of every record (`local`: the S3 key layout in a directory; `s3`;
//!   `mongo`: a document per record).
//! - [`rules`]: the WebAssembly rule runtime (wasmtime), the sandbox, its deterministic world (`rules::world`:
//!   virtual clocks, seeded random) and the outcome checks.
//! - [`scaffold`]: `weir plugin new` project templates.
//! - [`schema`]: declared tables and column types, the value checks.
//! - [`sink`]: final rows, ledger, dead letters and checkpoints in one transaction (`sqlite`, `redshift` for
//!   Redshift and PostgreSQL).
//! - [`pipeline`]: batching, bounded channels, retries, acknowledgements, the run summary.
//! - [`plugin_store`]: every rule version that loaded data, by digest.
//! - [`reconcile`]: RAW against final data (`weir reconcile`, `weir replay`, shadow runs).
//! - [`worker`]: builds a pipeline from a configuration; what `weir run` and `weir validate` use.

pub mod admin;
pub mod aws;
pub mod config;
pub mod fleet;
pub mod metrics;
pub mod pipeline;
pub mod plugin_store;
pub mod raw;
pub mod reconcile;
pub mod record;
pub mod rules;
pub mod scaffold;
pub mod schema;
pub mod sink;
pub mod source;
pub mod worker;
