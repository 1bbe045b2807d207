// params.c: the named-parameter registry (see params.h).
#include "core/params.h"
#include "core/rng.h"

#include <stdint.h>
#include <stdio.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void *moe_alloc(size_t count, size_t size)
{
    if (size && count > SIZE_MAX / size)
        return NULL;
    size_t bytes = count * size;
    if (bytes == 0)
        bytes = 64;
    bytes = (bytes + 63) & ~(size_t)63;
    void *p = aligned_alloc(64, bytes);
    if (p)
        memset(p, 0, bytes);
    return p;
}

void moe_free(void *p) { free(p); }

void moe_params_init(struct moe_params *p) { memset(p, 0, sizeof *p); }

void moe_shape_str(int ndim, const size_t *shape, char *buf, size_t len)
{
    size_t o = 0;
    o += (size_t)snprintf(buf + o, len - o, "[");
    for (int d = 0; d < ndim && o < len; d++)
        o += (size_t)snprintf(buf + o, len - o, d ? ", %zu" : "%zu", shape[d]);
    if (o < len)
        snprintf(buf + o, len - o, "]");
}

int moe_params_add(struct moe_params *p, const char *name, int ndim, const size_t *shape,
                   struct moe_err *err)
{
    if (p->data)
        return moe_error(err, MOE_EINVAL, "parameter registry is already allocated; cannot add '%s'", name);
    if (strlen(name) >= MOE_NAME_MAX)
        return moe_error(err, MOE_EINVAL, "tensor name '%s' is too long", name);
    if (ndim < 1 || ndim > MOE_MAX_DIMS)
        return moe_error(err, MOE_EINVAL, "tensor '%s': %d dimensions, expected 1 to %d", name, ndim, MOE_MAX_DIMS);
    if (moe_params_find(p, name) >= 0)
        return moe_error(err, MOE_EINVAL, "tensor '%s' declared twice", name);
    size_t numel = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] == 0)
            return moe_error(err, MOE_EINVAL, "tensor '%s': dimension %d is zero", name, d);
        if (numel > SIZE_MAX / 4 / shape[d])
            return moe_error(err, MOE_EINVAL, "tensor '%s': size overflows", name);
        numel *= shape[d];
    }
    if (p->n == p->cap) {
        size_t cap = p->cap ? 2 * p->cap : 16;
        struct moe_tensor *t = realloc(p->t, cap * sizeof *t);
        if (!t)
            return moe_error(err, MOE_ENOMEM, "out of memory declaring tensor '%s'", name);
        p->t = t;
        p->cap = cap;
    }
    struct moe_tensor *t = &p->t[p->n];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = ndim;
    for (int d = 0; d < ndim; d++)
        t->shape[d] = shape[d];
    t->numel = numel;
    // Each tensor starts on a 16-float (64-byte) boundary so kernels see aligned rows.
    t->offset = (p->numel + 15) & ~(size_t)15;
    p->numel = t->offset + numel;
    return (int)p->n++;
}

int moe_params_alloc(struct moe_params *p, struct moe_err *err)
{
    p->data = moe_alloc(p->numel, sizeof(float));
    p->grad = moe_alloc(p->numel, sizeof(float));
    if (!p->data || !p->grad) {
        moe_free(p->data);
        moe_free(p->grad);
        p->data = p->grad = NULL;
        return moe_error(err, MOE_ENOMEM, "out of memory allocating %zu parameters", p->numel);
    }
    return 0;
}

int moe_params_find(const struct moe_params *p, const char *name)
{
    for (size_t i = 0; i < p->n; i++)
        if (strcmp(p->t[i].name, name) == 0)
            return (int)i;
    return -1;
}

size_t moe_params_count(const struct moe_params *p)
{
    size_t n = 0;
    for (size_t i = 0; i < p->n; i++)
        n += p->t[i].numel;
    return n;
}

void moe_zero(float *x, size_t n)
{
    const size_t chunk = 1u << 16; // floats: 256 KiB a chunk
    if (n < 2 * chunk) {
        memset(x, 0, n * sizeof *x);
        return;
    }
    const size_t nc = (n + chunk - 1) / chunk;
    #pragma omp parallel for schedule(static)
    for (size_t c = 0; c < nc; c++) {
        size_t i0 = c * chunk, len = i0 + chunk <= n ? chunk : n - i0;
        memset(x + i0, 0, len * sizeof *x);
    }
}

void moe_params_zero_grad(struct moe_params *p)
{
    if (p->grad)
        moe_zero(p->grad, p->numel);
}

void moe_params_release(struct moe_params *p)
{
    if (!p)
        return;
    free(p->t);
    moe_free(p->data);
    moe_free(p->grad);
    memset(p, 0, sizeof *p);
}

void moe_init_uniform(struct moe_params *p, int idx, uint64_t seed, float scale)
{
    const struct moe_tensor *t = &p->t[idx];
    float bound = scale / sqrtf((float)t->shape[t->ndim - 1]);
    struct moe_rng r = moe_rng_make(seed, MOE_RNG_INIT, moe_hash32(t->name));
    moe_rng_fill_uniform(&r, moe_params_data(p, idx), t->numel, -bound, bound);
}

size_t moe_params_copy_matching(struct moe_params *dst, const struct moe_params *src, uint8_t *copied)
{
    size_t n = 0;
    for (size_t i = 0; i < dst->n; i++) {
        const struct moe_tensor *t = &dst->t[i];
        int j = moe_params_find(src, t->name);
        int same = j >= 0 && src->t[j].ndim == t->ndim && memcmp(src->t[j].shape, t->shape, t->ndim * sizeof *t->shape) == 0;
        if (same) {
            memcpy(moe_params_data(dst, (int)i), moe_params_data(src, j), t->numel * sizeof(float));
            n++;
        }
        if (copied)
            copied[i] = (uint8_t)same;
    }
    return n;
}
