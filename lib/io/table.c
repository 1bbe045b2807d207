// table.c: CSV / TSV tables (parsed with libcsv) into train and test data sets,
// with named feature and target columns, row filters and a train/test split.
// Not a general data-frame: no type inference, no missing-value handling
// (an empty or non-numeric feature cell is an error), no compressed input.
// reference: RFC 4180 (CSV: comma-separated, '"'-quoted fields with '""' for a
// quote, CRLF or LF line ends); TSV is the same with a tab delimiter.
//
// Behaviour worth knowing:
// - The first non-blank row is the header (a UTF-8 byte order mark is skipped).
//   Blank lines are ignored. Unquoted cells are trimmed of spaces (libcsv).
// - Line numbers are physical lines of the file (1 = header), counting LF, CR
//   and CRLF line ends and newlines inside quoted cells.
// - Row order of work: ragged-row check, filters, split, class list, then the
//   numbers are parsed; so cells of dropped rows are never parsed as numbers.
// - The random split draws moe_rng_uniform(moe_rng_make(seed, MOE_RNG_SPLIT, 0), i)
//   with i the 0-based index of the data row in the file (blank lines not
//   counted, filtered rows counted), so changing a filter does not reshuffle
//   the rows that remain.
// - With a class list, rows whose target is not in the list are dropped; without
//   one, the classes are the sorted (strcmp) distinct targets of the kept rows
//   of both splits, so train and test share ids.
#include "io/dataset.h"

#include <csv.h>
#include <ctype.h>
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/params.h"
#include "core/rng.h"
#include "io/atomic.h"

enum filter_op { OP_EQ, OP_NE, OP_LE, OP_GE, OP_LT, OP_GT };

struct filter {
    const char *expr;
    char *name;     // column name (owned)
    enum filter_op op;
    char **alts;    // OP_EQ / OP_NE alternatives (owned)
    size_t n_alts;
    double value;   // numeric ops
    size_t col;
};

struct growbuf {
    void *p;
    size_t len, cap; // in elements
};

static int grow(struct growbuf *g, size_t elem, size_t need)
{
    if (need <= g->cap)
        return 0;
    size_t cap = g->cap ? g->cap : 64;
    while (cap < need) {
        if (cap > SIZE_MAX / 2 / elem)
            return -1;
        cap *= 2;
    }
    void *np = realloc(g->p, cap * elem);
    if (!np)
        return -1;
    g->p = np;
    g->cap = cap;
    return 0;
}

struct ctx {
    const struct moe_table_spec *spec;
    struct moe_err *err;
    int rc;             // first error; callbacks do nothing once set
    struct filter *filters;

    // the row being parsed: NUL-terminated cells packed in arena, offsets in off
    struct growbuf arena, off;
    size_t row_newlines; // newlines inside quoted cells of this row
    size_t line;         // physical line on which the next row starts
    int last_cr;         // the previous row ended with a CR (so a following LF-only row is its CRLF)

    // header
    int have_header;
    char **cols;
    size_t n_cols;
    size_t *feat_col, *targ_col, split_col;

    // kept rows
    size_t data_index;   // data rows seen so far (for the random split)
    struct growbuf x, y, label, label_str, is_test; // float, float, int32_t, char *, unsigned char
    size_t n_kept;
};

static const char *cell(const struct ctx *c, size_t i)
{
    return (const char *)c->arena.p + ((const size_t *)c->off.p)[i];
}

// Decimal syntax only: [+-] digits [. digits] or [+-] . digits, then [eE [+-] digits].
// strtod alone also takes hexadecimal ("0x10" is 16), "inf", "nan" and "infinity",
// which a data file means as text. Returns a pointer past the number, or NULL.
static const char *decimal_end(const char *s)
{
    if (*s == '+' || *s == '-')
        s++;
    size_t int_digits = 0, frac_digits = 0;
    while (isdigit((unsigned char)*s))
        s++, int_digits++;
    if (*s == '.') {
        s++;
        while (isdigit((unsigned char)*s))
            s++, frac_digits++;
    }
    if (int_digits + frac_digits == 0)
        return NULL;
    if (*s == 'e' || *s == 'E') {
        const char *e = s + 1;
        if (*e == '+' || *e == '-')
            e++;
        if (!isdigit((unsigned char)*e))
            return NULL;
        while (isdigit((unsigned char)*e))
            e++;
        s = e;
    }
    return s;
}

// Strict number: optional surrounding white space, a decimal number (decimal_end)
// consuming the whole cell, finite.
static int parse_number(const char *s, double *v)
{
    while (isspace((unsigned char)*s))
        s++;
    if (!*s)
        return -1;
    const char *dec = decimal_end(s);
    if (!dec)
        return -1;
    char *end;
    errno = 0;
    double d = strtod(s, &end);
    if (end != dec)
        return -1;
    while (isspace((unsigned char)*end))
        end++;
    if (*end || !isfinite(d))
        return -1;
    *v = d;
    return 0;
}

static int cell_number(struct ctx *c, size_t row_line, size_t col, double *v, int as_float)
{
    const char *s = cell(c, col);
    if (parse_number(s, v))
        return c->rc = moe_error(c->err, MOE_EFORMAT, "table '%s' line %zu: column '%s' is not a number: '%.60s'",
                                 c->spec->path, row_line, c->cols[col], s);
    if (as_float && fabs(*v) > FLT_MAX)
        return c->rc = moe_error(c->err, MOE_EFORMAT,
                                 "table '%s' line %zu: column '%s' is out of range for a float: '%.60s'",
                                 c->spec->path, row_line, c->cols[col], s);
    return 0;
}

static int oom(struct ctx *c)
{
    return c->rc = moe_error(c->err, MOE_ENOMEM, "table '%s': out of memory", c->spec->path);
}

// ---- filters ----

static char *dup_trimmed(const char *s, size_t n)
{
    while (n && (*s == ' ' || *s == '\t')) {
        s++;
        n--;
    }
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;
    return strndup(s, n);
}

static void free_filter(struct filter *f)
{
    free(f->name);
    for (size_t i = 0; i < f->n_alts; i++)
        free(f->alts[i]);
    free(f->alts);
}

static int parse_filter(const char *expr, struct filter *f, struct moe_err *err)
{
    memset(f, 0, sizeof *f);
    f->expr = expr;
    static const char usage[] = "expected COL=a|b, COL!=a|b, COL<=x, COL>=x, COL<x or COL>x";
    if (!expr)
        return moe_error(err, MOE_EINVAL, "bad filter (null): %s", usage);
    size_t k = strcspn(expr, "=!<>");
    if (!expr[k])
        return moe_error(err, MOE_EINVAL, "bad filter '%s': no operator; %s", expr, usage);
    const char *v;
    switch (expr[k]) {
    case '=':
        f->op = OP_EQ;
        v = expr + k + (expr[k + 1] == '=' ? 2 : 1); // accept "==" too
        break;
    case '!':
        if (expr[k + 1] != '=')
            return moe_error(err, MOE_EINVAL, "bad filter '%s': '!' must be followed by '='; %s", expr, usage);
        f->op = OP_NE;
        v = expr + k + 2;
        break;
    case '<':
        f->op = expr[k + 1] == '=' ? OP_LE : OP_LT;
        v = expr + k + (f->op == OP_LE ? 2 : 1);
        break;
    default:
        f->op = expr[k + 1] == '=' ? OP_GE : OP_GT;
        v = expr + k + (f->op == OP_GE ? 2 : 1);
        break;
    }
    int rc = 0;
    f->name = dup_trimmed(expr, k);
    if (!f->name)
        return moe_error(err, MOE_ENOMEM, "out of memory");
    if (!f->name[0]) {
        rc = moe_error(err, MOE_EINVAL, "bad filter '%s': no column name; %s", expr, usage);
        goto fail;
    }
    if (f->op == OP_EQ || f->op == OP_NE) {
        size_t n = 1;
        for (const char *p = v; *p; p++)
            n += *p == '|';
        f->alts = calloc(n, sizeof *f->alts);
        if (!f->alts) {
            rc = moe_error(err, MOE_ENOMEM, "out of memory");
            goto fail;
        }
        const char *p = v;
        for (size_t i = 0; i < n; i++) {
            size_t len = strcspn(p, "|");
            f->alts[i] = dup_trimmed(p, len);
            if (!f->alts[i]) {
                rc = moe_error(err, MOE_ENOMEM, "out of memory");
                goto fail;
            }
            f->n_alts = i + 1;
            if (!f->alts[i][0]) {
                rc = moe_error(err, MOE_EINVAL, "bad filter '%s': empty value; %s", expr, usage);
                goto fail;
            }
            p += len + (p[len] == '|');
        }
    } else if (parse_number(v, &f->value)) {
        rc = moe_error(err, MOE_EINVAL, "bad filter '%s': '%s' is not a number; %s", expr, v, usage);
        goto fail;
    }
    return 0;
fail:
    free_filter(f);
    return rc;
}

// Fuzzing fix: messages quote header and cell text from the file (and names
// from the spec), which may hold newlines (a quoted cell) or other control
// bytes; the CLI prints a message as one line, so they become '?' here, as in
// config.c. Found by tests/fuzz/fuzz_table.c: a header cell of 0x16 bytes gave
// "no column 'label' (columns: x, y, <control bytes>label, ...)"; likewise a
// filter from the config holding "\n" split "bad filter '...'" in two lines.
static int one_line(int rc, struct moe_err *err)
{
    if (rc && err)
        for (char *p = err->msg; *p; p++)
            if ((unsigned char)*p < 0x20 || *p == 0x7F)
                *p = '?';
    return rc;
}

int moe_table_filter_check(const char *expr, struct moe_err *err)
{
    struct filter f;
    int rc = parse_filter(expr, &f, err); // frees what it built when it fails
    if (!rc)
        free_filter(&f);
    return one_line(rc, err);
}

// 1 = the row passes, 0 = dropped, negative = error (in c->rc).
static int filter_pass(struct ctx *c, const struct filter *f, size_t row_line)
{
    const char *s = cell(c, f->col);
    if (f->op == OP_EQ || f->op == OP_NE) {
        int hit = 0;
        for (size_t i = 0; i < f->n_alts && !hit; i++)
            hit = strcmp(s, f->alts[i]) == 0;
        return f->op == OP_EQ ? hit : !hit;
    }
    double v;
    if (parse_number(s, &v))
        return c->rc = moe_error(c->err, MOE_EFORMAT,
                                 "table '%s' line %zu: column '%s' is not a number: '%.60s' (filter '%s')",
                                 c->spec->path, row_line, c->cols[f->col], s, f->expr);
    switch (f->op) {
    case OP_LE: return v <= f->value;
    case OP_GE: return v >= f->value;
    case OP_LT: return v < f->value;
    default: return v > f->value;
    }
}

// ---- header ----

static int find_column(struct ctx *c, const char *name, const char *role, size_t *ret)
{
    size_t found = SIZE_MAX;
    for (size_t i = 0; i < c->n_cols; i++) {
        if (strcmp(c->cols[i], name) != 0)
            continue;
        if (found != SIZE_MAX)
            return c->rc = moe_error(c->err, MOE_EFORMAT, "table '%s': %s column '%s' appears twice in the header",
                                     c->spec->path, role, name);
        found = i;
    }
    if (found != SIZE_MAX) {
        *ret = found;
        return 0;
    }
    char list[320];
    size_t o = 0;
    list[0] = '\0';
    for (size_t i = 0; i < c->n_cols; i++) {
        size_t len = strlen(c->cols[i]);
        if (o + len + 8 >= sizeof list) {
            snprintf(list + o, sizeof list - o, "%s...", i ? ", " : "");
            break;
        }
        o += (size_t)snprintf(list + o, sizeof list - o, "%s%s", i ? ", " : "", c->cols[i]);
    }
    return c->rc = moe_error(c->err, MOE_EFORMAT, "table '%s': no column '%s' (columns: %s)", c->spec->path, name,
                             list);
}

static int take_header(struct ctx *c, size_t n)
{
    const struct moe_table_spec *s = c->spec;
    c->cols = calloc(n, sizeof *c->cols);
    c->feat_col = calloc(s->n_features, sizeof *c->feat_col);
    c->targ_col = calloc(s->n_targets, sizeof *c->targ_col);
    if (!c->cols || !c->feat_col || !c->targ_col)
        return oom(c);
    c->n_cols = n;
    for (size_t i = 0; i < n; i++)
        if (!(c->cols[i] = strdup(cell(c, i))))
            return oom(c);
    c->have_header = 1;
    for (size_t i = 0; i < s->n_features; i++)
        if (find_column(c, s->features[i], "feature", &c->feat_col[i]))
            return c->rc;
    for (size_t i = 0; i < s->n_targets; i++)
        if (find_column(c, s->targets[i], "target", &c->targ_col[i]))
            return c->rc;
    for (size_t i = 0; i < s->n_where; i++)
        if (find_column(c, c->filters[i].name, "filter", &c->filters[i].col))
            return c->rc;
    if (s->split_column && find_column(c, s->split_column, "split", &c->split_col))
        return c->rc;
    return 0;
}

// ---- rows ----

static int take_row(struct ctx *c, size_t n, size_t row_line)
{
    const struct moe_table_spec *s = c->spec;
    if (n != c->n_cols)
        return c->rc = moe_error(c->err, MOE_EFORMAT, "table '%s' line %zu: %zu fields, expected %zu", s->path,
                                 row_line, n, c->n_cols);
    size_t index = c->data_index++;
    for (size_t i = 0; i < s->n_where; i++) {
        int pass = filter_pass(c, &c->filters[i], row_line);
        if (pass <= 0)
            return pass;
    }
    unsigned char test;
    if (s->split_column) {
        double v;
        if (cell_number(c, row_line, c->split_col, &v, 0))
            return c->rc;
        if (v >= s->train_range[0] && v <= s->train_range[1])
            test = 0;
        else if (v >= s->test_range[0] && v <= s->test_range[1])
            test = 1;
        else
            return 0;
    } else {
        struct moe_rng r = moe_rng_make(s->seed, MOE_RNG_SPLIT, 0);
        test = moe_rng_uniform(&r, index) < s->test_fraction;
    }
    int32_t lab = -1;
    const char *lab_str = NULL;
    if (s->task == MOE_TASK_CLASSIFICATION) {
        lab_str = cell(c, c->targ_col[0]);
        if (s->classes) {
            for (size_t k = 0; k < s->n_classes && lab < 0; k++)
                if (strcmp(lab_str, s->classes[k]) == 0)
                    lab = (int32_t)k;
            if (lab < 0)
                return 0;
        }
    }
    size_t row = c->n_kept, d = s->n_features, o = s->n_targets;
    if (grow(&c->x, sizeof(float), (row + 1) * d) || grow(&c->is_test, 1, row + 1))
        return oom(c);
    float *x = (float *)c->x.p + row * d;
    for (size_t j = 0; j < d; j++) {
        double v;
        if (cell_number(c, row_line, c->feat_col[j], &v, 1))
            return c->rc;
        x[j] = (float)v;
    }
    if (s->task == MOE_TASK_REGRESSION) {
        if (grow(&c->y, sizeof(float), (row + 1) * o))
            return oom(c);
        float *y = (float *)c->y.p + row * o;
        for (size_t j = 0; j < o; j++) {
            double v;
            if (cell_number(c, row_line, c->targ_col[j], &v, 1))
                return c->rc;
            y[j] = (float)v;
        }
    } else if (s->classes) {
        if (grow(&c->label, sizeof(int32_t), row + 1))
            return oom(c);
        ((int32_t *)c->label.p)[row] = lab;
    } else {
        if (grow(&c->label_str, sizeof(char *), row + 1))
            return oom(c);
        char *dup = strdup(lab_str);
        if (!dup)
            return oom(c);
        ((char **)c->label_str.p)[row] = dup;
        c->label_str.len = row + 1;
    }
    ((unsigned char *)c->is_test.p)[row] = test;
    c->n_kept = row + 1;
    return 0;
}

// ---- libcsv callbacks ----

static void on_field(void *data, size_t len, void *ctxp)
{
    struct ctx *c = ctxp;
    if (c->rc)
        return;
    const char *s = data ? data : "";
    for (size_t i = 0; i < len; i++)
        c->row_newlines += s[i] == '\n';
    if (memchr(s, '\0', len))
        return (void)(c->rc = moe_error(c->err, MOE_EFORMAT, "table '%s' line %zu: NUL byte in a field",
                                        c->spec->path, c->line + c->row_newlines));
    size_t at = c->arena.len;
    if (grow(&c->arena, 1, at + len + 1) || grow(&c->off, sizeof(size_t), c->off.len + 1))
        return (void)oom(c);
    memcpy((char *)c->arena.p + at, s, len);
    ((char *)c->arena.p)[at + len] = '\0';
    c->arena.len = at + len + 1;
    ((size_t *)c->off.p)[c->off.len++] = at;
}

static void on_row(int term, void *ctxp)
{
    struct ctx *c = ctxp;
    if (c->rc)
        return;
    size_t n = c->off.len;
    size_t row_line = c->line;
    if (n == 0 && term == '\n' && c->last_cr) {
        c->last_cr = 0; // the LF of a CRLF: libcsv reports it as an empty row (CSV_REPALL_NL)
        return;
    }
    c->line += 1 + c->row_newlines;
    c->last_cr = term == '\r';
    if (n > 0) {
        if (!c->have_header)
            take_header(c, n);
        else
            take_row(c, n, row_line);
    }
    c->arena.len = 0;
    c->off.len = 0;
    c->row_newlines = 0;
}

// ---- driver ----

static int check_spec(const struct moe_table_spec *s, struct moe_err *err)
{
    if (!s->path)
        return moe_error(err, MOE_EINVAL, "table: no path");
    const char *p = s->path;
    if (s->delimiter != 0 && s->delimiter != ',' && s->delimiter != '\t')
        return moe_error(err, MOE_EINVAL, "table '%s': delimiter must be ',' or tab", p);
    if (s->task != MOE_TASK_REGRESSION && s->task != MOE_TASK_CLASSIFICATION)
        return moe_error(err, MOE_EINVAL, "table '%s': unknown task %d", p, (int)s->task);
    if (s->n_features == 0 || !s->features)
        return moe_error(err, MOE_EINVAL, "table '%s': no feature columns given", p);
    if (s->n_targets == 0 || !s->targets)
        return moe_error(err, MOE_EINVAL, "table '%s': no target column given", p);
    if (s->task == MOE_TASK_CLASSIFICATION && s->n_targets != 1)
        return moe_error(err, MOE_EINVAL, "table '%s': classification takes one target column, got %zu", p,
                         s->n_targets);
    if (s->n_where && !s->where)
        return moe_error(err, MOE_EINVAL, "table '%s': n_where is %zu but no filters given", p, s->n_where);
    for (size_t i = 0; i < s->n_features; i++) {
        if (!s->features[i])
            return moe_error(err, MOE_EINVAL, "table '%s': feature %zu has no name", p, i);
        for (size_t j = 0; j < i; j++)
            if (strcmp(s->features[i], s->features[j]) == 0)
                return moe_error(err, MOE_EINVAL, "table '%s': feature '%s' given twice", p, s->features[i]);
    }
    for (size_t i = 0; i < s->n_targets; i++) {
        if (!s->targets[i])
            return moe_error(err, MOE_EINVAL, "table '%s': target %zu has no name", p, i);
        for (size_t j = 0; j < i; j++)
            if (strcmp(s->targets[i], s->targets[j]) == 0)
                return moe_error(err, MOE_EINVAL, "table '%s': target '%s' given twice", p, s->targets[i]);
        for (size_t j = 0; j < s->n_features; j++)
            if (strcmp(s->targets[i], s->features[j]) == 0)
                return moe_error(err, MOE_EINVAL, "table '%s': column '%s' is both a feature and a target", p,
                                 s->targets[i]);
    }
    if (s->task == MOE_TASK_CLASSIFICATION && s->classes) {
        if (s->n_classes == 0)
            return moe_error(err, MOE_EINVAL, "table '%s': empty class list", p);
        if (s->n_classes > INT32_MAX)
            return moe_error(err, MOE_EINVAL, "table '%s': too many classes", p);
        for (size_t i = 0; i < s->n_classes; i++) {
            if (!s->classes[i])
                return moe_error(err, MOE_EINVAL, "table '%s': class %zu has no name", p, i);
            for (size_t j = 0; j < i; j++)
                if (strcmp(s->classes[i], s->classes[j]) == 0)
                    return moe_error(err, MOE_EINVAL, "table '%s': class '%s' listed twice", p, s->classes[i]);
        }
    }
    if (s->split_column) {
        const double *a = s->train_range, *b = s->test_range;
        if (!(a[0] <= a[1]) || !(b[0] <= b[1]))
            return moe_error(err, MOE_EINVAL, "table '%s': split ranges must be [lo, hi] with lo <= hi", p);
        if (a[0] <= b[1] && b[0] <= a[1])
            return moe_error(err, MOE_EINVAL, "table '%s': train range [%g, %g] and test range [%g, %g] overlap", p,
                             a[0], a[1], b[0], b[1]);
    } else if (!(s->test_fraction >= 0.0 && s->test_fraction < 1.0)) {
        return moe_error(err, MOE_EINVAL, "table '%s': test_fraction %g is outside [0, 1)", p, s->test_fraction);
    }
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static char **dup_names(const char *const *names, size_t n)
{
    char **r = calloc(n ? n : 1, sizeof *r);
    if (!r)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (!(r[i] = strdup(names[i]))) {
            for (size_t j = 0; j < i; j++)
                free(r[j]);
            free(r);
            return NULL;
        }
    }
    return r;
}

// Build the two data sets from the kept rows.
static int build(struct ctx *c, struct moe_dataset *tr, struct moe_dataset *te)
{
    const struct moe_table_spec *s = c->spec;
    const unsigned char *is_test = c->is_test.p;
    size_t n_test = 0;
    for (size_t i = 0; i < c->n_kept; i++)
        n_test += is_test[i];
    size_t n_train = c->n_kept - n_test;
    if (n_train == 0)
        return moe_error(c->err, MOE_EFORMAT, "table '%s': no rows left after filters", s->path);

    // Class ids.
    size_t n_out = s->n_targets;
    char **classes = NULL; // sorted distinct names (borrowed from label_str) when no list is given
    int32_t *label = c->label.p;
    if (s->task == MOE_TASK_CLASSIFICATION && !s->classes) {
        char **ls = c->label_str.p;
        classes = malloc(c->n_kept * sizeof *classes);
        label = malloc(c->n_kept * sizeof *label);
        if (!classes || !label) {
            free(classes);
            free(label);
            return oom(c);
        }
        memcpy(classes, ls, c->n_kept * sizeof *classes);
        qsort(classes, c->n_kept, sizeof *classes, cmp_str);
        size_t k = 0;
        for (size_t i = 0; i < c->n_kept; i++)
            if (k == 0 || strcmp(classes[k - 1], classes[i]) != 0)
                classes[k++] = classes[i];
        n_out = k;
        for (size_t i = 0; i < c->n_kept; i++) {
            char **hit = bsearch(&ls[i], classes, k, sizeof *classes, cmp_str);
            label[i] = (int32_t)(hit - classes);
        }
        if (k > INT32_MAX) {
            free(classes);
            free(label);
            return moe_error(c->err, MOE_EFORMAT, "table '%s': too many classes", s->path);
        }
    } else if (s->task == MOE_TASK_CLASSIFICATION) {
        n_out = s->n_classes;
    }

    int rc = 0;
    size_t d = s->n_features;
    struct moe_dataset *sets[2] = { tr, te };
    size_t counts[2] = { n_train, n_test };
    for (int k = 0; k < 2 && !rc; k++) {
        struct moe_dataset *ds = sets[k];
        rc = moe_dataset_alloc(ds, s->task, counts[k], d, n_out, 0, c->err);
        if (rc)
            break;
        ds->feature_names = dup_names(s->features, d);
        if (s->task == MOE_TASK_CLASSIFICATION)
            ds->class_names = dup_names(s->classes ? s->classes : (const char *const *)classes, n_out);
        if (!ds->feature_names || (s->task == MOE_TASK_CLASSIFICATION && !ds->class_names)) {
            rc = oom(c);
            break;
        }
        size_t r = 0;
        for (size_t i = 0; i < c->n_kept; i++) {
            if (is_test[i] != k)
                continue;
            memcpy(ds->x + r * d, (const float *)c->x.p + i * d, d * sizeof(float));
            if (s->task == MOE_TASK_REGRESSION)
                memcpy(ds->y + r * n_out, (const float *)c->y.p + i * n_out, n_out * sizeof(float));
            else
                ds->label[r] = label[i];
            r++;
        }
    }
    if (classes) {
        free(classes);
        free(label);
    }
    return rc;
}

int moe_table_read(const struct moe_table_spec *spec, struct moe_dataset *ret_train,
                   struct moe_dataset *ret_test, struct moe_err *err)
{
    memset(ret_train, 0, sizeof *ret_train);
    memset(ret_test, 0, sizeof *ret_test);
    if (!spec)
        return moe_error(err, MOE_EINVAL, "table: no spec");
    int rc = check_spec(spec, err);
    if (rc)
        return one_line(rc, err);

    struct ctx c;
    memset(&c, 0, sizeof c);
    c.spec = spec;
    c.err = err;
    c.line = 1;
    char *buf = NULL;
    size_t len = 0;
    int parser_ready = 0;
    struct csv_parser p;

    if (spec->n_where) {
        c.filters = calloc(spec->n_where, sizeof *c.filters);
        if (!c.filters) {
            rc = moe_error(err, MOE_ENOMEM, "out of memory");
            goto out;
        }
        for (size_t i = 0; i < spec->n_where; i++) {
            rc = parse_filter(spec->where[i], &c.filters[i], err);
            if (rc) {
                // parse_filter freed its own parts; the ones before it are freed below
                memset(&c.filters[i], 0, sizeof c.filters[i]);
                goto out;
            }
        }
    }

    char delim = spec->delimiter;
    if (!delim) {
        const char *dot = strrchr(spec->path, '.');
        delim = dot && (strcasecmp(dot, ".tsv") == 0 || strcasecmp(dot, ".tab") == 0) ? '\t' : ',';
    }

    rc = moe_read_file(spec->path, &buf, &len, err);
    if (rc)
        goto out;
    const char *text = buf;
    if (len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0) {
        text += 3;
        len -= 3;
    }

    // STRICT: a stray quote is an error, not data; STRICT_FINI: so is an
    // unterminated quoted cell at the end; REPALL_NL: every line end is reported,
    // so lines can be counted; APPEND_NULL: cells are NUL-terminated.
    if (csv_init(&p, CSV_STRICT | CSV_STRICT_FINI | CSV_REPALL_NL | CSV_APPEND_NULL) != 0) {
        rc = moe_error(err, MOE_ENOMEM, "table '%s': cannot initialise the CSV parser", spec->path);
        goto out;
    }
    parser_ready = 1;
    csv_set_delim(&p, (unsigned char)delim);
    size_t used = csv_parse(&p, text, len, on_field, on_row, &c);
    if (c.rc) {
        rc = c.rc;
        goto out;
    }
    if (used != len) {
        int e = csv_error(&p);
        if (e == CSV_ENOMEM || e == CSV_ETOOBIG) {
            rc = moe_error(err, MOE_ENOMEM, "table '%s': %s", spec->path, csv_strerror(e));
            goto out;
        }
        size_t line = 1;
        for (size_t i = 0; i < used; i++)
            line += text[i] == '\n';
        rc = moe_error(err, MOE_EFORMAT, "table '%s' line %zu: malformed quoting (a '\"' inside an unquoted cell "
                       "or after a closing quote)", spec->path, line);
        goto out;
    }
    if (csv_fini(&p, on_field, on_row, &c) != 0 && !c.rc) {
        rc = moe_error(err, MOE_EFORMAT, "table '%s' line %zu: unterminated quoted cell", spec->path, c.line);
        goto out;
    }
    if (c.rc) {
        rc = c.rc;
        goto out;
    }
    if (!c.have_header) {
        rc = moe_error(err, MOE_EFORMAT, "table '%s': empty file (no header row)", spec->path);
        goto out;
    }
    rc = build(&c, ret_train, ret_test);

out:
    if (parser_ready)
        csv_free(&p);
    free(buf);
    if (c.filters) {
        for (size_t i = 0; i < spec->n_where; i++)
            free_filter(&c.filters[i]);
        free(c.filters);
    }
    for (size_t i = 0; i < c.n_cols; i++)
        free(c.cols[i]);
    free(c.cols);
    free(c.feat_col);
    free(c.targ_col);
    for (size_t i = 0; i < c.label_str.len; i++)
        free(((char **)c.label_str.p)[i]);
    free(c.label_str.p);
    free(c.arena.p);
    free(c.off.p);
    free(c.x.p);
    free(c.y.p);
    free(c.label.p);
    free(c.is_test.p);
    if (rc) {
        moe_dataset_release(ret_train);
        moe_dataset_release(ret_test);
    }
    return one_line(rc, err);
}
