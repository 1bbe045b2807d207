// fuzz_idx.c: libFuzzer harness for the IDX reader (lib/io/idx.c), raw and
// gzip-compressed: moe_idx_read on arbitrary bytes, then, when the file is
// accepted, moe_dataset_from_idx with it in the role its shape fits (3-d:
// images, 1-d: labels) against a matching partner file the harness writes
// (labels taken from the image bytes, or n 1x1 images), with a row limit
// taken from the input, and standardisation of the result.
// Input: the file bytes. Corpus: tests/fuzz/corpus/idx/ (raw and .gz files
// from gen_corpus.c).
// Checks beyond the sanitizers: failures carry a one-line message and a
// matching code; an accepted file has 1..4 non-zero dims whose product is the
// byte count; the data set has the rows, width, labels and pixel range the
// files imply.
// fuzz-max-len: 2048
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "io/dataset.h"

// An IDX header (ubyte data) for ndim dims, written into h; returns its length.
static size_t idx_header(unsigned char *h, int ndim, const size_t *dims)
{
    h[0] = h[1] = 0;
    h[2] = 0x08;
    h[3] = (unsigned char)ndim;
    for (int k = 0; k < ndim; k++)
        for (int b = 0; b < 4; b++)
            h[4 + 4 * k + b] = (unsigned char)(dims[k] >> (24 - 8 * b));
    return 4 + 4 * (size_t)ndim;
}

static void check_dataset(const struct moe_dataset *d, size_t n, size_t width, const uint8_t *labels,
                          size_t n_labels_all)
{
    size_t n_out = 10;
    for (size_t i = 0; i < n_labels_all; i++)
        if ((size_t)labels[i] + 1 > n_out)
            n_out = (size_t)labels[i] + 1;
    FUZZ_CHECK(d->task == MOE_TASK_CLASSIFICATION && d->n == n && d->n_in == width && d->n_out == n_out,
               "data set is %zu x %zu with %zu classes, expected %zu x %zu with %zu", d->n, d->n_in, d->n_out, n,
               width, n_out);
    for (size_t i = 0; i < n; i++)
        FUZZ_CHECK(d->label[i] == labels[i], "label %zu", i);
    for (size_t i = 0; i < n * width; i++)
        FUZZ_CHECK(d->x[i] >= 0.0f && d->x[i] <= 1.0f, "pixel %zu = %g", i, d->x[i]);
    for (size_t c = 0; c < n_out; c++)
        FUZZ_CHECK(d->class_names && d->class_names[c], "class name %zu missing", c);
}

static void from_idx(const struct moe_idx *m, const uint8_t *data, size_t size, size_t limit)
{
    unsigned char head[4 + 4 * 4];
    struct moe_err err = {0};
    struct moe_dataset d;
    const char *mine = fuzz_file(0, data, size);
    size_t n = m->dims[0];
    if (m->ndim == 3) {
        // Partner: n labels, the first image byte of each row.
        size_t hl = idx_header(head, 1, &n);
        size_t width = m->dims[1] * m->dims[2];
        unsigned char *lab = malloc(hl + n);
        FUZZ_CHECK(lab, "out of memory");
        memcpy(lab, head, hl);
        for (size_t i = 0; i < n; i++)
            lab[hl + i] = m->data[i * width];
        const char *other = fuzz_file(1, lab, hl + n);
        int rc = moe_dataset_from_idx(mine, other, limit, &d, &err);
        FUZZ_CHECK(rc == 0, "images accepted alone but not as a data set: %s", err.msg);
        size_t rows = limit && limit < n ? limit : n;
        check_dataset(&d, rows, width, lab + hl, n);
        struct moe_standardize st;
        if (rows && moe_standardize_fit(&st, &d, &err) == 0) {
            moe_standardize_apply(&st, &d);
            moe_standardize_release(&st);
        }
        moe_dataset_release(&d);
        // Swapped roles must fail cleanly.
        rc = moe_dataset_from_idx(other, mine, limit, &d, &err);
        FUZZ_CHECK(rc == MOE_EFORMAT, "labels as images gave %d", rc);
        fuzz_check_err(rc, &err);
        free(lab);
    } else if (m->ndim == 1) {
        // Partner: n images of 1x1 pixel, all 255.
        size_t dims[3] = {n, 1, 1};
        size_t hl = idx_header(head, 3, dims);
        unsigned char *img = malloc(hl + n);
        FUZZ_CHECK(img, "out of memory");
        memcpy(img, head, hl);
        memset(img + hl, 255, n);
        const char *other = fuzz_file(1, img, hl + n);
        int rc = moe_dataset_from_idx(other, mine, limit, &d, &err);
        FUZZ_CHECK(rc == 0, "labels accepted alone but not as a data set: %s", err.msg);
        check_dataset(&d, limit && limit < n ? limit : n, 1, m->data, n);
        moe_dataset_release(&d);
        free(img);
    } else {
        int rc = moe_dataset_from_idx(mine, mine, limit, &d, &err);
        FUZZ_CHECK(rc == MOE_EFORMAT, "a %d-d file as images and labels gave %d", m->ndim, rc);
        fuzz_check_err(rc, &err);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct moe_err err = {0};
    struct moe_idx m;
    int rc = moe_idx_read(fuzz_file(0, data, size), &m, &err);
    if (rc) {
        fuzz_check_err(rc, &err);
        FUZZ_CHECK(m.data == NULL && m.count == 0, "failed read returned data");
        return 0;
    }
    FUZZ_CHECK(m.ndim >= 1 && m.ndim <= 4 && m.data, "ndim %d", m.ndim);
    size_t count = 1;
    for (int k = 0; k < m.ndim; k++) {
        FUZZ_CHECK(m.dims[k] > 0, "dimension %d is 0", k);
        count *= m.dims[k];
    }
    FUZZ_CHECK(count == m.count, "count %zu, dims say %zu", m.count, count);
    // Touch every byte (ASan: the buffer really holds count bytes).
    unsigned sum = 0;
    for (size_t i = 0; i < m.count; i++)
        sum += m.data[i];
    (void)sum;
    // Row limit from the last input byte: 0 (all rows) or 1..6.
    size_t limit = size ? data[size - 1] % 4 == 0 ? 0 : data[size - 1] % 7 : 0;
    from_idx(&m, data, size, limit);
    moe_idx_release(&m);
    return 0;
}
