// csv_writer.h: metric tables as CSV (RFC 4180 quoting via libcsv, '.' decimal
// point, header row), appended to as rows are produced so that `tail -f`
// follows a run.
//
// The header row is written whole under a temporary name and renamed onto the
// table's name when the table is opened (io/atomic.h), so the file is never
// seen without it. After that each row is built in a small buffer (one row:
// memory stays bounded by the longest row, never the table) and, once
// moe_csv_end_row has checked it, sent with a single write(2) of the whole row
// and its '\n' to a descriptor opened with O_APPEND. No stdio buffering: a row
// is visible to readers as soon as moe_csv_end_row returns. A short write or an
// error is a runtime error naming the file.
//
// What a reader may see: whole rows, each ending in '\n', and at most one torn
// last row if the process was killed inside that one write (or the disk
// filled). A reader must ignore a last line without a trailing newline.
// moe_csv_flush fsyncs (a checkpoint records moe_csv_bytes after it, so the
// rows it counts are on disk first); moe_csv_reopen cuts a table back to such a
// length, dropping rows written after that checkpoint and any torn row.
//
// Numbers are printed with %.9g (byte-stable for equal values); NaN is an
// empty cell.
#ifndef MOE_CSV_WRITER_H
#define MOE_CSV_WRITER_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"

struct moe_csv {
    char path[4096];
    int fd;         // O_APPEND descriptor, -1 when closed (a zeroed struct counts as closed: open sets it)
    int open;       // fd is ours to close
    char *row;      // the current row's bytes
    size_t len, cap;
    size_t n_cols;
    size_t col;     // cells written in the current row
    uint64_t bytes; // bytes of complete rows in the file, header included
    int failed;     // out of memory while building the current row
};

// Start the table at path: any file there is replaced by one holding just the
// header row (so a new run starts its tables empty).
int moe_csv_open(struct moe_csv *c, const char *path, const char *const *header, size_t n_cols,
                 struct moe_err *err);
// Continue a table written earlier: path must be a regular file that starts with
// the same header row and has at least `keep` bytes, byte keep-1 ending a row;
// it is truncated to `keep` bytes (rows after them, a torn last row, are dropped)
// and rows are appended from there. Reads only the header and one byte.
int moe_csv_reopen(struct moe_csv *c, const char *path, const char *const *header, size_t n_cols, uint64_t keep,
                   struct moe_err *err);
void moe_csv_str(struct moe_csv *c, const char *s);
void moe_csv_num(struct moe_csv *c, double v);
void moe_csv_int(struct moe_csv *c, long long v);
// End the row and append it to the file with one write(2); fails if the row has
// the wrong number of cells, memory ran out, or the write fails or is short.
int moe_csv_end_row(struct moe_csv *c, struct moe_err *err);
// Bytes of complete rows in the file (header included).
uint64_t moe_csv_bytes(const struct moe_csv *c);
// fsync the file: the rows written so far are on disk. The table stays open.
int moe_csv_flush(struct moe_csv *c, struct moe_err *err);
// Flush and close.
int moe_csv_close(struct moe_csv *c, struct moe_err *err);
// Close without flushing (accepts a zeroed or closed struct). Rows already
// written stay in the file.
void moe_csv_abort(struct moe_csv *c);

#endif
