// csv_writer.h: metric tables as CSV (RFC 4180 quoting via libcsv, '.' decimal
// point, header row). A table is built in memory and written whole, under a
// temporary name that is then renamed (io/atomic.h), each time it is flushed:
// a run killed at any moment leaves the last flushed table or none, never a
// torn row. Numbers are printed with %.9g (byte-stable for equal values); NaN
// is an empty cell. Not for tables too large for memory (metrics are small).
#ifndef MOE_CSV_WRITER_H
#define MOE_CSV_WRITER_H

#include <stddef.h>

#include "core/status.h"

struct moe_csv {
    char path[4096];
    char *buf;      // the whole table so far
    size_t len, cap;
    size_t n_cols;
    size_t col;     // cells written in the current row
    size_t row_start; // length of buf before the current row
    int failed;     // out of memory while appending
};

// Start a table for path with the header row (nothing is written until a flush).
int moe_csv_open(struct moe_csv *c, const char *path, const char *const *header, size_t n_cols,
                 struct moe_err *err);
// Continue a table written earlier: read path, check that it starts with the same
// header, and keep its first `keep` bytes (a whole number of rows).
int moe_csv_reopen(struct moe_csv *c, const char *path, const char *const *header, size_t n_cols, size_t keep,
                   struct moe_err *err);
void moe_csv_str(struct moe_csv *c, const char *s);
void moe_csv_num(struct moe_csv *c, double v);
void moe_csv_int(struct moe_csv *c, long long v);
// End the row; fails if the row has the wrong number of cells or memory ran out.
int moe_csv_end_row(struct moe_csv *c, struct moe_err *err);
// Bytes of complete rows (header included): what a flush writes.
size_t moe_csv_bytes(const struct moe_csv *c);
// Write the complete rows to path atomically; the table stays open.
int moe_csv_flush(struct moe_csv *c, struct moe_err *err);
// Flush and release.
int moe_csv_close(struct moe_csv *c, struct moe_err *err);
// Release without writing (accepts a zeroed or closed struct).
void moe_csv_abort(struct moe_csv *c);

#endif
