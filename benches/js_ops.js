// What one operation costs in a JavaScript rule (componentize-js: SpiderMonkey interpreted inside the sandbox):
// each record is decoded and parsed, then one operation is run 100 times (chosen by the rule setting `op`),
// and the record is dropped. benches/js_ops.sh builds it and prints µs per operation against `op = "none"`.
import { rule, drop } from '../plugins/js/weir_rule.js';
let op = 'none';
const RE = /^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/;
const enc = new TextEncoder();
const buf = new Uint8Array(65536); const view = new DataView(buf.buffer);
let sink = 0;
function f(a) { return a + 1; }
export const { init, process } = rule({
  setup(s) { op = s.op || 'none'; },
  record(r) {
    const o = JSON.parse(r.text());
    let x = 0;
    switch (op) {
      case 'loop': for (let i = 0; i < 100; i++) { x += i; } break;
      case 'call': for (let i = 0; i < 100; i++) { x = f(x); } break;
      case 'prop': for (let i = 0; i < 100; i++) { x += o.lines.length; } break;
      case 'obj': for (let i = 0; i < 100; i++) { const q = { a: i, b: x }; x += q.a; } break;
      case 'arr': for (let i = 0; i < 100; i++) { const q = [i, x]; x += q[0]; } break;
      case 'regex': for (let i = 0; i < 100; i++) { x += RE.exec(o.placed_at).length; } break;
      case 'bigint': for (let i = 0; i < 100; i++) { x += Number(BigInt(i) * 100n); } break;
      case 'encode': for (let i = 0; i < 100; i++) { x += enc.encode(o.order_id).length; } break;
      case 'encodeInto': for (let i = 0; i < 100; i++) { x += enc.encodeInto(o.order_id, buf.subarray(i * 20)).written; } break;
      case 'charcode': for (let i = 0; i < 100; i++) { const s = o.order_id; for (let k = 0; k < s.length; k++) buf[i * 16 + k] = s.charCodeAt(k); } break;
      case 'setu32': for (let i = 0; i < 100; i++) { view.setUint32(i * 4, i, true); } break;
      case 'index': for (let i = 0; i < 100; i++) { buf[i] = i; } break;
      case 'template': for (let i = 0; i < 100; i++) { x += `${i}.${x}`.length; } break;
      case 'stringify': for (let i = 0; i < 100; i++) { x += JSON.stringify(o.shipping).length; } break;
    }
    sink += x;
    return drop('x');
  },
});
