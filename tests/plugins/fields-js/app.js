// Echoes every field of each record the host delivers, for tests/conformance.rs: built against contract 0.2
// (the packed batch, read in place by the helper) and 0.1 (records lifted by componentize-js's own bindings),
// the two must agree.
import { rule, emit, row, Json } from '../../../plugins/js/weir_rule.js';

export const { init, process } = rule({
  record(r) {
    const payload = r.payload;
    return emit(row('fields', {
      id: r.id,
      partition_key: r.partitionKey,
      arrived_at_ms: r.arrivedAtMs,
      attributes: Json(r.attributes),
      payload_bytes: payload.length,
      // A second read of a field gives the same value.
      payload: r.text() === r.text() && r.id === r.id ? r.text() : 'changed on a second read',
      first_byte: payload.length > 0 ? payload[0] : null,
    }));
  },
});
