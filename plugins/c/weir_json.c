/*
 * JSON, time and batch memory for weir_rule.h. Plain C99 over wasi-libc; no generated code.
 *
 * The parser follows RFC 8259 and, where the RFC leaves a choice, the Rust SDK (serde_json), so a rule
 * behaves the same in every language: nesting is limited to 128 levels, lone surrogates and numbers out of
 * the double range are errors, a repeated key keeps its first position and its last value, and the writer
 * prints integers canonically and other numbers in their shortest round-trip form (`100.0`, `1e16`).
 */
#include "weir_rule.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Debian's wasm32 compiler-rt (128-bit division, used for exact money arithmetic) is built with the stack
 * protector, which wasi-libc does not provide. */
__attribute__((weak)) uintptr_t __stack_chk_guard = 0x5eed1e55u;
__attribute__((weak, noreturn)) void __stack_chk_fail(void) { abort(); }

/* ---- batch arena ---- */

typedef struct chunk {
    struct chunk *next;
    size_t used, cap;
    _Alignas(16) unsigned char data[];
} chunk;

static chunk *arena;
/* Parsed JSON text, apart: the parser decodes a copy of the text in place, and what it hands out is `const`,
 * so a cell set from a parsed string can point into it instead of copying (weir__parsed_text). */
static chunk *texts;

static void *take(chunk **list, size_t len) {
    len = (len + 15) & ~(size_t)15;
    chunk *head = *list;
    if (!head || head->cap - head->used < len) {
        size_t cap = len > 65536 ? len : 65536;
        chunk *c = malloc(sizeof(chunk) + cap);
        if (!c) abort(); /* out of memory: the host recycles the instance */
        c->next = head;
        c->used = 0;
        c->cap = cap;
        *list = head = c;
    }
    void *p = head->data + head->used;
    head->used += len;
    return p;
}

void *weir_alloc(size_t len) { return take(&arena, len); }

/* Whether `p` points into parsed JSON text, which stays as it is until the end of the batch. */
bool weir__parsed_text(const void *p) {
    uintptr_t at = (uintptr_t)p;
    for (const chunk *c = texts; c; c = c->next) {
        if (at >= (uintptr_t)c->data && at < (uintptr_t)c->data + c->used) return true;
    }
    return false;
}

static void release_chunks(chunk **list) {
    while (*list) {
        chunk *next = (*list)->next;
        free(*list);
        *list = next;
    }
}

/* Frees everything weir_alloc and the parser handed out (end of batch). */
void weir__arena_reset(void) {
    release_chunks(&arena);
    release_chunks(&texts);
}

static char *vformat(const char *fmt, va_list ap) {
    va_list copy;
    va_copy(copy, ap);
    int n = vsnprintf(NULL, 0, fmt, copy);
    va_end(copy);
    if (n < 0) n = 0;
    char *s = weir_alloc((size_t)n + 1);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    return s;
}

/* Shared with weir_rule.c. */
char *weir__vformat(const char *fmt, va_list ap) { return vformat(fmt, ap); }

const char *weir_printf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *s = vformat(fmt, ap);
    va_end(ap);
    return s;
}

/* ---- UTF-8 ---- */

/* Index of the first invalid byte, or `len` when `s` is valid UTF-8. */
size_t weir__utf8_valid_up_to(const unsigned char *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        unsigned char c = s[i];
        size_t n;
        uint32_t cp;
        if (c < 0x80) {
            /* ASCII, eight bytes at a time. */
            uint64_t word;
            while (len - i >= 9 && (memcpy(&word, s + i + 1, 8), (word & 0x8080808080808080ull) == 0)) i += 8;
            i++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF) { n = 1; cp = c & 0x1F; }
        else if (c >= 0xE0 && c <= 0xEF) { n = 2; cp = c & 0x0F; }
        else if (c >= 0xF0 && c <= 0xF4) { n = 3; cp = c & 0x07; }
        else return i;
        if (len - i <= n) return i; /* truncated sequence */
        for (size_t k = 1; k <= n; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return i;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((n == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) || (n == 3 && (cp < 0x10000 || cp > 0x10FFFF)))
            return i;
        i += n + 1;
    }
    return len;
}

/* ---- JSON values ---- */

struct weir_json {
    weir_json_kind kind;
    size_t len; /* bytes of a string or number text, items of an array or object */
    union {
        bool boolean;
        const char *text; /* decoded string or number literal, NUL-terminated */
        struct {
            const weir_json **items;
            const weir_str *keys; /* objects only */
        } c;
    } u;
};

typedef struct {
    char *s;          /* a copy of the text, whose strings are decoded and NUL-terminated in place */
    const char *text; /* the text as given, for error positions */
    size_t len, pos;
    const char *error;
} parser;

#define MAX_DEPTH 128

static void fail(parser *p, const char *what) {
    if (!p->error) {
        size_t line = 1, column = 1;
        for (size_t i = 0; i < p->pos && i < p->len; i++) {
            if (p->text[i] == '\n') { line++; column = 1; } else column++;
        }
        p->error = weir_printf("%s at line %zu column %zu", what, line, column);
    }
}

static void skip_ws(parser *p) {
    while (p->pos < p->len) {
        char c = p->s[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->pos++;
    }
}

static weir_json *node(weir_json_kind kind) {
    weir_json *v = weir_alloc(sizeof *v);
    memset(v, 0, sizeof *v);
    v->kind = kind;
    return v;
}

static int hex4(parser *p, uint32_t *out) {
    if (p->len - p->pos < 4) { p->pos = p->len; fail(p, "EOF while parsing a string"); return 0; }
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p->s[p->pos++];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (uint32_t)(c - 'A' + 10);
        else { fail(p, "invalid escape"); return 0; }
    }
    *out = v;
    return 1;
}

static size_t put_utf8(char *o, uint32_t cp) {
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | cp >> 6); o[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | cp >> 12); o[1] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | cp >> 18); o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* A string starting after its opening quote; the decoded text goes to the arena. */
static int parse_string(parser *p, weir_str *out) {
    size_t start = p->pos, end = start;
    int escapes = 0;
    /* Eight bytes at a time while none is a quote, a backslash or a control character. */
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    while (p->len - end >= 8) {
        uint64_t w, quote, backslash;
        memcpy(&w, p->s + end, 8);
        quote = w ^ (ones * '"');
        backslash = w ^ (ones * '\\');
        if ((((quote - ones) & ~quote) | ((backslash - ones) & ~backslash) | ((w - ones * 0x20) & ~w)) & highs) break;
        end += 8;
    }
    while (end < p->len && p->s[end] != '"') {
        unsigned char c = (unsigned char)p->s[end];
        if (c < 0x20) { p->pos = end; fail(p, "control character (\\u0000-\\u001F) found while parsing a string"); return 0; }
        if (c == '\\') { escapes = 1; end++; }
        end++;
    }
    if (end >= p->len) { p->pos = p->len; fail(p, "EOF while parsing a string"); return 0; }
    /* Decoded in place: decoding never grows the text, and the closing quote becomes the NUL. */
    char *o = p->s + start;
    size_t n = 0;
    if (!escapes) {
        n = end - start;
        p->pos = end + 1;
    } else {
        while (p->s[p->pos] != '"') {
            char c = p->s[p->pos++];
            if (c != '\\') { o[n++] = c; continue; }
            char e = p->s[p->pos++];
            switch (e) {
            case '"': o[n++] = '"'; break;
            case '\\': o[n++] = '\\'; break;
            case '/': o[n++] = '/'; break;
            case 'b': o[n++] = '\b'; break;
            case 'f': o[n++] = '\f'; break;
            case 'n': o[n++] = '\n'; break;
            case 'r': o[n++] = '\r'; break;
            case 't': o[n++] = '\t'; break;
            case 'u': {
                uint32_t cp;
                if (!hex4(p, &cp)) return 0;
                if (cp >= 0xDC00 && cp <= 0xDFFF) { fail(p, "lone leading surrogate in hex escape"); return 0; }
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    uint32_t lo;
                    if (p->len - p->pos < 2 || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u') {
                        fail(p, "unexpected end of hex escape");
                        return 0;
                    }
                    p->pos += 2;
                    if (!hex4(p, &lo)) return 0;
                    if (lo < 0xDC00 || lo > 0xDFFF) { fail(p, "lone leading surrogate in hex escape"); return 0; }
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                }
                n += put_utf8(o + n, cp);
                break;
            }
            default: fail(p, "invalid escape"); return 0;
            }
        }
        p->pos++;
    }
    o[n] = 0;
    out->ptr = o;
    out->len = n;
    return 1;
}

static int is_digit(char c) { return c >= '0' && c <= '9'; }

static const weir_json *parse_value(parser *p, int depth);

static const weir_json *parse_number(parser *p) {
    size_t start = p->pos;
    if (p->s[p->pos] == '-') p->pos++;
    if (p->pos >= p->len || !is_digit(p->s[p->pos])) { fail(p, "invalid number"); return NULL; }
    if (p->s[p->pos] == '0') {
        p->pos++;
        if (p->pos < p->len && is_digit(p->s[p->pos])) { fail(p, "invalid number"); return NULL; }
    } else {
        while (p->pos < p->len && is_digit(p->s[p->pos])) p->pos++;
    }
    if (p->pos < p->len && p->s[p->pos] == '.') {
        p->pos++;
        if (p->pos >= p->len || !is_digit(p->s[p->pos])) { fail(p, "invalid number"); return NULL; }
        while (p->pos < p->len && is_digit(p->s[p->pos])) p->pos++;
    }
    if (p->pos < p->len && (p->s[p->pos] == 'e' || p->s[p->pos] == 'E')) {
        p->pos++;
        if (p->pos < p->len && (p->s[p->pos] == '+' || p->s[p->pos] == '-')) p->pos++;
        if (p->pos >= p->len || !is_digit(p->s[p->pos])) { fail(p, "invalid number"); return NULL; }
        while (p->pos < p->len && is_digit(p->s[p->pos])) p->pos++;
    }
    weir_json *v = node(WEIR_JSON_NUMBER);
    char *t = weir_alloc(p->pos - start + 1);
    memcpy(t, p->s + start, p->pos - start);
    t[p->pos - start] = 0;
    v->u.text = t;
    v->len = p->pos - start;
    /* Only a fraction, an exponent or a long integer can be out of the double range. */
    if (v->len > 16 || strpbrk(t, ".eE")) {
        double d;
        if (!weir_json_f64(v, &d) || isinf(d)) { fail(p, "number out of range"); return NULL; }
    }
    return v;
}

/* Growable list of members while a container is parsed: on the stack up to SMALL members (most objects),
 * on the heap past that. */
#define SMALL 16
typedef struct {
    const weir_json **items;
    weir_str *keys;
    size_t len, cap;
    const weir_json *small_items[SMALL];
    weir_str small_keys[SMALL];
} members;

static void push(members *m, weir_str key, const weir_json *v) {
    if (m->len == m->cap) {
        size_t cap = m->cap * 2;
        const weir_json **items = malloc(cap * sizeof *items);
        weir_str *keys = malloc(cap * sizeof *keys);
        if (!items || !keys) abort();
        memcpy(items, m->items, m->len * sizeof *items);
        memcpy(keys, m->keys, m->len * sizeof *keys);
        if (m->items != m->small_items) {
            free(m->items);
            free(m->keys);
        }
        m->items = items;
        m->keys = keys;
        m->cap = cap;
    }
    m->items[m->len] = v;
    m->keys[m->len++] = key;
}

static void release(members *m) {
    if (m->items != m->small_items) {
        free(m->items);
        free(m->keys);
    }
}

static weir_json *finish(members *m, weir_json_kind kind) {
    weir_json *v = node(kind);
    v->len = m->len;
    const weir_json **items = weir_alloc(m->len * sizeof *items + 1);
    memcpy(items, m->items, m->len * sizeof *items);
    v->u.c.items = items;
    if (kind == WEIR_JSON_OBJECT) {
        weir_str *keys = weir_alloc(m->len * sizeof *keys + 1);
        memcpy(keys, m->keys, m->len * sizeof *keys);
        v->u.c.keys = keys;
    }
    release(m);
    return v;
}

static const weir_json *parse_container(parser *p, int depth, int object) {
    if (depth >= MAX_DEPTH) { fail(p, "recursion limit exceeded"); return NULL; }
    char close = object ? '}' : ']';
    members m;
    m.items = m.small_items;
    m.keys = m.small_keys;
    m.len = 0;
    m.cap = SMALL;
    p->pos++;
    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == close) {
        p->pos++;
        return finish(&m, object ? WEIR_JSON_OBJECT : WEIR_JSON_ARRAY);
    }
    for (;;) {
        weir_str key = {0};
        skip_ws(p);
        if (object) {
            if (p->pos >= p->len) { fail(p, "EOF while parsing an object"); goto bad; }
            if (p->s[p->pos] != '"') { fail(p, "key must be a string"); goto bad; }
            p->pos++;
            if (!parse_string(p, &key)) goto bad;
            skip_ws(p);
            if (p->pos >= p->len || p->s[p->pos] != ':') { fail(p, "expected `:`"); goto bad; }
            p->pos++;
        }
        const weir_json *v = parse_value(p, depth + 1);
        if (!v) goto bad;
        push(&m, key, v);
        skip_ws(p);
        if (p->pos >= p->len) { fail(p, object ? "EOF while parsing an object" : "EOF while parsing a list"); goto bad; }
        char c = p->s[p->pos++];
        if (c == close) return finish(&m, object ? WEIR_JSON_OBJECT : WEIR_JSON_ARRAY);
        if (c != ',') { p->pos--; fail(p, object ? "expected `,` or `}`" : "expected `,` or `]`"); goto bad; }
        skip_ws(p);
        if (p->pos < p->len && p->s[p->pos] == close) { fail(p, "trailing comma"); goto bad; }
    }
bad:
    release(&m);
    return NULL;
}

static int literal(parser *p, const char *word) {
    size_t n = strlen(word);
    if (p->len - p->pos >= n && memcmp(p->s + p->pos, word, n) == 0) {
        p->pos += n;
        return 1;
    }
    fail(p, "expected value");
    return 0;
}

static const weir_json *parse_value(parser *p, int depth) {
    skip_ws(p);
    if (p->pos >= p->len) { fail(p, "EOF while parsing a value"); return NULL; }
    char c = p->s[p->pos];
    switch (c) {
    case '{': return parse_container(p, depth, 1);
    case '[': return parse_container(p, depth, 0);
    case '"': {
        p->pos++;
        weir_str s;
        if (!parse_string(p, &s)) return NULL;
        weir_json *v = node(WEIR_JSON_STRING);
        v->u.text = s.ptr;
        v->len = s.len;
        return v;
    }
    case 't': if (!literal(p, "true")) return NULL; { weir_json *v = node(WEIR_JSON_BOOL); v->u.boolean = true; return v; }
    case 'f': if (!literal(p, "false")) return NULL; return node(WEIR_JSON_BOOL);
    case 'n': if (!literal(p, "null")) return NULL; return node(WEIR_JSON_NULL);
    default:
        if (c == '-' || is_digit(c)) return parse_number(p);
        fail(p, "expected value");
        return NULL;
    }
}

/* Parses text already known to be UTF-8. */
static const weir_json *parse_utf8(const char *text, size_t len, const char **error) {
    char *copy = take(&texts, len + 1);
    memcpy(copy, text, len);
    copy[len] = 0;
    parser p = {copy, text, len, 0, NULL};
    const weir_json *v = parse_value(&p, 0);
    if (v) {
        skip_ws(&p);
        if (p.pos < p.len) { fail(&p, "trailing characters"); v = NULL; }
    }
    if (!v && error) *error = p.error;
    return v;
}

const weir_json *weir_json_parse(const char *text, size_t len, const char **error) {
    size_t valid = weir__utf8_valid_up_to((const unsigned char *)text, len);
    if (valid != len) {
        if (error) *error = weir_printf("invalid UTF-8 sequence of 1 bytes from index %zu", valid);
        return NULL;
    }
    return parse_utf8(text, len, error);
}

const weir_json *weir_payload_json(const weir_record *r, const char **error) {
    size_t valid = weir__utf8_valid_up_to(r->payload, r->payload_len);
    if (valid != r->payload_len) {
        *error = weir_printf("payload: not valid UTF-8 (invalid UTF-8 sequence from index %zu)", valid);
        return NULL;
    }
    const char *why = NULL;
    const weir_json *v = parse_utf8((const char *)r->payload, r->payload_len, &why);
    if (!v) *error = weir_printf("payload: not valid JSON (%s)", why);
    return v;
}

/* ---- accessors ---- */

weir_json_kind weir_json_type(const weir_json *v) { return v ? v->kind : WEIR_JSON_MISSING; }

const weir_json *weir_json_get(const weir_json *v, const char *key) {
    if (!v || v->kind != WEIR_JSON_OBJECT) return NULL;
    size_t n = strlen(key);
    for (size_t i = v->len; i-- > 0;) {
        if (v->u.c.keys[i].len == n && memcmp(v->u.c.keys[i].ptr, key, n) == 0) return v->u.c.items[i];
    }
    return NULL;
}

const weir_json *weir_json_at(const weir_json *v, size_t i) {
    if (!v || v->kind != WEIR_JSON_ARRAY || i >= v->len) return NULL;
    return v->u.c.items[i];
}

size_t weir_json_len(const weir_json *v) {
    return v && (v->kind == WEIR_JSON_ARRAY || v->kind == WEIR_JSON_OBJECT) ? v->len : 0;
}

const char *weir_json_str(const weir_json *v) { return v && v->kind == WEIR_JSON_STRING ? v->u.text : NULL; }

size_t weir_json_str_len(const weir_json *v) { return v && v->kind == WEIR_JSON_STRING ? v->len : 0; }

bool weir_json_is_true(const weir_json *v) { return v && v->kind == WEIR_JSON_BOOL && v->u.boolean; }

bool weir_json_i64(const weir_json *v, int64_t *out) {
    if (!v || v->kind != WEIR_JSON_NUMBER) return false;
    const char *t = v->u.text;
    if (strpbrk(t, ".eE")) return false;
    int neg = *t == '-';
    uint64_t acc = 0;
    for (const char *c = t + neg; *c; c++) {
        uint64_t d = (uint64_t)(*c - '0');
        if (acc > (UINT64_MAX - d) / 10) return false;
        acc = acc * 10 + d;
    }
    if (neg ? acc > (uint64_t)INT64_MAX + 1 : acc > (uint64_t)INT64_MAX) return false;
    *out = neg ? (int64_t)(0 - acc) : (int64_t)acc;
    return true;
}

bool weir_json_f64(const weir_json *v, double *out) {
    if (!v || v->kind != WEIR_JSON_NUMBER) return false;
    errno = 0;
    *out = strtod(v->u.text, NULL);
    return true;
}

/* ---- writer ---- */

typedef struct {
    char *buf;
    size_t len, cap;
} sink;

static void put(sink *s, const char *p, size_t n) {
    if (s->len + n + 1 > s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 256;
        while (cap < s->len + n + 1) cap *= 2;
        char *b = weir_alloc(cap);
        if (s->len) memcpy(b, s->buf, s->len);
        s->buf = b;
        s->cap = cap;
    }
    memcpy(s->buf + s->len, p, n);
    s->len += n;
    s->buf[s->len] = 0;
}

static void put_str(sink *s, const char *p, size_t n) {
    static const char hex[] = "0123456789abcdef";
    put(s, "\"", 1);
    size_t from = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        const char *esc = NULL;
        char u[6];
        switch (c) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        default:
            if (c < 0x20) {
                memcpy(u, "\\u00", 4);
                u[4] = hex[c >> 4];
                u[5] = hex[c & 15];
            }
        }
        if (!esc && c >= 0x20) continue;
        put(s, p + from, i - from);
        if (esc) put(s, esc, strlen(esc));
        else put(s, u, 6);
        from = i + 1;
    }
    put(s, p + from, n - from);
    put(s, "\"", 1);
}

/* A finite double in the shortest form that reads back to it, laid out like serde_json (ryu). */
static void put_double(sink *s, double d) {
    char tmp[40], digits[20];
    int exp10 = 0, nd = 0;
    if (d == 0) {
        put(s, signbit(d) ? "-0.0" : "0.0", signbit(d) ? 4 : 3);
        return;
    }
    if (d < 0) { put(s, "-", 1); d = -d; }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*e", prec - 1, d);
        if (strtod(tmp, NULL) == d || prec == 17) break;
    }
    char *e = strchr(tmp, 'e');
    exp10 = atoi(e + 1);
    for (char *c = tmp; c < e; c++)
        if (is_digit(*c)) digits[nd++] = *c;
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    int kk = exp10 + 1; /* position of the decimal point after the first kk digits */
    int k = kk - nd;
    char out[64];
    int n = 0;
    if (k >= 0 && kk <= 16) {
        memcpy(out, digits, (size_t)nd); n = nd;
        for (int i = 0; i < k; i++) out[n++] = '0';
        out[n++] = '.'; out[n++] = '0';
    } else if (kk > 0 && kk <= 16) {
        memcpy(out, digits, (size_t)kk); n = kk;
        out[n++] = '.';
        memcpy(out + n, digits + kk, (size_t)(nd - kk)); n += nd - kk;
    } else if (kk > -5 && kk <= 0) {
        out[n++] = '0'; out[n++] = '.';
        for (int i = 0; i < -kk; i++) out[n++] = '0';
        memcpy(out + n, digits, (size_t)nd); n += nd;
    } else {
        out[n++] = digits[0];
        if (nd > 1) { out[n++] = '.'; memcpy(out + n, digits + 1, (size_t)nd - 1); n += nd - 1; }
        n += snprintf(out + n, sizeof out - (size_t)n, "e%d", kk - 1);
    }
    put(s, out, (size_t)n);
}

static void put_number(sink *s, const weir_json *v) {
    char tmp[32];
    int64_t i;
    const char *t = v->u.text;
    if (weir_json_i64(v, &i)) {
        put(s, tmp, (size_t)snprintf(tmp, sizeof tmp, "%lld", (long long)i));
        return;
    }
    if (!strpbrk(t, ".eE") && *t != '-') {
        errno = 0;
        unsigned long long u = strtoull(t, NULL, 10);
        if (errno == 0) {
            put(s, tmp, (size_t)snprintf(tmp, sizeof tmp, "%llu", u));
            return;
        }
    }
    double d;
    weir_json_f64(v, &d);
    put_double(s, d);
}

static void write_value(sink *s, const weir_json *v) {
    switch (v->kind) {
    case WEIR_JSON_MISSING:
    case WEIR_JSON_NULL: put(s, "null", 4); break;
    case WEIR_JSON_BOOL: v->u.boolean ? put(s, "true", 4) : put(s, "false", 5); break;
    case WEIR_JSON_NUMBER: put_number(s, v); break;
    case WEIR_JSON_STRING: put_str(s, v->u.text, v->len); break;
    case WEIR_JSON_ARRAY:
        put(s, "[", 1);
        for (size_t i = 0; i < v->len; i++) {
            if (i) put(s, ",", 1);
            write_value(s, v->u.c.items[i]);
        }
        put(s, "]", 1);
        break;
    case WEIR_JSON_OBJECT: {
        put(s, "{", 1);
        int first = 1;
        for (size_t i = 0; i < v->len; i++) {
            const weir_str *key = &v->u.c.keys[i];
            int seen = 0;
            size_t last = i;
            for (size_t j = 0; j < v->len; j++) {
                const weir_str *other = &v->u.c.keys[j];
                if (j != i && other->len == key->len && memcmp(other->ptr, key->ptr, key->len) == 0) {
                    if (j < i) seen = 1;
                    else last = j;
                }
            }
            if (seen) continue; /* a repeated key keeps its first position and its last value */
            if (!first) put(s, ",", 1);
            first = 0;
            put_str(s, key->ptr, key->len);
            put(s, ":", 1);
            write_value(s, v->u.c.items[last]);
        }
        put(s, "}", 1);
        break;
    }
    }
}

const char *weir_json_write(const weir_json *v) {
    if (!v) return NULL;
    sink s = {0};
    write_value(&s, v);
    return s.buf;
}

/* ---- time ---- */

static int num(const char *s, int n) {
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (!is_digit(s[i])) return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil). */
static int64_t days_from_civil(int64_t y, int m, int d) {
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

bool weir_rfc3339_us(const char *s, int64_t *out) {
    size_t n = strlen(s);
    if (n < 20 || s[4] != '-' || s[7] != '-' || (s[10] != 'T' && s[10] != 't' && s[10] != ' ') || s[13] != ':' ||
        s[16] != ':')
        return false;
    int y = num(s, 4), mo = num(s + 5, 2), d = num(s + 8, 2), h = num(s + 11, 2), mi = num(s + 14, 2),
        sec = num(s + 17, 2);
    if (y < 0 || mo < 1 || mo > 12 || d < 1 || h < 0 || h > 23 || mi < 0 || mi > 59 || sec < 0 || sec > 60)
        return false;
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (d > mdays[mo - 1] + (mo == 2 && leap)) return false;
    size_t i = 19;
    int64_t frac_us = 0;
    if (s[i] == '.') {
        i++;
        size_t start = i;
        while (i < n && is_digit(s[i])) {
            if (i - start < 6) frac_us = frac_us * 10 + (s[i] - '0');
            i++;
        }
        if (i == start) return false;
        for (size_t k = i - start; k < 6; k++) frac_us *= 10;
    }
    int64_t offset_s = 0;
    if (i < n && (s[i] == 'Z' || s[i] == 'z')) {
        i++;
    } else if (i + 6 == n && (s[i] == '+' || s[i] == '-') && s[i + 3] == ':') {
        int oh = num(s + i + 1, 2), om = num(s + i + 4, 2);
        if (oh < 0 || oh > 23 || om < 0 || om > 59) return false;
        offset_s = (s[i] == '-' ? -1 : 1) * (int64_t)(oh * 3600 + om * 60);
        i += 6;
    } else {
        return false;
    }
    if (i != n) return false;
    int64_t secs = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec - offset_s;
    *out = secs * 1000000 + frac_us;
    return true;
}
