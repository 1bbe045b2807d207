// atomic.h: write-to-temporary-then-rename output files.
// Every file the toolkit writes goes through this, so a run killed at any
// moment leaves either the previous file or the complete new one, never a torn one.
#ifndef MOE_ATOMIC_H
#define MOE_ATOMIC_H

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
// Read a whole file into a malloc'd buffer (NUL-terminated for convenience).
int moe_read_file(const char *path, char **ret_buf, size_t *ret_len, struct moe_err *err);

#endif
