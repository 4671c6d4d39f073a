/*
 * The orders rule in C: the same outcomes as plugins/orders (Rust), checked by tests/conformance.rs.
 * Money is exact: integer cents in 128 bits, never a float.
 *
 * Built with -DORDERS_V2 it is "version 2" for shadow-run tests (tests/reconcile.rs): USD orders are dropped
 * and the country code is lower case.
 */
#include <string.h>

#include "weir_rule.h"

/* Whether `s` is empty or only Unicode white space (Rust's `str::trim`). */
static bool blank(const char *s) {
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        uint32_t cp;
        int n = *p < 0x80 ? 0 : *p < 0xE0 ? 1 : *p < 0xF0 ? 2 : 3;
        cp = n == 0 ? *p : *p & (0x3F >> n);
        for (int i = 1; i <= n; i++) cp = cp << 6 | (p[i] & 0x3F);
        p += n + 1;
        if (!((cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
              (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
              cp == 0x3000))
            return false;
    }
    return true;
}

/* "19.99" → 1999: 1–30 integer digits, at most 2 decimals, no sign, no exponent. Up to 16 integer digits the
 * sum is kept in 64 bits: WebAssembly has no 128-bit instructions, so every 128-bit multiply is a call. */
static bool cents(const char *s, __int128 *out) {
    if (!s) return false;
    const char *dot = strchr(s, '.');
    size_t int_len = dot ? (size_t)(dot - s) : strlen(s);
    size_t frac_len = dot ? strlen(dot + 1) : 0;
    if (int_len == 0 || int_len > 30 || (dot && (frac_len == 0 || frac_len > 2))) return false;
    uint64_t small = 0;
    __int128 v = 0;
    for (size_t i = 0; i < int_len; i++) {
        if (s[i] < '0' || s[i] > '9') return false;
        if (int_len <= 16) small = small * 10 + (uint64_t)(s[i] - '0');
        else v = v * 10 + (s[i] - '0');
    }
    int frac = 0;
    for (size_t i = 0; i < 2; i++) {
        char c = i < frac_len ? dot[1 + i] : '0';
        if (c < '0' || c > '9') return false;
        frac = frac * 10 + (c - '0');
    }
    *out = int_len <= 16 ? (__int128)(small * 100 + (uint64_t)frac) : v * 100 + frac;
    return true;
}

/* `price × qty`, in 64 bits when it fits. */
static __int128 times(__int128 price, int64_t qty) {
    int64_t product;
    if (price >= INT64_MIN && price <= INT64_MAX && !__builtin_mul_overflow((int64_t)price, qty, &product))
        return product;
    return price * qty;
}

/* 1999 → "19.99", in 64-bit steps once the rest fits. */
static const char *money(__int128 c) {
    char buf[48], *p = buf + sizeof buf;
    unsigned __int128 a = c < 0 ? -(unsigned __int128)c : (unsigned __int128)c;
    int digits = 0;
    *--p = 0;
    while (a > UINT64_MAX) { *--p = (char)('0' + (int)(a % 10)); a /= 10; if (++digits == 2) *--p = '.'; }
    uint64_t b = (uint64_t)a;
    while (digits < 3 || b) {
        *--p = (char)('0' + (int)(b % 10));
        b /= 10;
        if (++digits == 2) *--p = '.';
    }
    if (c < 0) *--p = '-';
    size_t len = (size_t)(buf + sizeof buf - p);
    char *s = weir_alloc(len);
    memcpy(s, p, len);
    return s;
}

void weir_rule_record(const weir_record *r, weir_outcome *out) {
    const char *err;
    const weir_json *o = weir_payload_json(r, &err);
    if (!o) { weir_reject(out, "%s", err); return; }
    if (weir_json_type(o) != WEIR_JSON_OBJECT) { weir_reject(out, "payload: not a JSON object"); return; }

    const weir_json *id_v = weir_json_get(o, "order_id");
    const char *id = weir_json_str(id_v);
    if (weir_json_type(id_v) == WEIR_JSON_MISSING || weir_json_type(id_v) == WEIR_JSON_NULL)
        { weir_reject(out, "order_id: missing or empty"); return; }
    if (!id) { weir_reject(out, "order_id: must be a string"); return; }
    if (blank(id)) { weir_reject(out, "order_id: missing or empty"); return; }
    if (weir_json_is_true(weir_json_get(o, "test"))) { weir_drop(out, "test order"); return; }
#ifdef ORDERS_V2
    const char *cur = weir_json_str(weir_json_get(o, "currency"));
    if (cur && strcmp(cur, "USD") == 0) { weir_drop(out, "USD order"); return; }
#endif

    const char *placed = weir_json_str(weir_json_get(o, "placed_at"));
    int64_t placed_us;
    if (!placed) { weir_reject(out, "placed_at: missing or not a string"); return; }
    if (!weir_rfc3339_us(placed, &placed_us))
        { weir_reject(out, "placed_at: not an RFC 3339 timestamp: \"%s\"", placed); return; }

    const char *currency = weir_json_str(weir_json_get(o, "currency"));
    bool letters = currency && weir_json_str_len(weir_json_get(o, "currency")) == 3;
    for (int i = 0; letters && i < 3; i++)
        letters = (currency[i] >= 'A' && currency[i] <= 'Z') || (currency[i] >= 'a' && currency[i] <= 'z');
    if (!letters)
        { weir_reject(out, "currency: must be three letters"); return; }

    const weir_json *lines = weir_json_get(o, "lines");
    size_t count = weir_json_len(lines);
    if (weir_json_type(lines) != WEIR_JSON_ARRAY || count == 0) { weir_reject(out, "lines: missing or empty"); return; }

    /* Validate every line before emitting: a reject carries no rows. */
    __int128 total = 0;
    for (size_t i = 0; i < count; i++) {
        const weir_json *line = weir_json_at(lines, i);
        int64_t qty;
        __int128 price;
        if (!weir_json_i64(weir_json_get(line, "qty"), &qty) || qty <= 0)
            { weir_reject(out, "lines[%zu].qty: must be a positive integer", i); return; }
        if (!cents(weir_json_str(weir_json_get(line, "unit_price")), &price))
            { weir_reject(out, "lines[%zu].unit_price: must be a decimal string with at most 2 decimals", i); return; }
        total += times(price, qty);
    }

    const weir_json *shipping = weir_json_get(o, "shipping");
    weir_row *head = weir_emit(out, "orders");
    weir_cell_text(head, "order_id", id);
    weir_cell_text(head, "customer_id", weir_json_str(weir_json_get(o, "customer_id")));
    weir_cell_timestamp_us(head, "placed_at", placed_us);
    weir_cell_text(head, "currency", currency);
    weir_cell_decimal(head, "total", money(total));
    weir_cell_int(head, "line_count", (int64_t)count);
#ifdef ORDERS_V2
    const char *cc = weir_json_str(weir_json_get(shipping, "country"));
    char *lower = cc ? (char *)weir_printf("%s", cc) : NULL;
    for (char *c = lower; c && *c; c++) if (*c >= 'A' && *c <= 'Z') *c = (char)(*c - 'A' + 'a');
    weir_cell_text(head, "country", lower);
#else
    weir_cell_text(head, "country", weir_json_str(weir_json_get(shipping, "country")));
#endif
    weir_cell_json(head, "shipping", shipping);

    for (size_t i = 0; i < count; i++) {
        const weir_json *line = weir_json_at(lines, i);
        int64_t qty;
        __int128 price;
        weir_json_i64(weir_json_get(line, "qty"), &qty);
        cents(weir_json_str(weir_json_get(line, "unit_price")), &price);
        weir_row *row = weir_emit(out, "order_lines");
        weir_cell_text(row, "order_id", id);
        weir_cell_int(row, "line_no", (int64_t)i + 1);
        weir_cell_text(row, "sku", weir_json_str(weir_json_get(line, "sku")));
        weir_cell_int(row, "qty", qty);
        weir_cell_decimal(row, "unit_price", money(price));
        weir_cell_decimal(row, "amount", money(times(price, qty)));
    }
}
