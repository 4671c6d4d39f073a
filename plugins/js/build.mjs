// Builds a JavaScript rule into a weir component with componentize-js (StarlingMonkey).
//   node plugins/js/build.mjs SOURCE.js OUT.wasm [WIT_DIR]
// componentize-js must be installed (scripts/build-plugins.sh installs it, pinned, under /var/tmp).
import { componentize } from '@bytecodealliance/componentize-js';
import { writeFile } from 'node:fs/promises';
import { resolve } from 'node:path';

const [source, out, wit = 'wit'] = process.argv.slice(2);
const { component } = await componentize({
  sourcePath: resolve(source),
  witPath: resolve(wit),
  worldName: 'rule',
  disableFeatures: ['http', 'fetch-event', 'random', 'clocks', 'stdio'],
});
await writeFile(out, component);
