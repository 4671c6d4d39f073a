// Builds a JavaScript rule into a weir component with componentize-js (StarlingMonkey).
//   node plugins/js/build.mjs SOURCE.js OUT.wasm [WIT_DIR] [--aot]
// componentize-js must be installed (scripts/build-plugins.sh installs it, pinned, under /var/tmp).
//
// The weir_rule.js helper imports `weir:rules/host@0.2.0`. Given another contract version's WIT (0.1: the
// repository's wit/), the rule is built from a copy of its folder in which the helper it imports names that
// version instead.
//
// --aot: componentize-js's ahead-of-time mode, in which weval specializes the JavaScript interpreter for the
// rule's code. It needs weval 0.5: the binary named by $WEIR_WEVAL, else `weval` on the PATH
// (`cargo install weval --version 0.5.0 --locked`). weval opens only the rule's own folder, so the rule is
// built from a copy of it with the helper placed beside it.
import { componentize } from '@bytecodealliance/componentize-js';
import { existsSync } from 'node:fs';
import { cp, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, delimiter, dirname, join, resolve } from 'node:path';

const args = process.argv.slice(2);
const aot = args.includes('--aot');
const [source, outArg, wit = 'wit'] = args.filter((a) => a !== '--aot');
let wevalBin;
if (aot) {
  wevalBin = process.env.WEIR_WEVAL
    ?? (process.env.PATH ?? '').split(delimiter).map((d) => join(d, 'weval')).find((p) => existsSync(p));
  if (!wevalBin || !existsSync(wevalBin)) {
    console.error('--aot needs weval 0.5: `cargo install weval --version 0.5.0 --locked`, or set WEIR_WEVAL to its path');
    process.exit(2);
  }
}
const out = resolve(outArg);
const witText = await readFile(join(resolve(wit), 'rules.wit'), 'utf8');
const version = /package weir:rules@([0-9.]+);/.exec(witText)?.[1] ?? '0.2.0';
let sourcePath = resolve(source);
let scratch = null;
if (version !== '0.2.0' || aot) {
  scratch = await mkdtemp(join(tmpdir(), 'weir-js-'));
  const app = join(scratch, 'app');
  // The rule's folder without its node_modules (componentize-js itself, in a project `weir plugin new` made).
  await cp(dirname(sourcePath), app, { recursive: true, filter: (p) => basename(p) !== 'node_modules' });
  const text = await readFile(sourcePath, 'utf8');
  const helperImport = /from\s+'([^']*weir_rule\.js)'/.exec(text)?.[1];
  if (helperImport) {
    let helper = await readFile(resolve(dirname(sourcePath), helperImport), 'utf8');
    if (version !== '0.2.0') {
      helper = helper.replaceAll('weir:rules/host@0.2.0', `weir:rules/host@${version}`)
        .replace("CONTRACT_VERSION = '0.2.0'", `CONTRACT_VERSION = '${version}'`);
    }
    // Beside the rule (its import rewritten) when weval builds it, or when the helper's place relative to the
    // rule would fall outside the scratch folder (a rule nested deeper than one level under the helper).
    if (aot || !resolve(app, helperImport).startsWith(scratch + '/')) {
      await writeFile(join(app, 'weir_rule.js'), helper);
      await writeFile(join(app, basename(sourcePath)), text.replace(`'${helperImport}'`, "'./weir_rule.js'"));
    } else {
      const target = resolve(app, helperImport);
      await mkdir(dirname(target), { recursive: true });
      await writeFile(target, helper);
    }
  }
  sourcePath = join(app, basename(sourcePath));
  // componentize-js resolves the rule's imports and the WIT from the working directory.
  await cp(resolve(wit), join(scratch, 'wit'), { recursive: true });
  process.chdir(scratch);
}
try {
  const { component } = await componentize({
    sourcePath,
    witPath: scratch ? join(scratch, 'wit') : resolve(wit),
    // 0.2's `rule-packed-batch` world: the batch arrives as one buffer the helper reads in place, instead of
    // records that the generated bindings would lift string by string in interpreted code.
    worldName: /^world rule-packed-batch\b/m.test(witText) ? 'rule-packed-batch' : 'rule',
    disableFeatures: ['http', 'fetch-event', 'random', 'clocks', 'stdio'],
    ...(aot ? { enableAot: true, wevalBin } : {}),
  });
  await writeFile(out, component);
} finally {
  if (scratch) await rm(scratch, { recursive: true, force: true });
}
