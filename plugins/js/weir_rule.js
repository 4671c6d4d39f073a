// Write weir business rules in JavaScript (componentize-js).
//
//   import { rule, emit, drop, reject, row } from './weir_rule.js';
//   export const { init, process } = rule({
//     setup(settings) { /* settings: an object of strings */ },
//     record(r) {        // r: { id, partitionKey, arrivedAtMs, attributes, payload: Uint8Array, text() }
//       return emit(row('greetings', { text: r.text() }));
//     },
//   });
//
// Cells are plain values: string → text, integer Number or BigInt → integer, other Number → float, boolean,
// null/undefined → NULL, Decimal('12.50') → decimal, Date or TimestampUs(µs) → timestamp, objects and arrays → JSON (Json(x) to
// force JSON). A thrown exception rejects that record with the exception as its reason.
import { log as hostLog, count as hostCount } from 'weir:rules/host@0.1.0';

export const CONTRACT_VERSION = '0.1.0';

const utf8 = new TextDecoder('utf-8', { fatal: true });

class DecimalCell { constructor(text) { this.text = text; } }
class JsonCell { constructor(value) { this.value = value; } }
class TimestampCell { constructor(us) { this.us = us; } }

/** An exact decimal cell from its text, such as `'12.50'`. */
export const Decimal = (text) => new DecimalCell(String(text));
/** A timestamp cell in microseconds since the Unix epoch (a Date keeps milliseconds only). */
export const TimestampUs = (us) => new TimestampCell(BigInt(us));
/** A JSON cell from any value (a string or number too). */
export const Json = (value) => new JsonCell(value);

function value(v) {
  if (v === null || v === undefined) return { tag: 'null' };
  if (typeof v === 'boolean') return { tag: 'boolean', val: v };
  if (typeof v === 'bigint') return { tag: 'integer', val: v };
  if (typeof v === 'number') return Number.isInteger(v) ? { tag: 'integer', val: BigInt(v) } : { tag: 'float', val: v };
  if (typeof v === 'string') return { tag: 'text', val: v };
  if (v instanceof DecimalCell) return { tag: 'decimal', val: v.text };
  if (v instanceof TimestampCell) return { tag: 'timestamp-us', val: v.us };
  if (v instanceof Date) return { tag: 'timestamp-us', val: BigInt(v.getTime()) * 1000n };
  if (v instanceof JsonCell) return v.value === null || v.value === undefined ? { tag: 'null' } : { tag: 'json', val: JSON.stringify(v.value) };
  if (typeof v === 'object') return { tag: 'json', val: JSON.stringify(v) };
  throw new TypeError(`cannot store a ${typeof v} in a cell`);
}

/** A row of `table` with the given cells. */
export function row(table, cells) {
  return { table, cells: Object.entries(cells).map(([k, v]) => [k, value(v)]) };
}
/** The record becomes these rows (possibly none). */
export const emit = (...rows) => ({ tag: 'emit', val: rows });
/** The record is deliberately not loaded, for this reason. */
export const drop = (reason) => ({ tag: 'drop', val: reason });
/** The record is bad data; the reason should name the field. */
export const reject = (reason) => ({ tag: 'reject', val: reason });

/** A line in the worker's log (`level`: trace, debug, info, warn, error). */
export const log = (level, message) => hostLog(level, message);
/** Adds `delta` to the rule counter `metric`. */
export const count = (metric, delta = 1) => hostCount(metric, BigInt(delta));

/** The contract's `init` and `process` from `{ setup(settings), record(r) }`. */
export function rule(impl) {
  return {
    init(settings) {
      if (impl.setup) impl.setup(Object.fromEntries(settings));
    },
    process(batch) {
      return batch.map((r) => {
        const record = {
          id: r.id,
          partitionKey: r.partitionKey,
          arrivedAtMs: r.arrivedAtMs,
          attributes: r.attributes,
          payload: r.payload,
          text: () => utf8.decode(r.payload),
        };
        try {
          return impl.record(record);
        } catch (e) {
          return reject(`rule error: ${e && e.message ? e.message : e}`);
        }
      });
    },
  };
}
