// csv_writer.h: metric tables as CSV (RFC 4180 quoting via libcsv, '.' decimal
// point, header row), written under a temporary name and renamed on close.
// Numbers are printed with %.9g (byte-stable for equal values); NaN is an empty cell.
#ifndef MOE_CSV_WRITER_H
#define MOE_CSV_WRITER_H

#include <stddef.h>

#include "core/status.h"
#include "io/atomic.h"

struct moe_csv {
    struct moe_atomic_file file;
    size_t n_cols;
    size_t col;  // cells written in the current row
    int failed;
};

int moe_csv_open(struct moe_csv *c, const char *path, const char *const *header, size_t n_cols,
                 struct moe_err *err);
void moe_csv_str(struct moe_csv *c, const char *s);
void moe_csv_num(struct moe_csv *c, double v);
void moe_csv_int(struct moe_csv *c, long long v);
// End the row; fails if the row has the wrong number of cells or a write failed.
int moe_csv_end_row(struct moe_csv *c, struct moe_err *err);
int moe_csv_close(struct moe_csv *c, struct moe_err *err); // commit (rename into place)
void moe_csv_abort(struct moe_csv *c);

#endif
