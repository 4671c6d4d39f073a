//! The plugin contract, generated from `wit/rules.wit` by the host's only `bindgen!`.
//!
//! A module of its own at the bottom of the crate: the records and values it defines are used by the schema
//! checks, the record types and the rule runtime alike, so none of them has to import another for them.

// Generated from the WIT file, whose comments document it.
#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "rule",
});

pub use self::weir::rules::types::{Row, Value};
