//! The pass over small components built here: an `env` module defining the globals, a library reading
//! them, and a relocation module writing one — the shape of a componentize-py component.

use super::*;
use wasm_encoder::{
    CodeSection, ComponentAliasSection, ConstExpr, EntityType, ExportKind, ExportSection, Function,
    FunctionSection, GlobalSection, GlobalType, ImportSection, InstanceSection, Instruction,
    ModuleArg, ModuleSection, TypeSection, ValType,
};

fn global(mutable: bool) -> GlobalType {
    GlobalType {
        val_type: ValType::I32,
        mutable,
        shared: false,
    }
}

/// A module with `imports` (module, name, mutable), `globals` (mutable, initial value, export name), and
/// one function per entry of `bodies`.
fn module(
    imports: &[(&str, &str, bool)],
    globals: &[(bool, i32, &str)],
    bodies: &[Vec<Instruction<'static>>],
) -> wasm_encoder::Module {
    let mut m = wasm_encoder::Module::new();
    let mut types = TypeSection::new();
    types.ty().function([ValType::I32], [ValType::I32]);
    m.section(&types);
    let mut imp = ImportSection::new();
    for (module, name, mutable) in imports {
        imp.import(module, name, EntityType::Global(global(*mutable)));
    }
    m.section(&imp);
    let mut funcs = FunctionSection::new();
    for _ in bodies {
        funcs.function(0);
    }
    m.section(&funcs);
    if !globals.is_empty() {
        let mut g = GlobalSection::new();
        for (mutable, value, _) in globals {
            g.global(global(*mutable), &ConstExpr::i32_const(*value));
        }
        m.section(&g);
    }
    let mut exports = ExportSection::new();
    for (k, (_, _, name)) in globals.iter().enumerate() {
        exports.export(name, ExportKind::Global, (imports.len() + k) as u32);
    }
    m.section(&exports);
    let mut code = CodeSection::new();
    for body in bodies {
        let mut f = Function::new([]);
        for i in body {
            f.instruction(i);
        }
        f.instruction(&Instruction::End);
        code.function(&f);
    }
    m.section(&code);
    m
}

/// env (got = `got_initial`, base = 1000, sp = 7; a function writes sp from a local), lib (reads got, base
/// and sp; defines off = 64), relocs (sets got = base + off).
fn component(got_initial: i32) -> wasm_encoder::Component {
    use Instruction::*;
    component_with(
        got_initial,
        vec![
            GlobalGet(1),
            GlobalGet(2),
            I32Add,
            GlobalSet(0),
            I32Const(0),
        ],
    )
}

/// [`component`] with `relocs` as the relocation module's function.
fn component_with(got_initial: i32, relocs: Vec<Instruction<'static>>) -> wasm_encoder::Component {
    use Instruction::*;
    let env = module(
        &[],
        &[
            (true, got_initial, "got"),
            (false, 1000, "base"),
            (true, 7, "sp"),
        ],
        &[vec![LocalGet(0), GlobalSet(2), I32Const(0)]],
    );
    let lib = module(
        &[
            ("env", "got", true),
            ("env", "base", false),
            ("env", "sp", true),
        ],
        &[(false, 64, "off")],
        &[vec![
            GlobalGet(0),
            GlobalGet(1),
            I32Add,
            GlobalGet(2),
            I32Add,
        ]],
    );
    let relocs = module(
        &[
            ("env", "got", true),
            ("env", "base", false),
            ("lib", "off", false),
        ],
        &[],
        &[relocs],
    );
    let mut c = wasm_encoder::Component::new();
    for m in [&env, &lib, &relocs] {
        c.section(&ModuleSection(m));
    }
    let mut instances = InstanceSection::new();
    instances.instantiate(0, Vec::<(&str, ModuleArg)>::new());
    c.section(&instances);
    let mut aliases = ComponentAliasSection::new();
    for name in ["got", "base", "sp"] {
        aliases.alias(wasm_encoder::Alias::CoreInstanceExport {
            instance: 0,
            kind: ExportKind::Global,
            name,
        });
    }
    c.section(&aliases);
    let mut instances = InstanceSection::new();
    instances.export_items([
        ("got", ExportKind::Global, 0),
        ("base", ExportKind::Global, 1),
        ("sp", ExportKind::Global, 2),
    ]);
    instances.instantiate(1, [("env", ModuleArg::Instance(1))]);
    c.section(&instances);
    let mut aliases = ComponentAliasSection::new();
    aliases.alias(wasm_encoder::Alias::CoreInstanceExport {
        instance: 2,
        kind: ExportKind::Global,
        name: "off",
    });
    c.section(&aliases);
    let mut instances = InstanceSection::new();
    instances.export_items([
        ("got", ExportKind::Global, 0),
        ("base", ExportKind::Global, 1),
    ]);
    instances.export_items([("off", ExportKind::Global, 3)]);
    instances.instantiate(
        2,
        [
            ("env", ModuleArg::Instance(3)),
            ("lib", ModuleArg::Instance(4)),
        ],
    );
    c.section(&instances);
    c
}

/// The library module's globals (mutable, initial value) and the operands of its function's `global.get`s.
fn library(component: &[u8]) -> (Vec<(bool, Option<Const>)>, Vec<u32>) {
    let parsed = parse_component(component).unwrap().unwrap();
    let lib = &parsed.modules[1];
    let mut reads = Vec::new();
    for payload in Parser::new(0).parse_all(&component[lib.range.clone()]) {
        if let Payload::CodeSectionEntry(body) = payload.unwrap() {
            let mut ops = body.get_operators_reader().unwrap();
            while !ops.eof() {
                if let Operator::GlobalGet { global_index } = ops.read().unwrap() {
                    reads.push(global_index);
                }
            }
        }
    }
    (lib.defined.clone(), reads)
}

#[test]
fn a_relocation_that_stores_the_linked_value_leaves_the_global_constant() {
    let input = component(1064).finish();
    assert_eq!(library(&input).1, [0, 1, 2]);
    let (out, folded) = constant_globals(&input).unwrap().expect("folded");
    // lib: got (relocated to the value it already has) and base; not sp, which env's code changes.
    assert_eq!(
        folded,
        Folded {
            modules: 1,
            globals: 2
        }
    );
    let (defined, reads) = library(&out);
    assert_eq!(
        defined,
        [
            (false, Some(Const::I32(64))),
            (false, Some(Const::I32(1064))),
            (false, Some(Const::I32(1000)))
        ]
    );
    assert_eq!(reads, [4, 5, 2]);
}

#[test]
fn a_global_written_with_another_value_is_left_imported() {
    let (out, folded) = constant_globals(&component(100).finish())
        .unwrap()
        .expect("folded");
    assert_eq!(
        folded,
        Folded {
            modules: 1,
            globals: 1
        }
    );
    let (defined, reads) = library(&out);
    assert_eq!(
        defined,
        [
            (false, Some(Const::I32(64))),
            (false, Some(Const::I32(1000)))
        ]
    );
    assert_eq!(reads, [0, 4, 2]);
}

#[test]
fn what_is_not_a_linked_component_is_left_as_it_is() {
    let core = module(&[], &[(false, 1, "x")], &[]).finish();
    assert!(constant_globals(&core).unwrap().is_none());
    assert!(
        constant_globals(&wasm_encoder::Component::new().finish())
            .unwrap()
            .is_none()
    );
    assert!(constant_globals(b"\0asm\x0d\0\x01\0garbage").is_err());
}

#[test]
fn a_module_that_leaves_the_component_is_never_rewritten() {
    let mut c = component(1064);
    let mut exports = wasm_encoder::ComponentExportSection::new();
    exports.export("lib", wasm_encoder::ComponentExportKind::Module, 1, None);
    c.section(&exports);
    assert!(constant_globals(&c.finish()).unwrap().is_none());
}

#[test]
fn a_deeply_nested_computed_write_counts_as_unknown() {
    use Instruction::*;
    // got = 0 + 0 + … + 0, a hundred thousand sums deep: the value it already holds, but deeper than the
    // pass follows (following it would recurse that deep), so got stays imported.
    let mut body = vec![I32Const(0)];
    for _ in 0..100_000 {
        body.extend([I32Const(0), I32Add]);
    }
    body.extend([GlobalSet(0), I32Const(0)]);
    let (_, folded) = constant_globals(&component_with(0, body).finish())
        .unwrap()
        .expect("folded");
    assert_eq!(
        folded,
        Folded {
            modules: 1,
            globals: 1
        }
    );
}
