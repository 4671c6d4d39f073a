/*
 * Echoes every field of each record the host delivers, for tests/conformance.rs: built against contract 0.2
 * (the batch packed into one buffer, read in place by the helper) and 0.1 (records lowered by the generated
 * bindings), the two must agree, and agree with the JavaScript and Rust builds of the same rule. A payload that
 * is not UTF-8 is set as text anyway: the host rejects it.
 */
#include "weir_rule.h"

void weir_rule_record(const weir_record *r, weir_outcome *out) {
    weir_row *row = weir_emit(out, "fields");
    weir_cell_textn(row, "id", r->id.ptr, r->id.len);
    weir_cell_textn(row, "partition_key", r->partition_key.ptr, r->partition_key.len);
    weir_cell_int(row, "arrived_at_ms", r->arrived_at_ms);
    /* The file source's one attribute; the C helper looks attributes up by name. */
    const char *line = weir_attribute(r, "line");
    const char *missing = weir_attribute(r, "no such attribute");
    const char *text = line && !missing ? weir_printf("[[\"line\",\"%s\"]]", line) : "[]";
    weir_cell_json(row, "attributes", weir_json_parse(text, __builtin_strlen(text), NULL));
    weir_cell_int(row, "payload_bytes", (int64_t)r->payload_len);
    weir_cell_textn(row, "payload", (const char *)r->payload, r->payload_len);
    if (r->payload_len > 0) weir_cell_int(row, "first_byte", r->payload[0]);
}
