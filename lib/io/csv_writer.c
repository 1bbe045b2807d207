// csv_writer.c: CSV metric tables appended row by row (see csv_writer.h).
// reference: RFC 4180; libcsv's csv_write does the quoting.
#include "io/csv_writer.h"

#include <csv.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/atomic.h"

static int grow(struct moe_csv *c, size_t extra)
{
    if (c->failed)
        return -1;
    if (c->len + extra + 1 <= c->cap)
        return 0;
    size_t cap = c->cap ? c->cap : 512;
    while (cap < c->len + extra + 1)
        cap *= 2;
    char *nb = realloc(c->row, cap);
    if (!nb) {
        c->failed = 1;
        return -1;
    }
    c->row = nb;
    c->cap = cap;
    return 0;
}

static void put(struct moe_csv *c, const char *s, size_t n)
{
    if (grow(c, n))
        return;
    memcpy(c->row + c->len, s, n);
    c->len += n;
    c->row[c->len] = '\0';
}

static void sep(struct moe_csv *c)
{
    if (c->col++ > 0)
        put(c, ",", 1);
}

static int start(struct moe_csv *c, const char *path, size_t n_cols, struct moe_err *err)
{
    memset(c, 0, sizeof *c);
    c->fd = -1;
    if (strlen(path) >= sizeof c->path)
        return moe_error(err, MOE_EINVAL, "path too long: '%s'", path);
    snprintf(c->path, sizeof c->path, "%s", path);
    c->n_cols = n_cols;
    return 0;
}

// The header row in c->row (c->len bytes), as the first row of the table.
static int header_row(struct moe_csv *c, const char *const *header, struct moe_err *err)
{
    for (size_t i = 0; i < c->n_cols; i++)
        moe_csv_str(c, header[i]);
    c->col = 0;
    put(c, "\n", 1);
    if (c->failed)
        return moe_error(err, MOE_ENOMEM, "out of memory for '%s'", c->path);
    return 0;
}

static int open_append(struct moe_csv *c, struct moe_err *err)
{
    c->fd = open(c->path, O_WRONLY | O_APPEND | O_CLOEXEC);
    if (c->fd < 0)
        return moe_error(err, MOE_EIO, "cannot write '%s': %s", c->path, strerror(errno));
    c->open = 1;
    return 0;
}

int moe_csv_open(struct moe_csv *c, const char *path, const char *const *header, size_t n_cols,
                 struct moe_err *err)
{
    int rc = start(c, path, n_cols, err);
    if (!rc)
        rc = header_row(c, header, err);
    // the header under a temporary name, renamed onto the table's: whatever was
    // there (an old table, a link, a FIFO) is replaced, never opened or followed
    if (!rc)
        rc = moe_atomic_write(c->path, c->row, c->len, err);
    if (!rc)
        rc = open_append(c, err);
    if (!rc) {
        c->bytes = c->len;
        c->len = 0;
    }
    if (rc)
        moe_csv_abort(c);
    return rc;
}

int moe_csv_reopen(struct moe_csv *c, const char *path, const char *const *header, size_t n_cols, uint64_t keep,
                   struct moe_err *err)
{
    int rc = start(c, path, n_cols, err);
    if (!rc)
        rc = header_row(c, header, err);
    if (rc) {
        moe_csv_abort(c);
        return rc;
    }
    char why[256];
    uint64_t size = 0;
    int fd = moe_open_regular(path, &size, why, sizeof why);
    if (fd < 0) {
        moe_csv_abort(c);
        return moe_error(err, MOE_EIO, "cannot %s '%s': %s", fd == -2 ? "open" : "read", path, why);
    }
    // the header and the last byte to keep: nothing else is read
    size_t hlen = c->len;
    char *head = malloc(hlen + 1);
    char last = 0;
    if (!head) {
        close(fd);
        moe_csv_abort(c);
        return moe_error(err, MOE_ENOMEM, "out of memory for '%s'", path);
    }
    int head_ok = size >= hlen && pread(fd, head, hlen, 0) == (ssize_t)hlen && memcmp(head, c->row, hlen) == 0;
    int keep_ok = head_ok && keep >= hlen && keep <= size && pread(fd, &last, 1, (off_t)keep - 1) == 1 && last == '\n';
    free(head);
    close(fd);
    if (!head_ok)
        rc = moe_error(err, MOE_EFORMAT, "'%s' does not start with the expected header row", path);
    else if (!keep_ok)
        rc = moe_error(err, MOE_EFORMAT, "'%s' has %llu bytes, the checkpoint expects at least %llu ending a row",
                       path, (unsigned long long)size, (unsigned long long)keep);
    if (!rc)
        rc = open_append(c, err);
    if (!rc && ftruncate(c->fd, (off_t)keep) != 0)
        rc = moe_error(err, MOE_EIO, "cannot cut '%s' back to %llu bytes: %s", path, (unsigned long long)keep,
                       strerror(errno));
    if (rc) {
        moe_csv_abort(c);
        return rc;
    }
    c->bytes = keep;
    c->len = 0;
    return 0;
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
    c->len += csv_write(c->row + c->len, need, s, n);
    c->row[c->len] = '\0';
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
    size_t got = c->col;
    c->col = 0;
    if (got != c->n_cols) {
        c->len = 0; // drop the partial row
        c->failed = 0;
        return moe_error(err, MOE_EINVAL, "csv '%s': row has %zu cells, header has %zu", c->path, got, c->n_cols);
    }
    put(c, "\n", 1);
    size_t len = c->len;
    c->len = 0;
    if (c->failed) {
        c->failed = 0;
        return moe_error(err, MOE_ENOMEM, "out of memory for '%s'", c->path);
    }
    if (!c->open)
        return moe_error(err, MOE_EIO, "cannot write '%s': table not open", c->path);
    // One write of the whole row: a reader sees it whole or, if the process dies
    // inside this call, a last line without its newline.
    ssize_t w;
    do
        w = write(c->fd, c->row, len);
    while (w < 0 && errno == EINTR);
    if (w < 0)
        return moe_error(err, MOE_EIO, "cannot write '%s': %s", c->path, strerror(errno));
    if ((size_t)w != len)
        return moe_error(err, MOE_EIO, "cannot write '%s': short write (%zd of %zu bytes; disk full?)", c->path, w,
                         len);
    c->bytes += len;
    return 0;
}

uint64_t moe_csv_bytes(const struct moe_csv *c) { return c->bytes; }

int moe_csv_flush(struct moe_csv *c, struct moe_err *err)
{
    if (!c->open)
        return moe_error(err, MOE_EIO, "cannot write '%s': table not open", c->path);
    if (fsync(c->fd) != 0 && errno != EINVAL && errno != EROFS)
        return moe_error(err, MOE_EIO, "cannot write '%s': %s", c->path, strerror(errno));
    return 0;
}

int moe_csv_close(struct moe_csv *c, struct moe_err *err)
{
    int rc = moe_csv_flush(c, err);
    if (!rc && c->open && close(c->fd) != 0)
        rc = moe_error(err, MOE_EIO, "cannot write '%s': %s", c->path, strerror(errno));
    c->open = 0;
    c->fd = -1;
    moe_csv_abort(c);
    return rc;
}

void moe_csv_abort(struct moe_csv *c)
{
    if (c->open)
        close(c->fd);
    c->open = 0;
    c->fd = -1;
    free(c->row);
    c->row = NULL;
    c->len = c->cap = c->col = 0;
    c->failed = 0;
}
