// config.c: schema-driven JSON run configuration (see config.h).
// What it is: the loader that turns a JSON file plus `--set key.path=value`
// overrides into a resolved tree holding every schema key, rejecting anything
// the schema does not describe (duplicate keys, unknown keys, wrong kinds,
// non-integral or non-finite numbers, out-of-range values, unknown choices),
// with one-line messages that name the source, the key path and the fault.
// What it is not: a general JSON library, a command-line parser or a logger;
// it never prints or exits, and it knows only the shapes a schema can describe
// (objects as sections, leaves of six kinds).
// Order of work: parse -> reject duplicates -> apply overrides -> validate ->
// fill defaults in schema order. Overrides land in the tree before validation,
// so they get every check; a value set by an override is reported as "--set".
// Numbers are printed exactly (integers in full, other values with the fewest
// of 15..17 significant digits that read back to the same double), so
// to_json -> parse gives back the same config and the same hash.
#include "io/config.h"

#include <assert.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/atomic.h"

#define MAX_EXACT_INT 9007199254740992.0 // 2^53: integers beyond this are not exact in a double

// ---------------------------------------------------------------------------
// Small helpers

static char *dupn(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

static int oom(struct moe_err *e) { return moe_error(e, MOE_ENOMEM, "out of memory loading config"); }

// Growable string for paths built from user-controlled key names.
struct sb {
    char *p;
    size_t n, cap;
    int oom;
};

static void sb_add(struct sb *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_add(struct sb *s, const char *fmt, ...)
{
    if (s->oom)
        return;
    va_list ap;
    va_start(ap, fmt);
    int need = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (need < 0) {
        s->oom = 1;
        return;
    }
    if (s->n + (size_t)need + 1 > s->cap) {
        size_t cap = s->cap ? s->cap : 64;
        while (cap < s->n + (size_t)need + 1)
            cap *= 2;
        char *np = realloc(s->p, cap);
        if (!np) {
            s->oom = 1;
            return;
        }
        s->p = np;
        s->cap = cap;
    }
    va_start(ap, fmt);
    vsnprintf(s->p + s->n, s->cap - s->n, fmt, ap);
    va_end(ap);
    s->n += (size_t)need;
}

static char *join_path(const char *prefix, const char *name)
{
    struct sb s = {0};
    if (prefix && *prefix)
        sb_add(&s, "%s.%s", prefix, name);
    else
        sb_add(&s, "%s", name);
    if (s.oom) {
        free(s.p);
        return NULL;
    }
    return s.p;
}

// Exact, canonical text for a double: integers in full, otherwise the fewest of
// 15..17 significant digits that read back to the same value; -0 prints as 0.
static void fmt_num(double d, char *buf, size_t len)
{
    if (isnan(d)) {
        snprintf(buf, len, "nan");
        return;
    }
    if (isinf(d)) {
        snprintf(buf, len, d < 0 ? "-inf" : "inf");
        return;
    }
    if (d == 0)
        d = 0; // drop the sign of -0
    if (d == floor(d) && fabs(d) < 1e17) {
        snprintf(buf, len, "%.0f", d);
        return;
    }
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, len, "%.*g", prec, d);
        if (prec == 17 || strtod(buf, NULL) == d)
            return;
    }
}

// A string value shortened for a one-line message: control characters become
// '?', long text is cut (at a UTF-8 boundary) and marked with "...".
static void clip_text(const char *s, char *buf, size_t len)
{
    const size_t keep = 60;
    size_t n = strlen(s), o = 0;
    size_t m = n > keep ? keep : n;
    while (m < n && m > 0 && ((unsigned char)s[m] & 0xC0) == 0x80)
        m--;
    for (size_t i = 0; i < m && o + 1 < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        buf[o++] = (ch < 0x20 || ch == 0x7F) ? '?' : (char)ch;
    }
    if (m < n)
        for (int k = 0; k < 3 && o + 1 < len; k++)
            buf[o++] = '.';
    buf[o] = '\0';
}

// What a JSON value is, for "got ..." in messages. `bare` drops the word
// "string" before a quoted string (used where a string was expected).
static void describe(const cJSON *v, int bare, char *buf, size_t len)
{
    if (cJSON_IsNumber(v)) {
        if (!isfinite(v->valuedouble))
            snprintf(buf, len, "a number too large for a double");
        else
            fmt_num(v->valuedouble, buf, len);
    } else if (cJSON_IsTrue(v)) {
        snprintf(buf, len, "true");
    } else if (cJSON_IsFalse(v)) {
        snprintf(buf, len, "false");
    } else if (cJSON_IsNull(v)) {
        snprintf(buf, len, "null");
    } else if (cJSON_IsString(v)) {
        char t[96];
        clip_text(v->valuestring, t, sizeof t);
        snprintf(buf, len, "%s'%s'", bare ? "" : "string ", t);
    } else if (cJSON_IsArray(v)) {
        snprintf(buf, len, "an array");
    } else if (cJSON_IsObject(v)) {
        snprintf(buf, len, "an object");
    } else {
        snprintf(buf, len, "an unsupported value");
    }
}

static int is_digit(char c) { return c >= '0' && c <= '9'; }

// Strict decimal number: [+-] digits [. digits] [e [+-] digits], the whole
// string, finite. No hex, no inf/nan, no surrounding space.
static int parse_num_strict(const char *s, double *out)
{
    const char *p = s;
    size_t digits = 0;
    if (*p == '+' || *p == '-')
        p++;
    while (is_digit(*p))
        p++, digits++;
    if (*p == '.') {
        p++;
        while (is_digit(*p))
            p++, digits++;
    }
    if (!digits)
        return 0;
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '+' || *p == '-')
            p++;
        if (!is_digit(*p))
            return 0;
        while (is_digit(*p))
            p++;
    }
    if (*p)
        return 0;
    char *end = NULL;
    double d = strtod(s, &end);
    if (end != p || !isfinite(d))
        return 0;
    *out = d;
    return 1;
}

// ---------------------------------------------------------------------------
// Schema queries

// Index of the leaf whose path equals path[0..len), or -1.
static long find_key(const struct moe_cfg_key *schema, size_t n, const char *path, size_t len)
{
    for (size_t i = 0; i < n; i++)
        if (strncmp(schema[i].path, path, len) == 0 && schema[i].path[len] == '\0')
            return (long)i;
    return -1;
}

// Whether path[0..len) names a section (a proper prefix of some leaf, ending at a '.').
static int is_section(const struct moe_cfg_key *schema, size_t n, const char *path, size_t len)
{
    for (size_t i = 0; i < n; i++)
        if (strncmp(schema[i].path, path, len) == 0 && schema[i].path[len] == '.')
            return 1;
    return 0;
}

static int def_is_null(const char *def)
{
    if (!def)
        return 0;
    while (*def == ' ' || *def == '\t' || *def == '\n' || *def == '\r')
        def++;
    if (strncmp(def, "null", 4) != 0)
        return 0;
    def += 4;
    while (*def == ' ' || *def == '\t' || *def == '\n' || *def == '\r')
        def++;
    return *def == '\0';
}

static int choice_ok(const char *choices, const char *s)
{
    size_t n = strlen(s);
    const char *p = choices;
    for (;;) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && strncmp(p, s, n) == 0)
            return 1;
        if (!bar)
            return 0;
        p = bar + 1;
    }
}

size_t moe_edit_distance(const char *a, const char *b)
{
    if (!a)
        a = "";
    if (!b)
        b = "";
    size_t la = strlen(a), lb = strlen(b);
    if (lb > la) { // keep the row over the shorter string
        const char *t = a;
        a = b;
        b = t;
        size_t tl = la;
        la = lb;
        lb = tl;
    }
    size_t stack_row[128];
    size_t *row = lb + 1 <= sizeof stack_row / sizeof stack_row[0] ? stack_row : malloc((lb + 1) * sizeof *row);
    if (!row)
        return la; // upper bound when memory is short
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best)
                best = up + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    size_t d = row[lb];
    if (row != stack_row)
        free(row);
    return d;
}

// " (did you mean 'x'?)" for the key whose last name is exactly bad's last name
// in another section ('seed' -> 'train.seed', 'moe.epochs' -> 'train.epochs');
// else for the nearest leaf (and section, unless leaves_only) to `bad`; or ""
// when nothing is within max(3, len/2) edits.
static void suggest(const struct moe_cfg_key *schema, size_t n, const char *bad, int leaves_only, char *buf,
                    size_t len)
{
    const char *bad_leaf = strrchr(bad, '.');
    bad_leaf = bad_leaf ? bad_leaf + 1 : bad;
    const char *same_leaf = NULL; // of several, the nearest whole path
    size_t same_d = (size_t)-1;
    for (size_t i = 0; i < n && *bad_leaf; i++) {
        const char *leaf = strrchr(schema[i].path, '.');
        leaf = leaf ? leaf + 1 : schema[i].path;
        if (strcmp(leaf, bad_leaf) == 0 && strcmp(schema[i].path, bad) != 0) {
            size_t d = moe_edit_distance(bad, schema[i].path);
            if (d < same_d) {
                same_d = d;
                same_leaf = schema[i].path;
            }
        }
    }
    if (same_leaf) {
        snprintf(buf, len, " (did you mean '%s'?)", same_leaf);
        return;
    }
    size_t lb = strlen(bad);
    size_t limit = lb / 2 > 3 ? lb / 2 : 3;
    size_t best_d = (size_t)-1, best_len = 0;
    const char *best = NULL;
    char *cand = NULL;
    size_t cand_cap = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        const char *p = schema[i].path;
        size_t pl = strlen(p);
        for (size_t end = 0; end <= pl; end++) {
            if (end < pl && (p[end] != '.' || leaves_only))
                continue;
            size_t diff = end > lb ? end - lb : lb - end;
            if (diff > limit || diff >= best_d)
                continue;
            if (end + 1 > cand_cap) {
                char *nc = realloc(cand, end + 1);
                if (!nc)
                    goto done;
                cand = nc;
                cand_cap = end + 1;
            }
            memcpy(cand, p, end);
            cand[end] = '\0';
            size_t d = moe_edit_distance(bad, cand);
            if (d > 0 && d <= limit && d < best_d) {
                best_d = d;
                best = p;
                best_len = end;
            }
        }
    }
done:
    free(cand);
    if (best)
        snprintf(buf, len, " (did you mean '%.*s'?)", (int)best_len, best);
}

// ---------------------------------------------------------------------------
// Kind checks

static void range_text(const struct moe_cfg_key *k, char *buf, size_t len)
{
    buf[0] = '\0';
    if (k->min <= k->max) {
        char lo[40], hi[40];
        fmt_num(k->min, lo, sizeof lo);
        fmt_num(k->max, hi, sizeof hi);
        snprintf(buf, len, " in [%s, %s]", lo, hi);
    }
}

// What the key (or, with elem, one element of a list key) must be.
static void expect_text(const struct moe_cfg_key *k, int elem, char *buf, size_t len)
{
    char range[96];
    range_text(k, range, sizeof range);
    const char *ch = k->choices;
    const char *tail = !elem && def_is_null(k->def) ? " or null" : "";
    switch (k->kind) {
    case MOE_CFG_INT:
        snprintf(buf, len, "an integer%s%s", range, tail);
        break;
    case MOE_CFG_NUM:
        snprintf(buf, len, "a number%s%s", range, tail);
        break;
    case MOE_CFG_BOOL:
        snprintf(buf, len, "true or false%s", tail);
        break;
    case MOE_CFG_STR:
        if (ch)
            snprintf(buf, len, "one of %s%s", ch, tail);
        else
            snprintf(buf, len, "a string%s", tail);
        break;
    case MOE_CFG_STR_LIST:
        if (elem && ch)
            snprintf(buf, len, "one of %s", ch);
        else if (elem)
            snprintf(buf, len, "a string");
        else if (ch)
            snprintf(buf, len, "an array of strings, each one of %s%s", ch, tail);
        else
            snprintf(buf, len, "an array of strings%s", tail);
        break;
    case MOE_CFG_NUM_LIST:
        if (elem)
            snprintf(buf, len, "a number%s", range);
        else
            snprintf(buf, len, "an array of numbers%s%s", range, tail);
        break;
    default:
        snprintf(buf, len, "a value");
    }
}

static int in_range(const struct moe_cfg_key *k, double d)
{
    return !(k->min <= k->max) || (d >= k->min && d <= k->max);
}

static int int_ok(const struct moe_cfg_key *k, double d)
{
    return isfinite(d) && d == floor(d) && fabs(d) <= MAX_EXACT_INT && in_range(k, d);
}

static int num_ok(const struct moe_cfg_key *k, double d) { return isfinite(d) && in_range(k, d); }

static int fail_kind(const struct moe_cfg_key *k, const cJSON *v, const char *path, int elem, size_t idx,
                     struct moe_err *e)
{
    char want[384], got[128], at[32] = "";
    int string_wanted = k->kind == MOE_CFG_STR || (elem && k->kind == MOE_CFG_STR_LIST);
    expect_text(k, elem, want, sizeof want);
    describe(v, string_wanted && cJSON_IsString(v), got, sizeof got);
    if (elem)
        snprintf(at, sizeof at, "[%zu]", idx);
    if (k->kind == MOE_CFG_INT && cJSON_IsNumber(v) && isfinite(v->valuedouble) &&
        v->valuedouble == floor(v->valuedouble) && fabs(v->valuedouble) > MAX_EXACT_INT && in_range(k, v->valuedouble))
        snprintf(want, sizeof want, "an integer of magnitude at most 2^53");
    return moe_error(e, MOE_ECONFIG, "key '%s%s' must be %s, got %s", path, at, want, got);
}

// Check one leaf value against its schema key. The message names `path` but
// carries no source prefix; the caller adds it.
static int check_value(const struct moe_cfg_key *k, const cJSON *v, const char *path, struct moe_err *e)
{
    if (cJSON_IsNull(v) && def_is_null(k->def))
        return 0;
    switch (k->kind) {
    case MOE_CFG_INT:
        if (cJSON_IsNumber(v) && int_ok(k, v->valuedouble))
            return 0;
        break;
    case MOE_CFG_NUM:
        if (cJSON_IsNumber(v) && num_ok(k, v->valuedouble))
            return 0;
        break;
    case MOE_CFG_BOOL:
        if (cJSON_IsBool(v))
            return 0;
        break;
    case MOE_CFG_STR:
        if (cJSON_IsString(v) && (!k->choices || choice_ok(k->choices, v->valuestring)))
            return 0;
        break;
    case MOE_CFG_STR_LIST:
    case MOE_CFG_NUM_LIST: {
        if (!cJSON_IsArray(v))
            break;
        size_t i = 0;
        for (const cJSON *el = v->child; el; el = el->next, i++) {
            int ok = k->kind == MOE_CFG_STR_LIST
                         ? cJSON_IsString(el) && (!k->choices || choice_ok(k->choices, el->valuestring))
                         : cJSON_IsNumber(el) && num_ok(k, el->valuedouble);
            if (!ok)
                return fail_kind(k, el, path, 1, i, e);
        }
        return 0;
    }
    }
    return fail_kind(k, v, path, 0, 0, e);
}

// The schema itself: well-formed paths, no duplicates, no key that is also a
// section, and defaults that pass their own checks. A failure is a programming
// error in the caller (MOE_EINVAL).
static int check_schema(const struct moe_cfg_key *schema, size_t n, struct moe_err *e)
{
    if (n && !schema)
        return moe_error(e, MOE_EINVAL, "config schema is NULL");
    for (size_t i = 0; i < n; i++) {
        const struct moe_cfg_key *k = &schema[i];
        if (!k->path)
            return moe_error(e, MOE_EINVAL, "schema key %zu has no path", i);
        size_t pl = strlen(k->path);
        if (pl == 0 || k->path[0] == '.' || k->path[pl - 1] == '.' || strstr(k->path, ".."))
            return moe_error(e, MOE_EINVAL, "schema key '%s': malformed path", k->path);
        if ((int)k->kind < MOE_CFG_INT || (int)k->kind > MOE_CFG_NUM_LIST)
            return moe_error(e, MOE_EINVAL, "schema key '%s': unknown kind %d", k->path, (int)k->kind);
        for (size_t j = 0; j < i; j++) {
            const char *q = schema[j].path;
            size_t ql = strlen(q);
            if (ql == pl && strcmp(q, k->path) == 0)
                return moe_error(e, MOE_EINVAL, "schema key '%s' is listed twice", k->path);
            size_t m = ql < pl ? ql : pl;
            if (strncmp(q, k->path, m) == 0 && (ql < pl ? k->path[m] : q[m]) == '.')
                return moe_error(e, MOE_EINVAL, "schema key '%s' is both a key and a section",
                                 ql < pl ? q : k->path);
        }
        if (k->def) {
            cJSON *v = cJSON_ParseWithOpts(k->def, NULL, 1);
            if (!v)
                return moe_error(e, MOE_EINVAL, "schema key '%s': default '%s' is not valid JSON", k->path, k->def);
            int rc = check_value(k, v, k->path, e);
            cJSON_Delete(v);
            if (rc) {
                moe_error_prefix(e, "schema key '%s': bad default: ", k->path);
                e->code = MOE_EINVAL;
                return MOE_EINVAL;
            }
        }
    }
    return 0;
}

// ---------------------------------------------------------------------------
// Parsing and duplicate keys

static void line_col(const char *text, size_t off, size_t *line, size_t *col)
{
    size_t l = 1, c = 1;
    for (size_t i = 0; i < off; i++) {
        if (text[i] == '\n')
            l++, c = 1;
        else
            c++;
    }
    *line = l;
    *col = c;
}

static int parse_text(const char *text, const char *source, cJSON **ret, struct moe_err *e)
{
    size_t len = strlen(text);
    const char *p = text;
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
        p++;
    if (!*p)
        return moe_error(e, MOE_ECONFIG, "config '%s': expected a JSON object, got empty text", source);
    // Length includes the terminator so that require_null_terminated rejects trailing garbage.
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len + 1, &end, 1);
    if (!root) {
        if (!end || end < text || end > text + len)
            end = cJSON_GetErrorPtr();
        if (!end || end < text || end > text + len)
            end = text + len;
        size_t line, col;
        line_col(text, (size_t)(end - text), &line, &col);
        return moe_error(e, MOE_ECONFIG, "config '%s': invalid JSON at line %zu, column %zu", source, line, col);
    }
    if (!cJSON_IsObject(root)) {
        char got[128];
        describe(root, 0, got, sizeof got);
        cJSON_Delete(root);
        return moe_error(e, MOE_ECONFIG, "config '%s': expected a JSON object at the top level, got %s", source,
                         got);
    }
    *ret = root;
    return 0;
}

// A chain of ancestors on the C stack, so a path is built only when reported.
struct frame {
    const cJSON *node;
    const struct frame *up;
};

static void frame_path(struct sb *s, const struct frame *f)
{
    if (!f->up)
        return;
    frame_path(s, f->up);
    const cJSON *parent = f->up->node;
    if (cJSON_IsArray(parent)) {
        size_t i = 0;
        for (const cJSON *c = parent->child; c && c != f->node; c = c->next)
            i++;
        sb_add(s, "[%zu]", i);
    } else {
        sb_add(s, "%s%s", s->n ? "." : "", f->node->string ? f->node->string : "");
    }
}

struct dup_ent {
    const char *name;
    size_t idx;
};

static int dup_cmp(const void *a, const void *b)
{
    const struct dup_ent *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    if (c)
        return c;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

// Report the first key (in document order) that repeats an earlier key of the same object.
static int find_dups(const struct frame *f, const char *source, struct moe_err *e)
{
    const cJSON *node = f->node;
    if (cJSON_IsObject(node)) {
        size_t n = 0;
        for (const cJSON *c = node->child; c; c = c->next)
            n++;
        if (n >= 2) {
            struct dup_ent *ents = malloc(n * sizeof *ents);
            if (!ents)
                return oom(e);
            size_t i = 0;
            for (const cJSON *c = node->child; c; c = c->next, i++)
                ents[i] = (struct dup_ent){c->string ? c->string : "", i};
            qsort(ents, n, sizeof *ents, dup_cmp);
            size_t best = (size_t)-1;
            for (i = 1; i < n; i++)
                if (strcmp(ents[i].name, ents[i - 1].name) == 0 && ents[i].idx < best)
                    best = ents[i].idx;
            free(ents);
            if (best != (size_t)-1) {
                const cJSON *c = node->child;
                for (i = 0; i < best; i++)
                    c = c->next;
                struct frame cf = {c, f};
                struct sb s = {0};
                frame_path(&s, &cf);
                if (s.oom) {
                    free(s.p);
                    return oom(e);
                }
                int rc = moe_error(e, MOE_ECONFIG, "config '%s': duplicate key '%s'", source, s.p);
                free(s.p);
                return rc;
            }
        }
    }
    if (cJSON_IsObject(node) || cJSON_IsArray(node)) {
        for (const cJSON *c = node->child; c; c = c->next) {
            struct frame cf = {c, f};
            int rc = find_dups(&cf, source, e);
            if (rc)
                return rc;
        }
    }
    return 0;
}

// ---------------------------------------------------------------------------
// Tree edits

// The value at a dotted path (objects only), and its parent object.
static cJSON *tree_get(const cJSON *root, const char *path, cJSON **parent)
{
    const cJSON *obj = root;
    const char *seg = path;
    for (;;) {
        const char *dot = strchr(seg, '.');
        size_t len = dot ? (size_t)(dot - seg) : strlen(seg);
        cJSON *hit = NULL;
        if (cJSON_IsObject(obj))
            for (cJSON *c = obj->child; c; c = c->next)
                if (c->string && strncmp(c->string, seg, len) == 0 && c->string[len] == '\0') {
                    hit = c;
                    break;
                }
        if (!hit || !dot) {
            if (parent)
                *parent = (cJSON *)obj;
            return hit;
        }
        obj = hit;
        seg = dot + 1;
    }
}

// Put v (owned; consumed even on failure) at a dotted path, creating sections.
// A non-object in a section's place is the source's fault.
static int tree_put(cJSON *root, const char *path, cJSON *v, const char *source, struct moe_err *e)
{
    cJSON *obj = root;
    const char *seg = path;
    for (;;) {
        const char *dot = strchr(seg, '.');
        char *name = dupn(seg, dot ? (size_t)(dot - seg) : strlen(seg));
        if (!name) {
            cJSON_Delete(v);
            return oom(e);
        }
        cJSON *hit = cJSON_GetObjectItemCaseSensitive(obj, name);
        if (!dot) {
            int ok = hit ? cJSON_ReplaceItemInObjectCaseSensitive(obj, name, v) : cJSON_AddItemToObject(obj, name, v);
            free(name);
            if (!ok) {
                cJSON_Delete(v);
                return oom(e);
            }
            return 0;
        }
        if (!hit) {
            hit = cJSON_AddObjectToObject(obj, name);
            if (!hit) {
                free(name);
                cJSON_Delete(v);
                return oom(e);
            }
        } else if (!cJSON_IsObject(hit)) {
            char got[128];
            describe(hit, 0, got, sizeof got);
            free(name);
            cJSON_Delete(v);
            return moe_error(e, MOE_ECONFIG, "config '%s': key '%.*s' must be an object, got %s", source,
                             (int)(dot - path), path, got);
        }
        free(name);
        obj = hit;
        seg = dot + 1;
    }
}

// ---------------------------------------------------------------------------
// Overrides

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        s[--n] = '\0';
    return s;
}

// A comma-separated list ("" is the empty list) as a JSON array.
static int split_list(const struct moe_cfg_key *k, const char *ov, const char *val, cJSON **ret, struct moe_err *e)
{
    cJSON *arr = cJSON_CreateArray();
    char *copy = dupn(val, strlen(val));
    if (!arr || !copy) {
        cJSON_Delete(arr);
        free(copy);
        return oom(e);
    }
    int rc = 0;
    if (*val) {
        char *p = copy;
        for (size_t i = 0;; i++) {
            char *comma = strchr(p, ',');
            if (comma)
                *comma = '\0';
            char *item = trim(p);
            cJSON *el = NULL;
            if (k->kind == MOE_CFG_STR_LIST) {
                el = cJSON_CreateString(item);
            } else {
                double d;
                if (!parse_num_strict(item, &d)) {
                    char want[384], got[96];
                    expect_text(k, 1, want, sizeof want);
                    clip_text(item, got, sizeof got);
                    rc = moe_error(e, MOE_ECONFIG, "--set '%s': key '%s[%zu]' must be %s, got '%s'", ov, k->path, i,
                                   want, got);
                    break;
                }
                el = cJSON_CreateNumber(d);
            }
            if (!el || !cJSON_AddItemToArray(arr, el)) {
                cJSON_Delete(el);
                rc = oom(e);
                break;
            }
            if (!comma)
                break;
            p = comma + 1;
        }
    }
    free(copy);
    if (rc) {
        cJSON_Delete(arr);
        return rc;
    }
    *ret = arr;
    return 0;
}

// The text after '=' as a JSON value of the key's kind. Kind, range and
// choice checks happen later, in validation, like for file values.
static int override_value(const struct moe_cfg_key *k, const char *ov, const char *val, cJSON **ret,
                          struct moe_err *e)
{
    cJSON *v = NULL;
    if (def_is_null(k->def) && strcmp(val, "null") == 0) {
        v = cJSON_CreateNull();
    } else {
        size_t len = strlen(val);
        switch (k->kind) {
        case MOE_CFG_INT:
        case MOE_CFG_NUM: {
            double d;
            if (!parse_num_strict(val, &d))
                goto bad;
            v = cJSON_CreateNumber(d);
            break;
        }
        case MOE_CFG_BOOL:
            if (strcmp(val, "true") == 0 || strcmp(val, "1") == 0)
                v = cJSON_CreateTrue();
            else if (strcmp(val, "false") == 0 || strcmp(val, "0") == 0)
                v = cJSON_CreateFalse();
            else
                goto bad;
            break;
        case MOE_CFG_STR:
            if (len >= 2 && val[0] == '"' && val[len - 1] == '"') {
                v = cJSON_ParseWithOpts(val, NULL, 1);
                if (!v || !cJSON_IsString(v)) {
                    cJSON_Delete(v);
                    char got[96];
                    clip_text(val, got, sizeof got);
                    return moe_error(e, MOE_ECONFIG, "--set '%s': value '%s' is not a valid JSON string", ov, got);
                }
            } else {
                v = cJSON_CreateString(val);
            }
            break;
        case MOE_CFG_STR_LIST:
        case MOE_CFG_NUM_LIST:
            if (val[0] == '[') {
                v = cJSON_ParseWithOpts(val, NULL, 1);
                if (!v) {
                    char got[96];
                    clip_text(val, got, sizeof got);
                    return moe_error(e, MOE_ECONFIG, "--set '%s': value '%s' is not a valid JSON array", ov, got);
                }
            } else {
                int rc = split_list(k, ov, val, &v, e);
                if (rc)
                    return rc;
            }
            break;
        }
    }
    if (!v)
        return oom(e);
    *ret = v;
    return 0;
bad:;
    char want[384], got[96];
    expect_text(k, 0, want, sizeof want);
    clip_text(val, got, sizeof got);
    return moe_error(e, MOE_ECONFIG, "--set '%s': key '%s' must be %s, got '%s'", ov, k->path, want, got);
}

// Everything one load needs to say where a value came from.
struct ctx {
    const struct moe_cfg_key *schema;
    size_t n;
    const char *source;  // names the text in "config '...'" messages
    const char **origin; // per key: the override that set it, or NULL
    struct moe_err *e;
};

static int apply_override(struct ctx *x, cJSON *root, const char *ov)
{
    struct moe_err *e = x->e;
    if (!ov)
        return moe_error(e, MOE_EINVAL, "--set: NULL override");
    const char *eq = strchr(ov, '=');
    if (!eq || eq == ov)
        return moe_error(e, MOE_ECONFIG, "--set '%s': expected key.path=value", ov);
    size_t plen = (size_t)(eq - ov);
    long i = find_key(x->schema, x->n, ov, plen);
    if (i < 0) {
        char *path = dupn(ov, plen);
        if (!path)
            return oom(e);
        char hint[300];
        int rc;
        if (is_section(x->schema, x->n, ov, plen)) {
            const char *first = "";
            for (size_t j = 0; j < x->n; j++)
                if (strncmp(x->schema[j].path, ov, plen) == 0 && x->schema[j].path[plen] == '.') {
                    first = x->schema[j].path;
                    break;
                }
            rc = moe_error(e, MOE_ECONFIG, "--set '%s': '%s' is a section, not a key (e.g. '%s')", ov, path, first);
        } else {
            suggest(x->schema, x->n, path, 1, hint, sizeof hint);
            rc = moe_error(e, MOE_ECONFIG, "--set '%s': unknown key '%s'%s", ov, path, hint);
        }
        free(path);
        return rc;
    }
    cJSON *v = NULL;
    int rc = override_value(&x->schema[i], ov, eq + 1, &v, e);
    if (rc)
        return rc;
    rc = tree_put(root, x->schema[i].path, v, x->source, e);
    if (rc)
        return rc;
    x->origin[i] = ov;
    return 0;
}

// ---------------------------------------------------------------------------
// Validation and defaults

// Prefix a check_value message with where the value came from (x->e is never NULL).
static int fail_from(struct ctx *x, long i)
{
    if (i >= 0 && x->origin[i])
        return moe_error_prefix(x->e, "--set '%s': ", x->origin[i]);
    return moe_error_prefix(x->e, "config '%s': ", x->source);
}

static int unknown_key(struct ctx *x, const char *path)
{
    char hint[300];
    suggest(x->schema, x->n, path, 0, hint, sizeof hint);
    return moe_error(x->e, MOE_ECONFIG, "config '%s': unknown key '%s'%s", x->source, path, hint);
}

static int validate_object(struct ctx *x, const cJSON *obj, const char *prefix)
{
    for (const cJSON *c = obj->child; c; c = c->next) {
        const char *name = c->string ? c->string : "";
        char *path = join_path(prefix, name);
        if (!path)
            return oom(x->e);
        int rc = 0;
        long i = find_key(x->schema, x->n, path, strlen(path));
        if (strchr(name, '.')) {
            rc = moe_error(x->e, MOE_ECONFIG,
                           "config '%s': key '%s' has a '.' in its name: write nested objects, not dotted names",
                           x->source, path);
        } else if (i >= 0) {
            if (cJSON_IsObject(c) && c->child) {
                char *sub = join_path(path, c->child->string ? c->child->string : "");
                rc = sub ? unknown_key(x, sub) : oom(x->e);
                free(sub);
            } else if (check_value(&x->schema[i], c, path, x->e)) {
                rc = fail_from(x, i);
            }
        } else if (is_section(x->schema, x->n, path, strlen(path))) {
            if (!cJSON_IsObject(c)) {
                char got[128];
                describe(c, 0, got, sizeof got);
                rc = moe_error(x->e, MOE_ECONFIG, "config '%s': key '%s' must be an object, got %s", x->source, path,
                               got);
            } else {
                rc = validate_object(x, c, path);
            }
        } else {
            rc = unknown_key(x, path);
        }
        free(path);
        if (rc)
            return rc;
    }
    return 0;
}

static void normalize_zero(cJSON *v)
{
    if (cJSON_IsNumber(v) && v->valuedouble == 0)
        cJSON_SetNumberValue(v, 0.0);
    if (cJSON_IsArray(v))
        for (cJSON *c = v->child; c; c = c->next)
            normalize_zero(c);
}

// Move every schema key from the validated input into a fresh tree, in schema
// order, filling absent keys from their defaults.
static int resolve(struct ctx *x, cJSON *input, cJSON **ret)
{
    cJSON *out = cJSON_CreateObject();
    if (!out)
        return oom(x->e);
    for (size_t i = 0; i < x->n; i++) {
        const struct moe_cfg_key *k = &x->schema[i];
        cJSON *parent = NULL;
        cJSON *v = tree_get(input, k->path, &parent);
        if (v) {
            cJSON_DetachItemViaPointer(parent, v);
        } else if (!k->def) {
            cJSON_Delete(out);
            return moe_error(x->e, MOE_ECONFIG, "config '%s': missing required key '%s'", x->source, k->path);
        } else {
            v = cJSON_Parse(k->def);
            if (!v) {
                cJSON_Delete(out);
                return oom(x->e);
            }
        }
        normalize_zero(v);
        int rc = tree_put(out, k->path, v, x->source, x->e);
        if (rc) {
            cJSON_Delete(out);
            return rc;
        }
    }
    *ret = out;
    return 0;
}

// Overrides, validation and defaults on a parsed tree (consumed).
static int finish(struct moe_config *ret, const struct moe_cfg_key *schema, size_t n, cJSON *tree, const char *source,
                  const char *const *overrides, size_t n_overrides, struct moe_err *e)
{
    struct ctx x = {schema, n, source, NULL, e};
    x.origin = calloc(n ? n : 1, sizeof *x.origin);
    if (!x.origin) {
        cJSON_Delete(tree);
        return oom(e);
    }
    int rc = 0;
    for (size_t j = 0; j < n_overrides && !rc; j++)
        rc = apply_override(&x, tree, overrides[j]);
    if (!rc)
        rc = validate_object(&x, tree, NULL);
    cJSON *out = NULL;
    if (!rc)
        rc = resolve(&x, tree, &out);
    cJSON_Delete(tree);
    free(x.origin);
    if (rc)
        return rc;
    ret->root = out;
    ret->schema = schema;
    ret->n_schema = n;
    return 0;
}

// Hand a failure to the caller; messages stay on one line even when they
// quote key names or overrides that hold control characters.
static int done(int rc, const struct moe_err *local, struct moe_err *err)
{
    if (rc && err) {
        *err = *local;
        for (char *p = err->msg; *p; p++)
            if ((unsigned char)*p < 0x20 || *p == 0x7F)
                *p = '?';
    }
    return rc;
}

// ---------------------------------------------------------------------------
// Public API

int moe_config_parse(struct moe_config *ret, const struct moe_cfg_key *schema, size_t n_schema, const char *text,
                     const char *source, const char *const *overrides, size_t n_overrides, struct moe_err *err)
{
    struct moe_err e = {0};
    memset(ret, 0, sizeof *ret);
    if (!source)
        source = text ? "config" : "defaults";
    int rc = check_schema(schema, n_schema, &e);
    if (rc)
        return done(rc, &e, err);
    if (n_overrides && !overrides)
        return done(moe_error(&e, MOE_EINVAL, "--set: NULL override list"), &e, err);
    cJSON *tree = NULL;
    if (text) {
        rc = parse_text(text, source, &tree, &e);
        if (rc)
            return done(rc, &e, err);
        struct frame top = {tree, NULL};
        rc = find_dups(&top, source, &e);
        if (rc) {
            cJSON_Delete(tree);
            return done(rc, &e, err);
        }
    } else {
        tree = cJSON_CreateObject();
        if (!tree)
            return done(oom(&e), &e, err);
    }
    return done(finish(ret, schema, n_schema, tree, source, overrides, n_overrides, &e), &e, err);
}

int moe_config_load(struct moe_config *ret, const struct moe_cfg_key *schema, size_t n_schema, const char *path,
                    const char *const *overrides, size_t n_overrides, struct moe_err *err)
{
    memset(ret, 0, sizeof *ret);
    if (!path)
        return moe_config_parse(ret, schema, n_schema, NULL, "defaults", overrides, n_overrides, err);
    struct moe_err e = {0};
    char *buf = NULL;
    size_t len = 0;
    int rc = moe_read_file(path, &buf, &len, &e);
    if (rc)
        return done(rc, &e, err);
    const char *nul = memchr(buf, '\0', len);
    if (nul) {
        size_t line, col;
        line_col(buf, (size_t)(nul - buf), &line, &col);
        free(buf);
        rc = moe_error(&e, MOE_ECONFIG, "config '%s': invalid JSON at line %zu, column %zu (NUL byte)", path, line,
                       col);
        return done(rc, &e, err);
    }
    rc = moe_config_parse(ret, schema, n_schema, buf, path, overrides, n_overrides, err);
    free(buf);
    return rc;
}

int moe_config_set(struct moe_config *c, const char *override, struct moe_err *err)
{
    struct moe_err e = {0};
    if (!c || !c->root)
        return done(moe_error(&e, MOE_EINVAL, "--set '%s': config is not loaded", override ? override : ""), &e,
                    err);
    cJSON *tree = cJSON_Duplicate(c->root, 1);
    if (!tree)
        return done(oom(&e), &e, err);
    struct moe_config next = {0};
    int rc = finish(&next, c->schema, c->n_schema, tree, "config", &override, 1, &e);
    if (rc)
        return done(rc, &e, err);
    cJSON_Delete(c->root);
    c->root = next.root;
    return 0;
}

int moe_config_copy(struct moe_config *ret, const struct moe_config *c, struct moe_err *err)
{
    memset(ret, 0, sizeof *ret);
    if (!c)
        return moe_error(err, MOE_EINVAL, "cannot copy a NULL config");
    if (c->root) {
        ret->root = cJSON_Duplicate(c->root, 1);
        if (!ret->root)
            return oom(err);
    }
    ret->schema = c->schema;
    ret->n_schema = c->n_schema;
    return 0;
}

void moe_config_release(struct moe_config *c)
{
    if (!c)
        return;
    cJSON_Delete(c->root);
    memset(c, 0, sizeof *c);
}

// ---------------------------------------------------------------------------
// Accessors

static const cJSON *leaf(const struct moe_config *c, const char *path, enum moe_cfg_kind a, enum moe_cfg_kind b)
{
    assert(c && c->root && path);
    if (!c || !c->root || !path)
        return NULL;
    long i = find_key(c->schema, c->n_schema, path, strlen(path));
    assert(i >= 0 && "config key is not in the schema");
    if (i < 0)
        return NULL;
    assert((c->schema[i].kind == a || c->schema[i].kind == b) && "config key accessed as the wrong kind");
    if (c->schema[i].kind != a && c->schema[i].kind != b)
        return NULL;
    const cJSON *v = tree_get(c->root, path, NULL);
    assert(v && "config key missing from the resolved tree");
    return v;
}

int64_t moe_cfg_int(const struct moe_config *c, const char *path)
{
    const cJSON *v = leaf(c, path, MOE_CFG_INT, MOE_CFG_INT);
    return cJSON_IsNumber(v) ? (int64_t)v->valuedouble : 0;
}

double moe_cfg_num(const struct moe_config *c, const char *path)
{
    const cJSON *v = leaf(c, path, MOE_CFG_NUM, MOE_CFG_INT);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

bool moe_cfg_bool(const struct moe_config *c, const char *path)
{
    return cJSON_IsTrue(leaf(c, path, MOE_CFG_BOOL, MOE_CFG_BOOL));
}

const char *moe_cfg_str(const struct moe_config *c, const char *path)
{
    const cJSON *v = leaf(c, path, MOE_CFG_STR, MOE_CFG_STR);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

size_t moe_cfg_len(const struct moe_config *c, const char *path)
{
    const cJSON *v = leaf(c, path, MOE_CFG_STR_LIST, MOE_CFG_NUM_LIST);
    return cJSON_IsArray(v) ? (size_t)cJSON_GetArraySize(v) : 0;
}

static const cJSON *element(const cJSON *v, size_t i)
{
    if (!cJSON_IsArray(v))
        return NULL;
    const cJSON *el = v->child;
    while (el && i--)
        el = el->next;
    return el;
}

const char *moe_cfg_str_at(const struct moe_config *c, const char *path, size_t i)
{
    const cJSON *el = element(leaf(c, path, MOE_CFG_STR_LIST, MOE_CFG_STR_LIST), i);
    assert(el && "config list index out of range");
    return cJSON_IsString(el) ? el->valuestring : NULL;
}

int moe_cfg_str_list(const struct moe_config *c, const char *path, const char ***ret, size_t *ret_n,
                     struct moe_err *err)
{
    size_t n = moe_cfg_len(c, path);
    const char **v = malloc((n ? n : 1) * sizeof *v);
    if (!v)
        return moe_error(err, MOE_ENOMEM, "out of memory for the list '%s'", path);
    for (size_t i = 0; i < n; i++)
        v[i] = moe_cfg_str_at(c, path, i);
    *ret = v;
    *ret_n = n;
    return 0;
}

double moe_cfg_num_at(const struct moe_config *c, const char *path, size_t i)
{
    const cJSON *el = element(leaf(c, path, MOE_CFG_NUM_LIST, MOE_CFG_NUM_LIST), i);
    assert(el && "config list index out of range");
    return cJSON_IsNumber(el) ? el->valuedouble : NAN;
}

// ---------------------------------------------------------------------------
// Canonical text and hash

// A copy of v with numbers as raw text in canonical form.
static cJSON *canon(const cJSON *v)
{
    if (!v)
        return cJSON_CreateNull();
    if (cJSON_IsNumber(v)) {
        char buf[40];
        fmt_num(v->valuedouble, buf, sizeof buf);
        return cJSON_CreateRaw(buf);
    }
    if (cJSON_IsArray(v)) {
        cJSON *a = cJSON_CreateArray();
        for (const cJSON *c = v->child; a && c; c = c->next) {
            cJSON *el = canon(c);
            if (!el || !cJSON_AddItemToArray(a, el)) {
                cJSON_Delete(el);
                cJSON_Delete(a);
                return NULL;
            }
        }
        return a;
    }
    return cJSON_Duplicate(v, 1);
}

char *moe_config_to_json(const struct moe_config *c, int pretty)
{
    if (!c || !c->root)
        return NULL;
    struct moe_err e = {0};
    cJSON *out = cJSON_CreateObject();
    if (!out)
        return NULL;
    for (size_t i = 0; i < c->n_schema; i++) {
        cJSON *v = canon(tree_get(c->root, c->schema[i].path, NULL));
        if (!v || tree_put(out, c->schema[i].path, v, "config", &e)) {
            cJSON_Delete(out);
            return NULL;
        }
    }
    char *s = pretty ? cJSON_Print(out) : cJSON_PrintUnformatted(out);
    cJSON_Delete(out);
    return s;
}

uint64_t moe_config_hash(const struct moe_config *c)
{
    char *s = moe_config_to_json(c, 0);
    if (!s)
        return 0;
    uint64_t h = 14695981039346656037ULL;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        h ^= *p;
        h *= 1099511628211ULL;
    }
    free(s);
    return h;
}
