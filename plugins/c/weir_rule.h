/*
 * weir_rule.h — write weir business rules in C.
 *
 * A rule is one function that turns a source record into rows, a drop or a reject:
 *
 *     #include "weir_rule.h"
 *
 *     void weir_rule_record(const weir_record *r, weir_outcome *out) {
 *         const char *err;
 *         const weir_json *o = weir_payload_json(r, &err);
 *         if (!o) { weir_reject(out, "%s", err); return; }
 *         const char *name = weir_json_str(weir_json_get(o, "name"));
 *         if (!name || !*name) { weir_reject(out, "name: missing or empty"); return; }
 *         weir_row *row = weir_emit(out, "greetings");
 *         weir_cell_text(row, "name", name);
 *     }
 *
 * An outcome with no call to weir_emit, weir_drop or weir_reject emits no rows. Reject bad data with a reason
 * that names the field (`placed_at: not an RFC 3339 timestamp`); never abort() on data — a trap costs the whole
 * batch a retry on fresh instances.
 *
 * Optional: `const char *weir_rule_setup(void)` runs once per instance before the first batch; read the
 * `[rule] settings` with weir_setting() and return NULL, or an error message that stops the worker.
 *
 * Memory: everything the helper hands out (parsed JSON, weir_printf strings) lives until the end of the
 * current batch and is freed by the helper; cell values are copied, so stack buffers are fine.
 *
 * Build: `build.sh rule.wasm rule.c` (clang + wasi-libc, bindings from `wit-bindgen c`, linked by
 * wasm-component-ld, stamped with the contract version).
 */
#ifndef WEIR_RULE_H
#define WEIR_RULE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The weir:rules contract version this helper implements. */
#ifdef WEIR_CONTRACT_0_2
#define WEIR_CONTRACT_VERSION "0.2.0"
#else
#define WEIR_CONTRACT_VERSION "0.1.0"
#endif

/* Bytes with a length; `ptr` is NUL-terminated when the helper made it, not necessarily otherwise. */
typedef struct weir_str {
    const char *ptr;
    size_t len;
} weir_str;

/* One record exactly as the source delivered it. */
typedef struct weir_record {
    weir_str id;            /* stable id; final rows carry it as lineage */
    weir_str partition_key; /* Kinesis partition key, SQS message group, file name */
    int64_t arrived_at_ms;  /* source time, milliseconds since the Unix epoch */
    const uint8_t *payload; /* the payload bytes, untouched */
    size_t payload_len;
    const void *raw;        /* the record's attributes, as weir_attribute reads them */
} weir_record;

typedef struct weir_outcome weir_outcome;
typedef struct weir_row weir_row;
typedef struct weir_json weir_json;

/* ---- the rule (you write these) ---- */

/* Required: decides the outcome of one record. */
void weir_rule_record(const weir_record *r, weir_outcome *out);
/* Optional: once per instance before the first batch; NULL or an error message. */
const char *weir_rule_setup(void);

/* ---- settings, attributes, host ---- */

/* The `[rule] settings` value named `name`, or NULL. */
const char *weir_setting(const char *name);
/* A source attribute of the record (SQS message attribute, `line`, ...), NUL-terminated, or NULL. */
const char *weir_attribute(const weir_record *r, const char *name);

typedef enum { WEIR_TRACE, WEIR_DEBUG, WEIR_INFO, WEIR_WARN, WEIR_ERROR } weir_level;
/* A line in the worker's log, tagged with the plugin and batch id (printf format). */
void weir_log(weir_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Adds `delta` to the rule's counter `metric`. */
void weir_count(const char *metric, uint64_t delta);

/* A printf-formatted string that lives until the end of the batch. */
const char *weir_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* `len` bytes that live until the end of the batch. */
void *weir_alloc(size_t len);

/* ---- outcomes ---- */

/* Adds a row for `table` (a declared table) to the record's outcome; the outcome becomes an emit. */
weir_row *weir_emit(weir_outcome *out, const char *table);
/* The record is deliberately not loaded, for this reason (printf format). */
void weir_drop(weir_outcome *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The record is bad data, for this reason; it goes to the dead-letter store. Name the field first. */
void weir_reject(weir_outcome *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Cells. Columns not set are NULL; text and decimal given NULL set NULL. */
void weir_cell_null(weir_row *row, const char *column);
void weir_cell_bool(weir_row *row, const char *column, bool v);
void weir_cell_int(weir_row *row, const char *column, int64_t v);
void weir_cell_float(weir_row *row, const char *column, double v);
/* A decimal(p,s) cell as a plain decimal string such as "-12.50" (exact, never a float). */
void weir_cell_decimal(weir_row *row, const char *column, const char *digits);
void weir_cell_text(weir_row *row, const char *column, const char *text);
void weir_cell_textn(weir_row *row, const char *column, const char *text, size_t len);
/* A timestamp cell, microseconds since the Unix epoch, UTC. */
void weir_cell_timestamp_us(weir_row *row, const char *column, int64_t us);
/* A super (JSON) cell: compact JSON text of `v`; a missing value or JSON null sets NULL. */
void weir_cell_json(weir_row *row, const char *column, const weir_json *v);

/* ---- JSON ---- */

typedef enum {
    WEIR_JSON_MISSING = 0, /* a NULL weir_json pointer: absent key, index out of range, wrong container */
    WEIR_JSON_NULL,
    WEIR_JSON_BOOL,
    WEIR_JSON_NUMBER,
    WEIR_JSON_STRING,
    WEIR_JSON_ARRAY,
    WEIR_JSON_OBJECT,
} weir_json_kind;

/* The payload as JSON: NULL with `*error` set to a reject reason (`payload: not valid UTF-8 (...)`,
 * `payload: not valid JSON (...)`) when it is not. */
const weir_json *weir_payload_json(const weir_record *r, const char **error);
/* Parses JSON text (RFC 8259, UTF-8 checked); NULL with `*error` set when it is not valid. */
const weir_json *weir_json_parse(const char *text, size_t len, const char **error);

weir_json_kind weir_json_type(const weir_json *v);
/* The member `key` of an object (the last one when a key repeats), or NULL. */
const weir_json *weir_json_get(const weir_json *v, const char *key);
/* Item `i` of an array, or NULL. */
const weir_json *weir_json_at(const weir_json *v, size_t i);
/* Number of items of an array or members of an object; 0 otherwise. */
size_t weir_json_len(const weir_json *v);
/* The decoded string (NUL-terminated; may hold NULs, see weir_json_str_len), or NULL when not a string. */
const char *weir_json_str(const weir_json *v);
size_t weir_json_str_len(const weir_json *v);
/* True only for the JSON literal `true`. */
bool weir_json_is_true(const weir_json *v);
/* An integer literal (no fraction, no exponent) that fits int64; false otherwise. */
bool weir_json_i64(const weir_json *v, int64_t *out);
/* Any number, as a double; false when not a number. */
bool weir_json_f64(const weir_json *v, double *out);
/* Compact JSON text of `v` (object members in source order), NUL-terminated, or NULL when missing. */
const char *weir_json_write(const weir_json *v);

/* ---- time ---- */

/* Microseconds since the Unix epoch of an RFC 3339 timestamp (`2026-11-21T10:15:30.5+02:00`); false when
 * `s` is not one. */
bool weir_rfc3339_us(const char *s, int64_t *out);

#endif
