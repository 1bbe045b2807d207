// csv_writer.c: CSV metric tables built in memory, written atomically (see csv_writer.h).
// reference: RFC 4180; libcsv's csv_write does the quoting.
#include "io/csv_writer.h"

#include <csv.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/atomic.h"

static int grow(struct moe_csv *c, size_t extra)
{
    if (c->failed)
        return -1;
    if (c->len + extra + 1 <= c->cap)
        return 0;
    size_t cap = c->cap ? c->cap : 4096;
    while (cap < c->len + extra + 1)
        cap *= 2;
    char *nb = realloc(c->buf, cap);
    if (!nb) {
        c->failed = 1;
        return -1;
    }
    c->buf = nb;
    c->cap = cap;
    return 0;
}

static void put(struct moe_csv *c, const char *s, size_t n)
{
    if (grow(c, n))
        return;
    memcpy(c->buf + c->len, s, n);
    c->len += n;
    c->buf[c->len] = '\0';
}

static void sep(struct moe_csv *c)
{
    if (c->col++ > 0)
        put(c, ",", 1);
}

static int start(struct moe_csv *c, const char *path, size_t n_cols, struct moe_err *err)
{
    memset(c, 0, sizeof *c);
    if (strlen(path) >= sizeof c->path)
        return moe_error(err, MOE_EINVAL, "path too long: '%s'", path);
    snprintf(c->path, sizeof c->path, "%s", path);
    c->n_cols = n_cols;
    return 0;
}

int moe_csv_open(struct moe_csv *c, const char *path, const char *const *header, size_t n_cols,
                 struct moe_err *err)
{
    int rc = start(c, path, n_cols, err);
    if (rc)
        return rc;
    for (size_t i = 0; i < n_cols; i++)
        moe_csv_str(c, header[i]);
    rc = moe_csv_end_row(c, err);
    if (rc)
        moe_csv_abort(c);
    return rc;
}

int moe_csv_reopen(struct moe_csv *c, const char *path, const char *const *header, size_t n_cols, size_t keep,
                   struct moe_err *err)
{
    struct moe_csv want;
    int rc = moe_csv_open(&want, path, header, n_cols, err);
    if (rc)
        return rc;
    char *text = NULL;
    size_t len = 0;
    rc = moe_read_file(path, &text, &len, err);
    if (rc) {
        moe_csv_abort(&want);
        return rc;
    }
    if (len < want.len || memcmp(text, want.buf, want.len) != 0)
        rc = moe_error(err, MOE_EFORMAT, "'%s' does not start with the expected header row", path);
    else if (keep < want.len || keep > len || text[keep - 1] != '\n')
        rc = moe_error(err, MOE_EFORMAT, "'%s' has %zu bytes, the checkpoint expects at least %zu ending a row",
                       path, len, keep);
    moe_csv_abort(&want);
    if (rc) {
        free(text);
        return rc;
    }
    rc = start(c, path, n_cols, err);
    if (!rc) {
        c->buf = text;
        c->len = c->row_start = keep;
        c->cap = len + 1;
        text[keep] = '\0';
    } else {
        free(text);
    }
    return rc;
}

void moe_csv_str(struct moe_csv *c, const char *s)
{
    sep(c);
    if (!s)
        return;
    size_t n = strlen(s);
    // Plain cells stay bare; only cells that need it are quoted (libcsv always quotes).
    if (!strpbrk(s, ",\"\r\n")) {
        put(c, s, n);
        return;
    }
    size_t need = csv_write(NULL, 0, s, n);
    if (grow(c, need))
        return;
    c->len += csv_write(c->buf + c->len, need, s, n);
    c->buf[c->len] = '\0';
}

void moe_csv_num(struct moe_csv *c, double v)
{
    sep(c);
    if (isnan(v))
        return;
    char cell[40];
    int n = snprintf(cell, sizeof cell, "%.9g", v);
    put(c, cell, (size_t)n);
}

void moe_csv_int(struct moe_csv *c, long long v)
{
    sep(c);
    char cell[32];
    int n = snprintf(cell, sizeof cell, "%lld", v);
    put(c, cell, (size_t)n);
}

int moe_csv_end_row(struct moe_csv *c, struct moe_err *err)
{
    if (c->col != c->n_cols) {
        size_t got = c->col;
        c->col = 0;
        c->len = c->row_start; // drop the partial row
        if (c->buf)
            c->buf[c->len] = '\0';
        return moe_error(err, MOE_EINVAL, "csv '%s': row has %zu cells, header has %zu", c->path, got, c->n_cols);
    }
    c->col = 0;
    put(c, "\n", 1);
    if (c->failed)
        return moe_error(err, MOE_ENOMEM, "out of memory for '%s'", c->path);
    c->row_start = c->len;
    return 0;
}

size_t moe_csv_bytes(const struct moe_csv *c) { return c->row_start; }

int moe_csv_flush(struct moe_csv *c, struct moe_err *err)
{
    if (c->failed)
        return moe_error(err, MOE_ENOMEM, "out of memory for '%s'", c->path);
    return moe_atomic_write(c->path, c->buf, c->row_start, err);
}

int moe_csv_close(struct moe_csv *c, struct moe_err *err)
{
    int rc = moe_csv_flush(c, err);
    moe_csv_abort(c);
    return rc;
}

void moe_csv_abort(struct moe_csv *c)
{
    free(c->buf);
    c->buf = NULL;
    c->len = c->cap = c->row_start = c->col = 0;
}
