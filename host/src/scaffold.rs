//! `weir plugin new`: a rule project that builds and passes `weir plugin test` as generated.
//!
//! The project carries its own copy of the contract (`weir:rules@0.2.0`) and of the language's weir helper (the
//! Rust SDK crate, the Python module), so it builds outside this repository and offline.

use std::path::{Path, PathBuf};

/// The languages `weir plugin new` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// Rust with the `weir-rule` SDK (`cargo build --target wasm32-wasip2`).
    Rust,
    /// Python with the `weir_rule` helper (componentize-py).
    Python,
    /// JavaScript with the `weir_rule.js` helper (componentize-js).
    Js,
    /// C with the `weir_rule.h` helper (clang + wasi-libc, `wit-bindgen c`, wasm-component-ld).
    C,
}

const WIT: &str = include_str!("../../wit/v0.2/rules.wit");
const SDK_LIB: &str = include_str!("../../plugins/weir-rule/src/lib.rs");
const SDK_PACK: &str = include_str!("../../plugins/weir-rule/src/pack.rs");
const SDK_ROW: &str = include_str!("../../plugins/weir-rule/src/row.rs");
const SDK_ARENA: &str = include_str!("../../plugins/weir-rule/src/arena.rs");
const SDK_BATCH: &str = include_str!("../../plugins/weir-rule/src/batch.rs");
const PY_HELPER: &str = include_str!("../../plugins/python/weir_rule/__init__.py");
/// The Python helper's allocator module (pymalloc for the CPython in the component; plugins/python/weir_rule/_alloc.c,
/// checked in as built, and checked against its source by scripts/build-plugins.sh).
const PY_ALLOC: &[u8] =
    include_bytes!("../../plugins/python/weir_rule/_alloc.cpython-314-wasm32-wasi.so");
const JS_HELPER: &str = include_str!("../../plugins/js/weir_rule.js");
const JS_BUILD: &str = include_str!("../../plugins/js/build.mjs");
const C_HEADER: &str = include_str!("../../plugins/c/weir_rule.h");
const C_HELPER: &str = include_str!("../../plugins/c/weir_rule.c");
const C_JSON: &str = include_str!("../../plugins/c/weir_json.c");
const C_BUILD: &str = include_str!("../../plugins/c/build.sh");

const C_RULE: &str = r#"/* A weir rule: each record is a JSON object with a `name`; it becomes one `greetings` row. */
#include "weir_rule.h"

static const char *salutation = "Hello";

const char *weir_rule_setup(void) {
    const char *s = weir_setting("salutation");
    if (s) salutation = s;
    return NULL;
}

void weir_rule_record(const weir_record *r, weir_outcome *out) {
    const char *err;
    const weir_json *obj = weir_payload_json(r, &err);
    if (!obj) {
        weir_reject(out, "payload: not valid JSON");
        return;
    }
    const char *name = weir_json_str(weir_json_get(obj, "name"));
    if (!name || !*name) {
        weir_reject(out, "name: missing or empty");
        return;
    }
    weir_row *row = weir_emit(out, "greetings");
    weir_cell_text(row, "name", name);
    weir_cell_text(row, "greeting", weir_printf("%s, %s!", salutation, name));
}
"#;

const JS_RULE: &str = r#"// A weir rule: each record is a JSON object with a `name`; it becomes one `greetings` row.
import { rule, emit, reject, row } from './weir_rule.js';

let salutation = 'Hello';

export const { init, process } = rule({
  setup(settings) {
    salutation = settings.salutation ?? 'Hello';
  },
  record(r) {
    let obj;
    try {
      obj = JSON.parse(r.text());
    } catch {
      return reject('payload: not valid JSON');
    }
    const name = obj && typeof obj === 'object' ? obj.name : undefined;
    if (typeof name !== 'string' || name === '') return reject('name: missing or empty');
    return emit(row('greetings', { name, greeting: `${salutation}, ${name}!` }));
  },
});
"#;

const SAMPLE: &str = "{\"name\": \"Ada\"}\n{\"name\": \"\"}\nnot json\n";

fn config(wasm: &str) -> String {
    format!(
        r#"# For `weir plugin test {wasm} --input sample.jsonl --config weir.toml`; a real worker adds [source],
# [raw] and a database [sink].
[source]
kind = "file"
path = "sample.jsonl"

[raw]
kind = "local"
dir = "out/raw"

[rule]
plugin = "{wasm}"

[sink]
kind = "sqlite"
path = "out/weir.db"

[[sink.tables]]
name = "greetings"
primary_key = ["name"]
columns = {{ name = "varchar(64)", greeting = "varchar(128)" }}
"#
    )
}

const RUST_RULE: &str = r#"//! A weir rule: each record is a JSON object with a `name`; it becomes one `greetings` row.

use weir_rule::{Outcome, RowBuilder, Rule, Settings, SourceRecord};

struct Greetings {
    salutation: String,
}

impl Rule for Greetings {
    fn init(settings: &Settings) -> Result<Self, String> {
        Ok(Greetings {
            salutation: settings.get("salutation").unwrap_or("Hello").to_string(),
        })
    }

    fn process(&mut self, record: &SourceRecord) -> Outcome {
        let Ok(json) = serde_json::from_slice::<serde_json::Value>(&record.payload) else {
            return Outcome::Reject("payload: not valid JSON".into());
        };
        match json.get("name").and_then(|n| n.as_str()) {
            Some(name) if !name.is_empty() => Outcome::Emit(vec![
                RowBuilder::new("greetings")
                    .text("name", name)
                    .text("greeting", format!("{}, {name}!", self.salutation))
                    .build(),
            ]),
            _ => Outcome::Reject("name: missing or empty".into()),
        }
    }
}

weir_rule::export_rule!(Greetings);
"#;

const PY_RULE: &str = r#""""A weir rule: each record is a JSON object with a `name`; it becomes one `greetings` row."""
import json

from weir_rule import Rule, emit, reject, row


class WitWorld(Rule):
    def setup(self, settings):
        self.salutation = settings.get("salutation", "Hello")

    def process_record(self, record):
        try:
            obj = json.loads(record.payload)
        except ValueError:
            return reject("payload: not valid JSON")
        name = obj.get("name") if isinstance(obj, dict) else None
        if not isinstance(name, str) or not name:
            return reject("name: missing or empty")
        return emit(row("greetings", name=name, greeting=f"{self.salutation}, {name}!"))
"#;

/// Writes a new rule project `name` in `dir/name`; returns the folder and the commands that build and test it.
pub fn new_project(dir: &Path, name: &str, lang: Lang) -> Result<(PathBuf, Vec<String>), String> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "`{name}`: use letters, digits, `-` and `_` for a rule name"
        ));
    }
    let root = dir.join(name);
    if root.exists() {
        return Err(format!(
            "{} exists already; pick another name or folder",
            root.display()
        ));
    }
    let (mut files, commands) = match lang {
        Lang::Rust => rust_project(name, &name.replace('-', "_")),
        Lang::Python => python_project(name),
        Lang::Js => js_project(name),
        Lang::C => c_project(name),
    };
    // Every language's project builds contract 0.2 (packed rows); the Rust SDK reads it from wit/v0.2, as in
    // this repository, the other helpers from wit/.
    let wit = match lang {
        Lang::Rust => "wit/v0.2/rules.wit",
        Lang::Python | Lang::Js | Lang::C => "wit/rules.wit",
    };
    let contract = crate::rules::CONTRACT_VERSION;
    files.insert(0, (wit.into(), WIT.into()));
    files.push(("sample.jsonl".into(), SAMPLE.into()));
    files.push((
        "README.md".into(),
        format!(
            "# {name}\n\nA weir rule. Build and try it:\n\n```sh\n{}\n```\n\n`{wit}` is the contract \
             (weir:rules@{contract}); edit the rule, declare its tables in `weir.toml`.\n",
            commands.join("\n"),
        ),
    ));
    let binaries: &[(&str, &[u8])] = match lang {
        Lang::Python => &[("weir_rule/_alloc.cpython-314-wasm32-wasi.so", PY_ALLOC)],
        Lang::Rust | Lang::Js | Lang::C => &[],
    };
    let files = files
        .iter()
        .map(|(path, text)| (path.as_str(), text.as_bytes()));
    for (path, bytes) in files.chain(binaries.iter().copied()) {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().expect("files are in the project"))
            .and_then(|_| std::fs::write(&p, bytes))
            .map_err(|e| format!("writing {}: {e}", p.display()))?;
    }
    #[cfg(unix)]
    for script in ["build.sh", "weir/build.sh"] {
        use std::os::unix::fs::PermissionsExt;
        if root.join(script).exists() {
            let _ =
                std::fs::set_permissions(root.join(script), std::fs::Permissions::from_mode(0o755));
        }
    }
    Ok((root, commands))
}

/// A project's files (path, text) and the commands that build and test it.
type Files = (Vec<(String, String)>, Vec<String>);

/// A Rust rule on the guest SDK, built with cargo for `wasm32-wasip2`. Returns its files and the commands that build and test it.
fn rust_project(name: &str, crate_name: &str) -> Files {
    let mut files: Vec<(String, String)> = Vec::new();
    files.extend([
        (
            "Cargo.toml".into(),
            format!(
                r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"

[lib]
crate-type = ["cdylib"]

[dependencies]
weir-rule = {{ path = "sdk/weir-rule" }}
serde_json = "1"

[workspace]
members = [".", "sdk/weir-rule"]

[profile.release]
opt-level = 3
lto = true
codegen-units = 1
strip = "debuginfo"
"#
            ),
        ),
        (
            "sdk/weir-rule/Cargo.toml".into(),
            r#"[package]
name = "weir-rule"
version = "0.1.0"
edition = "2024"

[dependencies]
wit-bindgen = { version = "0.61", default-features = false, features = ["macros", "realloc", "std"] }
serde_json = { version = "1", features = ["preserve_order"] }

# The component's allocator (sdk/weir-rule/src/arena.rs): batch allocations from an arena, the rest from Talc.
[target.'cfg(target_family = "wasm")'.dependencies]
talc = { version = "5", optional = true }

[features]
default = ["allocator"]
# Install the SDK's allocator. Turn it off (`default-features = false`) to bring your own.
allocator = ["dep:talc"]
# Build against contract 0.1 (needs wit/rules.wit of weir:rules@0.1.0), for hosts older than 0.2.
contract-0-1 = []
"#
            .into(),
        ),
        ("sdk/weir-rule/src/lib.rs".into(), SDK_LIB.into()),
        ("sdk/weir-rule/src/pack.rs".into(), SDK_PACK.into()),
        ("sdk/weir-rule/src/row.rs".into(), SDK_ROW.into()),
        ("sdk/weir-rule/src/arena.rs".into(), SDK_ARENA.into()),
        ("sdk/weir-rule/src/batch.rs".into(), SDK_BATCH.into()),
        ("src/lib.rs".into(), RUST_RULE.into()),
    ]);
    files.push((
        "weir.toml".into(),
        config(&format!("target/wasm32-wasip2/release/{crate_name}.wasm")),
    ));
    let commands = vec![
        "rustup target add wasm32-wasip2".into(),
        "cargo build --release --target wasm32-wasip2".into(),
        format!(
            "weir plugin test target/wasm32-wasip2/release/{crate_name}.wasm --input sample.jsonl --config weir.toml"
        ),
    ];
    (files, commands)
}

/// A Python rule, built with componentize-py. Returns its files and the commands that build and test it.
fn python_project(name: &str) -> Files {
    let mut files: Vec<(String, String)> = Vec::new();
    files.extend([
        ("app.py".into(), PY_RULE.into()),
        ("weir_rule/__init__.py".into(), PY_HELPER.into()),
        (
            "build.sh".into(),
            format!(
                r#"#!/usr/bin/env sh
# Builds {name}.wasm with componentize-py (pip install componentize-py==0.25.0) and stamps the contract version.
set -e
cd "$(dirname "$0")"
componentize-py -d wit -w rule componentize app -p . -o {name}.wasm
weir plugin stamp {name}.wasm
"#
            ),
        ),
    ]);
    files.push(("weir.toml".into(), config(&format!("{name}.wasm"))));
    let commands = vec![
        "pip install componentize-py==0.25.0".into(),
        "./build.sh".into(),
        format!("weir plugin test {name}.wasm --input sample.jsonl --config weir.toml"),
    ];
    (files, commands)
}

/// A JavaScript rule, built with componentize-js. Returns its files and the commands that build and test it.
fn js_project(name: &str) -> Files {
    let mut files: Vec<(String, String)> = Vec::new();
    files.extend([
        ("app.js".into(), JS_RULE.into()),
        ("weir_rule.js".into(), JS_HELPER.into()),
        ("build.mjs".into(), JS_BUILD.into()),
        (
            "package.json".into(),
            format!(
                r#"{{
  "name": "{name}",
  "private": true,
  "type": "module",
  "scripts": {{
    "build": "node build.mjs app.js {name}.wasm wit && weir plugin stamp {name}.wasm",
    "build:aot": "node build.mjs app.js {name}.wasm wit --aot && weir plugin stamp {name}.wasm"
  }},
  "devDependencies": {{ "@bytecodealliance/componentize-js": "0.23.0" }}
}}
"#
            ),
        ),
    ]);
    files.push(("weir.toml".into(), config(&format!("{name}.wasm"))));
    let commands = vec![
        "npm install".into(),
        "npm run build".into(),
        format!("weir plugin test {name}.wasm --input sample.jsonl --config weir.toml"),
    ];
    (files, commands)
}

/// A C rule, built with clang for `wasm32-wasip2` and wit-bindgen's C bindings. Returns its files and the commands that build and test it.
fn c_project(name: &str) -> Files {
    let mut files: Vec<(String, String)> = Vec::new();
    files.extend([
        ("rule.c".into(), C_RULE.into()),
        ("weir/weir_rule.h".into(), C_HEADER.into()),
        ("weir/weir_rule.c".into(), C_HELPER.into()),
        ("weir/weir_json.c".into(), C_JSON.into()),
        ("weir/build.sh".into(), C_BUILD.into()),
    ]);
    files.push(("weir.toml".into(), config(&format!("{name}.wasm"))));
    let commands = vec![
        "apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32  # Debian/Ubuntu".into(),
        "cargo install --locked wit-bindgen-cli --version 0.61.1".into(),
        format!("weir/build.sh {name}.wasm rule.c"),
        format!("weir plugin test {name}.wasm --input sample.jsonl --config weir.toml"),
    ];
    (files, commands)
}
