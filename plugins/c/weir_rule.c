/*
 * The glue between weir_rule.h and the bindings `wit-bindgen c` generates (rule.h), for either contract
 * version (build.sh defines WEIR_CONTRACT_0_2 when the WIT it is given is weir:rules@0.2.0):
 * - 0.2: `init` keeps the declared tables; the batch comes in packed (world `rule-packed-batch`) and each
 *   record is a view into it; each row holds one slot per declared column, set by name, and the batch's
 *   outcomes are written into one packed buffer (docs/CONTRACT.md), which the generated post-return code frees
 *   after the host has copied it;
 * - 0.1: outcomes are built straight into the canonical-ABI types, freed the same way.
 * Either way the exports call the rule once per record.
 */
#include "weir_rule.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#ifdef WEIR_CONTRACT_0_2
/* 0.2 builds the `rule-packed-batch` world: the batch comes in as one buffer, read in place (below). Its
 * generated names carry the world's name; the glue uses the `rule` world's. */
#include "rule_packed_batch.h"
typedef rule_packed_batch_string_t rule_string_t;
typedef rule_packed_batch_list_tuple2_string_string_t rule_list_tuple2_string_string_t;
typedef rule_packed_batch_list_table_t rule_list_table_t;
typedef rule_packed_batch_table_t rule_table_t;
typedef rule_packed_batch_list_u8_t rule_list_u8_t;
#define rule_list_tuple2_string_string_free rule_packed_batch_list_tuple2_string_string_free
#define rule_list_table_free rule_packed_batch_list_table_free
#define rule_list_u8_free rule_packed_batch_list_u8_free
#define exports_rule_init exports_rule_packed_batch_init
#define exports_rule_process exports_rule_packed_batch_process
#else
#include "rule.h"
#endif

void weir__arena_reset(void);
bool weir__parsed_text(const void *p);
char *weir__vformat(const char *fmt, va_list ap);

enum { DECIDED_EMIT, DECIDED_DROP, DECIDED_REJECT };


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

static bool init_settings(rule_list_tuple2_string_string_t *list, rule_string_t *err) {
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

/* Each contract's section defines `decide`: the first drop or reject stands and discards the record's rows. */
static void decide(weir_outcome *out, int kind, const char *fmt, va_list ap);

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

#ifdef WEIR_CONTRACT_0_2

/* ---- declared tables (contract 0.2) ---- */

typedef struct declared_table {
    char *name;
    char **columns;
    size_t width;
} declared_table;

static declared_table *tables;
static size_t tables_len;

bool exports_rule_init(rule_list_table_t *list, rule_list_tuple2_string_string_t *settings_list,
                       rule_string_t *err) {
    tables = xmalloc(list->len * sizeof *tables);
    tables_len = list->len;
    for (size_t i = 0; i < list->len; i++) {
        const rule_table_t *t = &list->ptr[i];
        tables[i].name = cstr(&t->name);
        tables[i].width = t->columns.len;
        tables[i].columns = xmalloc(t->columns.len * sizeof(char *));
        for (size_t c = 0; c < t->columns.len; c++) tables[i].columns[c] = cstr(&t->columns.ptr[c].name);
    }
    rule_list_table_free(list);
    return init_settings(settings_list, err);
}

/* ---- outcomes ---- */

/* Cell tags of the packed layout. */
enum { CELL_NULL, CELL_BOOL, CELL_INT, CELL_FLOAT, CELL_DECIMAL, CELL_TEXT, CELL_TIMESTAMP, CELL_JSON };

typedef struct slot {
    uint8_t tag;
    bool b;
    int64_t i;
    double f;
    const char *s; /* arena */
    size_t len;
} slot;

struct weir_row {
    long table;        /* index into the declared tables; -1: undeclared */
    slot *slots;       /* one per declared column (arena) */
    const char *error; /* the first reason the row cannot be packed, or NULL */
    size_t next;       /* the column after the last one set: rules usually set them in declared order */
};

struct weir_outcome {
    int kind;
    const char *reason; /* arena */
    weir_row **rows;    /* arena */
    size_t len, cap;
    weir_row scratch; /* rows asked for after a drop or reject: discarded */
};

static void decide(weir_outcome *out, int kind, const char *fmt, va_list ap) {
    if (out->kind != DECIDED_EMIT) return; /* the first drop or reject stands */
    out->len = 0;
    out->kind = kind;
    out->reason = weir__vformat(fmt, ap);
}

weir_row *weir_emit(weir_outcome *out, const char *table) {
    weir_row *row;
    if (out->kind != DECIDED_EMIT) {
        row = &out->scratch;
    } else {
        if (out->len == out->cap) {
            size_t cap = out->cap ? out->cap * 2 : 4;
            weir_row **rows = weir_alloc(cap * sizeof *rows);
            if (out->len) memcpy(rows, out->rows, out->len * sizeof *rows);
            out->rows = rows;
            out->cap = cap;
        }
        row = weir_alloc(sizeof *row);
        out->rows[out->len++] = row;
    }
    memset(row, 0, sizeof *row);
    row->table = -1;
    for (size_t t = 0; t < tables_len; t++) {
        if (strcmp(tables[t].name, table) == 0) {
            row->table = (long)t;
            row->slots = weir_alloc(tables[t].width * sizeof *row->slots);
            memset(row->slots, 0, tables[t].width * sizeof *row->slots);
            return row;
        }
    }
    row->error = weir_printf("table `%.64s` is not declared in the sink configuration", table);
    return row;
}

/* The slot of `column`, replacing an earlier value of the same column; a throwaway slot when the row cannot
 * be packed. */
static slot *cell(weir_row *row, const char *column) {
    static slot ignored;
    if (row->table >= 0) {
        const declared_table *t = &tables[row->table];
        /* The expected column first: one comparison per cell instead of a scan. */
        for (size_t k = 0; k < t->width; k++) {
            size_t c = (row->next + k) % t->width;
            if (strcmp(t->columns[c], column) == 0) {
                row->next = c + 1;
                memset(&row->slots[c], 0, sizeof row->slots[c]);
                return &row->slots[c];
            }
        }
        if (!row->error)
            row->error = weir_printf("table %s, column `%.64s`: not a declared column", t->name, column);
    }
    memset(&ignored, 0, sizeof ignored);
    return &ignored;
}

void weir_cell_null(weir_row *row, const char *column) { cell(row, column)->tag = CELL_NULL; }

void weir_cell_bool(weir_row *row, const char *column, bool v) {
    slot *c = cell(row, column);
    c->tag = CELL_BOOL;
    c->b = v;
}

void weir_cell_int(weir_row *row, const char *column, int64_t v) {
    slot *c = cell(row, column);
    c->tag = CELL_INT;
    c->i = v;
}

void weir_cell_float(weir_row *row, const char *column, double v) {
    slot *c = cell(row, column);
    c->tag = CELL_FLOAT;
    c->f = v;
}

void weir_cell_timestamp_us(weir_row *row, const char *column, int64_t us) {
    slot *c = cell(row, column);
    c->tag = CELL_TIMESTAMP;
    c->i = us;
}

static void string_cell(weir_row *row, const char *column, uint8_t tag, const char *s, size_t len) {
    slot *c = cell(row, column);
    if (!s) {
        c->tag = CELL_NULL;
        return;
    }
    /* Parsed JSON text stays as it is until the end of the batch: only other text is copied. */
    if (!weir__parsed_text(s)) {
        char *copy = weir_alloc(len ? len : 1);
        memcpy(copy, s, len);
        s = copy;
    }
    c->tag = tag;
    c->s = s;
    c->len = len;
}

/* The string cells' tags, for the shared setters at the end of this file. */
#define STRING_DECIMAL CELL_DECIMAL
#define STRING_TEXT CELL_TEXT
#define STRING_JSON CELL_JSON

/* ---- the batch: one packed buffer ---- */

typedef struct packed {
    uint8_t *p;
    size_t len, cap;
} packed;

static void room(packed *b, size_t n) {
    if (b->len + n <= b->cap) return;
    size_t cap = b->cap ? b->cap * 2 : 4096;
    while (cap < b->len + n) cap *= 2;
    b->p = realloc(b->p, cap);
    if (!b->p) abort();
    b->cap = cap;
}

static void put(packed *b, const void *bytes, size_t n) {
    room(b, n);
    memcpy(b->p + b->len, bytes, n);
    b->len += n;
}

/* wasm32 is little-endian, as the layout is: integers are written as they are in memory. */
static void put_u8(packed *b, uint8_t v) { put(b, &v, 1); }
static void put_u32(packed *b, uint32_t v) { put(b, &v, 4); }

static void put_str(packed *b, const char *s, size_t len) {
    put_u32(b, (uint32_t)len);
    put(b, s, len);
}

static void finish(weir_outcome *out, packed *b) {
    switch (out->kind) {
    case DECIDED_DROP:
    case DECIDED_REJECT:
        put_u8(b, out->kind == DECIDED_DROP ? 1 : 2);
        put_str(b, out->reason, strlen(out->reason));
        return;
    }
    for (size_t i = 0; i < out->len; i++) {
        if (out->rows[i]->error) {
            put_u8(b, 3); /* invalid: dead-lettered as a validation failure */
            put_str(b, out->rows[i]->error, strlen(out->rows[i]->error));
            return;
        }
    }
    put_u8(b, 0);
    put_u32(b, (uint32_t)out->len);
    for (size_t i = 0; i < out->len; i++) {
        const weir_row *row = out->rows[i];
        put_u32(b, (uint32_t)row->table);
        for (size_t c = 0; c < tables[row->table].width; c++) {
            const slot *s = &row->slots[c];
            put_u8(b, s->tag);
            switch (s->tag) {
            case CELL_BOOL: put_u8(b, s->b ? 1 : 0); break;
            case CELL_INT:
            case CELL_TIMESTAMP: put(b, &s->i, 8); break;
            case CELL_FLOAT: put(b, &s->f, 8); break;
            case CELL_DECIMAL:
            case CELL_TEXT:
            case CELL_JSON: put_str(b, s->s, s->len); break;
            }
        }
    }
}

/* ---- the packed batch (layout in wit/v0.2/rules.wit) ---- */

/* A reader over the host's buffer. The host wrote it, so a buffer that does not parse is a host defect: abort,
 * which the host treats as a trap. */
typedef struct reader {
    const uint8_t *p, *end;
} reader;

static const uint8_t *take(reader *r, size_t n) {
    if ((size_t)(r->end - r->p) < n) abort();
    const uint8_t *at = r->p;
    r->p += n;
    return at;
}

static uint32_t take_u32(reader *r) {
    uint32_t v;
    memcpy(&v, take(r, 4), 4);
    return v;
}

static weir_str take_str(reader *r) {
    uint32_t n = take_u32(r);
    weir_str s = {(const char *)take(r, n), n};
    return s;
}

/* What `weir_record.raw` points at: the record's attributes, still packed. */
typedef struct packed_attributes {
    const uint8_t *at;
    const uint8_t *end;
    uint32_t count;
} packed_attributes;

const char *weir_attribute(const weir_record *r, const char *name) {
    const packed_attributes *a = r->raw;
    reader rd = {a->at, a->end};
    size_t n = strlen(name);
    for (uint32_t i = 0; i < a->count; i++) {
        weir_str k = take_str(&rd), v = take_str(&rd);
        if (k.len == n && memcmp(k.ptr, name, n) == 0) {
            char *out = weir_alloc(v.len + 1);
            memcpy(out, v.ptr, v.len);
            out[v.len] = 0;
            return out;
        }
    }
    return NULL;
}

void exports_rule_process(rule_list_u8_t *batch, rule_list_u8_t *ret) {
    reader rd = {batch->ptr, batch->ptr + batch->len};
    uint32_t records = take_u32(&rd);
    packed b = {NULL, 0, 0};
    room(&b, (size_t)records * 256);
    for (uint32_t i = 0; i < records; i++) {
        weir_record r;
        packed_attributes attributes;
        r.id = take_str(&rd);
        r.partition_key = take_str(&rd);
        memcpy(&r.arrived_at_ms, take(&rd, 8), 8);
        attributes.count = take_u32(&rd);
        attributes.at = rd.p;
        for (uint32_t a = 0; a < 2 * attributes.count; a++) take_str(&rd);
        attributes.end = rd.p;
        r.raw = &attributes;
        weir_str payload = take_str(&rd);
        r.payload = (const uint8_t *)payload.ptr;
        r.payload_len = payload.len;
        weir_outcome out;
        memset(&out, 0, sizeof out);
        weir_rule_record(&r, &out);
        finish(&out, &b);
    }
    if (rd.p != rd.end) abort();
    rule_list_u8_free(batch);
    weir__arena_reset();
    ret->ptr = b.p;
    ret->len = b.len;
}

#else

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

/* The rule's view of one source record (its bytes stay in the binding's record). */
static weir_record record_of(const rule_source_record_t *raw) {
    weir_record r = {
        .id = {(const char *)raw->id.ptr, raw->id.len},
        .partition_key = {(const char *)raw->partition_key.ptr, raw->partition_key.len},
        .arrived_at_ms = raw->arrived_at_ms,
        .payload = raw->payload.ptr,
        .payload_len = raw->payload.len,
        .raw = raw,
    };
    return r;
}

bool exports_rule_init(rule_list_tuple2_string_string_t *list, rule_string_t *err) {
    return init_settings(list, err);
}

/* ---- outcomes ---- */

struct weir_row {
    rule_string_t table;
    weir_rules_types_tuple2_string_value_t *cells;
    size_t len, cap;
};

struct weir_outcome {
    int kind;
    rule_string_t reason;
    weir_row **rows; /* arena */
    size_t len, cap;
    weir_row scratch; /* rows asked for after a drop or reject: discarded */
};

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

#define STRING_DECIMAL WEIR_RULES_TYPES_VALUE_DECIMAL
#define STRING_TEXT WEIR_RULES_TYPES_VALUE_TEXT
#define STRING_JSON WEIR_RULES_TYPES_VALUE_JSON

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
        weir_record r = record_of(&batch->ptr[i]);
        weir_outcome out;
        memset(&out, 0, sizeof out);
        weir_rule_record(&r, &out);
        finish(&out, &ret->ptr[i]);
    }
    rule_list_source_record_free(batch);
    weir__arena_reset();
}

#endif /* WEIR_CONTRACT_0_2 */

/* ---- string cells: the same for both contracts (each section defines string_cell and the tags) ---- */

void weir_cell_decimal(weir_row *row, const char *column, const char *digits) {
    string_cell(row, column, STRING_DECIMAL, digits, digits ? strlen(digits) : 0);
}

void weir_cell_text(weir_row *row, const char *column, const char *text) {
    string_cell(row, column, STRING_TEXT, text, text ? strlen(text) : 0);
}

void weir_cell_textn(weir_row *row, const char *column, const char *text, size_t len) {
    string_cell(row, column, STRING_TEXT, text, len);
}

void weir_cell_json(weir_row *row, const char *column, const weir_json *v) {
    const char *text = weir_json_type(v) == WEIR_JSON_NULL ? NULL : weir_json_write(v);
    string_cell(row, column, STRING_JSON, text, text ? strlen(text) : 0);
}
