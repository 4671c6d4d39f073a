//! The plugin contract, generated from the WIT files by the host's `bindgen!`s: `wit/rules.wit`
//! (`weir:rules@0.1.0`, one WIT value per cell) and `wit/v0.2/rules.wit` (`weir:rules@0.2.0`, packed rows).
//!
//! A module of its own at the bottom of the crate: the records and values it defines are used by the schema
//! checks, the record types and the rule runtime alike, so none of them has to import another for them. The
//! source record of 0.2 is the same record type as 0.1's, so the host lowers the one Rust type
//! ([`SourceRecord`]) into rules of either version (component types are structural).

// Generated from the WIT files, whose comments document them.
#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "rule",
});

pub use self::weir::rules::types::{Row, Value};

/// `weir:rules@0.2.0`: the declared tables go to `init`, rows come back packed (see `rules::packed`).
pub mod v0_2 {
    wasmtime::component::bindgen!({
        path: "../wit/v0.2",
        world: "rule",
    });
}
