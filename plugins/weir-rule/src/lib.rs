//! Write weir business rules in Rust.
//!
//! A rule is a type that implements [`Rule`]; [`export_rule!`] turns it into a WebAssembly component that
//! implements the `weir:rules` contract (the WIT files in the repository's `wit/` folder): version 0.2 by
//! default, whose rows cross into the host packed in one buffer per batch and whose records cross in packed
//! the same way (world `rule-packed-batch`, `wit/v0.2/rules.wit`), or 0.1 with the `contract-0-1` feature,
//! for hosts older than 0.2. The generated bindings and the packing stay hidden behind this crate; a rule's
//! source is the same for both:
//!
//! ```
//! use weir_rule::{Outcome, Rule, RowBuilder, Settings, SourceRecord};
//!
//! struct Greetings;
//!
//! impl Rule for Greetings {
//!     fn init(_settings: &Settings) -> Result<Self, String> {
//!         Ok(Greetings)
//!     }
//!     fn process(&mut self, record: &SourceRecord) -> Outcome {
//!         let Ok(text) = std::str::from_utf8(&record.payload) else {
//!             return Outcome::Reject("payload: not UTF-8".into());
//!         };
//!         Outcome::Emit(vec![RowBuilder::new("greetings").text("text", text).build()])
//!     }
//! }
//!
//! weir_rule::export_rule!(Greetings);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2`.
//!
//! Signal bad data with [`Outcome::Reject`] and a reason that names the field. A panic is a trap: the host then
//! re-runs the batch on fresh instances to find the guilty record, which is correct but slow.

#[doc(hidden)]
#[cfg(not(feature = "contract-0-1"))]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit/v0.2",
        world: "rule-packed-batch",
        pub_export_macro: true,
        export_macro_name: "__export_rule_world",
        default_bindings_module: "weir_rule::bindings",
    });
}

#[doc(hidden)]
#[cfg(feature = "contract-0-1")]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "rule",
        pub_export_macro: true,
        export_macro_name: "__export_rule_world",
        default_bindings_module: "weir_rule::bindings",
    });
}

#[cfg(not(feature = "contract-0-1"))]
pub mod pack;

#[cfg(not(feature = "contract-0-1"))]
mod batch;

pub mod arena;

/// The component's allocator: batch allocations from an arena, the rest from Talc (see [`arena`]).
#[cfg(all(
    feature = "allocator",
    target_family = "wasm",
    not(target_feature = "atomics")
))]
#[global_allocator]
static ALLOCATOR: arena::BatchArena<talc::wasm::WasmDynamicTalc> =
    arena::BatchArena::new(talc::wasm::new_wasm_dynamic_allocator());

/// Called once `init` is done: from then on, allocations are batch allocations.
fn initialized() {
    #[cfg(all(
        feature = "allocator",
        target_family = "wasm",
        not(target_feature = "atomics")
    ))]
    ALLOCATOR.enable();
}
mod row;

pub use bindings::weir::rules::host::Level;
pub use bindings::weir::rules::types::SourceRecord;
pub use row::{Outcome, Row, RowBuilder, Value, json_to_value, row_from_json};

/// The version of the `weir:rules` contract this SDK implements.
#[cfg(not(feature = "contract-0-1"))]
pub const CONTRACT_VERSION: &str = "0.2.0";
/// The version of the `weir:rules` contract this SDK implements.
#[cfg(feature = "contract-0-1")]
pub const CONTRACT_VERSION: &str = "0.1.0";

/// The `[rule] settings` table of the worker's configuration.
#[derive(Debug, Clone, Default)]
pub struct Settings(Vec<(String, String)>);

impl Settings {
    /// Settings from name/value pairs.
    pub fn new(pairs: Vec<(String, String)>) -> Self {
        Settings(pairs)
    }

    /// The value of setting `name`, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// All settings as name/value pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// A business rule.
///
/// The host creates a fresh instance of the component, calls [`Rule::init`] once, then calls
/// [`Rule::process_batch`] for batches of records. An instance may be discarded at any time (after a trap,
/// a deadline, or when the worker scales), so a rule must not rely on state across batches for correctness.
pub trait Rule: Sized + 'static {
    /// Builds the rule from its settings. An `Err` stops the worker with that message.
    fn init(settings: &Settings) -> Result<Self, String>;

    /// Decides what one record becomes.
    fn process(&mut self, record: &SourceRecord) -> Outcome;

    /// Processes a batch; the default calls [`Rule::process`] for every record, in order.
    /// Must return exactly one outcome per record.
    fn process_batch(&mut self, batch: &[SourceRecord]) -> Vec<Outcome> {
        batch.iter().map(|record| self.process(record)).collect()
    }
}

/// Writes a line to the worker's log, tagged with the plugin and the batch.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    bindings::weir::rules::host::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("{level:?}: {message}");
}

/// Adds `delta` to the rule counter `metric`.
pub fn count(metric: &str, delta: u64) {
    #[cfg(target_arch = "wasm32")]
    bindings::weir::rules::host::count(metric, delta);
    #[cfg(not(target_arch = "wasm32"))]
    let _ = (metric, delta);
}

#[doc(hidden)]
pub mod __private {
    use super::*;

    /// [`CONTRACT_VERSION`] as bytes, for the `weir-contract` custom section.
    pub const CONTRACT_BYTES: [u8; CONTRACT_VERSION.len()] = {
        let b = CONTRACT_VERSION.as_bytes();
        let mut out = [0u8; CONTRACT_VERSION.len()];
        let mut i = 0;
        while i < b.len() {
            out[i] = b[i];
            i += 1;
        }
        out
    };
    use std::any::Any;
    use std::cell::RefCell;

    thread_local! {
        static RULE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    }

    pub fn init<R: Rule>(settings: Vec<(String, String)>) -> Result<(), String> {
        let rule = R::init(&Settings::new(settings))?;
        RULE.with(|cell| *cell.borrow_mut() = Some(Box::new(rule)));
        initialized();
        Ok(())
    }

    /// Runs the rule over a batch: one outcome per record (anything else is a trap, as the host would
    /// treat it: the batch is split until the record is isolated).
    fn outcomes<R: Rule>(batch: &[SourceRecord]) -> Vec<Outcome> {
        let outcomes = run::<R>(batch);
        assert!(
            outcomes.len() == batch.len(),
            "rule returned {} outcomes for {} records (it must return exactly one per record)",
            outcomes.len(),
            batch.len()
        );
        outcomes
    }

    fn run<R: Rule>(batch: &[SourceRecord]) -> Vec<Outcome> {
        RULE.with(|cell| {
            let mut slot = cell.borrow_mut();
            match slot.as_mut().and_then(|rule| rule.downcast_mut::<R>()) {
                Some(rule) => rule.process_batch(batch),
                None => batch
                    .iter()
                    .map(|_| Outcome::Reject("rule: process called before init".into()))
                    .collect(),
            }
        })
    }

    /// Contract 0.2: the declared tables, then the rule's own init.
    #[cfg(not(feature = "contract-0-1"))]
    pub fn init_tables<R: Rule>(
        tables: Vec<bindings::weir::rules::types::Table>,
        settings: Vec<(String, String)>,
    ) -> Result<(), String> {
        crate::pack::declare(tables);
        init::<R>(settings)
    }

    /// Contract 0.2: the batch's outcomes, packed; the batch comes packed too (world `rule-packed-batch`).
    #[cfg(not(feature = "contract-0-1"))]
    pub fn process<R: Rule>(batch: Vec<u8>) -> Vec<u8> {
        let records = crate::batch::records(&batch);
        // The packed batch is not needed past here: handing its memory back early lets the arena start over
        // sooner.
        drop(batch);
        let outcomes = outcomes::<R>(&records);
        crate::pack::pack(&outcomes)
    }

    /// Contract 0.1: the batch's outcomes as WIT values.
    #[cfg(feature = "contract-0-1")]
    pub fn process<R: Rule>(
        batch: Vec<SourceRecord>,
    ) -> Vec<bindings::weir::rules::types::Outcome> {
        outcomes::<R>(&batch)
            .into_iter()
            .map(Outcome::into_wit)
            .collect()
    }
}

/// Exports a [`Rule`] implementation as the component's `init` and `process` functions.
///
/// Use it once, at the top level of the rule crate (a `cdylib`).
#[macro_export]
macro_rules! export_rule {
    ($rule:ty) => {
        /// The `weir:rules` contract version, as a custom section the host reads before instantiating.
        #[cfg(target_arch = "wasm32")]
        #[unsafe(link_section = "weir-contract")]
        #[used]
        static __WEIR_CONTRACT: [u8; $crate::CONTRACT_VERSION.len()] =
            $crate::__private::CONTRACT_BYTES;

        #[cfg(target_arch = "wasm32")]
        $crate::__export_guest!($rule);
    };
}

#[doc(hidden)]
#[cfg(not(feature = "contract-0-1"))]
#[macro_export]
macro_rules! __export_guest {
    ($rule:ty) => {
        const _: () = {
            struct __WeirRuleExport;
            impl $crate::bindings::Guest for __WeirRuleExport {
                fn init(
                    tables: ::std::vec::Vec<$crate::bindings::weir::rules::types::Table>,
                    settings: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    $crate::__private::init_tables::<$rule>(tables, settings)
                }
                fn process(batch: ::std::vec::Vec<u8>) -> ::std::vec::Vec<u8> {
                    $crate::__private::process::<$rule>(batch)
                }
            }
    $crate::bindings::__export_rule_world!(__WeirRuleExport with_types_in $crate::bindings);
        };
    };
}

#[doc(hidden)]
#[cfg(feature = "contract-0-1")]
#[macro_export]
macro_rules! __export_guest {
    ($rule:ty) => {
        const _: () = {
            struct __WeirRuleExport;
            impl $crate::bindings::Guest for __WeirRuleExport {
                fn init(
                    settings: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    $crate::__private::init::<$rule>(settings)
                }
                fn process(
                    batch: ::std::vec::Vec<$crate::SourceRecord>,
                ) -> ::std::vec::Vec<$crate::bindings::weir::rules::types::Outcome> {
                    $crate::__private::process::<$rule>(batch)
                }
            }
    $crate::bindings::__export_rule_world!(__WeirRuleExport with_types_in $crate::bindings);
        };
    };
}
