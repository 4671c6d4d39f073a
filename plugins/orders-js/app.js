// The orders rule in JavaScript: the same outcomes as plugins/orders (Rust), checked by tests/conformance.rs.
import { rule, emit, drop, reject, row, Decimal, Json, TimestampUs } from '../js/weir_rule.js';

const RFC3339 = /^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/;
const I64_MAX = 9223372036854775807n;

function cents(s) {
  if (typeof s !== 'string') return null;
  const m = /^([0-9]{1,30})(?:\.([0-9]{1,2}))?$/.exec(s);
  if (!m) return null;
  // The integer part and two decimals as one integer of cents: one conversion.
  const f = m[2];
  return BigInt(m[1] + (f === undefined ? '00' : f.length === 1 ? f + '0' : f));
}

function money(c) {
  const sign = c < 0n ? '-' : '';
  const a = c < 0n ? -c : c;
  return `${sign}${a / 100n}.${String(a % 100n).padStart(2, '0')}`;
}

// Microseconds since the epoch of an RFC 3339 time (Date keeps milliseconds only).
function micros(m) {
  const [, y, mo, d, h, mi, s, frac, zone] = m;
  const ms = Date.UTC(+y, +mo - 1, +d, +h, +mi, +s);
  const day = new Date(ms);
  if (day.getUTCMonth() !== +mo - 1 || day.getUTCDate() !== +d || +h > 23 || +mi > 59 || +s > 60) return null;
  let us = BigInt(ms) * 1000n;
  if (frac !== undefined) us += BigInt((frac.slice(1) + '000000').slice(0, 6));
  if (zone !== 'Z' && zone !== 'z') {
    const sign = zone[0] === '-' ? -1n : 1n;
    us -= sign * BigInt(+zone.slice(1, 3) * 60 + +zone.slice(4, 6)) * 60000000n;
  }
  return us;
}

// JSON.parse reads integers beyond 2^53 as inexact floats, and `2.0` as the integer 2: read integers from the
// source text, and remember the objects whose `qty` was written as a non-integer literal.
//
// That reviver is a call into interpreted code for every value of the document, so it runs only when the text
// holds a number it could matter for: one with a fraction or an exponent, or of 16 digits or more. In JSON text
// every number follows `[`, `,` or `:` (or starts the text), spaces aside, so RISKY finds each such number; what
// it also finds inside strings (a time's `:30.5`) only takes the reviver's path, which gives the same outcome.
const RISKY = /(?:^|[[,:])[ \t\n\r]*-?(?:\d{16}|\d+[.eE])/;
const NO_FLOATS = new WeakSet();
let floatQty = NO_FLOATS;
function parse(text) {
  if (!RISKY.test(text)) {
    floatQty = NO_FLOATS;
    return JSON.parse(text);
  }
  floatQty = new WeakSet();
  return JSON.parse(text, function (key, value, context) {
    if (typeof value !== 'number' || !context) return value;
    const integer = /^-?\d+$/.test(context.source);
    if (key === 'qty' && !integer) floatQty.add(this);
    return integer && !Number.isSafeInteger(value) ? BigInt(context.source) : value;
  });
}

const isInt = (v) => typeof v === 'bigint' || Number.isInteger(v) && !Object.is(v, -0) && typeof v === 'number';

function order(r) {
  let text;
  try {
    text = r.text();
  } catch (e) {
    return reject(`payload: not valid UTF-8 (${e.message})`);
  }
  let o;
  try {
    o = parse(text);
  } catch (e) {
    return reject(`payload: not valid JSON (${e.message})`);
  }
  if (o === null || typeof o !== 'object' || Array.isArray(o)) return reject('payload: not a JSON object');
  const id = o.order_id;
  if (id === undefined || id === null || (typeof id === 'string' && id.trim() === '')) return reject('order_id: missing or empty');
  if (typeof id !== 'string') return reject('order_id: must be a string');
  if (o.test === true) return drop('test order');
  if (typeof o.placed_at !== 'string') return reject('placed_at: missing or not a string');
  const m = RFC3339.exec(o.placed_at);
  const placed = m ? micros(m) : null;
  if (placed === null) return reject(`placed_at: not an RFC 3339 timestamp: ${JSON.stringify(o.placed_at)}`);
  const currency = o.currency;
  if (!(typeof currency === 'string' && /^[A-Za-z]{3}$/.test(currency))) return reject('currency: must be three letters');
  const lines = o.lines;
  if (!Array.isArray(lines) || lines.length === 0) return reject('lines: missing or empty');
  const rows = [];
  let total = 0n;
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i] !== null && typeof lines[i] === 'object' && !Array.isArray(lines[i]) ? lines[i] : {};
    const q = line.qty;
    let qty;
    if (typeof q === 'number' && (q | 0) === q && q > 0 && floatQty === NO_FLOATS) {
      qty = q; // the common case, a small positive integer written as one: no BigInt needed for the cell
    } else {
      if (floatQty.has(line) || !isInt(q) || BigInt(q) <= 0n || BigInt(q) > I64_MAX) return reject(`lines[${i}].qty: must be a positive integer`);
      qty = BigInt(q);
    }
    const price = cents(line.unit_price);
    if (price === null) return reject(`lines[${i}].unit_price: must be a decimal string with at most 2 decimals`);
    const amount = price * BigInt(qty);
    total += amount;
    rows.push(row('order_lines', {
      order_id: id, line_no: i + 1, sku: typeof line.sku === 'string' ? line.sku : null, qty,
      unit_price: Decimal(money(price)), amount: Decimal(money(amount)),
    }));
  }
  const shipping = o.shipping;
  const country = shipping !== null && typeof shipping === 'object' && !Array.isArray(shipping) ? shipping.country : null;
  const head = row('orders', {
    order_id: id,
    customer_id: typeof o.customer_id === 'string' ? o.customer_id : null,
    placed_at: TimestampUs(placed),
    currency,
    total: Decimal(money(total)),
    line_count: lines.length,
    country: typeof country === 'string' ? country : null,
    shipping: Json(shipping),
  });
  return emit(head, ...rows);
}

export const { init, process } = rule({ record: order });
