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
//
// Builds contract weir:rules@0.2.0 (wit/v0.2/rules.wit), world `rule-packed-batch`: the host passes the declared
// tables to `init`, each batch arrives as one buffer whose records are read in place (a field is decoded when
// the rule first reads it), and the batch's rows go back packed in one buffer (docs/CONTRACT.md), cells in
// declared column order. build.mjs given contract 0.1's WIT builds from a copy of this file
// whose import and CONTRACT_VERSION name 0.1.0; the outcomes are then returned as 0.1's WIT values.
import { log as hostLog, count as hostCount } from 'weir:rules/host@0.2.0';

export const CONTRACT_VERSION = '0.2.0';
const V01 = CONTRACT_VERSION.startsWith('0.1.');

const utf8 = new TextDecoder('utf-8', { fatal: true });
const utf8Out = new TextEncoder();
const I64_MIN = -(2n ** 63n);
const I64_MAX = 2n ** 63n - 1n;

class DecimalCell { constructor(text) { this.text = text; } }
class JsonCell { constructor(value) { this.value = value; } }
class TimestampCell { constructor(us) { this.us = us; } }

/** An exact decimal cell from its text, such as `'12.50'`. */
export const Decimal = (text) => new DecimalCell(typeof text === 'string' ? text : String(text));
/** A timestamp cell in microseconds since the Unix epoch (a Date keeps milliseconds only). */
export const TimestampUs = (us) => new TimestampCell(typeof us === 'bigint' ? us : BigInt(us));
/** A JSON cell from any value (a string or number too). */
export const Json = (value) => new JsonCell(value);

// Cell tags of the packed layout.
const NULL = 0, BOOLEAN = 1, INTEGER = 2, FLOAT = 3, DECIMAL = 4, TEXT = 5, TIMESTAMP = 6, JSON_TEXT = 7;
const NULL_CELL = [NULL, null];

function int64(v) {
  if (v < I64_MIN || v > I64_MAX) throw new RangeError(`${v} does not fit in 64 bits`);
  return v;
}

// A cell's tag, its value left in `cellValue`: worked out when the row is made, so that a value that cannot be
// stored throws in `record`. (One tag and one shared slot instead of a [tag, value] pair: no allocation per cell.)
let cellValue = null;
function tagOf(v) {
  if (v === null || v === undefined) return NULL;
  if (typeof v === 'string') { cellValue = v; return TEXT; }
  if (typeof v === 'number') {
    if (Number.isInteger(v)) { cellValue = int64(BigInt(v)); return INTEGER; }
    cellValue = v;
    return FLOAT;
  }
  if (typeof v === 'boolean') { cellValue = v; return BOOLEAN; }
  if (typeof v === 'bigint') { cellValue = int64(v); return INTEGER; }
  if (v instanceof DecimalCell) { cellValue = v.text; return DECIMAL; }
  if (v instanceof TimestampCell) { cellValue = int64(v.us); return TIMESTAMP; }
  if (v instanceof Date) { cellValue = BigInt(v.getTime()) * 1000n; return TIMESTAMP; }
  if (v instanceof JsonCell) {
    if (v.value === null || v.value === undefined) return NULL;
    cellValue = JSON.stringify(v.value);
    return JSON_TEXT;
  }
  if (typeof v === 'object') { cellValue = JSON.stringify(v); return JSON_TEXT; }
  throw new TypeError(`cannot store a ${typeof v} in a cell`);
}

// A cell as [tag, value] (contract 0.1's rows).
function value(v) {
  const tag = tagOf(v);
  return tag === NULL ? NULL_CELL : [tag, cellValue];
}

const printable = (s) => JSON.stringify(String(s).slice(0, 64)).slice(1, -1);

// The declared tables: name -> { index, columns: Map(name -> position), width }.
const tables = new Map();

// A 0.2 row, its cells already in declared column order (tags: 0 = NULL), or the reason it breaks the declared
// tables, reported when its outcome is packed. Rows are placed against the tables `init` was given, so they
// are made while a batch runs (in `record`, or in `setup` to be reused), not when the module loads.
// A row whose cells come in declared order and fit the one-string packing (below) is made as its piece of that
// string instead: `ascii`, with the 8-byte numbers to patch in `nums` (offset in the piece, tag, value).
class Row {
  constructor(index, tags, values, error, ascii, nums) {
    this.index = index;
    this.tags = tags;
    this.values = values;
    this.error = error;
    this.ascii = ascii;
    this.nums = nums;
  }
}

let lastTable = null;
let lastSpec = undefined;

/** A row of `table` with the given cells. */
export function row(table, cells) {
  if (V01) return { table, cells: Object.entries(cells).map(([k, v]) => [k, value(v)]) };
  // The table of the row before, most often the same one, without the call to Map.get.
  const t = table === lastTable ? lastSpec : tables.get(table);
  if (t !== undefined) {
    lastTable = table;
    lastSpec = t;
  }
  const names = Object.keys(cells);
  if (t !== undefined && t.index < 128 && names.length === t.width) {
    const piece = asciiRow(t, cells, names);
    if (piece !== null) return piece;
  }
  const width = t === undefined ? 0 : t.width;
  const tags = new Uint8Array(width);
  const values = new Array(width);
  let error = t === undefined ? `table \`${printable(table)}\` is not declared in the sink configuration` : null;
  for (let i = 0; i < names.length; i++) {
    const name = names[i];
    const v = cells[name];
    // Text, the commonest cell, without the call.
    const tag = typeof v === 'string' ? (cellValue = v, TEXT) : tagOf(v);
    if (error !== null) continue;
    const c = t.columns[name];
    if (c === undefined) {
      error = `table ${table}, column \`${printable(name)}\`: not a declared column`;
      continue;
    }
    tags[c] = tag;
    values[c] = cellValue;
  }
  return new Row(t === undefined ? 0 : t.index, tags, values, error, null, null);
}

// The row as its piece of an emit's one string (see packEmitAscii), or null when a name is not the declared
// column at its place or a text is 128 characters or more (the row is then made cell by cell, which throws
// the same errors: a value that cannot be stored throws here first, as it would there).
function asciiRow(t, cells, names) {
  const declared = t.names;
  let s = LEN[t.index];
  let nums = null;
  for (let i = 0; i < names.length; i++) {
    const name = names[i];
    if (name !== declared[i]) return null;
    const v = cells[name];
    if (typeof v === 'string') {
      if (v.length >= 128) return null;
      s += TEXT_HEAD[v.length] + v;
      continue;
    }
    // Small integers are ASCII bytes too (n, then seven zeros).
    if (typeof v === 'number' && (v | 0) === v && v >= 0 && v < 128) {
      s += SMALL_INT[v];
      continue;
    }
    if (v instanceof DecimalCell && v.text.length < 128) {
      s += DECIMAL_HEAD[v.text.length] + v.text;
      continue;
    }
    const tag = tagOf(v);
    if (tag === DECIMAL || tag === JSON_TEXT) {
      if (cellValue.length >= 128) return null;
      s += TAG_CHAR[tag] + LEN[cellValue.length] + cellValue;
    } else if (tag === NULL) {
      s += '\0';
    } else if (tag === BOOLEAN) {
      s += cellValue ? '\x01\x01' : '\x01\0';
    } else if (tag === INTEGER && cellValue >= 0n && cellValue < 128n) {
      s += SMALL_INT[Number(cellValue)];
    } else {
      if (nums === null) nums = [];
      nums.push(s.length + 1, tag, cellValue);
      s += TAG_CHAR[tag] + NUMBER;
    }
  }
  return new Row(t.index, null, null, null, s, nums);
}

// One growing buffer, written little-endian.
class Packed {
  constructor() { this.bytes = new Uint8Array(1 << 16); this.view = new DataView(this.bytes.buffer); this.len = 0; }
  room(n) {
    if (this.len + n <= this.bytes.length) return;
    let size = this.bytes.length * 2;
    while (size < this.len + n) size *= 2;
    const bigger = new Uint8Array(size);
    bigger.set(this.bytes.subarray(0, this.len));
    this.bytes = bigger;
    this.view = new DataView(bigger.buffer);
  }
  u8(x) { this.room(1); this.bytes[this.len++] = x; }
  u32(x) { this.room(4); this.view.setUint32(this.len, x, true); this.len += 4; }
  str(s) {
    const b = utf8Out.encode(s);
    this.room(4 + b.length);
    this.view.setUint32(this.len, b.length, true);
    this.bytes.set(b, this.len + 4);
    this.len += 4 + b.length;
  }
  // A row made as a piece of the one-string packing, whose text turned out not to be all ASCII: the piece read
  // back cell by cell (a text's length in it counts characters) and written with UTF-8 lengths.
  asciiRow(r) {
    const s = r.ascii;
    const nums = r.nums;
    let k = 0;
    this.u32(s.charCodeAt(0));
    let p = 4;
    while (p < s.length) {
      const tag = s.charCodeAt(p++);
      this.u8(tag);
      if (tag === TEXT || tag === DECIMAL || tag === JSON_TEXT) {
        const n = s.charCodeAt(p);
        this.str(s.slice(p + 4, p + 4 + n));
        p += 4 + n;
      } else if (tag === BOOLEAN) {
        this.u8(s.charCodeAt(p++));
      } else if (tag !== NULL) {
        this.room(8);
        if (nums !== null && nums[k] === p) {
          if (nums[k + 1] === FLOAT) this.view.setFloat64(this.len, nums[k + 2], true);
          else this.view.setBigInt64(this.len, nums[k + 2], true);
          k += 3;
        } else {
          for (let b = 0; b < 8; b++) this.bytes[this.len + b] = s.charCodeAt(p + b);
        }
        this.len += 8;
        p += 8;
      }
    }
  }
  // A row's table index and cells.
  row(r) {
    const { tags, values } = r;
    // Tag and fixed-size values: at most 9 bytes a cell; text is made room for as it is written.
    this.room(4 + 9 * tags.length);
    this.view.setUint32(this.len, r.index, true);
    this.len += 4;
    for (let c = 0; c < tags.length; c++) {
      const tag = tags[c];
      this.bytes[this.len++] = tag;
      if (tag === NULL) continue;
      if (tag === TEXT || tag === DECIMAL || tag === JSON_TEXT) {
        this.str(values[c]);
        this.room(9 * (tags.length - c));
      } else if (tag === INTEGER || tag === TIMESTAMP) {
        this.view.setBigInt64(this.len, values[c], true);
        this.len += 8;
      } else if (tag === FLOAT) {
        this.view.setFloat64(this.len, values[c], true);
        this.len += 8;
      } else {
        this.bytes[this.len++] = values[c] ? 1 : 0;
      }
    }
  }
}

// The fast way to pack an emit: every byte of the layout below 0x80 is a character of one string (a length
// below 128 is the four characters n, 0, 0, 0), the 8-byte numbers are eight NUL characters patched afterwards,
// and the string becomes bytes in one call into the engine. Without a JIT each call into the engine costs about
// as much as encoding a short string, so this makes one call per emit instead of four or five per text cell.
// Where the string is not all ASCII (its UTF-8 bytes would not line up with its characters), or a length, row
// count or table index is 128 or more, it returns false and the emit is packed cell by cell instead; both
// ways write the same bytes.
const LEN = Array.from({ length: 128 }, (_, n) => String.fromCharCode(n) + '\0\0\0');
const TAG_CHAR = Array.from({ length: 8 }, (_, t) => String.fromCharCode(t));
const NUMBER = '\0\0\0\0\0\0\0\0';
const TEXT_HEAD = LEN.map((len) => TAG_CHAR[TEXT] + len);
const DECIMAL_HEAD = LEN.map((len) => TAG_CHAR[DECIMAL] + len);
const SMALL_INT = Array.from({ length: 128 }, (_, n) => TAG_CHAR[INTEGER] + String.fromCharCode(n) + '\0'.repeat(7));
const patches = [];
function packEmitAscii(rows, out) {
  if (rows.length >= 128) return false;
  let s = '\0' + LEN[rows.length];
  patches.length = 0;
  for (let i = 0; i < rows.length; i++) {
    const r = rows[i];
    if (r.ascii !== null) {
      const nums = r.nums;
      if (nums !== null) {
        for (let k = 0; k < nums.length; k += 3) patches.push(s.length + nums[k], nums[k + 1], nums[k + 2]);
      }
      s += r.ascii;
      continue;
    }
    const { index, tags, values } = r;
    if (index >= 128) return false;
    s += LEN[index];
    for (let c = 0; c < tags.length; c++) {
      const tag = tags[c];
      if (tag === TEXT || tag === DECIMAL || tag === JSON_TEXT) {
        const v = values[c];
        if (v.length >= 128) return false;
        s += TAG_CHAR[tag] + LEN[v.length] + v;
      } else if (tag === NULL) {
        s += '\0';
      } else if (tag === BOOLEAN) {
        s += values[c] ? '\x01\x01' : '\x01\0';
      } else {
        patches.push(s.length + 1, tag, values[c]);
        s += TAG_CHAR[tag] + NUMBER;
      }
    }
  }
  const n = s.length;
  out.room(n);
  const done = utf8Out.encodeInto(s, out.bytes.subarray(out.len, out.len + n));
  if (done.read !== n || done.written !== n) return false;
  for (let i = 0; i < patches.length; i += 3) {
    const at = out.len + patches[i];
    if (patches[i + 1] === FLOAT) out.view.setFloat64(at, patches[i + 2], true);
    else out.view.setBigInt64(at, patches[i + 2], true);
  }
  out.len += n;
  return true;
}

// Appends one emit; returns a reason when a row breaks the declared tables.
function packEmit(rows, out) {
  // Indexed loops: without a JIT, `for…of` costs an iterator call per element.
  for (let i = 0; i < rows.length; i++) {
    const r = rows[i];
    if (!(r instanceof Row)) return 'an emitted row was not made by row()';
    if (r.error !== null) return r.error;
  }
  if (packEmitAscii(rows, out)) return null;
  out.u8(0);
  out.u32(rows.length);
  for (let i = 0; i < rows.length; i++) {
    if (rows[i].ascii !== null) out.asciiRow(rows[i]);
    else out.row(rows[i]);
  }
  return null;
}

// Contract 0.1: a row's cells as WIT values.
const WIT_TAGS = ['null', 'boolean', 'integer', 'float', 'decimal', 'text', 'timestamp-us', 'json'];
function wit01(o) {
  if (o.tag !== 'emit') return o;
  return {
    tag: 'emit',
    val: o.val.map((r) => ({
      table: r.table,
      cells: r.cells.map(([k, [tag, v]]) => [k, tag === NULL ? { tag: 'null' } : { tag: WIT_TAGS[tag], val: v }]),
    })),
  };
}

// Appends one record's outcome.
function packOutcome(o, out) {
  if (o.tag === 'emit') {
    const start = out.len;
    const invalid = packEmit(o.val, out);
    if (invalid !== null) {
      out.len = start;
      out.u8(3);
      out.str(invalid);
    }
  } else {
    out.u8(o.tag === 'drop' ? 1 : 2);
    out.str(String(o.val));
  }
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

// One record of a packed batch, read in place: `payload` is a view of the batch's bytes, and the other fields
// are decoded the first time the rule reads them.
class PackedRecord {
  constructor(batch, view, at, payloadAt, payloadLen) {
    this.batch = batch;
    this.view = view;
    this.at = at;
    this.payloadAt = payloadAt;
    this.payloadLen = payloadLen;
    this.cachedPayload = null;
  }
  // The string at byte `p` of the batch.
  str(p) { return utf8.decode(this.batch.subarray(p + 4, p + 4 + this.view.getUint32(p, true))); }
  get id() { return this.str(this.at); }
  get partitionKey() { return this.str(this.at + 4 + this.view.getUint32(this.at, true)); }
  // Where the arrival time is.
  timeAt() {
    const p = this.at + 4 + this.view.getUint32(this.at, true);
    return p + 4 + this.view.getUint32(p, true);
  }
  get arrivedAtMs() { return this.view.getBigInt64(this.timeAt(), true); }
  get attributes() {
    let p = this.timeAt() + 8;
    const n = this.view.getUint32(p, true);
    p += 4;
    const list = [];
    for (let i = 0; i < n; i++) {
      const name = this.str(p);
      p += 4 + this.view.getUint32(p, true);
      list.push([name, this.str(p)]);
      p += 4 + this.view.getUint32(p, true);
    }
    return list;
  }
  get payload() {
    if (this.cachedPayload === null) {
      this.cachedPayload = this.batch.subarray(this.payloadAt, this.payloadAt + this.payloadLen);
    }
    return this.cachedPayload;
  }
  text() { return utf8.decode(this.batch.subarray(this.payloadAt, this.payloadAt + this.payloadLen)); }
}

/** The contract's `init` and `process` from `{ setup(settings), record(r) }`. */
export function rule(impl) {
  return {
    // 0.2: init(tables, settings); 0.1: init(settings).
    init(...args) {
      const settings = args[args.length - 1];
      const declared = args.length === 2 ? args[0] : [];
      tables.clear();
      lastTable = null;
      lastSpec = undefined;
      declared.forEach((t, index) => {
        // Columns by name in an object without a prototype: a property read is cheaper than a call to Map.get.
        const columns = Object.create(null);
        t.columns.forEach((c, i) => { columns[c.name] = i; });
        tables.set(t.name, { index, columns, names: t.columns.map((c) => c.name), width: t.columns.length });
      });
      if (impl.setup) impl.setup(Object.fromEntries(settings));
    },
    process(batch) {
      const outcome = (record) => {
        try {
          return impl.record(record);
        } catch (e) {
          return reject(`rule error: ${e && e.message ? e.message : e}`);
        }
      };
      if (V01) {
        return batch.map((r) => wit01(outcome({
          id: r.id,
          partitionKey: r.partitionKey,
          arrivedAtMs: r.arrivedAtMs,
          attributes: r.attributes,
          payload: r.payload,
          text: () => utf8.decode(r.payload),
        })));
      }
      // The packed batch (wit/v0.2/rules.wit): count, then per record id, partition key, arrival time,
      // attributes and payload. Only the payload's place is read here; the rest when the rule asks.
      // Each record's outcome is packed as soon as it is made: its rows die young instead of living to the end
      // of the batch, which keeps the garbage collector's work per record small.
      const view = new DataView(batch.buffer, batch.byteOffset, batch.byteLength);
      const out = new Packed();
      const n = view.getUint32(0, true);
      let p = 4;
      for (let i = 0; i < n; i++) {
        const at = p;
        p += 4 + view.getUint32(p, true);
        p += 12 + view.getUint32(p, true);
        const attributes = view.getUint32(p, true);
        p += 4;
        for (let a = 0; a < attributes; a++) {
          p += 4 + view.getUint32(p, true);
          p += 4 + view.getUint32(p, true);
        }
        const len = view.getUint32(p, true);
        p += 4;
        packOutcome(outcome(new PackedRecord(batch, view, at, p, len)), out);
        p += len;
      }
      return out.bytes.subarray(0, out.len);
    },
  };
}
