// gen_corpus.c: writes the binary seed files of tests/fuzz/corpus/ (the
// safetensors checkpoints through the library's own writer, the IDX files raw
// and gzip-compressed), so the committed seeds can be remade and reviewed.
// Not run by scripts/fuzz.sh (the committed corpus never changes during a
// run); build and run it by hand after changing a format:
//   bash scripts/fuzz.sh --gen-corpus
// Text seeds (config JSON, CSV/TSV) are plain files in the corpus folders.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "core/params.h"
#include "io/safetensors.h"

static const char *root;

static void die(const char *what, const struct moe_err *err)
{
    fprintf(stderr, "gen_corpus: %s: %s\n", what, err ? err->msg : "failed");
    exit(1);
}

static void put_file(const char *dir, const char *name, const void *buf, size_t n)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s/%s", root, dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(buf, 1, n, f) != n || fclose(f) != 0)
        die(path, NULL);
}

static void put_gz(const char *dir, const char *name, const void *buf, size_t n)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s/%s", root, dir, name);
    gzFile f = gzopen(path, "wb9");
    if (!f || gzwrite(f, buf, (unsigned)n) != (int)n || gzclose(f) != Z_OK)
        die(path, NULL);
}

// ---- safetensors ----

static void st_path(char *path, size_t len, const char *name)
{
    snprintf(path, len, "%s/safetensors/%s", root, name);
}

// A hand-made file: 8-byte length, the header as given, then n_data bytes 0..
static void st_raw(const char *name, const char *header, size_t n_data)
{
    size_t hl = strlen(header);
    unsigned char *b = calloc(8 + hl + n_data + 1, 1);
    if (!b)
        die("out of memory", NULL);
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(b + 8, header, hl);
    for (size_t i = 0; i < n_data; i++)
        b[8 + hl + i] = (unsigned char)i;
    put_file("safetensors", name, b, 8 + hl + n_data);
    free(b);
}

static void gen_safetensors(void)
{
    struct moe_err err = {0};
    struct moe_params p;
    moe_params_init(&p);
    if (moe_params_add(&p, "w", MOE_SHAPE(2, 3), &err) < 0 || moe_params_add(&p, "b", MOE_SHAPE(3), &err) < 0 ||
        moe_params_alloc(&p, &err))
        die("registry", &err);
    for (size_t i = 0; i < p.numel; i++)
        p.data[i] = 0.25f * (float)i - 1.0f;
    int32_t table[4] = {0, 1, 1, 0};
    int64_t step = 42;
    double stats[2] = {0.5, 2.0};
    struct moe_st_ref extra[] = {
        {"hash.table", MOE_I32, 1, {4}, table},
        {"step", MOE_I64, 0, {0}, &step},
        {"data.mean", MOE_F64, 2, {1, 2}, stats},
        {"empty", MOE_F32, 2, {0, 3}, NULL},
    };
    struct moe_st_meta meta[] = {
        {"format_version", "1"},
        {"config", "{\"model\":{\"n_expert\":4}}"},
        {"note", "unicode \xc3\xa9\xe2\x82\xac"},
    };
    char path[4096];
    st_path(path, sizeof path, "params.safetensors");
    if (moe_safetensors_write_params(path, &p, NULL, 0, NULL, 0, &err))
        die(path, &err);
    st_path(path, sizeof path, "params_meta_extra.safetensors");
    if (moe_safetensors_write_params(path, &p, extra, 4, meta, 3, &err))
        die(path, &err);
    st_path(path, sizeof path, "meta_only.safetensors");
    if (moe_safetensors_write(path, NULL, 0, meta, 1, &err))
        die(path, &err);
    st_path(path, sizeof path, "empty.safetensors");
    if (moe_safetensors_write(path, NULL, 0, NULL, 0, &err))
        die(path, &err);
    moe_params_release(&p);

    // Near-valid, hand-made: each breaks one rule (or none, for the unpadded one).
    st_raw("unpadded.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8);
    st_raw("two_unordered.safetensors",
           "{\"z\":{\"data_offsets\":[8,12],\"dtype\":\"I32\",\"shape\":[1]},"
           "\"a\":{\"shape\":[2],\"dtype\":\"F32\",\"data_offsets\":[0,8]}}",
           12);
    st_raw("overlap.safetensors",
           "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
           "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
           8);
    st_raw("hole.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8);
    st_raw("bf16.safetensors", "{\"a\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4);
    st_raw("big_dim.safetensors",
           "{\"a\":{\"dtype\":\"F64\",\"shape\":[281474976710655,65536],\"data_offsets\":[0,8]}}", 8);
    st_raw("escapes.safetensors",
           "{\"__metadata__\":{\"k\\u00e9\":\"v\\n\\\"q\\\"\"},"
           "\"t\\/x\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[0,8]}}",
           8);
    st_raw("dup_meta.safetensors", "{\"__metadata__\":{\"a\":\"1\",\"a\":\"2\"}}", 0);
    st_raw("five_dims.safetensors",
           "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1],\"data_offsets\":[0,4]}}", 4);
    // Header length larger than the file.
    unsigned char bad[16] = {0xff, 0xff, 0, 0, 0, 0, 0, 0, '{', '}'};
    put_file("safetensors", "len_past_end.safetensors", bad, 10);
}

// ---- IDX ----

static size_t idx_header(unsigned char *h, int type, int ndim, const uint32_t *dims)
{
    h[0] = h[1] = 0;
    h[2] = (unsigned char)type;
    h[3] = (unsigned char)ndim;
    for (int k = 0; k < ndim; k++)
        for (int b = 0; b < 4; b++)
            h[4 + 4 * k + b] = (unsigned char)(dims[k] >> (24 - 8 * b));
    return 4 + 4 * (size_t)ndim;
}

// Header plus count data bytes (pixel-like values), plus `extra` trailing bytes.
static void idx_file(const char *name, int gz, int type, int ndim, const uint32_t *dims, size_t cut, size_t extra)
{
    unsigned char buf[1024];
    size_t hl = idx_header(buf, type, ndim, dims);
    size_t count = 1;
    for (int k = 0; k < ndim; k++)
        count *= dims[k];
    size_t n = hl + count + extra - cut;
    if (n > sizeof buf)
        die(name, NULL);
    for (size_t i = hl; i < n; i++)
        buf[i] = (unsigned char)((i * 37) % 256);
    if (gz)
        put_gz("idx", name, buf, n);
    else
        put_file("idx", name, buf, n);
}

static void gen_idx(void)
{
    uint32_t img[3] = {3, 4, 4}, lab[1] = {3}, two[2] = {2, 5}, four[4] = {2, 2, 2, 2}, one[3] = {1, 1, 1};
    idx_file("images-3x4x4.idx", 0, 0x08, 3, img, 0, 0);
    idx_file("images-3x4x4.idx.gz", 1, 0x08, 3, img, 0, 0);
    idx_file("labels-3.idx", 0, 0x08, 1, lab, 0, 0);
    idx_file("labels-3.idx.gz", 1, 0x08, 1, lab, 0, 0);
    idx_file("image-1x1x1.idx", 0, 0x08, 3, one, 0, 0);
    idx_file("matrix-2x5.idx", 0, 0x08, 2, two, 0, 0);
    idx_file("tensor-2x2x2x2.idx.gz", 1, 0x08, 4, four, 0, 0);
    idx_file("truncated.idx", 0, 0x08, 3, img, 5, 0);
    idx_file("trailing.idx.gz", 1, 0x08, 1, lab, 0, 3);
    idx_file("float-type.idx", 0, 0x0D, 1, lab, 0, 0);
    // Labels 0..11 (n_out becomes 12).
    unsigned char l12[4 + 4 + 12];
    uint32_t d12 = 12;
    size_t hl = idx_header(l12, 0x08, 1, &d12);
    for (int i = 0; i < 12; i++)
        l12[hl + i] = (unsigned char)i;
    put_file("idx", "labels-12.idx", l12, hl + 12);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: gen_corpus CORPUS_DIR\n");
        return 2;
    }
    root = argv[1];
    gen_safetensors();
    gen_idx();
    return 0;
}
