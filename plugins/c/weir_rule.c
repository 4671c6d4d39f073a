/*
 * The glue between weir_rule.h and the bindings `wit-bindgen c` generates from wit/rules.wit (rule.h):
 * the exports call the rule once per record, and outcomes are built straight into the canonical-ABI types,
 * whose memory the generated post-return code frees after the host has copied it.
 */
#include "weir_rule.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "rule.h"

void weir__arena_reset(void);
char *weir__vformat(const char *fmt, va_list ap);

struct weir_row {
    rule_string_t table;
    weir_rules_types_tuple2_string_value_t *cells;
    size_t len, cap;
};

enum { DECIDED_EMIT, DECIDED_DROP, DECIDED_REJECT };

struct weir_outcome {
    int kind;
    rule_string_t reason;
    weir_row **rows; /* arena */
    size_t len, cap;
    weir_row scratch; /* rows asked for after a drop or reject: discarded */
};

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) abort(); /* out of memory: the host rejects the guilty records and recycles the instance */
    return p;
}

static rule_string_t dup_n(const char *s, size_t len) {
    rule_string_t out = {NULL, 0};
    if (len) {
        out.ptr = xmalloc(len);
        memcpy(out.ptr, s, len);
        out.len = len;
    }
    return out;
}

/* ---- settings ---- */

static struct setting {
    char *name, *value;
} *settings;
static size_t settings_len;

static char *cstr(const rule_string_t *s) {
    char *c = xmalloc(s->len + 1);
    memcpy(c, s->ptr, s->len);
    c[s->len] = 0;
    return c;
}

const char *weir_setting(const char *name) {
    for (size_t i = 0; i < settings_len; i++)
        if (strcmp(settings[i].name, name) == 0) return settings[i].value;
    return NULL;
}

__attribute__((weak)) const char *weir_rule_setup(void) { return NULL; }

bool exports_rule_init(rule_list_tuple2_string_string_t *list, rule_string_t *err) {
    settings = xmalloc(list->len * sizeof *settings);
    settings_len = list->len;
    for (size_t i = 0; i < list->len; i++) {
        settings[i].name = cstr(&list->ptr[i].f0);
        settings[i].value = cstr(&list->ptr[i].f1);
    }
    rule_list_tuple2_string_string_free(list);
    const char *error = weir_rule_setup();
    if (error) {
        *err = dup_n(error, strlen(error));
        if (!err->len) *err = dup_n("setup failed", 12);
        return false;
    }
    return true;
}

/* ---- host ---- */

void weir_log(weir_level level, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *s = weir__vformat(fmt, ap);
    va_end(ap);
    rule_string_t msg = {(uint8_t *)s, strlen(s)};
    weir_rules_host_log((weir_rules_host_level_t)level, &msg);
}

void weir_count(const char *metric, uint64_t delta) {
    rule_string_t m = {(uint8_t *)metric, strlen(metric)};
    weir_rules_host_count(&m, delta);
}

const char *weir_attribute(const weir_record *r, const char *name) {
    const rule_source_record_t *raw = r->raw;
    size_t n = strlen(name);
    for (size_t i = 0; i < raw->attributes.len; i++) {
        const rule_tuple2_string_string_t *a = &raw->attributes.ptr[i];
        if (a->f0.len == n && memcmp(a->f0.ptr, name, n) == 0) {
            char *v = weir_alloc(a->f1.len + 1);
            memcpy(v, a->f1.ptr, a->f1.len);
            v[a->f1.len] = 0;
            return v;
        }
    }
    return NULL;
}

/* ---- outcomes ---- */

static void free_row(weir_row *row) {
    weir_rules_types_list_tuple2_string_value_t cells = {row->cells, row->len};
    rule_string_free(&row->table);
    weir_rules_types_list_tuple2_string_value_free(&cells);
    memset(row, 0, sizeof *row);
}

static void decide(weir_outcome *out, int kind, const char *fmt, va_list ap) {
    if (out->kind != DECIDED_EMIT) return; /* the first drop or reject stands */
    for (size_t i = 0; i < out->len; i++) free_row(out->rows[i]);
    out->len = 0;
    char *reason = weir__vformat(fmt, ap);
    out->kind = kind;
    out->reason = dup_n(reason, strlen(reason));
}

void weir_drop(weir_outcome *out, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    decide(out, DECIDED_DROP, fmt, ap);
    va_end(ap);
}

void weir_reject(weir_outcome *out, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    decide(out, DECIDED_REJECT, fmt, ap);
    va_end(ap);
}

weir_row *weir_emit(weir_outcome *out, const char *table) {
    if (out->kind != DECIDED_EMIT) {
        free_row(&out->scratch);
        return &out->scratch;
    }
    if (out->len == out->cap) {
        size_t cap = out->cap ? out->cap * 2 : 4;
        weir_row **rows = weir_alloc(cap * sizeof *rows);
        if (out->len) memcpy(rows, out->rows, out->len * sizeof *rows);
        out->rows = rows;
        out->cap = cap;
    }
    weir_row *row = weir_alloc(sizeof *row);
    memset(row, 0, sizeof *row);
    row->table = dup_n(table, strlen(table));
    out->rows[out->len++] = row;
    return row;
}

/* The cell for `column`, replacing an earlier value of the same column. */
static weir_rules_types_value_t *cell(weir_row *row, const char *column) {
    size_t n = strlen(column);
    for (size_t i = 0; i < row->len; i++) {
        if (row->cells[i].f0.len == n && memcmp(row->cells[i].f0.ptr, column, n) == 0) {
            weir_rules_types_value_free(&row->cells[i].f1);
            memset(&row->cells[i].f1, 0, sizeof row->cells[i].f1);
            return &row->cells[i].f1;
        }
    }
    if (row->len == row->cap) {
        row->cap = row->cap ? row->cap * 2 : 8;
        row->cells = realloc(row->cells, row->cap * sizeof *row->cells);
        if (!row->cells) abort();
    }
    weir_rules_types_tuple2_string_value_t *c = &row->cells[row->len++];
    memset(c, 0, sizeof *c);
    c->f0 = dup_n(column, n);
    return &c->f1;
}

void weir_cell_null(weir_row *row, const char *column) { cell(row, column)->tag = WEIR_RULES_TYPES_VALUE_NULL; }

void weir_cell_bool(weir_row *row, const char *column, bool v) {
    weir_rules_types_value_t *c = cell(row, column);
    c->tag = WEIR_RULES_TYPES_VALUE_BOOLEAN;
    c->val.boolean = v;
}

void weir_cell_int(weir_row *row, const char *column, int64_t v) {
    weir_rules_types_value_t *c = cell(row, column);
    c->tag = WEIR_RULES_TYPES_VALUE_INTEGER;
    c->val.integer = v;
}

void weir_cell_float(weir_row *row, const char *column, double v) {
    weir_rules_types_value_t *c = cell(row, column);
    c->tag = WEIR_RULES_TYPES_VALUE_FLOAT;
    c->val.float_ = v;
}

void weir_cell_timestamp_us(weir_row *row, const char *column, int64_t us) {
    weir_rules_types_value_t *c = cell(row, column);
    c->tag = WEIR_RULES_TYPES_VALUE_TIMESTAMP_US;
    c->val.timestamp_us = us;
}

static void string_cell(weir_row *row, const char *column, uint8_t tag, const char *s, size_t len) {
    weir_rules_types_value_t *c = cell(row, column);
    if (!s) {
        c->tag = WEIR_RULES_TYPES_VALUE_NULL;
        return;
    }
    c->tag = tag;
    /* decimal, text and json share the layout of one string */
    c->val.text = dup_n(s, len);
}

void weir_cell_decimal(weir_row *row, const char *column, const char *digits) {
    string_cell(row, column, WEIR_RULES_TYPES_VALUE_DECIMAL, digits, digits ? strlen(digits) : 0);
}

void weir_cell_text(weir_row *row, const char *column, const char *text) {
    string_cell(row, column, WEIR_RULES_TYPES_VALUE_TEXT, text, text ? strlen(text) : 0);
}

void weir_cell_textn(weir_row *row, const char *column, const char *text, size_t len) {
    string_cell(row, column, WEIR_RULES_TYPES_VALUE_TEXT, text, len);
}

void weir_cell_json(weir_row *row, const char *column, const weir_json *v) {
    const char *text = weir_json_type(v) == WEIR_JSON_NULL ? NULL : weir_json_write(v);
    string_cell(row, column, WEIR_RULES_TYPES_VALUE_JSON, text, text ? strlen(text) : 0);
}

/* ---- the batch ---- */

static void finish(weir_outcome *out, rule_outcome_t *ret) {
    free_row(&out->scratch);
    switch (out->kind) {
    case DECIDED_DROP:
        ret->tag = WEIR_RULES_TYPES_OUTCOME_DROP;
        ret->val.drop = out->reason;
        return;
    case DECIDED_REJECT:
        ret->tag = WEIR_RULES_TYPES_OUTCOME_REJECT;
        ret->val.reject = out->reason;
        return;
    }
    ret->tag = WEIR_RULES_TYPES_OUTCOME_EMIT;
    ret->val.emit.len = out->len;
    ret->val.emit.ptr = out->len ? xmalloc(out->len * sizeof *ret->val.emit.ptr) : NULL;
    for (size_t i = 0; i < out->len; i++) {
        weir_rules_types_row_t *r = &ret->val.emit.ptr[i];
        r->table = out->rows[i]->table;
        r->cells.ptr = out->rows[i]->cells;
        r->cells.len = out->rows[i]->len;
    }
}

void exports_rule_process(rule_list_source_record_t *batch, rule_list_outcome_t *ret) {
    ret->len = batch->len;
    ret->ptr = batch->len ? xmalloc(batch->len * sizeof *ret->ptr) : NULL;
    for (size_t i = 0; i < batch->len; i++) {
        const rule_source_record_t *raw = &batch->ptr[i];
        weir_record r = {
            .id = {(const char *)raw->id.ptr, raw->id.len},
            .partition_key = {(const char *)raw->partition_key.ptr, raw->partition_key.len},
            .arrived_at_ms = raw->arrived_at_ms,
            .payload = raw->payload.ptr,
            .payload_len = raw->payload.len,
            .raw = raw,
        };
        weir_outcome out;
        memset(&out, 0, sizeof out);
        weir_rule_record(&r, &out);
        finish(&out, &ret->ptr[i]);
    }
    rule_list_source_record_free(batch);
    weir__arena_reset();
}
