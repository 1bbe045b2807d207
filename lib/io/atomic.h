// atomic.h: write-to-temporary-then-rename output files.
// Every file the toolkit writes goes through this, so a run killed at any
// moment leaves either the previous file or the complete new one, never a torn one.
#ifndef MOE_ATOMIC_H
#define MOE_ATOMIC_H

#include <stdint.h>
#include <stdio.h>

#include "core/status.h"

struct moe_atomic_file {
    FILE *f;         // write here
    char path[4096]; // final name
    char tmp[4112];  // "<path>.tmp.<pid>"
};

// Open "<path>.tmp.<pid>" for writing.
int moe_atomic_open(struct moe_atomic_file *a, const char *path, struct moe_err *err);
// Flush, fsync, close and rename onto the final name.
int moe_atomic_commit(struct moe_atomic_file *a, struct moe_err *err);
// Close and remove the temporary file (accepts an unopened or committed struct).
void moe_atomic_abort(struct moe_atomic_file *a);
// Write a whole buffer to path atomically.
int moe_atomic_write(const char *path, const void *buf, size_t len, struct moe_err *err);
// Read a whole file into a malloc'd buffer (NUL-terminated for convenience). Only
// a regular file: a FIFO, device, socket or directory is refused without blocking
// ("cannot read 'p': it is a FIFO, not a regular file"), and no more than the
// size fstat reports is read (/dev/zero cannot grow memory without end).
int moe_read_file(const char *path, char **ret_buf, size_t *ret_len, struct moe_err *err);
// The same with the reason for a failure in why (e.g. "it is a FIFO, not a regular
// file", or strerror's text), for callers that word their own message; *ret_at_open
// (may be NULL) says whether opening the file failed (missing, no permission).
int moe_read_file_why(const char *path, char **ret_buf, size_t *ret_len, char *why, size_t why_len, int *ret_at_open);
// Open path for reading if it is a regular file: a descriptor (blocking) and its
// size in *ret_size; or -2 when it cannot be opened, -1 when it is not a regular
// file or fstat fails, with the reason in why. Opening never blocks on a FIFO.
int moe_open_regular(const char *path, uint64_t *ret_size, char *why, size_t why_len);

#endif
