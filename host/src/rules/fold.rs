//! Constant globals across a component's core modules, folded before the component is compiled.
//!
//! A component made of dynamically linked libraries — componentize-py's: CPython, libc and the bindings as
//! separate core modules tied together by a generated `env` module — reaches its own data through imported
//! globals: `env.__memory_base` for its static data, and a `GOT.mem.*` / `GOT.func.*` entry for every
//! exported symbol (`PyLong_Type`, `_Py_NoneStruct`, …). Each is fixed when the component is linked and
//! never changes, but an imported global is opaque to Cranelift: every `global.get` of one is two dependent
//! loads (the import's address from the instance, then the value), on the interpreter's hottest paths.
//!
//! [`constant_globals`] follows, inside one component, every imported global of every core module to the
//! global that defines it; when that one starts as a constant and no code ever changes it, the module's
//! reads of the import become reads of a new immutable global holding the constant, which Wasmtime folds
//! into the machine code. "Never changes" is proved, not assumed: every `global.set` in every module is
//! followed to the global it writes, and a write only leaves the global foldable when it is a dynamic
//! linker's relocation that stores the value the global already holds (straight-line `global.get base,
//! global.get offset, i32.add, global.set entry` at the start of a function, computed here from immutable
//! globals). Globals cannot leave a component, so nothing outside it can write them either. A component
//! this pass does not fully understand (a core module from outside, a write it cannot follow) is left as
//! it is.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use wasm_encoder::reencode::{Reencode, utils};
use wasmparser::{
    ComponentAlias, ComponentExternalKind, ComponentInstance, ExternalKind, Instance, Operator,
    Parser, Payload, TypeRef,
};

/// Bumped whenever the pass's output for some input changes (it is part of the compile cache's key).
pub const VERSION: u32 = 1;

/// Why a component could not be folded (it is then compiled as it is).
#[derive(Debug, thiserror::Error)]
pub enum FoldError {
    /// The component does not parse.
    #[error("cannot read the component")]
    Parse(#[source] wasmparser::BinaryReaderError),
    /// A module could not be written back.
    #[error("cannot rewrite a core module")]
    Encode(#[source] wasm_encoder::reencode::Error),
    /// The rewritten component does not validate (a defect of this pass).
    #[error("the component with constant globals does not validate")]
    Invalid(#[source] wasmparser::BinaryReaderError),
}

impl From<wasmparser::BinaryReaderError> for FoldError {
    fn from(e: wasmparser::BinaryReaderError) -> Self {
        FoldError::Parse(e)
    }
}

/// What [`constant_globals`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Folded {
    /// Core modules rewritten.
    pub modules: usize,
    /// Imported globals whose reads became constants, over all modules.
    pub globals: usize,
}

/// The initial value of a global, when it is a constant.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Const {
    I32(i32),
    I64(i64),
}

/// A value computed by straight-line code from constants and globals.
#[derive(Debug, Clone)]
enum Expr {
    Const(Const),
    Global(u32),
    /// The sum, and how deeply it nests.
    Add(Box<Expr>, Box<Expr>, usize),
}

/// How deeply a computed value may nest (a relocation is one sum): the walk over it recurses, and a
/// component's code is not to choose how deep.
const MAX_EXPR_DEPTH: usize = 8;

impl Expr {
    fn depth(&self) -> usize {
        match self {
            Expr::Add(_, _, d) => *d,
            _ => 0,
        }
    }
}

#[derive(Default)]
struct Module {
    /// The module's bytes, within the component.
    range: Range<usize>,
    /// Imported globals in index order: (module, name).
    global_imports: Vec<(String, String)>,
    /// Defined globals in index order: (mutable, its initializer when that is a constant).
    defined: Vec<(bool, Option<Const>)>,
    /// Exported globals by name.
    global_exports: HashMap<String, u32>,
    /// Globals some `global.set` writes with a value not known here.
    written: HashSet<u32>,
    /// Writes, at the start of a function, of values computed from constants and globals alone.
    computed: Vec<(u32, Expr)>,
    /// Whether the module has a global section to add the constants to.
    has_global_section: bool,
}

enum CoreInstance {
    Instantiate {
        module: u32,
        args: HashMap<String, u32>,
    },
    /// An instance made of other instances' exports: its globals by name, as core global indices.
    FromExports(HashMap<String, u32>),
}

/// A global defined by one module instance: (core instance, defined global index).
type GlobalId = (u32, u32);

/// A module to rewrite, and its imported globals (by index) that read as constants.
type Plan = (u32, Vec<(u32, Const)>);

struct Component {
    modules: Vec<Module>,
    instances: Vec<CoreInstance>,
    /// The core global index space: (core instance, export name).
    globals: Vec<(u32, String)>,
}

fn parse_module(bytes: &[u8], range: Range<usize>) -> Result<Module, FoldError> {
    let mut m = Module {
        range: range.clone(),
        ..Module::default()
    };
    for payload in Parser::new(range.start as u64).parse_all(&bytes[range]) {
        match payload? {
            Payload::ImportSection(s) => {
                for import in s.into_imports() {
                    let import = import?;
                    if let TypeRef::Global(_) = import.ty {
                        m.global_imports
                            .push((import.module.to_string(), import.name.to_string()));
                    }
                }
            }
            Payload::GlobalSection(s) => {
                m.has_global_section = true;
                for g in s {
                    let g = g?;
                    let mut ops = g.init_expr.get_operators_reader();
                    let value = match (ops.read()?, ops.read()?) {
                        (Operator::I32Const { value }, Operator::End) => Some(Const::I32(value)),
                        (Operator::I64Const { value }, Operator::End) => Some(Const::I64(value)),
                        _ => None,
                    };
                    m.defined.push((g.ty.mutable, value));
                }
            }
            Payload::ExportSection(s) => {
                for e in s {
                    let e = e?;
                    if e.kind == ExternalKind::Global {
                        m.global_exports.insert(e.name.to_string(), e.index);
                    }
                }
            }
            Payload::CodeSectionEntry(body) => {
                // Until the first other operator, the function is straight-line code over constants and
                // globals, whose writes can be computed; after it, any write counts as unknown.
                let mut ops = body.get_operators_reader()?;
                let mut stack: Vec<Expr> = Vec::new();
                let mut straight = true;
                while !ops.eof() {
                    let op = ops.read()?;
                    if straight {
                        match op {
                            Operator::I32Const { value } => {
                                stack.push(Expr::Const(Const::I32(value)))
                            }
                            Operator::I64Const { value } => {
                                stack.push(Expr::Const(Const::I64(value)))
                            }
                            Operator::GlobalGet { global_index } => {
                                stack.push(Expr::Global(global_index))
                            }
                            Operator::I32Add | Operator::I64Add
                                if stack.len() >= 2
                                    && stack[stack.len() - 2..]
                                        .iter()
                                        .all(|e| e.depth() < MAX_EXPR_DEPTH) =>
                            {
                                let b = stack.pop().expect("two operands");
                                let a = stack.pop().expect("two operands");
                                let depth = 1 + a.depth().max(b.depth());
                                stack.push(Expr::Add(Box::new(a), Box::new(b), depth));
                            }
                            Operator::GlobalSet { global_index } if !stack.is_empty() => {
                                m.computed
                                    .push((global_index, stack.pop().expect("an operand")));
                            }
                            _ => straight = false,
                        }
                        if straight {
                            continue;
                        }
                    }
                    if let Operator::GlobalSet { global_index } = op {
                        m.written.insert(global_index);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(m)
}

/// The component's top-level core modules, core instances and core globals; `None` when `bytes` is not a
/// component, brings core modules in from outside or lets one of its own out (their globals could then be
/// anyone's).
fn parse_component(bytes: &[u8]) -> Result<Option<Component>, FoldError> {
    let mut c = Component {
        modules: Vec::new(),
        instances: Vec::new(),
        globals: Vec::new(),
    };
    // Nested modules' and components' payloads follow their section; a nested component has index
    // spaces of its own, and core globals cannot cross a component's boundary.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload?;
        match &payload {
            Payload::ModuleSection {
                unchecked_range, ..
            } => {
                if depth == 0 {
                    c.modules
                        .push(parse_module(bytes, unchecked_range.clone())?);
                }
                depth += 1;
                continue;
            }
            Payload::ComponentSection { .. } => {
                depth += 1;
                continue;
            }
            Payload::End(_) => {
                depth = depth.saturating_sub(1);
                continue;
            }
            _ if depth > 0 => continue,
            _ => {}
        }
        match payload {
            Payload::Version {
                encoding: wasmparser::Encoding::Module,
                ..
            } => return Ok(None),
            Payload::InstanceSection(s) => {
                for i in s {
                    c.instances.push(match i? {
                        Instance::Instantiate { module_index, args } => CoreInstance::Instantiate {
                            module: module_index,
                            args: args.iter().map(|a| (a.name.to_string(), a.index)).collect(),
                        },
                        Instance::FromExports(exports) => CoreInstance::FromExports(
                            exports
                                .iter()
                                .filter(|e| e.kind == ExternalKind::Global)
                                .map(|e| (e.name.to_string(), e.index))
                                .collect(),
                        ),
                    });
                }
            }
            Payload::ComponentAliasSection(s) => {
                for a in s {
                    match a? {
                        ComponentAlias::CoreInstanceExport {
                            kind: ExternalKind::Global,
                            instance_index,
                            name,
                        } => {
                            c.globals.push((instance_index, name.to_string()));
                        }
                        ComponentAlias::Outer {
                            kind: wasmparser::ComponentOuterAliasKind::CoreModule,
                            ..
                        } => {
                            return Ok(None);
                        }
                        _ => {}
                    }
                }
            }
            // A module handed to a nested component, or exported, may be instantiated again elsewhere
            // with other imports, and its rewritten code would then be wrong there.
            Payload::ComponentInstanceSection(s) => {
                for i in s {
                    let shared = match i? {
                        ComponentInstance::Instantiate { args, .. } => {
                            args.iter().any(|a| a.kind == ComponentExternalKind::Module)
                        }
                        ComponentInstance::FromExports(exports) => exports
                            .iter()
                            .any(|e| e.kind == ComponentExternalKind::Module),
                    };
                    if shared {
                        return Ok(None);
                    }
                }
            }
            Payload::ComponentExportSection(s) => {
                for e in s {
                    if e?.kind == ComponentExternalKind::Module {
                        return Ok(None);
                    }
                }
            }
            Payload::ComponentImportSection(s) => {
                for i in s {
                    if let wasmparser::ComponentTypeRef::Module(_) = i?.ty {
                        return Ok(None);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(Some(c))
}

/// How many re-exports a global is followed through (a cycle is invalid wasm; this only bounds the walk).
const MAX_HOPS: usize = 64;

impl Component {
    /// The defined global that export `name` of core instance `instance` is.
    fn resolve(&self, instance: u32, name: &str, hops: usize) -> Option<GlobalId> {
        if hops > MAX_HOPS {
            return None;
        }
        match self.instances.get(instance as usize)? {
            CoreInstance::Instantiate { module, args } => {
                let index = *self
                    .modules
                    .get(*module as usize)?
                    .global_exports
                    .get(name)?;
                self.resolve_index(instance, *module, args, index, hops + 1)
            }
            CoreInstance::FromExports(exports) => {
                let (i, n) = self.globals.get(*exports.get(name)? as usize)?;
                self.resolve(*i, n, hops + 1)
            }
        }
    }

    /// Global `index` of `module`, instantiated as `instance` with `args`, as the global that defines it.
    fn resolve_index(
        &self,
        instance: u32,
        module: u32,
        args: &HashMap<String, u32>,
        index: u32,
        hops: usize,
    ) -> Option<GlobalId> {
        let m = self.modules.get(module as usize)?;
        let imported = m.global_imports.len() as u32;
        if index >= imported {
            return Some((instance, index - imported));
        }
        let (from, name) = &m.global_imports[index as usize];
        self.resolve(*args.get(from)?, name, hops)
    }

    /// A defined global's (mutable, constant initializer).
    fn defined(&self, id: GlobalId) -> Option<(bool, Option<Const>)> {
        let CoreInstance::Instantiate { module, .. } = self.instances.get(id.0 as usize)? else {
            return None;
        };
        self.modules
            .get(*module as usize)?
            .defined
            .get(id.1 as usize)
            .copied()
    }

    /// The value of `expr` in `module` instantiated as `instance`, when it reads immutable globals only.
    fn eval(
        &self,
        instance: u32,
        module: u32,
        args: &HashMap<String, u32>,
        expr: &Expr,
    ) -> Option<Const> {
        match expr {
            Expr::Const(c) => Some(*c),
            Expr::Global(g) => {
                match self.defined(self.resolve_index(instance, module, args, *g, 0)?)? {
                    (false, init) => init,
                    (true, _) => None,
                }
            }
            Expr::Add(a, b, _) => match (
                self.eval(instance, module, args, a)?,
                self.eval(instance, module, args, b)?,
            ) {
                (Const::I32(a), Const::I32(b)) => Some(Const::I32(a.wrapping_add(b))),
                (Const::I64(a), Const::I64(b)) => Some(Const::I64(a.wrapping_add(b))),
                _ => None,
            },
        }
    }

    /// Per module instantiated exactly once: its imported globals (index) whose value is a constant.
    fn plans(&self) -> Option<Vec<Plan>> {
        let mut written: HashSet<GlobalId> = HashSet::new();
        let mut instances_of: HashMap<u32, Vec<u32>> = HashMap::new();
        for (i, inst) in self.instances.iter().enumerate() {
            let CoreInstance::Instantiate { module, args } = inst else {
                continue;
            };
            let i = i as u32;
            let m = self.modules.get(*module as usize)?;
            instances_of.entry(*module).or_default().push(i);
            // A write this pass cannot follow to its global could be to any of them: fold nothing.
            for &g in &m.written {
                written.insert(self.resolve_index(i, *module, args, g, 0)?);
            }
            for (g, expr) in &m.computed {
                let id = self.resolve_index(i, *module, args, *g, 0)?;
                let initial = self.defined(id).and_then(|(_, init)| init);
                let unchanged = initial.is_some() && self.eval(i, *module, args, expr) == initial;
                if !unchanged {
                    written.insert(id);
                }
            }
        }
        let mut plans = Vec::new();
        for (module, instances) in instances_of {
            let [instance] = instances[..] else { continue };
            let m = &self.modules[module as usize];
            let CoreInstance::Instantiate { args, .. } = &self.instances[instance as usize] else {
                continue;
            };
            if !m.has_global_section {
                continue;
            }
            let plan: Vec<(u32, Const)> = (0..m.global_imports.len() as u32)
                .filter_map(|g| {
                    let id = self.resolve_index(instance, module, args, g, 0)?;
                    match self.defined(id)? {
                        (mutable, Some(v)) if !mutable || !written.contains(&id) => Some((g, v)),
                        _ => None,
                    }
                })
                .collect();
            if !plan.is_empty() {
                plans.push((module, plan));
            }
        }
        plans.sort_by_key(|(module, _)| *module);
        Some(plans)
    }
}

/// `wasm` with the constant imported globals of its core modules folded, and what was done; `None` when
/// there is nothing to fold or `wasm` is not a component this pass can prove anything about.
pub fn constant_globals(wasm: &[u8]) -> Result<Option<(Vec<u8>, Folded)>, FoldError> {
    let Some(component) = parse_component(wasm)? else {
        return Ok(None);
    };
    let Some(plans) = component.plans().filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    let mut folded = Folded::default();
    let mut out = Vec::with_capacity(wasm.len());
    let mut at = 0usize;
    for (module, plan) in plans {
        let m = &component.modules[module as usize];
        let Some(header) = section_start(wasm, &m.range) else {
            return Ok(None);
        };
        let first_new = (m.global_imports.len() + m.defined.len()) as u32;
        let mut folder = Folder {
            map: plan
                .iter()
                .enumerate()
                .map(|(k, (g, _))| (*g, first_new + k as u32))
                .collect(),
            constants: plan.iter().map(|(_, v)| *v).collect(),
            in_const_expr: false,
        };
        let mut module_out = wasm_encoder::Module::new();
        folder
            .parse_core_module(&mut module_out, Parser::new(0), &wasm[m.range.clone()])
            .map_err(FoldError::Encode)?;
        let module_bytes = module_out.finish();
        // Each module is the whole body of its section, whose size prefix changes with it.
        out.extend_from_slice(&wasm[at..header]);
        out.push(1);
        wasm_encoder::Encode::encode(module_bytes.as_slice(), &mut out);
        at = m.range.end;
        folded.modules += 1;
        folded.globals += plan.len();
    }
    out.extend_from_slice(&wasm[at..]);
    wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
        .validate_all(&out)
        .map_err(FoldError::Invalid)?;
    Ok(Some((out, folded)))
}

/// Where the component section holding the module at `body` starts: id 1, then the body's size as LEB128.
fn section_start(wasm: &[u8], body: &Range<usize>) -> Option<usize> {
    (1..=5).find_map(|len| {
        let id = body.start.checked_sub(len + 1)?;
        let size = &wasm[id + 1..body.start];
        let well_formed = size
            .iter()
            .enumerate()
            .all(|(k, b)| (b & 0x80 == 0) == (k == len - 1));
        let value = size
            .iter()
            .enumerate()
            .fold(0u64, |v, (k, b)| v | u64::from(b & 0x7f) << (7 * k));
        (wasm[id] == 1 && well_formed && value == body.len() as u64).then_some(id)
    })
}

/// Rewrites one module: `global.get` of a folded import reads the new constant global instead.
struct Folder {
    /// Imported global -> the constant global added for it.
    map: HashMap<u32, u32>,
    /// The added globals' values, in order.
    constants: Vec<Const>,
    /// Initializers and segment offsets keep their imports: they run once, and an initializer may not
    /// name a global defined after it.
    in_const_expr: bool,
}

impl Reencode for Folder {
    type Error = std::convert::Infallible;

    fn instruction<'a>(
        &mut self,
        arg: Operator<'a>,
    ) -> Result<wasm_encoder::Instruction<'a>, wasm_encoder::reencode::Error<Self::Error>> {
        if let Operator::GlobalGet { global_index } = arg
            && let Some(&to) = self.map.get(&global_index).filter(|_| !self.in_const_expr)
        {
            return Ok(wasm_encoder::Instruction::GlobalGet(to));
        }
        utils::instruction(self, arg)
    }

    fn const_expr(
        &mut self,
        expr: wasmparser::ConstExpr,
    ) -> Result<wasm_encoder::ConstExpr, wasm_encoder::reencode::Error<Self::Error>> {
        self.in_const_expr = true;
        let out = utils::const_expr(self, expr);
        self.in_const_expr = false;
        out
    }

    fn parse_global_section(
        &mut self,
        globals: &mut wasm_encoder::GlobalSection,
        section: wasmparser::GlobalSectionReader<'_>,
    ) -> Result<(), wasm_encoder::reencode::Error<Self::Error>> {
        utils::parse_global_section(self, globals, section)?;
        for c in &self.constants {
            let (val_type, init) = match *c {
                Const::I32(v) => (
                    wasm_encoder::ValType::I32,
                    wasm_encoder::ConstExpr::i32_const(v),
                ),
                Const::I64(v) => (
                    wasm_encoder::ValType::I64,
                    wasm_encoder::ConstExpr::i64_const(v),
                ),
            };
            globals.global(
                wasm_encoder::GlobalType {
                    val_type,
                    mutable: false,
                    shared: false,
                },
                &init,
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
