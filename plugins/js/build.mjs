// Builds a JavaScript rule into a weir component with componentize-js (StarlingMonkey).
//   node plugins/js/build.mjs SOURCE.js OUT.wasm [WIT_DIR]
// componentize-js must be installed (scripts/build-plugins.sh installs it, pinned, under /var/tmp).
//
// The weir_rule.js helper imports `weir:rules/host@0.2.0`. Given another contract version's WIT (0.1: the
// repository's wit/), the rule is built from a copy of its folder in which the helper it imports names that
// version instead.
import { componentize } from '@bytecodealliance/componentize-js';
import { cp, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';

const [source, outArg, wit = 'wit'] = process.argv.slice(2);
const out = resolve(outArg);
const witText = await readFile(join(resolve(wit), 'rules.wit'), 'utf8');
const version = /package weir:rules@([0-9.]+);/.exec(witText)?.[1] ?? '0.2.0';
let sourcePath = resolve(source);
let scratch = null;
if (version !== '0.2.0') {
  scratch = await mkdtemp(join(tmpdir(), 'weir-js-'));
  const app = join(scratch, 'app');
  await cp(dirname(sourcePath), app, { recursive: true });
  const helperImport = /from\s+'([^']*weir_rule\.js)'/.exec(await readFile(sourcePath, 'utf8'))?.[1];
  if (helperImport) {
    const helper = await readFile(resolve(dirname(sourcePath), helperImport), 'utf8');
    const target = resolve(app, helperImport);
    await mkdir(dirname(target), { recursive: true });
    await writeFile(
      target,
      helper.replaceAll('weir:rules/host@0.2.0', `weir:rules/host@${version}`)
        .replace("CONTRACT_VERSION = '0.2.0'", `CONTRACT_VERSION = '${version}'`),
    );
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
    worldName: 'rule',
    disableFeatures: ['http', 'fetch-event', 'random', 'clocks', 'stdio'],
  });
  await writeFile(out, component);
} finally {
  if (scratch) await rm(scratch, { recursive: true, force: true });
}
