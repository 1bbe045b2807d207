// csv_writer.c: CSV metric writer (see csv_writer.h).
// reference: RFC 4180; libcsv's csv_fwrite does the quoting.
#include "io/csv_writer.h"

#include <csv.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

int moe_csv_open(struct moe_csv *c, const char *path, const char *const *header, size_t n_cols,
                 struct moe_err *err)
{
    memset(c, 0, sizeof *c);
    int rc = moe_atomic_open(&c->file, path, err);
    if (rc)
        return rc;
    c->n_cols = n_cols;
    for (size_t i = 0; i < n_cols; i++)
        moe_csv_str(c, header[i]);
    return moe_csv_end_row(c, err);
}

static void sep(struct moe_csv *c)
{
    if (c->col++ > 0 && fputc(',', c->file.f) == EOF)
        c->failed = 1;
}

void moe_csv_str(struct moe_csv *c, const char *s)
{
    sep(c);
    if (!s)
        return;
    // Plain cells stay bare; only cells that need it are quoted (libcsv always quotes).
    int r = strpbrk(s, ",\"\r\n") ? csv_fwrite(c->file.f, s, strlen(s)) : (fputs(s, c->file.f) == EOF);
    if (r != 0)
        c->failed = 1;
}

void moe_csv_num(struct moe_csv *c, double v)
{
    sep(c);
    if (!isnan(v) && fprintf(c->file.f, "%.9g", v) < 0)
        c->failed = 1;
}

void moe_csv_int(struct moe_csv *c, long long v)
{
    sep(c);
    if (fprintf(c->file.f, "%lld", v) < 0)
        c->failed = 1;
}

int moe_csv_end_row(struct moe_csv *c, struct moe_err *err)
{
    if (c->col != c->n_cols)
        return moe_error(err, MOE_EINVAL, "csv '%s': row has %zu cells, header has %zu", c->file.path, c->col,
                         c->n_cols);
    c->col = 0;
    if (fputc('\n', c->file.f) == EOF || c->failed)
        return moe_error(err, MOE_EIO, "cannot write '%s'", c->file.tmp);
    return 0;
}

int moe_csv_close(struct moe_csv *c, struct moe_err *err) { return moe_atomic_commit(&c->file, err); }

void moe_csv_abort(struct moe_csv *c) { moe_atomic_abort(&c->file); }
