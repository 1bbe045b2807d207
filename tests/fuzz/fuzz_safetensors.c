// fuzz_safetensors.c: libFuzzer harness for the checkpoint reader
// (lib/io/safetensors.c): moe_safetensors_open on arbitrary bytes, then on a
// file it accepts every follow-on accessor: find and meta lookups, load_ref
// of each tensor into a buffer of exactly its size, load_params into a fixed
// small registry (the shapes of the seed files) and into a registry built
// from the file's own F32 tensors, and a write -> open round trip.
// Input: the file bytes. Corpus: tests/fuzz/corpus/safetensors/ (written by
// the library, see gen_corpus.c, plus hand-made near-valid headers).
// Checks beyond the sanitizers: failures carry a one-line message and a
// matching code; every accepted tensor lies inside the data section with
// byte size numel * dtype size; lookups find what the file lists; loads that
// must succeed do; a failed load leaves the registry untouched; writing the
// accepted tensors and metadata back gives a file that opens to the same
// entries and bytes.
// fuzz-max-len: 4096
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/params.h"
#include "fuzz_util.h"
#include "io/safetensors.h"

static const size_t dtype_size[] = {[MOE_F32] = 4, [MOE_I32] = 4, [MOE_I64] = 8, [MOE_F64] = 8};

static void check_entries(const struct moe_st_file *f, const uint8_t *data, size_t size)
{
    FUZZ_CHECK(f->size == size && memcmp(f->buf, data, size) == 0, "file buffer differs from the input");
    for (size_t i = 0; i < f->n; i++) {
        const struct moe_st_entry *e = &f->e[i];
        FUZZ_CHECK((unsigned)e->dtype <= MOE_F64, "bad dtype %d", (int)e->dtype);
        FUZZ_CHECK(e->ndim >= 0 && e->ndim <= MOE_MAX_DIMS, "bad ndim %d", e->ndim);
        size_t numel = 1;
        for (int d = 0; d < e->ndim; d++)
            numel *= e->shape[d];
        FUZZ_CHECK(numel == e->numel, "'%s': numel %zu, shape says %zu", e->name, e->numel, numel);
        FUZZ_CHECK(e->begin <= e->end && e->end - e->begin == numel * dtype_size[e->dtype], "'%s': bad offsets",
                   e->name);
        const uint8_t *p = e->data;
        FUZZ_CHECK(p >= f->buf + 8 && p + (e->end - e->begin) <= f->buf + f->size, "'%s' outside the file",
                   e->name);
        FUZZ_CHECK(moe_safetensors_find(f, e->name) == e, "find('%s') misses", e->name);
    }
    for (size_t i = 0; i < f->n_meta; i++) {
        const char *v = moe_safetensors_meta(f, f->meta_key[i]);
        FUZZ_CHECK(v && strcmp(v, f->meta_val[i]) == 0, "meta('%s') misses", f->meta_key[i]);
    }
    FUZZ_CHECK(!moe_safetensors_find(f, "__metadata__"), "__metadata__ listed as a tensor");
    (void)moe_safetensors_meta(f, "format_version");
    (void)moe_safetensors_meta(f, "");
}

// load_ref of every tensor into a buffer of exactly its size (ASan catches an
// overrun), and a wrong-dtype / wrong-shape request must fail.
static void load_refs(const struct moe_st_file *f)
{
    for (size_t i = 0; i < f->n; i++) {
        const struct moe_st_entry *e = &f->e[i];
        size_t bytes = e->end - e->begin;
        void *buf = malloc(bytes ? bytes : 1);
        FUZZ_CHECK(buf, "out of memory");
        struct moe_st_ref ref = { .name = e->name, .dtype = e->dtype, .ndim = e->ndim, .shape = {0}, .data = buf };
        memcpy(ref.shape, e->shape, sizeof ref.shape);
        struct moe_err err = {0};
        int rc = moe_safetensors_load_ref(f, &ref, &err);
        FUZZ_CHECK(rc == 0, "load_ref('%s') failed: %s", e->name, err.msg);
        FUZZ_CHECK(memcmp(buf, e->data, bytes) == 0, "load_ref('%s') copied wrong bytes", e->name);
        ref.dtype = e->dtype == MOE_F32 ? MOE_I32 : MOE_F32;
        rc = moe_safetensors_load_ref(f, &ref, &err);
        FUZZ_CHECK(rc == MOE_EFORMAT, "load_ref('%s') with the wrong dtype gave %d", e->name, rc);
        fuzz_check_err(rc, &err);
        ref.dtype = e->dtype;
        ref.ndim = e->ndim < MOE_MAX_DIMS ? e->ndim + 1 : e->ndim - 1;
        ref.shape[ref.ndim ? ref.ndim - 1 : 0] = 1;
        rc = moe_safetensors_load_ref(f, &ref, &err);
        FUZZ_CHECK(rc == MOE_ESHAPE, "load_ref('%s') with the wrong shape gave %d", e->name, rc);
        fuzz_check_err(rc, &err);
        free(buf);
    }
    struct moe_st_ref missing = { .name = "no such tensor", .dtype = MOE_F32, .ndim = 1, .shape = {1}, .data = NULL };
    if (!moe_safetensors_find(f, missing.name)) {
        struct moe_err err = {0};
        int rc = moe_safetensors_load_ref(f, &missing, &err);
        FUZZ_CHECK(rc == MOE_ESHAPE, "load_ref of a missing tensor gave %d", rc);
        fuzz_check_err(rc, &err);
    }
}

// The registry the seed files were written from (gen_corpus.c): "w" [2, 3], "b" [3].
static void load_fixed(const struct moe_st_file *f)
{
    struct moe_params p;
    moe_params_init(&p);
    struct moe_err err = {0};
    FUZZ_CHECK(moe_params_add(&p, "w", MOE_SHAPE(2, 3), &err) >= 0, "params_add");
    FUZZ_CHECK(moe_params_add(&p, "b", MOE_SHAPE(3), &err) >= 0, "params_add");
    FUZZ_CHECK(moe_params_alloc(&p, &err) == 0, "params_alloc");
    for (size_t i = 0; i < p.numel; i++)
        p.data[i] = -7.0f;
    for (int allow_extra = 0; allow_extra < 2; allow_extra++) {
        memset(&err, 0, sizeof err);
        int rc = moe_safetensors_load_params(f, &p, allow_extra, &err);
        if (rc) {
            fuzz_check_err(rc, &err);
            for (size_t i = 0; i < p.numel; i++)
                FUZZ_CHECK(p.data[i] == -7.0f, "failed load_params changed the registry");
        }
    }
    moe_params_release(&p);
}

// A registry of the file's own F32 tensors (those a registry can hold: 1 to 4
// dimensions, none zero): loading must succeed and copy the exact bytes.
static void load_own(const struct moe_st_file *f)
{
    struct moe_params p;
    moe_params_init(&p);
    struct moe_err err = {0};
    int all = 1;
    for (size_t i = 0; i < f->n; i++) {
        const struct moe_st_entry *e = &f->e[i];
        int ok = e->dtype == MOE_F32 && e->ndim >= 1;
        for (int d = 0; ok && d < e->ndim; d++)
            ok = e->shape[d] > 0;
        if (!ok || moe_params_add(&p, e->name, e->ndim, e->shape, &err) < 0)
            all = 0;
    }
    if (moe_params_alloc(&p, &err) == 0) {
        int rc = moe_safetensors_load_params(f, &p, 1, &err);
        FUZZ_CHECK(rc == 0, "load_params of the file's own tensors failed: %s", err.msg);
        for (size_t i = 0; i < p.n; i++) {
            const struct moe_st_entry *e = moe_safetensors_find(f, p.t[i].name);
            FUZZ_CHECK(e && memcmp(moe_params_data(&p, (int)i), e->data, p.t[i].numel * 4) == 0,
                       "load_params copied wrong bytes for '%s'", p.t[i].name);
        }
        memset(&err, 0, sizeof err);
        rc = moe_safetensors_load_params(f, &p, 0, &err);
        if (all)
            FUZZ_CHECK(rc == 0, "strict load_params of a file of registry tensors failed: %s", err.msg);
        else
            FUZZ_CHECK(rc == MOE_ESHAPE, "strict load_params with extra tensors gave %d", rc);
        if (rc)
            fuzz_check_err(rc, &err);
    }
    moe_params_release(&p);
}

// Write what was read and read it back: same tensors, same bytes, same metadata.
static void round_trip(const struct moe_st_file *f)
{
    struct moe_st_ref *refs = calloc(f->n + 1, sizeof *refs);
    struct moe_st_meta *meta = calloc(f->n_meta + 1, sizeof *meta);
    FUZZ_CHECK(refs && meta, "out of memory");
    for (size_t i = 0; i < f->n; i++) {
        const struct moe_st_entry *e = &f->e[i];
        refs[i] = (struct moe_st_ref){ .name = e->name, .dtype = e->dtype, .ndim = e->ndim, .shape = {0}, .data = e->data };
        memcpy(refs[i].shape, e->shape, sizeof refs[i].shape);
    }
    size_t n_meta = 0; // the writer makes its own checksum table
    for (size_t i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta_key[i], MOE_ST_CRC_KEY) != 0)
            meta[n_meta++] = (struct moe_st_meta){f->meta_key[i], f->meta_val[i]};
    char path[4096];
    snprintf(path, sizeof path, "%s/rt-%ld.safetensors", fuzz_tmpdir(), (long)getpid());
    struct moe_err err = {0};
    int rc = moe_safetensors_write(path, refs, f->n, meta, n_meta, &err);
    FUZZ_CHECK(rc == 0, "writing an accepted file back failed: %s", err.msg);
    struct moe_st_file g;
    rc = moe_safetensors_open(path, &g, &err);
    FUZZ_CHECK(rc == 0, "reading back a written file failed: %s", err.msg);
    FUZZ_CHECK(g.n == f->n && g.n_meta == n_meta + 1 && moe_safetensors_meta(&g, MOE_ST_CRC_KEY),
               "round trip changed the counts");
    for (size_t i = 0; i < f->n; i++) {
        const struct moe_st_entry *a = &f->e[i], *b = moe_safetensors_find(&g, a->name);
        FUZZ_CHECK(b && b->dtype == a->dtype && b->ndim == a->ndim &&
                       memcmp(b->shape, a->shape, sizeof a->shape) == 0 && b->end - b->begin == a->end - a->begin &&
                       memcmp(b->data, a->data, a->end - a->begin) == 0,
                   "round trip changed tensor '%s'", a->name);
    }
    for (size_t i = 0; i < n_meta; i++) {
        const char *v = moe_safetensors_meta(&g, meta[i].key);
        FUZZ_CHECK(v && strcmp(v, meta[i].value) == 0, "round trip changed metadata '%s'", meta[i].key);
    }
    moe_safetensors_close(&g);
    unlink(path);
    free(refs);
    free(meta);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct moe_err err = {0};
    struct moe_st_file f;
    int rc = moe_safetensors_open(fuzz_file(0, data, size), &f, &err);
    if (rc) {
        fuzz_check_err(rc, &err);
        FUZZ_CHECK(f.buf == NULL && f.e == NULL && f.n == 0, "failed open returned data");
        return 0;
    }
    check_entries(&f, data, size);
    load_refs(&f);
    load_fixed(&f);
    load_own(&f);
    round_trip(&f);
    moe_safetensors_close(&f);
    return 0;
}
