// idx.c: reader for IDX files (the MNIST / Fashion-MNIST container), raw or
// gzip-compressed, and the image+label pair -> classification data set
// (optionally only the rows of some classes).
// Not a general IDX reader: only unsigned-byte data (type 0x08) and at most
// 4 dimensions; no writer.
// reference: Y. LeCun, C. Cortes, C. Burges, "The MNIST database of handwritten
// digits", http://yann.lecun.com/exdb/mnist/ ("FILE FORMATS FOR THE MNIST
// DATABASE"): magic = 0x00 0x00 type ndim, then ndim big-endian uint32 sizes,
// then the data in C (row-major) order.
#include "io/dataset.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "core/params.h"
#include "io/atomic.h"

#define IDX_TYPE_UBYTE 0x08
#define IDX_MAX_BYTES ((uint64_t)1 << 34) // 16 GiB: anything larger is a corrupt header
#define IDX_CHUNK ((size_t)1 << 30)       // gzread takes an unsigned length
#define IDX_FIRST_ALLOC ((size_t)1 << 20) // data buffer to start with; doubled as data arrives

// Read up to len bytes; returns bytes read, or -1 on a zlib error (message in
// *zmsg, zlib code in *zcode: Z_ERRNO for a system read error).
static long long read_full(gzFile f, void *buf, size_t len, const char **zmsg, int *zcode)
{
    size_t got = 0;
    while (got < len) {
        size_t want = len - got < IDX_CHUNK ? len - got : IDX_CHUNK;
        int r = gzread(f, (unsigned char *)buf + got, (unsigned)want);
        if (r < 0) {
            *zmsg = gzerror(f, zcode);
            return -1;
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    // A short read may be a clean EOF or a damaged/truncated gzip stream. zlib
    // says "unexpected end of file" with Z_BUF_ERROR when a gzip stream stops
    // before its end, its 8-byte trailer (CRC-32 and length) included: without
    // the trailer the data were never checked, so that is an error too.
    if (got < len) {
        int errnum = 0;
        const char *m = gzerror(f, &errnum);
        if (errnum != Z_OK) {
            *zmsg = errnum == Z_BUF_ERROR ? "truncated gzip stream (it ends before its CRC-32 trailer)" : m;
            *zcode = errnum;
            return -1;
        }
    }
    return (long long)got;
}

static int zfail(struct moe_err *err, const char *path, const char *zmsg, int zcode)
{
    if (zcode == Z_ERRNO)
        return moe_error(err, MOE_EIO, "cannot read '%s': %s", path, strerror(errno));
    return moe_error(err, MOE_EFORMAT, "idx '%s': %s", path, zmsg ? zmsg : "read error");
}

void moe_idx_release(struct moe_idx *m)
{
    if (!m)
        return;
    free(m->data); // malloc'd and grown with realloc while reading
    memset(m, 0, sizeof *m);
}

int moe_idx_read(const char *path, struct moe_idx *ret, struct moe_err *err)
{
    memset(ret, 0, sizeof *ret);
    char why[256];
    uint64_t file_size;
    int fd = moe_open_regular(path, &file_size, why, sizeof why); // no FIFO, device or directory
    if (fd < 0)
        return moe_error(err, MOE_EIO, "cannot open '%s': %s", path, why);
    gzFile f = gzdopen(fd, "rb");
    if (!f) {
        close(fd);
        return moe_error(err, MOE_ENOMEM, "cannot open '%s': out of memory", path);
    }
    gzbuffer(f, 1u << 17);
    const char *zmsg = NULL;
    int rc = 0, zcode = Z_OK;
    unsigned char head[4 + 4 * 4];
    long long got = read_full(f, head, 4, &zmsg, &zcode);
    if (got < 0) {
        rc = zfail(err, path, zmsg, zcode);
        goto out;
    }
    if (got < 4) {
        rc = moe_error(err, MOE_EFORMAT, "idx '%s': truncated: %lld bytes, too short for the magic number",
                       path, got);
        goto out;
    }
    if (head[0] != 0 || head[1] != 0) {
        rc = moe_error(err, MOE_EFORMAT, "idx '%s': bad magic 0x%02x%02x%02x%02x (not an IDX file)", path,
                       head[0], head[1], head[2], head[3]);
        goto out;
    }
    if (head[2] != IDX_TYPE_UBYTE) {
        rc = moe_error(err, MOE_EFORMAT, "idx '%s': unsupported data type 0x%02x (only unsigned byte 0x08)",
                       path, head[2]);
        goto out;
    }
    int ndim = head[3];
    if (ndim < 1 || ndim > 4) {
        rc = moe_error(err, MOE_EFORMAT, "idx '%s': %d dimensions, expected 1 to 4", path, ndim);
        goto out;
    }
    got = read_full(f, head + 4, 4 * (size_t)ndim, &zmsg, &zcode);
    if (got < 0) {
        rc = zfail(err, path, zmsg, zcode);
        goto out;
    }
    if (got < 4 * ndim) {
        rc = moe_error(err, MOE_EFORMAT, "idx '%s': truncated: header of %d dimensions cut short", path, ndim);
        goto out;
    }
    uint64_t count = 1;
    for (int k = 0; k < ndim; k++) {
        const unsigned char *b = head + 4 + 4 * k;
        uint64_t dim = (uint64_t)b[0] << 24 | (uint64_t)b[1] << 16 | (uint64_t)b[2] << 8 | b[3];
        if (dim == 0) {
            rc = moe_error(err, MOE_EFORMAT, "idx '%s': dimension %d is 0", path, k);
            goto out;
        }
        // count < 2^34 and dim < 2^32, so the product cannot overflow 64 bits.
        count *= dim;
        if (count >= IDX_MAX_BYTES) {
            rc = moe_error(err, MOE_EFORMAT, "idx '%s': implausible size (%d dimensions, >= 2^34 bytes)", path,
                           ndim);
            goto out;
        }
        ret->dims[k] = (size_t)dim;
    }
    if (count > SIZE_MAX) {
        rc = moe_error(err, MOE_ENOMEM, "idx '%s': %llu bytes do not fit in memory", path,
                       (unsigned long long)count);
        goto out;
    }
    ret->ndim = ndim;
    ret->count = (size_t)count;
    // Fuzzing fix: the buffer grows as data arrives instead of being sized from
    // the header up front. An 18-byte file whose dims claim 4 GiB (or anything
    // up to the 16 GiB cap) made us allocate and zero that much before reading
    // a byte of it; now memory stays within twice the data really present.
    size_t cap = ret->count < IDX_FIRST_ALLOC ? ret->count : IDX_FIRST_ALLOC, have = 0;
    ret->data = malloc(cap);
    for (;;) {
        if (!ret->data) {
            rc = moe_error(err, MOE_ENOMEM, "idx '%s': out of memory for %zu bytes", path, ret->count);
            goto out;
        }
        got = read_full(f, ret->data + have, cap - have, &zmsg, &zcode);
        if (got < 0) {
            rc = zfail(err, path, zmsg, zcode);
            goto out;
        }
        have += (size_t)got;
        if (have < cap || have == ret->count)
            break;
        cap = cap > ret->count / 2 ? ret->count : 2 * cap;
        uint8_t *grown = realloc(ret->data, cap);
        if (!grown) // keep the old block in ret->data so moe_idx_release frees it
            rc = moe_error(err, MOE_ENOMEM, "idx '%s': out of memory for %zu bytes", path, ret->count);
        else
            ret->data = grown;
        if (rc)
            goto out;
    }
    if (have < ret->count) {
        rc = moe_error(err, MOE_EFORMAT, "idx '%s': truncated: expected %zu bytes of data, got %zu", path,
                       ret->count, have);
        goto out;
    }
    // Nothing may follow the data.
    unsigned char extra[4096];
    unsigned long long n_extra = 0;
    for (;;) {
        long long e = read_full(f, extra, sizeof extra, &zmsg, &zcode);
        if (e < 0) {
            rc = zfail(err, path, zmsg, zcode);
            goto out;
        }
        n_extra += (unsigned long long)e;
        if ((size_t)e < sizeof extra)
            break;
    }
    if (n_extra) {
        rc = moe_error(err, MOE_EFORMAT, "idx '%s': %llu unexpected bytes after the %zu bytes of data", path,
                       n_extra, ret->count);
        goto out;
    }
out:
    gzclose(f);
    if (rc)
        moe_idx_release(ret);
    return rc;
}

int moe_dataset_from_idx(const char *images, const char *labels, size_t limit, struct moe_dataset *ret,
                         struct moe_err *err)
{
    return moe_dataset_from_idx_ex(images, labels, limit, NULL, 0, ret, err);
}

int moe_dataset_from_idx_ex(const char *images,
                            const char *labels,
                            size_t limit,
                            const int32_t *classes,
                            size_t n_classes,
                            struct moe_dataset *ret,
                            struct moe_err *err)
{
    memset(ret, 0, sizeof *ret);
    struct moe_idx im = { 0 }, lb = { 0 };
    unsigned char keep[256]; // by label value (IDX labels are bytes)
    int rc = moe_idx_read(images, &im, err);
    if (rc)
        return rc;
    rc = moe_idx_read(labels, &lb, err);
    if (rc)
        goto out;
    if (im.ndim != 3) {
        rc = moe_error(err, MOE_EFORMAT, "idx '%s': %d dimensions, expected 3 (images, rows, cols)", images,
                       im.ndim);
        goto out;
    }
    if (lb.ndim != 1) {
        rc = moe_error(err, MOE_EFORMAT, "idx '%s': %d dimensions, expected 1 (labels)", labels, lb.ndim);
        goto out;
    }
    if (im.dims[0] != lb.dims[0]) {
        rc = moe_error(err, MOE_EFORMAT, "idx: '%s' holds %zu images but '%s' holds %zu labels", images,
                       im.dims[0], labels, lb.dims[0]);
        goto out;
    }
    // n_out from every label in the file, so a limit does not change it.
    size_t n_out = 10;
    for (size_t i = 0; i < lb.count; i++)
        if ((size_t)lb.data[i] + 1 > n_out)
            n_out = (size_t)lb.data[i] + 1;
    memset(keep, n_classes == 0, sizeof keep);
    for (size_t c = 0; c < n_classes; c++) {
        if (classes[c] < 0 || (size_t)classes[c] >= n_out) {
            rc = moe_error(err, MOE_EINVAL, "class %d is outside [0, %zu), the classes of idx '%s'",
                           (int)classes[c], n_out, labels);
            goto out;
        }
        keep[classes[c]] = 1;
    }
    // Kept rows, in file order, up to the limit.
    size_t n = 0;
    for (size_t i = 0; i < lb.count && (limit == 0 || n < limit); i++)
        n += keep[lb.data[i]];
    size_t d = im.dims[1] * im.dims[2]; // < 2^34, checked by the reader
    rc = moe_dataset_alloc(ret, MOE_TASK_CLASSIFICATION, n, d, n_out, 0, err);
    if (rc)
        goto out;
    for (size_t i = 0, k = 0; k < n; i++) {
        if (!keep[lb.data[i]])
            continue;
        for (size_t j = 0; j < d; j++)
            ret->x[k * d + j] = (float)im.data[i * d + j] / 255.0f;
        ret->label[k++] = lb.data[i];
    }
    ret->class_names = calloc(n_out, sizeof *ret->class_names);
    if (!ret->class_names) {
        rc = moe_error(err, MOE_ENOMEM, "out of memory for class names");
        goto out;
    }
    for (size_t c = 0; c < n_out; c++) {
        char buf[24];
        snprintf(buf, sizeof buf, "%zu", c);
        ret->class_names[c] = strdup(buf);
        if (!ret->class_names[c]) {
            rc = moe_error(err, MOE_ENOMEM, "out of memory for class names");
            goto out;
        }
    }
out:
    moe_idx_release(&im);
    moe_idx_release(&lb);
    if (rc)
        moe_dataset_release(ret);
    return rc;
}
