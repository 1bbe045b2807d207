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

void moe_params_init(struct moe_params *p)
{
    memset(p, 0, sizeof *p);
    p->shard_size = 1;
}

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
    t->offset = t->full_offset = (p->numel + 15) & ~(size_t)15;
    p->numel = p->full_numel = t->offset + numel;
    return (int)p->n++;
}

void moe_params_mark_experts(struct moe_params *p, int idx)
{
    if (idx >= 0 && (size_t)idx < p->n)
        p->t[idx].experts = 1;
}

void moe_params_mark_grad_set(struct moe_params *p, int idx)
{
    if (idx >= 0 && (size_t)idx < p->n)
        p->t[idx].grad_set = 1;
}

size_t moe_tensor_full_numel(const struct moe_tensor *t)
{
    size_t n = 1;
    for (int d = 0; d < t->ndim; d++)
        n *= t->shape[d];
    return n;
}

// This process's layout: the marked tensors cut to their share of experts,
// every tensor again on a 16-float boundary, in declaration order.
static int shard_layout(struct moe_params *p, struct moe_err *err)
{
    size_t N = (size_t)p->shard_size, r = (size_t)p->shard_rank, at = 0;
    for (size_t i = 0; i < p->n; i++) {
        struct moe_tensor *t = &p->t[i];
        if (t->experts) {
            if (t->shape[0] % N)
                return moe_error(err, MOE_ECONFIG, "tensor '%s': its %zu experts cannot be shared out evenly over %zu processes",
                                 t->name, t->shape[0], N);
            t->numel = moe_tensor_full_numel(t) / N;
            t->lo = r * (t->shape[0] / N);
        }
        t->offset = (at + 15) & ~(size_t)15;
        at = t->offset + t->numel;
    }
    p->numel = at;
    return 0;
}

void moe_params_from_full(const struct moe_params *p, const float *full, float *local)
{
    for (size_t i = 0; i < p->n; i++) {
        const struct moe_tensor *t = &p->t[i];
        size_t slice = t->experts ? moe_tensor_full_numel(t) / t->shape[0] : 0;
        memcpy(local + t->offset, full + t->full_offset + t->lo * slice, t->numel * sizeof *local);
    }
}

int moe_params_alloc(struct moe_params *p, struct moe_err *err)
{
    if (p->shard_size > 1 && shard_layout(p, err))
        return MOE_ECONFIG;
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
        n += moe_tensor_full_numel(&p->t[i]);
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

void moe_fold(float *a, const float *g, float *out, size_t n, float w, size_t k, int last)
{
    if (k == 0) {
        #pragma omp parallel for schedule(static) if (n >= (1u << 16))
        for (size_t i = 0; i < n; i++)
            a[i] = w * g[i];
    } else if (!last) {
        #pragma omp parallel for schedule(static) if (n >= (1u << 16))
        for (size_t i = 0; i < n; i++)
            a[i] += w * g[i];
    } else {
        #pragma omp parallel for schedule(static) if (n >= (1u << 16))
        for (size_t i = 0; i < n; i++)
            out[i] = a[i] + w * g[i];
    }
}

// Clears every run of tensors not marked grad_set, padding included (the
// padding is never written, so clearing it or not changes nothing).
void moe_params_zero_grad(struct moe_params *p)
{
    if (!p->grad)
        return;
    size_t from = 0; // start of the run not yet cleared
    for (size_t i = 0; i < p->n; i++) {
        const struct moe_tensor *t = &p->t[i];
        if (!t->grad_set)
            continue;
        if (t->offset > from)
            moe_zero(p->grad + from, t->offset - from);
        from = t->offset + t->numel;
    }
    if (p->numel > from)
        moe_zero(p->grad + from, p->numel - from);
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
    // element i of the whole tensor is draw i, so a process holding experts
    // lo .. of a sharded tensor draws exactly their values
    size_t first = t->lo * (moe_tensor_full_numel(t) / t->shape[0]);
    moe_rng_fill_uniform_at(&r, moe_params_data(p, idx), t->numel, first, -bound, bound);
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
