//! The rule runtime: business rules as sandboxed WebAssembly components.
//!
//! - One [`RuleRuntime`] per process holds the wasmtime `Engine` (epoch interruption on, a ticker thread
//!   advancing the epoch) and the `Linker` with the host imports and a locked-down WASI (no filesystem,
//!   environment or network) whose clocks and random are deterministic per call (see [`world`]).
//! - [`RuleRuntime::load`] compiles a plugin once — or loads it from the on-disk cache of precompiled
//!   components, keyed by the wasm digest and the engine's settings — into a [`RulePlugin`] holding an
//!   `InstancePre`. Before compiling, [`fold`] turns the imported globals a dynamically linked component's
//!   linker fixed (componentize-py's `GOT.mem.*`) into constants the compiler can fold.
//! - Each instance lives in its own `Store` with a linear-memory cap; each call gets a deadline. Healthy
//!   instances are reused across batches; an instance that trapped is thrown away.
//! - Two contract versions load side by side, picked by the plugin's stamp (or, unstamped, by its exports):
//!   `weir:rules@0.1.0` returns one WIT value per cell, checked by [`validate::check`]; `weir:rules@0.2.0`
//!   gets the declared tables at `init` and returns one packed buffer per call, decoded and checked in one
//!   pass by [`packed`], with what the host builds from it bounded by a multiple of the memory cap.
//! - [`RulePlugin::process`] never fails a batch because of one record: when a call traps, runs past its
//!   deadline, hits the memory cap or returns the wrong number of outcomes, the batch is split in halves and
//!   re-run on fresh instances until the guilty records are isolated; those are rejected with the reason and
//!   the others get their normal outcome.

use crate::contract as bindings;
pub mod fold;
pub mod packed;
mod stderr;
pub mod validate;
pub mod world;

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::schema::{ColumnType, TableSpec};
use bindings::v0_2;
use bindings::weir::rules::host::Level;
pub use bindings::weir::rules::types::{Outcome, Row, SourceRecord, Value};
use bindings::{Rule, RulePre};
use stderr::GuestOutput;
use validate::RecordOutcome;

mod stamp;
pub use stamp::*;
mod limits;
use limits::*;

/// The newest contract version, written once: `wit/v0.2/rules.wit`'s `package` line and the SDKs that build
/// it are checked against it by `tests::one_contract_version`.
macro_rules! contract_version {
    () => {
        "0.2.0"
    };
}

/// The newest contract version this host implements (it also runs [`CONTRACT_0_1`] plugins).
pub const CONTRACT: &str = concat!("weir:rules@", contract_version!());

/// The contract version of [`CONTRACT`], as plugins stamp it.
pub const CONTRACT_VERSION: &str = contract_version!();

/// The first contract, `wit/rules.wit`: still loaded, and still what the Python, JavaScript and C SDKs build.
pub const CONTRACT_0_1: &str = "weir:rules@0.1.0";

/// The contract versions this host runs, oldest first.
pub const CONTRACT_VERSIONS: [&str; 2] = ["0.1.0", CONTRACT_VERSION];

/// A contract version this host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contract {
    /// `weir:rules@0.1.x`: one WIT value per cell.
    V0_1,
    /// `weir:rules@0.2.x`: packed rows.
    V0_2,
}

impl Contract {
    /// The version, as plugins stamp it.
    pub fn version(self) -> &'static str {
        match self {
            Contract::V0_1 => CONTRACT_VERSIONS[0],
            Contract::V0_2 => CONTRACT_VERSIONS[1],
        }
    }
}

/// How often the epoch advances; deadlines are rounded up to this.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Errors loading or starting a rule. Record-level failures are never errors: they become rejects.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// The plugin file could not be read.
    #[error("cannot read plugin {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not a valid component.
    #[error("plugin {path} is not a valid WebAssembly component: {message}")]
    Compile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The component does not implement this host's contract.
    #[error(
        "plugin {path} does not implement a contract this weir supports ({CONTRACT_0_1} or {CONTRACT}): \
         {message}. Rebuild it against the wit/ folder of this weir version"
    )]
    Incompatible {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The rule's `init` refused its settings or failed.
    #[error("rule {path} failed to initialize: {message}")]
    Init {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The engine could not be created.
    #[error("cannot create the WebAssembly engine: {0}")]
    Engine(String),
    /// The plugin's bytes are not the ones `[rule] sha256` names.
    #[error(
        "rule.plugin {location}: its SHA-256 is {actual}, but rule.sha256 is {expected}; \
         publish the intended plugin again (`weir plugin publish`) or set rule.sha256 to the plugin's digest"
    )]
    Digest {
        /// Where the plugin came from.
        location: String,
        /// `[rule] sha256`.
        expected: String,
        /// The digest of the bytes read.
        actual: String,
    },
    /// A remote plugin could not be fetched.
    #[error("cannot fetch rule.plugin {location}: {message}")]
    Fetch {
        /// Where the plugin is.
        location: String,
        /// Why.
        message: String,
    },
}

/// Per-rule sandbox limits, and the tables a rule's rows are checked against.
#[derive(Debug, Clone)]
pub struct RuleLimits {
    /// Linear-memory cap of one instance, in bytes.
    pub memory_bytes: usize,
    /// Deadline of one call.
    pub deadline: Duration,
    /// Most rows one record may emit.
    pub max_rows_per_record: usize,
    /// The declared tables: a 0.2 rule gets them at `init`, and its packed rows are decoded and checked
    /// against them as they are read. (0.1 outcomes are checked later, by [`validate::check`].)
    pub tables: Arc<Vec<TableSpec>>,
}

impl RuleLimits {
    /// Limits without declared tables (a 0.2 rule then can emit no row).
    pub fn new(memory_bytes: usize, deadline: Duration) -> Self {
        RuleLimits {
            memory_bytes,
            deadline,
            max_rows_per_record: crate::config::default_max_rows_per_record(),
            tables: Arc::default(),
        }
    }
}

/// The process-wide runtime. Cheap to share by reference; create one.
pub struct RuleRuntime {
    engine: Engine,
    linker: Linker<HostState>,
    cache_dir: Option<PathBuf>,
}

impl RuleRuntime {
    /// An engine with epoch interruption and a ticker thread; `cache_dir` holds precompiled components
    /// (`None` disables the cache).
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Self, RuleError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        // `WEIR_WASM_PROFILER=perfmap` writes /tmp/perf-<pid>.map, so `perf report` names the guest's own
        // functions instead of showing anonymous JIT addresses (docs/PERFORMANCE.md, "Profiling a rule").
        if std::env::var_os("WEIR_WASM_PROFILER").is_some_and(|v| v == "perfmap") {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).map_err(|e| RuleError::Engine(format!("{e:#}")))?;
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("weir-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| RuleError::Engine(e.to_string()))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| RuleError::Engine(format!("{e:#}")))?;
        // Rules live in a deterministic world (`world`): the monotonic clock is replaced by one whose sleeps
        // are virtual, so no guest call can block a host thread.
        linker.allow_shadowing(true);
        wasmtime_wasi::p2::bindings::clocks::monotonic_clock::add_to_linker::<
            HostState,
            VirtualClocks,
        >(&mut linker, |s| world::VirtualClock(s))
        .map_err(|e| RuleError::Engine(format!("{e:#}")))?;
        linker.allow_shadowing(false);
        Rule::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| RuleError::Engine(format!("{e:#}")))?;
        v0_2::Rule::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| RuleError::Engine(format!("{e:#}")))?;
        Ok(RuleRuntime {
            engine,
            linker,
            cache_dir,
        })
    }

    /// The default cache directory: `$WEIR_CACHE_DIR`, `$XDG_CACHE_HOME/weir`, or `~/.cache/weir`.
    pub fn default_cache_dir() -> Option<PathBuf> {
        if let Some(d) = std::env::var_os("WEIR_CACHE_DIR") {
            return Some(PathBuf::from(d));
        }
        if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
            return Some(PathBuf::from(d).join("weir"));
        }
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("weir"))
    }

    /// Loads a plugin, checks its contract, and initializes one instance with `settings` (a failing `init`
    /// is reported here, at start, rather than on the first batch).
    pub fn load(
        &self,
        path: &Path,
        limits: RuleLimits,
        settings: Vec<(String, String)>,
    ) -> Result<RulePlugin, RuleError> {
        let wasm = std::fs::read(path).map_err(|source| RuleError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "rule".into());
        self.load_bytes(path, &name, &wasm, limits, settings)
    }

    /// [`RuleRuntime::load`] of bytes already read (a fetched plugin): `path` names them in errors and
    /// logs, `name` is the rule's name.
    pub fn load_bytes(
        &self,
        path: &Path,
        name: &str,
        wasm: &[u8],
        limits: RuleLimits,
        settings: Vec<(String, String)>,
    ) -> Result<RulePlugin, RuleError> {
        let stamped = match stamped_contract(wasm) {
            Some(v) => match contract_compatible(&v) {
                Some(c) => Some(c),
                None => {
                    return Err(RuleError::Incompatible {
                        path: path.to_path_buf(),
                        message: format!(
                            "the plugin was built for contract version {v}, this weir runs versions {}",
                            CONTRACT_VERSIONS.join(" and ")
                        ),
                    });
                }
            },
            None => {
                tracing::warn!(
                    plugin = %path.display(),
                    "the plugin carries no contract version stamp (`weir plugin stamp` adds one); checking its exports only"
                );
                None
            }
        };
        let digest = hex(&Sha256::digest(wasm));
        let component = self.compile_cached(path, wasm, &digest)?;
        let incompatible = |e: wasmtime::Error| RuleError::Incompatible {
            path: path.to_path_buf(),
            message: format!("{e:#}"),
        };
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(incompatible)?;
        // The stamp picks the version; an unstamped plugin is whichever its exports fit. A 0.2 plugin whose
        // `process` takes a byte buffer is the `rule-packed-batch` world (its `init` is checked when the
        // first instance is made, below).
        let packed_batch = takes_packed_batch(&component);
        let pre = match stamped {
            Some(Contract::V0_1) => Pre::V0_1(RulePre::new(pre).map_err(incompatible)?),
            Some(Contract::V0_2) if packed_batch => Pre::V0_2PackedBatch(pre),
            Some(Contract::V0_2) => Pre::V0_2(v0_2::RulePre::new(pre).map_err(incompatible)?),
            None if packed_batch => Pre::V0_2PackedBatch(pre),
            None => match v0_2::RulePre::new(pre.clone()) {
                Ok(p) => Pre::V0_2(p),
                Err(_) => Pre::V0_1(RulePre::new(pre).map_err(incompatible)?),
            },
        };
        let tables = limits
            .tables
            .iter()
            .map(|t| v0_2::weir::rules::types::Table {
                name: t.name.clone(),
                columns: t
                    .columns
                    .iter()
                    .map(|(name, ty)| v0_2::weir::rules::types::Column {
                        name: name.clone(),
                        type_: wit_column_type(*ty),
                    })
                    .collect(),
                key: t.primary_key.clone(),
            })
            .collect();
        let name = name.to_string();
        let plugin = RulePlugin {
            pre,
            tables,
            engine: self.engine.clone(),
            digest,
            name,
            path: path.to_path_buf(),
            limits,
            settings,
            idle: Mutex::new(Vec::new()),
            peak_memory: Default::default(),
        };
        let instance = plugin
            .instantiate("init")
            .map_err(|message| RuleError::Init {
                path: path.to_path_buf(),
                message,
            })?;
        plugin.checkin(instance);
        Ok(plugin)
    }

    fn compile_cached(
        &self,
        path: &Path,
        wasm: &[u8],
        digest: &str,
    ) -> Result<Component, RuleError> {
        let compile_err = |e: wasmtime::Error| RuleError::Compile {
            path: path.to_path_buf(),
            message: format!("{e:#}"),
        };
        let fold = fold_globals_enabled();
        let Some(dir) = self.cache_dir.as_deref().filter(|d| private_dir(d)) else {
            return Component::new(&self.engine, &*prepared(path, wasm, fold)).map_err(compile_err);
        };
        let mut h = std::hash::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        fold.then_some(fold::VERSION).hash(&mut h);
        let file = dir.join(format!("{digest}-{:016x}.cwasm", h.finish()));
        // Each compiled entry has its SHA-256 beside it, checked before `deserialize`: a truncated or
        // altered entry is compiled again instead of being run as machine code.
        let check = file.with_extension("cwasm.sha256");
        if let (Ok(bytes), Ok(want)) = (std::fs::read(&file), std::fs::read_to_string(&check)) {
            if hex(&Sha256::digest(&bytes)) == want.trim() {
                // SAFETY: the bytes were written by `precompile_component` of an engine with the same
                // settings (the name carries the engine's compatibility hash) into a cache directory only
                // this user can write, and they still have the digest recorded when they were written.
                match unsafe { Component::deserialize(&self.engine, &bytes) } {
                    Ok(c) => return Ok(c),
                    Err(e) => {
                        tracing::warn!(file = %file.display(), error = %e, "ignoring unusable cached component")
                    }
                }
            } else {
                tracing::warn!(file = %file.display(), "cached component does not match its recorded digest; compiling again");
            }
        }
        let started = Instant::now();
        let bytes = self
            .engine
            .precompile_component(&prepared(path, wasm, fold))
            .map_err(compile_err)?;
        tracing::info!(plugin = %path.display(), ms = started.elapsed().as_millis() as u64, "compiled plugin");
        let stored = write_atomically(&file, &bytes)
            .and_then(|()| write_atomically(&check, hex(&Sha256::digest(&bytes)).as_bytes()));
        if let Err(e) = stored {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot write the plugin cache; continuing without it");
        }
        // SAFETY: `bytes` was just produced by `precompile_component` on this engine.
        unsafe { Component::deserialize(&self.engine, &bytes) }.map_err(compile_err)
    }

    /// The cache directory, when it is usable (see [`private_dir`]).
    pub fn cache_dir(&self) -> Option<&Path> {
        self.cache_dir.as_deref().filter(|d| private_dir(d))
    }
}

/// Whether components are compiled with their constant globals folded ([`fold`]): yes, unless
/// `WEIR_WASM_FOLD_GLOBALS=0` (a diagnostic switch, to measure or rule out the pass).
fn fold_globals_enabled() -> bool {
    std::env::var_os("WEIR_WASM_FOLD_GLOBALS").is_none_or(|v| v != "0")
}

/// The bytes to compile for `wasm`: with its constant globals folded when `fold` is on and the pass
/// applies, else `wasm` itself (a pass that fails is logged, never fatal: the component then runs as built).
fn prepared<'a>(path: &Path, wasm: &'a [u8], fold: bool) -> std::borrow::Cow<'a, [u8]> {
    if !fold {
        return wasm.into();
    }
    let started = Instant::now();
    match fold::constant_globals(wasm) {
        Ok(Some((bytes, folded))) => {
            tracing::debug!(
                plugin = %path.display(),
                modules = folded.modules,
                globals = folded.globals,
                ms = started.elapsed().as_millis() as u64,
                "folded the component's constant globals"
            );
            bytes.into()
        }
        Ok(None) => wasm.into(),
        Err(e) => {
            tracing::warn!(plugin = %path.display(), error = ?e, "compiling the component without folding its constant globals");
            wasm.into()
        }
    }
}

/// Writes `bytes` to `file` through a temporary file in the same directory (never a half-written entry).
pub fn write_atomically(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = file.parent().unwrap_or(Path::new("."));
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        name.unwrap_or_default(),
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, file).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Makes `dir` the worker's private cache: created with mode 0700, narrowed to 0700 when it is wider, and
/// refused (false, with a warning: compiled code and fetched plugins then stay in memory) when another user
/// owns it — precompiled components are machine code the worker runs, so nobody else may write them.
pub fn private_dir(dir: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
        let refuse = |why: String| {
            tracing::warn!(dir = %dir.display(), "{why}; not using the plugin cache (set [rule] cache_dir or WEIR_CACHE_DIR to a directory of this user's)");
            false
        };
        if let Err(e) = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
        {
            return refuse(format!("cannot create it: {e}"));
        }
        let meta = match std::fs::metadata(dir) {
            Ok(m) => m,
            Err(e) => return refuse(format!("cannot read it: {e}")),
        };
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        if meta.uid() != me {
            return refuse(format!(
                "it belongs to user {} and this worker runs as {me}",
                meta.uid()
            ));
        }
        if meta.mode() & 0o077 != 0
            && let Err(e) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        {
            return refuse(format!("cannot make it private (0700): {e}"));
        }
        true
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir).is_ok()
    }
}

/// Hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The virtual monotonic clock's view of the store data.
struct VirtualClocks;

impl wasmtime::component::HasData for VirtualClocks {
    type Data<'a> = world::VirtualClock<'a, HostState>;
}

impl world::HasWorld for HostState {
    fn world(&self) -> &world::World {
        &self.world
    }
    fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}

/// Store data of one instance.
struct HostState {
    /// Clocks and random of the current call.
    world: world::World,
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryCap,
    output: GuestOutput,
    /// Plugin name and batch id, for the guest's log lines.
    plugin: String,
    batch_id: String,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl bindings::weir::rules::types::Host for HostState {}
impl v0_2::weir::rules::types::Host for HostState {}

impl v0_2::weir::rules::host::Host for HostState {
    fn log(&mut self, level: v0_2::weir::rules::host::Level, message: String) {
        use v0_2::weir::rules::host::Level as L;
        let level = match level {
            L::Trace => Level::Trace,
            L::Debug => Level::Debug,
            L::Info => Level::Info,
            L::Warn => Level::Warn,
            L::Error => Level::Error,
        };
        bindings::weir::rules::host::Host::log(self, level, message)
    }

    fn count(&mut self, metric: String, delta: u64) {
        bindings::weir::rules::host::Host::count(self, metric, delta)
    }
}

impl bindings::weir::rules::host::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        let (plugin, batch) = (&self.plugin, &self.batch_id);
        match level {
            Level::Trace => tracing::trace!(plugin, batch, "{message}"),
            Level::Debug => tracing::debug!(plugin, batch, "{message}"),
            Level::Info => tracing::info!(plugin, batch, "{message}"),
            Level::Warn => tracing::warn!(plugin, batch, "{message}"),
            Level::Error => tracing::error!(plugin, batch, "{message}"),
        }
    }

    fn count(&mut self, metric: String, delta: u64) {
        tracing::trace!(plugin = %self.plugin, batch = %self.batch_id, metric, delta, "rule counter");
        crate::metrics::global().rule_count(&metric, delta);
    }
}

/// A column type as contract 0.2 names it.
fn wit_column_type(ty: ColumnType) -> v0_2::weir::rules::types::ColumnType {
    use v0_2::weir::rules::types::ColumnType as W;
    match ty {
        ColumnType::SmallInt => W::Smallint,
        ColumnType::Integer => W::Integer,
        ColumnType::BigInt => W::Bigint,
        ColumnType::Decimal { precision, scale } => W::Decimal((precision, scale)),
        ColumnType::Real => W::Real,
        ColumnType::Double => W::Double,
        ColumnType::Boolean => W::Boolean,
        ColumnType::Varchar(n) => W::Varchar(n),
        ColumnType::Timestamp => W::Timestamp,
        ColumnType::TimestampTz => W::Timestamptz,
        ColumnType::Super => W::Super,
    }
}

/// A plugin ready to instantiate, by contract version.
enum Pre {
    V0_1(RulePre<HostState>),
    V0_2(v0_2::RulePre<HostState>),
    /// 0.2's `rule-packed-batch` world: `process` takes the batch packed (`packed::encode_batch`).
    V0_2PackedBatch(wasmtime::component::InstancePre<HostState>),
}

/// Whether the component's `process` takes one `list<u8>` (0.2's `rule-packed-batch` world).
fn takes_packed_batch(component: &Component) -> bool {
    use wasmtime::component::types::{ComponentItem, Type};
    let Some((ComponentItem::ComponentFunc(f), _)) = component.get_export(None, "process") else {
        return false;
    };
    let mut params = f.params();
    params.len() == 1
        && matches!(params.next(), Some((_, Type::List(l))) if matches!(l.ty(), Type::U8))
}

/// The `process` export of a live instance, by contract version.
enum Bound {
    V0_1(Rule),
    /// 0.2's `process`, called with the host's one source-record type (0.2's record has the same shape).
    V0_2(wasmtime::component::Func),
    /// 0.2's `process` of the `rule-packed-batch` world.
    V0_2PackedBatch(wasmtime::component::Func),
}

/// One live instance in its own store.
struct Instance {
    store: Store<HostState>,
    rule: Bound,
}

/// 0.2's `process` as the host calls it.
type PackedProcess<'a> = wasmtime::component::TypedFunc<(&'a [SourceRecord],), (Vec<u8>,)>;

/// 0.2's `process` of the `rule-packed-batch` world.
type PackedBatchProcess<'a> = wasmtime::component::TypedFunc<(&'a [u8],), (Vec<u8>,)>;

/// 0.2's `init`, called without the `rule` world's bindings (the `rule-packed-batch` world has the same one).
type Init<'a> = wasmtime::component::TypedFunc<
    (
        &'a [v0_2::weir::rules::types::Table],
        &'a [(String, String)],
    ),
    (Result<(), String>,),
>;

/// A loaded plugin. `process` is blocking: call it from a blocking thread.
pub struct RulePlugin {
    pre: Pre,
    /// The declared tables as 0.2's `init` takes them.
    tables: Vec<v0_2::weir::rules::types::Table>,
    engine: Engine,
    digest: String,
    name: String,
    path: PathBuf,
    limits: RuleLimits,
    settings: Vec<(String, String)>,
    /// Healthy instances ready for the next batch.
    idle: Mutex<Vec<Instance>>,
    /// Largest linear memory an instance reached, bytes.
    peak_memory: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// What the rule returned for one record.
#[derive(Debug, Clone)]
pub enum RuleOutput {
    /// A contract 0.1 outcome, still to be checked ([`validate::check`]).
    Wit(Outcome),
    /// A contract 0.2 outcome, decoded from the packed buffer and already checked against the declared
    /// tables.
    Checked(RecordOutcome),
}

/// The result of running one record through the rule: its output, or why the sandbox failed it.
pub type RawOutcome = Result<RuleOutput, String>;

impl RulePlugin {
    /// The largest linear memory any instance of this plugin has reached, in bytes.
    pub fn peak_memory_bytes(&self) -> usize {
        self.peak_memory.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// SHA-256 of the plugin's wasm bytes: the rule version recorded with every batch and row.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The plugin's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The contract version the plugin implements.
    pub fn contract(&self) -> Contract {
        match self.pre {
            Pre::V0_1(_) => Contract::V0_1,
            Pre::V0_2(_) | Pre::V0_2PackedBatch(_) => Contract::V0_2,
        }
    }

    fn instantiate(&self, batch_id: &str) -> Result<Instance, String> {
        let output = GuestOutput::default();
        let world = world::World::default();
        world.begin(&[]);
        let mut wasi = WasiCtx::builder();
        wasi.stderr(output.clone())
            .stdout(output.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .wall_clock(world.wall_clock())
            .monotonic_clock(world.monotonic_clock())
            .secure_random(world.random())
            .insecure_random(world.random())
            .insecure_random_seed(world::INSECURE_SEED);
        let state = HostState {
            world,
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: MemoryCap {
                max_bytes: self.limits.memory_bytes,
                peak: self.peak_memory.clone(),
                size: 0,
            },
            output,
            plugin: self.name.clone(),
            batch_id: batch_id.to_string(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(self.deadline_ticks());
        let (rule, init) = match &self.pre {
            Pre::V0_1(pre) => {
                let rule = pre
                    .instantiate(&mut store)
                    .map_err(|e| self.describe(&mut store, e))?;
                let init = rule.call_init(&mut store, &self.settings);
                (Bound::V0_1(rule), init)
            }
            Pre::V0_2(pre) => {
                let instance = pre
                    .instance_pre()
                    .instantiate(&mut store)
                    .map_err(|e| self.describe(&mut store, e))?;
                let rule = v0_2::Rule::new(&mut store, &instance)
                    .map_err(|e| self.describe(&mut store, e))?;
                let process = instance
                    .get_func(&mut store, "process")
                    .ok_or_else(|| "the rule exports no `process`".to_string())?;
                process
                    .typed::<(&[SourceRecord],), (Vec<u8>,)>(&store)
                    .map_err(|e| self.describe(&mut store, e))?;
                let init = rule.call_init(&mut store, &self.tables, &self.settings);
                (Bound::V0_2(process), init)
            }
            Pre::V0_2PackedBatch(pre) => {
                let instance = pre
                    .instantiate(&mut store)
                    .map_err(|e| self.describe(&mut store, e))?;
                let init: Init<'_> = instance.get_typed_func(&mut store, "init").map_err(|e| {
                    format!("the rule's `init` does not fit weir:rules@0.2.0: {e:#}")
                })?;
                let process = instance
                    .get_func(&mut store, "process")
                    .ok_or_else(|| "the rule exports no `process`".to_string())?;
                process
                    .typed::<(&[u8],), (Vec<u8>,)>(&store)
                    .map_err(|e| self.describe(&mut store, e))?;
                let init = init
                    .call(&mut store, (&self.tables, &self.settings))
                    .map(|(r,)| r);
                (Bound::V0_2PackedBatch(process), init)
            }
        };
        match init {
            Ok(Ok(())) => Ok(Instance { store, rule }),
            Ok(Err(message)) => Err(message),
            Err(e) => Err(self.describe(&mut store, e)),
        }
    }

    fn deadline_ticks(&self) -> u64 {
        (self.limits.deadline.as_micros() as u64)
            .div_ceil(EPOCH_TICK.as_micros() as u64)
            .max(1)
    }

    fn checkout(&self, batch_id: &str) -> Result<Instance, String> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut instance = match idle {
            Some(i) => i,
            None => self.instantiate(batch_id)?,
        };
        instance.store.data_mut().batch_id = batch_id.to_string();
        Ok(instance)
    }

    fn checkin(&self, instance: Instance) {
        // Garbage-collected guests (JavaScript, Python) grow their heap and may never give it back: an
        // instance past half its memory cap is replaced by a fresh one (milliseconds from the precompiled
        // component) rather than left to hit the cap in the middle of a batch.
        if instance.store.data().limiter.size > self.limits.memory_bytes / 2 {
            tracing::debug!(plugin = %self.name, "recycling an instance past half its memory cap");
            return;
        }
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(instance);
    }

    /// A 0.2 outcome buffer, checked against the declared tables; `Err` is a malformed buffer.
    fn decode_outcomes(&self, buffer: &[u8], records: usize) -> Result<Vec<RuleOutput>, String> {
        let declared = packed::Declared {
            tables: &self.limits.tables,
            max_rows: self.limits.max_rows_per_record,
            budget_bytes: packed::DECODE_BUDGET_PER_CAP.saturating_mul(self.limits.memory_bytes),
        };
        packed::decode(buffer, records, declared)
            .map(|o| o.into_iter().map(RuleOutput::Checked).collect())
    }

    /// A readable reason for a failed call, with what the guest printed (a Rust panic message, say).
    fn describe(&self, store: &mut Store<HostState>, error: wasmtime::Error) -> String {
        let printed = store.data().output.take();
        crate::metrics::global().inc("weir_rule_traps_total", &[], 1);
        let reason = match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => format!(
                "rule deadline of {} ms exceeded",
                self.limits.deadline.as_millis()
            ),
            Some(trap) => format!("rule trapped: {trap}"),
            None => {
                // The root cause is the limiter's own message ("memory limit exceeded: …") or the host's.
                let root = error.root_cause().to_string();
                let root = root.lines().next().unwrap_or_default();
                if root.starts_with("memory limit exceeded") {
                    format!("rule {root}")
                } else {
                    format!("rule failed: {root}")
                }
            }
        };
        if printed.is_empty() {
            reason
        } else {
            format!("{reason}; rule output: {printed}")
        }
    }

    /// One call on one instance; `Err` is a failure of the whole call.
    fn call(&self, batch_id: &str, records: &[SourceRecord]) -> Result<Vec<RuleOutput>, String> {
        let mut instance = self.checkout(batch_id)?;
        instance.store.set_epoch_deadline(self.deadline_ticks());
        instance.store.data().world.begin(records);
        let result = match &instance.rule {
            Bound::V0_1(rule) => rule
                .call_process(&mut instance.store, records)
                .map(|o| Ok(o.into_iter().map(RuleOutput::Wit).collect::<Vec<_>>())),
            Bound::V0_2(process) => {
                let process: PackedProcess<'_> = process
                    .typed(&instance.store)
                    .expect("checked when the instance was made");
                process
                    .call(&mut instance.store, (records,))
                    .map(|(buffer,)| self.decode_outcomes(&buffer, records.len()))
            }
            Bound::V0_2PackedBatch(process) => {
                let process: PackedBatchProcess<'_> = process
                    .typed(&instance.store)
                    .expect("checked when the instance was made");
                match packed::encode_batch(records) {
                    Ok(batch) => process
                        .call(&mut instance.store, (&batch,))
                        .map(|(buffer,)| self.decode_outcomes(&buffer, records.len())),
                    Err(too_large) => Ok(Err(too_large)),
                }
            }
        };
        let printed = instance.store.data().output.take();
        let result = match result {
            Ok(Err(malformed)) => {
                crate::metrics::global().inc("weir_rule_traps_total", &[], 1);
                return Err(if printed.is_empty() {
                    malformed
                } else {
                    format!("{malformed}; rule output: {printed}")
                });
            }
            Ok(Ok(outcomes)) => Ok(outcomes),
            Err(e) => Err(e),
        };
        match result {
            Ok(outcomes) if outcomes.len() == records.len() => {
                if !printed.is_empty() {
                    tracing::info!(plugin = %self.name, batch = batch_id, output = %printed, "rule output");
                }
                self.checkin(instance);
                Ok(outcomes)
            }
            Ok(outcomes) => Err(format!(
                "rule returned {} outcomes for {} records (it must return exactly one per record)",
                outcomes.len(),
                records.len()
            )),
            Err(e) => {
                let mut reason = self.describe(&mut instance.store, e);
                if !printed.is_empty() {
                    reason.push_str(&format!("; rule output: {printed}"));
                }
                Err(reason)
            }
        }
    }

    /// Runs `records` through the rule. Always returns exactly one entry per record: the rule's outcome, or
    /// `Err(reason)` for a record that made the rule trap, time out, exceed its memory or miscount.
    pub fn process(&self, batch_id: &str, records: &[SourceRecord]) -> Vec<RawOutcome> {
        let _span = tracing::debug_span!("rule", plugin = %self.name, batch = batch_id, records = records.len()).entered();
        let mut out = Vec::with_capacity(records.len());
        self.bisect(batch_id, records, &mut out);
        out
    }

    fn bisect(&self, batch_id: &str, records: &[SourceRecord], out: &mut Vec<RawOutcome>) {
        if records.is_empty() {
            return;
        }
        match self.call(batch_id, records) {
            Ok(outcomes) => out.extend(outcomes.into_iter().map(Ok)),
            Err(reason) if records.len() == 1 => {
                tracing::warn!(plugin = %self.name, batch = batch_id, record = %records[0].id, %reason, "record rejected by the sandbox");
                out.push(Err(reason));
            }
            Err(reason) => {
                tracing::warn!(
                    plugin = %self.name, batch = batch_id, records = records.len(), %reason,
                    "rule call failed; splitting the batch to isolate the failing records"
                );
                let (left, right) = records.split_at(records.len() / 2);
                self.bisect(batch_id, left, out);
                self.bisect(batch_id, right, out);
            }
        }
    }
}

#[cfg(test)]
mod tests;
