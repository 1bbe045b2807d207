// quant.c: int8 quantization, dequantization and the quantized checkpoint
// storage (see quant.h for the formulas; docs/checkpoint.md for the files).
// Nothing here prints or exits.
// reference: B. Jacob et al., "Quantization and Training of Neural Networks
// for Efficient Integer-Arithmetic-Only Inference", CVPR 2018 (section 2.1:
// r = S (q - Z), with the real 0 exactly representable)
#include "compress/quant.h"

#include <fnmatch.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SAFE_LEN 72

// Round half to even, independent of the rounding mode (rint follows it).
// |x| is small here (at most ~2^9), so x - floor(x) is exact.
static double rne(double x)
{
    double r = floor(x);
    double d = x - r;
    if (d > 0.5 || (d == 0.5 && fmod(r, 2.0) != 0.0))
        r += 1.0;
    return r;
}

static int32_t clampi(double v, int32_t lo, int32_t hi)
{
    return v < lo ? lo : v > hi ? hi : (int32_t)v;
}

int moe_quant_groups(int ndim, const size_t *shape, enum moe_quant_gran gran, size_t *ret_groups,
                     size_t *ret_len, struct moe_err *err)
{
    if (ndim != 2 && ndim != 3)
        return moe_error(err, MOE_EINVAL, "only 2-d (out, in) and 3-d (E, out, in) tensors are quantized, not %d-d",
                         ndim);
    size_t rows = 1; // every dimension but the last
    for (int d = 0; d < ndim - 1; d++)
        rows *= shape[d];
    size_t len = shape[ndim - 1];
    if (gran == MOE_QUANT_PER_TENSOR) {
        *ret_groups = 1;
        *ret_len = rows * len;
    } else if (gran == MOE_QUANT_PER_CHANNEL) {
        *ret_groups = rows;
        *ret_len = len;
    } else {
        return moe_error(err, MOE_EINVAL, "unknown quantization granularity %d", (int)gran);
    }
    return 0;
}

int moe_quant_int8(const float *w, size_t n_groups, size_t len, enum moe_quant_scheme scheme, int8_t *q,
                   float *scale, int32_t *zero, struct moe_err *err)
{
    if (scheme != MOE_QUANT_SYM && scheme != MOE_QUANT_ASYM)
        return moe_error(err, MOE_EINVAL, "unknown quantization scheme %d", (int)scheme);
    if (scheme == MOE_QUANT_ASYM && !zero)
        return moe_error(err, MOE_EINVAL, "asymmetric quantization needs zero points");
    for (size_t g = 0; g < n_groups; g++) {
        const float *x = w + g * len;
        float lo = 0.0f, hi = 0.0f; // the range widened to hold 0 (asymmetric), or -max|w| .. max|w|
        for (size_t j = 0; j < len; j++) {
            if (!isfinite(x[j]) || fabsf(x[j]) > MOE_QUANT_W_MAX)
                return moe_error(err, MOE_EINVAL, "element %zu is %g: only finite weights of magnitude at most %g are quantized",
                                 g * len + j, (double)x[j], (double)MOE_QUANT_W_MAX);
            if (scheme == MOE_QUANT_SYM) {
                float a = fabsf(x[j]);
                hi = a > hi ? a : hi;
            } else {
                lo = x[j] < lo ? x[j] : lo;
                hi = x[j] > hi ? x[j] : hi;
            }
        }
        float s;
        int32_t z = 0;
        if (hi == lo) { // all zero: any scale represents it; 1 keeps the file free of zero scales
            s = 1.0f;
        } else {
            s = scheme == MOE_QUANT_SYM ? hi / 127.0f : (float)(((double)hi - (double)lo) / 255.0);
            if (s < FLT_MIN) // never a zero or subnormal scale
                s = FLT_MIN;
            if (scheme == MOE_QUANT_ASYM)
                z = clampi(-128.0 - rne((double)lo / s), -128, 127);
        }
        int32_t qmin = scheme == MOE_QUANT_SYM ? -127 : -128;
        for (size_t j = 0; j < len; j++)
            q[g * len + j] = (int8_t)clampi(rne((double)x[j] / s) + z, qmin, 127);
        scale[g] = s;
        if (zero)
            zero[g] = z;
    }
    return 0;
}

void moe_dequant_int8(float *w, const int8_t *q, const float *scale, const int32_t *zero, size_t len,
                      size_t first, size_t n)
{
    for (size_t j = 0; j < n; j++) {
        size_t g = (first + j) / len; // len > 0 whenever n > 0
        w[j] = moe_dequant_int8_1(q[j], scale[g], zero ? zero[g] : 0);
    }
}

// ---------------------------------------------------------------- reading

static const struct moe_st_entry *find_part(const struct moe_st_file *f, const char *name, const char *suffix)
{
    char buf[2 * MOE_NAME_MAX];
    snprintf(buf, sizeof buf, "%s%s", name, suffix);
    return moe_safetensors_find(f, buf);
}

int moe_quant_check(const struct moe_st_file *f, const struct moe_st_entry *e, struct moe_quant_spec *ret,
                    const struct moe_st_entry **ret_scale, const struct moe_st_entry **ret_zero,
                    struct moe_err *err)
{
    const char *path = f->path;
    char nb[SAFE_LEN], s1[128], s2[128];
    moe_msg_str(e->name, nb, sizeof nb);
    if (e->dtype != MOE_I8)
        return moe_safetensors_fail(err, MOE_EFORMAT, path, "tensor '%s' is not quantized (dtype is not I8)", nb);
    if (e->ndim != 2 && e->ndim != 3)
        return moe_safetensors_fail(err, MOE_EFORMAT, path, "tensor '%s' is I8 with %d dimensions; quantized tensors are 2-d or 3-d",
                      nb, e->ndim);
    const struct moe_st_entry *sc = find_part(f, e->name, MOE_QUANT_SCALE_SUFFIX);
    const struct moe_st_entry *zp = find_part(f, e->name, MOE_QUANT_ZERO_SUFFIX);
    if (!sc)
        return moe_safetensors_fail(err, MOE_EFORMAT, path, "tensor '%s' is quantized (I8) but the file has no '%s" MOE_QUANT_SCALE_SUFFIX "'",
                      nb, nb);
    if (sc->dtype != MOE_F32)
        return moe_safetensors_fail(err, MOE_EFORMAT, path, "tensor '%s': its scales '%s" MOE_QUANT_SCALE_SUFFIX "' are not F32", nb, nb);
    // [] per tensor, e's shape less its last dimension per channel
    enum moe_quant_gran gran = sc->ndim == 0 ? MOE_QUANT_PER_TENSOR : MOE_QUANT_PER_CHANNEL;
    int same = sc->ndim == 0 || sc->ndim == e->ndim - 1;
    for (int d = 0; same && d < sc->ndim; d++)
        same = sc->shape[d] == e->shape[d];
    if (!same) {
        moe_shape_str(sc->ndim, sc->shape, s1, sizeof s1);
        moe_shape_str(e->ndim - 1, e->shape, s2, sizeof s2);
        return moe_safetensors_fail(err, MOE_EFORMAT, path,
                      "tensor '%s': its scales have shape %s, expected [] (per tensor) or %s (per output channel)", nb,
                      s1, s2);
    }
    if (zp) {
        if (zp->dtype != MOE_I32)
            return moe_safetensors_fail(err, MOE_EFORMAT, path, "tensor '%s': its zero points '%s" MOE_QUANT_ZERO_SUFFIX "' are not I32", nb,
                          nb);
        same = zp->ndim == sc->ndim;
        for (int d = 0; same && d < sc->ndim; d++)
            same = zp->shape[d] == sc->shape[d];
        if (!same) {
            moe_shape_str(zp->ndim, zp->shape, s1, sizeof s1);
            moe_shape_str(sc->ndim, sc->shape, s2, sizeof s2);
            return moe_safetensors_fail(err, MOE_EFORMAT, path, "tensor '%s': its zero points have shape %s, its scales %s", nb, s1, s2);
        }
    }
    // memcpy: the data may be unaligned (safetensors.h)
    for (size_t g = 0; g < sc->numel; g++) {
        float s;
        memcpy(&s, (const unsigned char *)sc->data + g * sizeof s, sizeof s);
        if (!(s > 0.0f && s <= MOE_QUANT_SCALE_MAX)) // also NaN
            return moe_safetensors_fail(err, MOE_EFORMAT, path,
                          "tensor '%s': scale %zu is %g; scales must be finite, positive and at most %g", nb, g,
                          (double)s, (double)MOE_QUANT_SCALE_MAX);
        int32_t z = 0;
        if (zp)
            memcpy(&z, (const unsigned char *)zp->data + g * sizeof z, sizeof z);
        if (z < -128 || z > 127)
            return moe_safetensors_fail(err, MOE_EFORMAT, path, "tensor '%s': zero point %zu is %d, outside the int8 range [-128, 127]",
                          nb, g, (int)z);
    }
    if (ret)
        *ret = (struct moe_quant_spec){ zp ? MOE_QUANT_ASYM : MOE_QUANT_SYM, gran };
    if (ret_scale)
        *ret_scale = sc;
    if (ret_zero)
        *ret_zero = zp;
    return 0;
}

int moe_quant_is_part(const struct moe_st_file *f, const struct moe_params *p, const char *name)
{
    size_t n = strlen(name);
    const char *suffix[2] = { MOE_QUANT_SCALE_SUFFIX, MOE_QUANT_ZERO_SUFFIX };
    for (int k = 0; k < 2; k++) {
        size_t m = strlen(suffix[k]);
        if (n <= m || n - m >= MOE_NAME_MAX || strcmp(name + n - m, suffix[k]) != 0)
            continue;
        char base[MOE_NAME_MAX];
        memcpy(base, name, n - m);
        base[n - m] = '\0';
        const struct moe_st_entry *e = moe_safetensors_find(f, base);
        if (e && e->dtype == MOE_I8 && (!p || moe_params_find(p, base) >= 0))
            return 1;
    }
    return 0;
}

// The decoder moe_safetensors_load_params_dec calls for I8 registry tensors.
static int dec_check(const struct moe_st_file *f, const struct moe_st_entry *e, struct moe_err *err)
{
    return moe_quant_check(f, e, NULL, NULL, NULL, err);
}

static int dec_load(const struct moe_st_file *f, const struct moe_st_entry *e, float *w, size_t first, size_t n,
                    struct moe_err *err)
{
    const struct moe_st_entry *sc, *zp;
    struct moe_quant_spec spec;
    int rc = moe_quant_check(f, e, &spec, &sc, &zp, err);
    if (rc)
        return rc;
    size_t n_groups, len;
    if ((rc = moe_quant_groups(e->ndim, e->shape, spec.gran, &n_groups, &len, err)))
        return rc;
    // the scales and zero points aligned (the file's need not be)
    float *scale = malloc(n_groups * sizeof *scale);
    int32_t *zero = zp ? malloc(n_groups * sizeof *zero) : NULL;
    if (!scale || (zp && !zero)) {
        free(scale);
        free(zero);
        return moe_safetensors_fail(err, MOE_ENOMEM, f->path, "out of memory");
    }
    memcpy(scale, sc->data, n_groups * sizeof *scale);
    if (zp)
        memcpy(zero, zp->data, n_groups * sizeof *zero);
    moe_dequant_int8(w, (const int8_t *)e->data + first, scale, zero, len, first, n);
    free(scale);
    free(zero);
    return 0;
}

static const struct moe_st_decoder quant_decoder = { MOE_I8, "quantized", dec_check, moe_quant_is_part, dec_load };

int moe_quant_load_params(const struct moe_st_file *f, struct moe_params *p, int allow_extra,
                          struct moe_err *err)
{
    return moe_safetensors_load_params_dec(f, p, allow_extra, &quant_decoder, err);
}

// ---------------------------------------------------------------- writing

struct qbuf {
    int8_t *q;
    float *scale;
    int32_t *zero;
    char sname[MOE_NAME_MAX + 16], zname[MOE_NAME_MAX + 16];
};

int moe_quant_write_params(const char *path, const struct moe_params *p, const struct moe_quant_spec *spec,
                           const struct moe_st_ref *extra, size_t n_extra, const struct moe_st_meta *meta,
                           size_t n_meta, struct moe_err *err)
{
    size_t n_q = 0;
    for (size_t i = 0; spec && p && i < p->n; i++)
        n_q += spec[i].scheme != MOE_QUANT_NONE;
    if (!n_q) // nothing quantized: the plain writer's very file
        return moe_safetensors_write_params(path, p, extra, n_extra, meta, n_meta, err);
    if (!path)
        return moe_error(err, MOE_EINVAL, "checkpoint: no path given");
    if (!p->data)
        return moe_safetensors_fail(err, MOE_EINVAL, path, "parameter registry is not allocated");
    if (moe_params_sharded(p))
        return moe_safetensors_fail(err, MOE_EINVAL, path, "a sharded parameter registry (expert parallelism) is not quantized");
    if (n_extra && !extra)
        return moe_safetensors_fail(err, MOE_EINVAL, path, "null extra tensor array");
    size_t total = p->n + 2 * n_q + n_extra;
    struct moe_st_ref *refs = calloc(total + 1, sizeof *refs);
    struct qbuf *qb = calloc(p->n + 1, sizeof *qb);
    int rc = 0;
    char nb[SAFE_LEN];
    if (!refs || !qb) {
        rc = moe_safetensors_fail(err, MOE_ENOMEM, path, "out of memory");
        goto out;
    }
    size_t k = 0;
    for (size_t i = 0; i < p->n; i++) {
        const struct moe_tensor *t = &p->t[i];
        const float *w = moe_params_data(p, (int)i);
        struct moe_st_ref *r = &refs[k++];
        r->name = t->name;
        r->ndim = t->ndim;
        memcpy(r->shape, t->shape, sizeof r->shape);
        if (spec[i].scheme == MOE_QUANT_NONE) {
            r->dtype = MOE_F32;
            r->data = w;
            continue;
        }
        moe_msg_str(t->name, nb, sizeof nb);
        size_t n_groups, len;
        struct moe_err e2 = { 0 };
        if ((rc = moe_quant_groups(t->ndim, t->shape, spec[i].gran, &n_groups, &len, &e2))) {
            rc = moe_safetensors_fail(err, rc, path, "tensor '%s': %s", nb, e2.msg);
            goto out;
        }
        struct qbuf *b = &qb[i];
        int asym = spec[i].scheme == MOE_QUANT_ASYM;
        b->q = malloc(t->numel + 1);
        b->scale = malloc((n_groups + 1) * sizeof *b->scale);
        b->zero = asym ? malloc((n_groups + 1) * sizeof *b->zero) : NULL;
        if (!b->q || !b->scale || (asym && !b->zero)) {
            rc = moe_safetensors_fail(err, MOE_ENOMEM, path, "out of memory");
            goto out;
        }
        if ((rc = moe_quant_int8(w, n_groups, len, spec[i].scheme, b->q, b->scale, b->zero, &e2))) {
            rc = moe_safetensors_fail(err, rc, path, "tensor '%s': %s", nb, e2.msg);
            goto out;
        }
        r->dtype = MOE_I8;
        r->data = b->q;
        // the scales (and zero points): [] per tensor, the shape less its last dimension per channel
        int snd = spec[i].gran == MOE_QUANT_PER_TENSOR ? 0 : t->ndim - 1;
        snprintf(b->sname, sizeof b->sname, "%s" MOE_QUANT_SCALE_SUFFIX, t->name);
        struct moe_st_ref *rs = &refs[k++];
        *rs = (struct moe_st_ref){ .name = b->sname, .dtype = MOE_F32, .ndim = snd, .data = b->scale };
        memcpy(rs->shape, t->shape, (size_t)snd * sizeof rs->shape[0]);
        if (asym) {
            snprintf(b->zname, sizeof b->zname, "%s" MOE_QUANT_ZERO_SUFFIX, t->name);
            struct moe_st_ref *rz = &refs[k++];
            *rz = *rs;
            rz->name = b->zname;
            rz->dtype = MOE_I32;
            rz->data = b->zero;
        }
    }
    for (size_t i = 0; i < n_extra; i++)
        refs[k++] = extra[i];
    rc = moe_safetensors_write(path, refs, k, meta, n_meta, err);
out:
    for (size_t i = 0; qb && i < p->n; i++) {
        free(qb[i].q);
        free(qb[i].scale);
        free(qb[i].zero);
    }
    free(qb);
    free(refs);
    return rc;
}

int moe_quant_select(const struct moe_params *p, const char *const *globs, size_t n_globs, uint8_t *target,
                     struct moe_err *err)
{
    for (size_t g = 0; g < n_globs; g++) {
        int any = 0, matrix = 0;
        for (size_t i = 0; i < p->n; i++)
            if (fnmatch(globs[g], p->t[i].name, 0) == 0) {
                any = 1;
                matrix |= p->t[i].ndim == 2 || p->t[i].ndim == 3;
            }
        if (!any)
            return moe_error(err, MOE_EINVAL, "'%s' names no tensor of the model", globs[g]);
        if (!matrix)
            return moe_error(err, MOE_EINVAL, "'%s' names no 2-d or 3-d tensor (only weight matrices are quantized)",
                             globs[g]);
    }
    for (size_t i = 0; i < p->n; i++) {
        const struct moe_tensor *t = &p->t[i];
        target[i] = (t->ndim == 2 || t->ndim == 3) && !n_globs;
        for (size_t g = 0; !target[i] && g < n_globs && (t->ndim == 2 || t->ndim == 3); g++)
            target[i] = fnmatch(globs[g], t->name, 0) == 0;
    }
    return 0;
}

int moe_quant_fake(float *out, const float *w, int ndim, const size_t *shape, struct moe_quant_spec spec,
                   struct moe_err *err)
{
    size_t n_groups, len;
    int rc = moe_quant_groups(ndim, shape, spec.gran, &n_groups, &len, err);
    if (rc)
        return rc;
    size_t numel = n_groups * len;
    int8_t *q = malloc(numel ? numel : 1);
    float *scale = malloc((n_groups ? n_groups : 1) * sizeof *scale);
    int32_t *zero = malloc((n_groups ? n_groups : 1) * sizeof *zero);
    if (!q || !scale || !zero)
        rc = moe_error(err, MOE_ENOMEM, "out of memory quantizing %zu values", numel);
    else if (!(rc = moe_quant_int8(w, n_groups, len, spec.scheme, q, scale, zero, err)))
        moe_dequant_int8(out, q, scale, spec.scheme == MOE_QUANT_ASYM ? zero : NULL, len, 0, numel);
    free(q);
    free(scale);
    free(zero);
    return rc;
}

const char *moe_quant_scheme_name(enum moe_quant_scheme s)
{
    return s == MOE_QUANT_ASYM ? "asymmetric" : s == MOE_QUANT_SYM ? "symmetric" : "none";
}

const char *moe_quant_gran_name(enum moe_quant_gran g) { return g == MOE_QUANT_PER_TENSOR ? "tensor" : "channel"; }
