// plan.c: declared buffers, summed and allocated (see plan.h).
#include "core/plan.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/sysmem.h"

// Under AddressSanitizer every buffer is its own allocation, so that a write
// past one buffer's end is caught instead of landing in the next one; the byte
// counts do not change.
#if defined(__SANITIZE_ADDRESS__)
#define ONE_BY_ONE 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ONE_BY_ONE 1
#endif
#endif
#ifndef ONE_BY_ONE
#define ONE_BY_ONE 0
#endif

const char *moe_role_name(enum moe_role r)
{
    static const char *const names[MOE_ROLE_N] = { "parameter", "activation", "scratch", "state", "optimizer" };
    return r < MOE_ROLE_N ? names[r] : "?";
}

size_t moe_dtype_size(enum moe_plan_dtype t)
{
    static const size_t sizes[] = { [MOE_DT_F32] = 4, [MOE_DT_I32] = 4, [MOE_DT_U32] = 4, [MOE_DT_U8] = 1,
                                    [MOE_DT_F64] = 8, [MOE_DT_U64] = 8, [MOE_DT_SIZE] = sizeof(size_t) };
    return sizes[t];
}

void moe_plan_init(struct moe_plan *p, struct moe_err *err)
{
    memset(p, 0, sizeof *p);
    p->err = err;
}

int moe_plan_fail(struct moe_plan *p, int code, const char *fmt, ...)
{
    if (p->rc)
        return p->rc;
    va_list ap;
    va_start(ap, fmt);
    char msg[MOE_ERR_MSG_MAX];
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    p->rc = moe_error(p->err, code, "%s", msg);
    return p->rc;
}

// "model.n_expert x model.n_ff x model.n_embd = 4 x 128 x 64" into buf.
static void describe(char *buf, size_t len, int n, const struct moe_dim *d, size_t unit)
{
    size_t o = 0;
    for (int i = 0; i < n && o < len; i++)
        o += (size_t)snprintf(buf + o, len - o, "%s%s", i ? " x " : "", d[i].key);
    for (int i = 0; i < n && o < len; i++)
        o += (size_t)snprintf(buf + o, len - o, "%s%zu", i ? " x " : " = ", d[i].v);
    if (unit > 1 && o < len)
        snprintf(buf + o, len - o, " x %zu bytes", unit);
}

int moe_plan_size(struct moe_plan *p, size_t *ret, size_t unit, int n, const struct moe_dim *d)
{
    if (p->rc) {
        *ret = 0;
        return p->rc;
    }
    size_t v = unit;
    *ret = 0;
    for (int i = 0; i < n; i++) {
        if (__builtin_mul_overflow(v, d[i].v, &v)) {
            char what[300];
            describe(what, sizeof what, n, d, unit);
            return moe_plan_fail(p, MOE_EINVAL, "%s overflows size_t", what);
        }
    }
    *ret = v;
    return 0;
}

int moe_plan_product(struct moe_plan *p, size_t *ret, int ndim, const struct moe_dim *d)
{
    return moe_plan_size(p, ret, 1, ndim, d);
}

void moe_plan_note_largest(struct moe_plan *p, size_t bytes, const char *kind, const char *name, int n,
                         const struct moe_dim *d)
{
    if (bytes <= p->largest_bytes)
        return;
    char what[160];
    describe(what, sizeof what, n, d, 0);
    p->largest_bytes = bytes;
    snprintf(p->largest, sizeof p->largest, "%s '%s' (%s)", kind, name, what);
}

// A new entry (not yet counted: p->n is not advanced) of role and dtype with
// its name, shape and size (bytes: the elements' bytes, unrounded); NULL after
// a failure.
static struct moe_plan_entry *entry(struct moe_plan *p, enum moe_role role, enum moe_plan_dtype dt, int ndim,
                                    const struct moe_dim *d, const char *fmt, va_list ap)
{
    if (p->rc)
        return NULL;
    if (ndim < 1 || ndim > MOE_MAX_DIMS) {
        moe_plan_fail(p, MOE_EINVAL, "a buffer of %d dimensions (at most %d)", ndim, MOE_MAX_DIMS);
        return NULL;
    }
    if (p->n == p->cap) {
        size_t cap = p->cap ? 2 * p->cap : 64;
        struct moe_plan_entry *e = realloc(p->e, cap * sizeof *e);
        if (!e) {
            moe_plan_fail(p, MOE_ENOMEM, "out of memory declaring buffers");
            return NULL;
        }
        p->e = e;
        p->cap = cap;
    }
    struct moe_plan_entry *e = &p->e[p->n];
    memset(e, 0, sizeof *e);
    if (vsnprintf(e->name, sizeof e->name, fmt, ap) >= (int)sizeof e->name) {
        moe_plan_fail(p, MOE_EINVAL, "buffer name '%s...' is too long", e->name);
        return NULL;
    }
    e->role = role;
    e->dtype = dt;
    e->ndim = ndim;
    for (int i = 0; i < ndim; i++) {
        e->shape[i] = d[i].v;
        e->key[i] = d[i].key;
    }
    if (moe_plan_size(p, &e->bytes, moe_dtype_size(dt), ndim, d))
        return NULL;
    e->numel = e->bytes / moe_dtype_size(dt);
    return e;
}

int moe_plan_param(struct moe_plan *p, int *index, int ndim, const struct moe_dim *d, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    struct moe_plan_entry *e = entry(p, MOE_ROLE_PARAM, MOE_DT_F32, ndim, d, fmt, ap);
    va_end(ap);
    if (!e)
        return p->rc;
    e->index = index;
    // the registry's layout (core/params.c): each tensor on a 16-float boundary
    size_t start = (p->numel + 15) & ~(size_t)15;
    if (p->numel > SIZE_MAX - 15 || __builtin_add_overflow(p->count, e->numel, &p->count) ||
        __builtin_add_overflow(start, e->numel, &p->numel))
        return moe_plan_fail(p, MOE_EINVAL, "the parameter count of this config overflows size_t");
    moe_plan_note_largest(p, e->bytes, "tensor", e->name, ndim, d);
    p->n++;
    return 0;
}

int moe_plan_mark_experts(struct moe_plan *p)
{
    if (!p->rc && p->n && p->e[p->n - 1].role == MOE_ROLE_PARAM)
        p->e[p->n - 1].experts = 1;
    return p->rc;
}

int moe_plan_mark_grad_set(struct moe_plan *p)
{
    if (!p->rc && p->n && p->e[p->n - 1].role == MOE_ROLE_PARAM)
        p->e[p->n - 1].grad_set = 1;
    return p->rc;
}

int moe_plan_buf(struct moe_plan *p, void *bind, enum moe_role role, enum moe_plan_dtype dt, int ndim,
                 const struct moe_dim *d, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    struct moe_plan_entry *e = entry(p, role, dt, ndim, d, fmt, ap);
    va_end(ap);
    if (!e)
        return p->rc;
    if (e->bytes > SIZE_MAX - 63)
        return moe_plan_fail(p, MOE_EINVAL, "buffer '%s' overflows size_t", e->name);
    e->bytes = e->bytes ? (e->bytes + 63) & ~(size_t)63 : 64; // as moe_alloc rounds
    e->bind = bind;
    e->offset = p->bytes[role];
    if (__builtin_add_overflow(p->bytes[role], e->bytes, &p->bytes[role]))
        return moe_plan_fail(p, MOE_EINVAL, "the memory estimate of this config overflows size_t");
    moe_plan_note_largest(p, e->bytes, "buffer", e->name, ndim, d);
    p->n++;
    return 0;
}

size_t moe_plan_buffer_bytes(const struct moe_plan *p)
{
    size_t sum = 0;
    for (int r = 0; r < MOE_ROLE_N; r++)
        if (r != MOE_ROLE_PARAM)
            sum += p->bytes[r]; // each term was checked as declared; the total by the estimate
    return sum;
}

int moe_plan_register(struct moe_plan *p, struct moe_params *params)
{
    if (p->rc)
        return p->rc;
    for (size_t i = 0; i < p->n; i++) {
        struct moe_plan_entry *e = &p->e[i];
        if (e->role != MOE_ROLE_PARAM)
            continue;
        int idx = moe_params_add(params, e->name, e->ndim, e->shape, p->err);
        if (idx < 0)
            return p->rc = idx;
        if (e->index)
            *e->index = idx;
        if (e->experts)
            moe_params_mark_experts(params, idx);
        if (e->grad_set)
            moe_params_mark_grad_set(params, idx);
    }
    return 0;
}

int moe_plan_alloc(struct moe_plan *p, struct moe_params *params)
{
    int rc = 0;
    if (params && !moe_plan_register(p, params) && (rc = moe_params_alloc(params, p->err))) // register sets p->rc
        p->rc = rc;
    if (p->rc)
        return p->rc;
    for (int r = 0; r < MOE_ROLE_N; r++) {
        if (r == MOE_ROLE_PARAM || p->bytes[r] == 0 || ONE_BY_ONE)
            continue;
        if (!(p->block[r] = moe_alloc(p->bytes[r], 1))) {
            char need[32];
            moe_bytes_str(need, sizeof need, (double)p->bytes[r]);
            return moe_plan_fail(p, MOE_ENOMEM, "out of memory allocating %s of %s buffers", need,
                                 moe_role_name((enum moe_role)r));
        }
    }
    for (size_t i = 0; i < p->n; i++) {
        struct moe_plan_entry *e = &p->e[i];
        if (e->role == MOE_ROLE_PARAM)
            continue;
        void *at;
        if (ONE_BY_ONE) {
            if (!(at = e->own = moe_alloc(e->bytes, 1)))
                return moe_plan_fail(p, MOE_ENOMEM, "out of memory allocating buffer '%s'", e->name);
        } else {
            at = (char *)p->block[e->role] + e->offset;
        }
        if (e->bind)
            memcpy(e->bind, &at, sizeof at);
    }
    return 0;
}

void moe_plan_release(struct moe_plan *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->n; i++)
        moe_free(p->e[i].own);
    for (int r = 0; r < MOE_ROLE_N; r++)
        moe_free(p->block[r]);
    free(p->e);
    struct moe_err *err = p->err;
    moe_plan_init(p, err);
}

int moe_plan_standalone(struct moe_plan **ret, int (*declare)(void *arg, struct moe_plan *p), void *arg,
                        struct moe_err *err)
{
    *ret = NULL;
    struct moe_plan *p = malloc(sizeof *p);
    if (!p)
        return moe_error(err, MOE_ENOMEM, "out of memory");
    moe_plan_init(p, err);
    int rc = declare(arg, p);
    if (!rc)
        rc = moe_plan_alloc(p, NULL);
    if (rc) {
        moe_plan_free(p);
        return rc;
    }
    *ret = p;
    return 0;
}

void moe_plan_free(struct moe_plan *p)
{
    moe_plan_release(p);
    free(p);
}
