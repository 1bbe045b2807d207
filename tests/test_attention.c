// test_attention.c: causal multi-head self-attention and the token + position embedding of lib/nn:
// the forward against a naive double-precision twin, the fast float kernels against the library's
// reference twins (moe_attention_forward_ref / backward_ref: out, att and dqkv, on both of the fast
// kernels' paths), softmax rows (sum to 1, zero above the diagonal), causality, the special cases
// H = 1 and C = 1, backward against central finite differences (every element of qkv; wte and wpe
// with repeated token ids and ld = C + 1), accumulation into gradient buffers, and bit-identical
// results for 1, 2 and 3 OpenMP threads.
// Not here: the Transformer block around these kernels (test_transformer.c).
//
// Finite differences as in test_grad.c: a scalar loss L = sum out * W for a fixed random W,
// computed in double from the float outputs; the numeric derivative is (L(w+) - L(w-)) / (w+ - w-)
// with w+- = (float)(w +- h), h = 1e-3; tolerance |analytic - numeric| <= 2e-3 * max(1, |numeric|).
// Each case also asserts that the gradients it checks are not all tiny, so a zero gradient cannot
// pass. MOE_GRAD_VERBOSE=1 prints the worst relative error of each case.
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "core/rng.h"
#include "nn/nn.h"
#include "gradcheck.h"
#include "testutil.h"

#define H_KERNEL 1e-3f

static void report_worst(const char *what)
{
    if (getenv("MOE_GRAD_VERBOSE"))
        printf("%s: worst |analytic - numeric| / max(1, |numeric|) = %.3g (tolerance %.1g)\n", what, grad_worst,
               GRAD_TOL);
}

static void fill_nan(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = NAN;
}

// ---------------------------------------------------------------- naive twin

// The forward written straight from the definition, in double: for each (b, h, t) the scores, a
// softmax over s <= t, and the weighted sum of v. att_ref (B, H, C, C), out_ref (B, C, D); mag (B, C, D)
// is the same sum over |v|, the size of the terms that out_ref sums.
static void naive_attention(double *out_ref, double *mag, double *att_ref, const float *qkv, size_t B, size_t C, size_t D,
                            size_t H)
{
    size_t hs = D / H;
    for (size_t b = 0; b < B; b++)
        for (size_t h = 0; h < H; h++)
            for (size_t t = 0; t < C; t++) {
                double *a = att_ref + ((b * H + h) * C + t) * C;
                double mx = -INFINITY, sum = 0.0;
                for (size_t s = 0; s < C; s++) {
                    a[s] = 0.0;
                    if (s > t)
                        continue;
                    for (size_t i = 0; i < hs; i++)
                        a[s] += (double)qkv[(b * C + t) * 3 * D + h * hs + i] *
                                qkv[(b * C + s) * 3 * D + D + h * hs + i];
                    a[s] /= sqrt((double)hs);
                    mx = fmax(mx, a[s]);
                }
                for (size_t s = 0; s <= t; s++)
                    sum += a[s] = exp(a[s] - mx);
                for (size_t s = 0; s <= t; s++)
                    a[s] /= sum;
                for (size_t i = 0; i < hs; i++) {
                    double o = 0.0, m = 0.0;
                    for (size_t s = 0; s <= t; s++) {
                        double v = qkv[(b * C + s) * 3 * D + 2 * D + h * hs + i];
                        o += a[s] * v;
                        m += a[s] * fabs(v);
                    }
                    out_ref[(b * C + t) * D + h * hs + i] = o;
                    mag[(b * C + t) * D + h * hs + i] = m;
                }
            }
}

// A random qkv of the given scale, the kernel's forward on NaN-filled outputs (every entry must be
// written), and the twin. Tolerances, relative 1e-5: |att - twin| <= 1e-5 * max(|twin|, 1e-2), and
// |out - twin| <= 1e-5 * sum_s att |v_s| (relative to the terms summed: an output that cancels to near
// zero carries the absolute error of its terms, e.g. from the float rounding of scores ~25 before exp).
static void check_twin(size_t B, size_t C, size_t D, size_t H, float scale, uint32_t stream)
{
    size_t nqkv = B * C * 3 * D, nout = B * C * D, natt = B * H * C * C;
    float *qkv = malloc(nqkv * sizeof *qkv), *out = malloc(nout * sizeof *out), *att = malloc(natt * sizeof *att);
    double *out_ref = malloc(nout * sizeof *out_ref), *mag = malloc(nout * sizeof *mag);
    double *att_ref = malloc(natt * sizeof *att_ref);
    ck_assert(qkv && out && att && out_ref && mag && att_ref);
    fill_u(qkv, nqkv, stream, -scale, scale);
    fill_nan(out, nout);
    fill_nan(att, natt);
    moe_attention_forward(out, att, qkv, B, C, D, H);
    naive_attention(out_ref, mag, att_ref, qkv, B, C, D, H);
    double worst_out = 0.0, worst_att = 0.0;
    for (size_t i = 0; i < nout; i++)
        worst_out = fmax(worst_out, fabs(out[i] - out_ref[i]) / mag[i]);
    for (size_t i = 0; i < natt; i++)
        worst_att = fmax(worst_att, fabs(att[i] - att_ref[i]) / fmax(fabs(att_ref[i]), 1e-2));
    if (getenv("MOE_GRAD_VERBOSE"))
        printf("twin B=%zu C=%zu D=%zu H=%zu: worst relative error out %.3g, att %.3g (tolerance 1e-5)\n", B, C, D,
               H, worst_out, worst_att);
    for (size_t i = 0; i < nout; i++)
        ck_assert_msg(fabs(out[i] - out_ref[i]) <= 1e-5 * mag[i],
                      "B=%zu C=%zu D=%zu H=%zu: out[%zu] = %.9g, twin %.9g", B, C, D, H, i, out[i], out_ref[i]);
    for (size_t i = 0; i < natt; i++)
        ck_assert_msg(fabs(att[i] - att_ref[i]) <= 1e-5 * fmax(fabs(att_ref[i]), 1e-2),
                      "B=%zu C=%zu D=%zu H=%zu: att[%zu] = %.9g, twin %.9g", B, C, D, H, i, att[i], att_ref[i]);
    free(qkv), free(out), free(att), free(out_ref), free(mag), free(att_ref);
}

START_TEST(test_attention_twin)
{
    check_twin(2, 5, 8, 2, 1.0f, 100);     // the gradient-check shape
    check_twin(1, 7, 6, 1, 2.0f, 101);     // H = 1, peaked softmax
    check_twin(3, 16, 24, 3, 1.0f, 102);   // hs = 8, odd H
    check_twin(2, 64, 256, 4, 1.0f, 103);  // hs = 64: one full accumulator pass
    check_twin(1, 33, 160, 2, 1.0f, 104);  // hs = 80: a full and a partial pass
    check_twin(1, 128, 64, 8, 3.0f, 105);  // long rows, large scores
}
END_TEST

// ---------------------------------------------------------------- reference twin (library)

// |x| elementwise into a fresh copy
static double *abs_copy(const float *x, size_t n)
{
    double *y = malloc(n * sizeof *y);
    ck_assert(y);
    for (size_t i = 0; i < n; i++)
        y[i] = fabs((double)x[i]);
    return y;
}

// The size of the terms each element of dqkv sums, in double, from the twin's probabilities p:
// with dPa[t, s] = sum_i |dout_t,i| |v_s,i| and dSa[t, s] = p[t, s] (dPa[t, s] + sum_s' p[t, s'] dPa[t, s'])
// (the size of the terms of dS), mag_dq_t = sum_s dSa[t, s] |k_s| / sqrt(hs), mag_dk_s = sum_t dSa[t, s]
// |q_t| / sqrt(hs), mag_dv_s = sum_t p[t, s] |dout_t|. mag (B, C, 3D) is laid out like dqkv.
static void backward_mag(double *mag, const float *qkv, const float *dout, const float *p, size_t B, size_t C,
                         size_t D, size_t H)
{
    size_t hs = D / H, ld = 3 * D;
    double scale = 1.0 / sqrt((double)hs);
    double *aq = abs_copy(qkv, B * C * ld), *ag = abs_copy(dout, B * C * D), *dsa = malloc(C * C * sizeof *dsa);
    ck_assert(dsa);
    memset(mag, 0, B * C * ld * sizeof *mag);
    for (size_t b = 0; b < B; b++)
        for (size_t h = 0; h < H; h++) {
            const double *q = aq + b * C * ld + h * hs, *k = q + D, *v = q + 2 * D, *g = ag + b * C * D + h * hs;
            const float *pb = p + (b * H + h) * C * C;
            double *mq = mag + b * C * ld + h * hs, *mk = mq + D, *mv = mq + 2 * D;
            for (size_t t = 0; t < C; t++) {
                double pdpa = 0.0;
                for (size_t s = 0; s <= t; s++) {
                    double d = 0.0;
                    for (size_t i = 0; i < hs; i++)
                        d += g[t * D + i] * v[s * ld + i];
                    dsa[t * C + s] = d;
                    pdpa += pb[t * C + s] * d;
                }
                for (size_t s = 0; s <= t; s++)
                    dsa[t * C + s] = pb[t * C + s] * (dsa[t * C + s] + pdpa);
            }
            for (size_t t = 0; t < C; t++)
                for (size_t s = 0; s <= t; s++)
                    for (size_t i = 0; i < hs; i++) {
                        mq[t * ld + i] += dsa[t * C + s] * k[s * ld + i] * scale;
                        mk[s * ld + i] += dsa[t * C + s] * q[t * ld + i] * scale;
                        mv[s * ld + i] += pb[t * C + s] * g[t * D + i];
                    }
        }
    free(aq), free(ag), free(dsa);
}

// The fast kernels against the reference twins on the same random inputs: forward on NaN-filled
// out and att (every entry must be written); backward from the twin's att into dqkv that starts
// at the same nonzero values in both (both add) and a NaN-filled datt (scratch).
// Tolerance, relative 2e-5 of the size of the terms each element sums:
//   att: |att - twin| <= 2e-5 * max(|twin|, 1e-2); out: |out - twin| <= 2e-5 * sum_s att |v_s|;
//   dqkv: |dqkv - twin| <= 2e-5 * (mag + |twin|), mag from backward_mag (|twin| covers the rounding of
//   the final add into the starting value).
// Why 2e-5: the fast kernels sum in float (unit roundoff u = 6e-8), the twin in double, so the
// difference is the float rounding of sums of up to hs + C terms: bounded by about (hs + C) u ~ 2e-5
// of the terms' size at C = 256, hs = 64 in the worst case, and a random walk in practice
// (sqrt(n) u, ~1e-6: MOE_GRAD_VERBOSE=1 prints the worst ratios, all below 2e-6). A wrong mask, a
// missing or doubled term, a wrong scale or a wrong transpose are errors of order 1e-2 .. 1. The
// att floor 1e-2 is that of the naive-twin test above: a probability p carries an absolute error
// of about the score's rounding (|score| u, scores ~25 for the peaked case) times p.
static void check_ref_twin(size_t B, size_t C, size_t D, size_t H, float scale, uint32_t stream)
{
    const double tol = 2e-5;
    size_t nqkv = B * C * 3 * D, nout = B * C * D, natt = B * H * C * C;
    float *qkv = malloc(nqkv * sizeof(float)), *dout = malloc(nout * sizeof(float));
    float *out = malloc(nout * sizeof(float)), *att = malloc(natt * sizeof(float));
    float *out_r = malloc(nout * sizeof(float)), *att_r = malloc(natt * sizeof(float));
    float *dqkv = malloc(nqkv * sizeof(float)), *dqkv_r = malloc(nqkv * sizeof(float));
    float *datt = malloc(natt * sizeof(float));
    double *mag = malloc(nqkv * sizeof(double));
    ck_assert(qkv && dout && out && att && out_r && att_r && dqkv && dqkv_r && datt && mag);
    fill_u(qkv, nqkv, stream, -scale, scale);
    fill_u(dout, nout, stream + 1, -1, 1);
    fill_nan(out, nout);
    fill_nan(att, natt);
    moe_attention_forward(out, att, qkv, B, C, D, H);
    moe_attention_forward_ref(out_r, att_r, qkv, B, C, D, H);

    double worst_out = 0.0, worst_att = 0.0, worst_d = 0.0;
    for (size_t i = 0; i < natt; i++) {
        double bound = fmax(fabs(att_r[i]), 1e-2);
        worst_att = fmax(worst_att, fabs(att[i] - att_r[i]) / bound);
        ck_assert_msg(fabs(att[i] - att_r[i]) <= tol * bound, "B=%zu C=%zu D=%zu H=%zu: att[%zu] = %.9g, twin %.9g",
                      B, C, D, H, i, att[i], att_r[i]);
    }
    size_t hs = D / H;
    for (size_t b = 0; b < B; b++)
        for (size_t t = 0; t < C; t++)
            for (size_t j = 0; j < D; j++) {
                size_t h = j / hs, o = (b * C + t) * D + j;
                double m = 0.0;
                for (size_t s = 0; s <= t; s++)
                    m += att_r[((b * H + h) * C + t) * C + s] * fabs(qkv[(b * C + s) * 3 * D + 2 * D + j]);
                worst_out = fmax(worst_out, fabs(out[o] - out_r[o]) / m);
                ck_assert_msg(fabs(out[o] - out_r[o]) <= tol * m, "B=%zu C=%zu D=%zu H=%zu: out[%zu] = %.9g, twin %.9g",
                              B, C, D, H, o, out[o], out_r[o]);
            }

    fill_u(dqkv, nqkv, stream + 2, -1, 1);
    memcpy(dqkv_r, dqkv, nqkv * sizeof(float));
    fill_nan(datt, natt);
    moe_attention_backward(dqkv, datt, dout, qkv, att_r, B, C, D, H);
    fill_nan(datt, natt);
    moe_attention_backward_ref(dqkv_r, datt, dout, qkv, att_r, B, C, D, H);
    backward_mag(mag, qkv, dout, att_r, B, C, D, H);
    for (size_t i = 0; i < nqkv; i++) {
        double bound = mag[i] + fabs(dqkv_r[i]);
        worst_d = fmax(worst_d, fabs(dqkv[i] - dqkv_r[i]) / bound);
        ck_assert_msg(fabs(dqkv[i] - dqkv_r[i]) <= tol * bound,
                      "B=%zu C=%zu D=%zu H=%zu: dqkv[%zu] = %.9g, twin %.9g (terms %.3g)", B, C, D, H, i, dqkv[i],
                      dqkv_r[i], mag[i]);
    }
    if (getenv("MOE_GRAD_VERBOSE"))
        printf("ref twin B=%zu C=%zu D=%zu H=%zu: worst relative error out %.3g, att %.3g, dqkv %.3g (tolerance %.0e)\n",
               B, C, D, H, worst_out, worst_att, worst_d, tol);
    free(qkv), free(dout), free(out), free(att), free(out_r), free(att_r), free(dqkv), free(dqkv_r), free(datt);
    free(mag);
}

START_TEST(test_attention_ref_twin)
{
    // the shapes of the naive-twin test
    check_ref_twin(2, 5, 8, 2, 1.0f, 140);
    check_ref_twin(1, 7, 6, 1, 2.0f, 141);
    check_ref_twin(3, 16, 24, 3, 1.0f, 142);
    check_ref_twin(2, 64, 256, 4, 1.0f, 143);
    check_ref_twin(1, 33, 160, 2, 1.0f, 144); // hs = 80: the GEMM path
    check_ref_twin(1, 128, 64, 8, 3.0f, 145);
    // the shapes that matter, at B = 2
    check_ref_twin(2, 64, 64, 4, 1.0f, 146);   // small (experiments/common/lm.json): hs = 16
    check_ref_twin(2, 256, 256, 4, 1.0f, 147); // base: hs = 64, C = 256
    // head sizes that are not multiples of 8 or 16 (the tile path's column tails), C not a
    // multiple of 4 or 16 (its row, key and tile tails)
    check_ref_twin(2, 9, 10, 2, 1.0f, 148);  // hs = 5
    check_ref_twin(2, 11, 12, 2, 2.0f, 149); // hs = 6
    check_ref_twin(1, 37, 26, 2, 1.0f, 150); // hs = 13: 8 + 5
    check_ref_twin(1, 21, 40, 2, 1.0f, 151); // hs = 20: 16 + 4
    check_ref_twin(1, 2, 24, 1, 1.0f, 152);  // hs = 24: 16 + 8, C = 2
    // the GEMM path (hs > 64) over two blocks of query rows, the second partial
    check_ref_twin(1, 200, 256, 2, 1.0f, 153); // hs = 128
    check_ref_twin(1, 1, 144, 2, 1.0f, 154);   // hs = 72, C = 1
}
END_TEST

// Every row of att sums to 1, is positive on and below the diagonal (the scores are bounded)
// and exactly 0 above it, even when att held garbage before.
START_TEST(test_attention_rows)
{
    enum { B = 2, C = 9, D = 12, H = 3 };
    static float qkv[B * C * 3 * D], out[B * C * D], att[B * H * C * C];
    fill_u(qkv, B * C * 3 * D, 110, -2, 2);
    fill_nan(att, B * H * C * C);
    moe_attention_forward(out, att, qkv, B, C, D, H);
    for (size_t r = 0; r < B * H * C; r++) {
        size_t t = r % C;
        double sum = 0.0;
        for (size_t s = 0; s < C; s++) {
            float p = att[r * C + s];
            if (s > t) {
                ck_assert_msg(p == 0.0f && !signbit(p), "row %zu: att[%zu] = %g above the diagonal", r, s, p);
            } else {
                ck_assert_msg(p > 0.0f && p <= 1.0f, "row %zu: att[%zu] = %g", r, s, p);
                sum += p;
            }
        }
        ck_assert_msg(fabs(sum - 1.0) <= 1e-6, "row %zu sums to %.9g", r, sum);
    }
    // the first row of each head attends only to itself
    for (size_t bh = 0; bh < B * H; bh++)
        ck_assert_float_eq(att[bh * C * C], 1.0f);
}
END_TEST

// Changing q, k or v at position s leaves out at every t < s bit-identical (and att rows t < s),
// and changes out at t = s.
START_TEST(test_attention_causal)
{
    enum { B = 2, C = 6, D = 8, H = 2 };
    static float qkv[B * C * 3 * D], qkv2[B * C * 3 * D], out[B * C * D], out2[B * C * D];
    static float att[B * H * C * C], att2[B * H * C * C];
    fill_u(qkv, B * C * 3 * D, 120, -1, 1);
    moe_attention_forward(out, att, qkv, B, C, D, H);
    for (size_t part = 0; part < 3; part++) { // q, k, v
        for (size_t s = 1; s < C; s++) {
            memcpy(qkv2, qkv, sizeof qkv);
            for (size_t b = 0; b < B; b++)
                for (size_t i = 0; i < D; i++)
                    qkv2[(b * C + s) * 3 * D + part * D + i] += 0.5f + 0.1f * (float)i;
            moe_attention_forward(out2, att2, qkv2, B, C, D, H);
            for (size_t b = 0; b < B; b++) {
                ck_assert_mem_eq(out2 + b * C * D, out + b * C * D, s * D * sizeof(float));
                for (size_t h = 0; h < H; h++)
                    ck_assert_mem_eq(att2 + (b * H + h) * C * C, att + (b * H + h) * C * C, s * C * sizeof(float));
                double diff = 0.0;
                for (size_t i = 0; i < D; i++)
                    diff += fabs(out2[(b * C + s) * D + i] - out[(b * C + s) * D + i]);
                ck_assert_msg(diff > 1e-4, "part %zu, s = %zu: out at t = s did not change", part, s);
            }
        }
    }
}
END_TEST

// C = 1: one position attends only to itself, so att = 1 and out = v bit for bit; the gradient
// passes straight to v (dq = dk = 0 exactly). H = 1 is covered by the twin and the gradient checks.
START_TEST(test_attention_one_position)
{
    enum { B = 3, C = 1, D = 12, H = 4 };
    float qkv[B * C * 3 * D], out[B * C * D], att[B * H * C * C], dout[B * C * D];
    float dqkv[B * C * 3 * D], datt[B * H * C * C];
    fill_u(qkv, B * C * 3 * D, 130, -3, 3);
    fill_u(dout, B * C * D, 131, -1, 1);
    moe_attention_forward(out, att, qkv, B, C, D, H);
    for (size_t b = 0; b < B; b++)
        ck_assert_mem_eq(out + b * D, qkv + b * 3 * D + 2 * D, D * sizeof(float));
    for (size_t i = 0; i < B * H; i++)
        ck_assert_float_eq(att[i], 1.0f);
    memset(dqkv, 0, sizeof dqkv);
    fill_nan(datt, B * H * C * C);
    moe_attention_backward(dqkv, datt, dout, qkv, att, B, C, D, H);
    for (size_t b = 0; b < B; b++)
        for (size_t i = 0; i < D; i++) {
            ck_assert_float_eq(dqkv[b * 3 * D + i], 0.0f);
            ck_assert_float_eq(dqkv[b * 3 * D + D + i], 0.0f);
            ck_assert_float_eq(dqkv[b * 3 * D + 2 * D + i], dout[b * D + i]);
        }
}
END_TEST

// ---------------------------------------------------------------- attention gradient

struct att_ctx {
    size_t B, C, D, H;
    float *qkv, *w, *out, *att;
    float *attp;                   // attention dropout: the probabilities before it
    const struct moe_dropout *drop; // NULL: none
};

// L = sum_{b,t,j} out[b, t, j] w[b, t, j]
static double att_loss(void *p)
{
    struct att_ctx *c = p;
    moe_attention_forward_drop(c->out, c->att, c->attp, c->qkv, c->B, c->C, c->D, c->H, c->drop);
    double s = 0.0;
    for (size_t i = 0; i < c->B * c->C * c->D; i++)
        s += (double)c->out[i] * c->w[i];
    return s;
}

// dqkv against finite differences for every element of qkv. dqkv starts at known nonzero values
// (backward must add) and datt at NaN (it is scratch: nothing may be read before it is written).
// With attention dropout p > 0 (a fixed mask: seed, step and site do not change between the
// evaluations) the gradient is that of the dropped attention.
static void check_attention_grad_p(size_t B, size_t C, size_t D, size_t H, float scale, uint32_t stream, float p)
{
    size_t nqkv = B * C * 3 * D, nout = B * C * D, natt = B * H * C * C;
    struct moe_dropout drop = moe_dropout_make(p, 77, 5, 1, MOE_DROP_ATTN);
    struct att_ctx c = { B, C, D, H, malloc(nqkv * sizeof(float)), malloc(nout * sizeof(float)),
                         malloc(nout * sizeof(float)), malloc(natt * sizeof(float)), malloc(natt * sizeof(float)),
                         p > 0 ? &drop : NULL };
    float *dqkv = malloc(nqkv * sizeof(float)), *dqkv0 = malloc(nqkv * sizeof(float));
    float *datt = malloc(natt * sizeof(float)), *a = malloc(nqkv * sizeof(float));
    ck_assert(c.qkv && c.w && c.out && c.att && dqkv && dqkv0 && datt && a);
    fill_u(c.qkv, nqkv, stream, -scale, scale);
    fill_u(c.w, nout, stream + 1, -1, 1);
    fill_u(dqkv0, nqkv, stream + 2, -1, 1);
    memcpy(dqkv, dqkv0, nqkv * sizeof(float));
    fill_nan(datt, natt);
    att_loss(&c);
    moe_attention_backward_drop(dqkv, datt, c.w, c.qkv, c.att, c.attp, B, C, D, H, c.drop);
    for (size_t i = 0; i < nqkv; i++)
        a[i] = dqkv[i] - dqkv0[i];

    char what[96];
    snprintf(what, sizeof what, "attention dqkv B=%zu C=%zu D=%zu H=%zu dropout %g", B, C, D, H, (double)p);
    grad_worst = 0.0;
    for (size_t i = 0; i < nqkv; i++)
        check_grad(a[i], numeric_grad(&c.qkv[i], H_KERNEL, att_loss, &c), what, i);
    // each of dq, dk, dv is checked on something that is not all tiny
    double m[3] = { 0, 0, 0 };
    for (size_t i = 0; i < nqkv; i++)
        m[i % (3 * D) / D] = fmax(m[i % (3 * D) / D], fabs(a[i]));
    if (C > 1) {
        ck_assert_msg(m[0] > 0.05, "%s: max |dq| = %g", what, m[0]);
        ck_assert_msg(m[1] > 0.05, "%s: max |dk| = %g", what, m[1]);
    }
    ck_assert_msg(m[2] > 0.1, "%s: max |dv| = %g", what, m[2]);
    report_worst(what);
    free(c.qkv), free(c.w), free(c.out), free(c.att), free(c.attp), free(dqkv), free(dqkv0), free(datt), free(a);
}

static void check_attention_grad(size_t B, size_t C, size_t D, size_t H, float scale, uint32_t stream)
{
    check_attention_grad_p(B, C, D, H, scale, stream, 0.0f);
}

START_TEST(test_attention_grad)
{
    check_attention_grad(2, 5, 8, 2, 1.0f, 200);
}
END_TEST

START_TEST(test_attention_grad_special)
{
    check_attention_grad(2, 6, 6, 1, 2.0f, 210);   // H = 1, peaked softmax
    check_attention_grad(2, 1, 8, 2, 1.0f, 220);   // C = 1
    check_attention_grad(1, 4, 144, 2, 1.0f, 230); // hs = 72 > the 64-column accumulator
}
END_TEST

// Attention-probability dropout: gradients on both paths (tiles, hs <= 64, and GEMMs); the forward
// keeps the plain probabilities in attp bit for bit, att = attp * m / (1 - p) with about p of the
// causal entries dropped, the mask the same at 1 and 2 threads and different at another step; off
// (NULL or p = 0) is the plain kernel bit for bit.
START_TEST(test_attention_dropout)
{
    check_attention_grad_p(2, 5, 8, 2, 1.0f, 240, 0.3f);
    check_attention_grad_p(1, 4, 144, 2, 1.0f, 250, 0.5f);
    enum { DB = 2, DC = 16, DD = 16, DH = 2 };
    size_t nqkv = DB * DC * 3 * DD, nout = DB * DC * DD, natt = DB * DH * DC * DC;
    float *qkv = malloc(nqkv * sizeof(float)), *out0 = malloc(nout * sizeof(float)),
          *att0 = malloc(natt * sizeof(float)), *out = malloc(nout * sizeof(float)),
          *att = malloc(natt * sizeof(float)), *attp = malloc(natt * sizeof(float)),
          *att2 = malloc(natt * sizeof(float)), *out2 = malloc(nout * sizeof(float));
    ck_assert(qkv && out0 && att0 && out && att && attp && att2 && out2);
    fill_u(qkv, nqkv, 260, -1, 1);
    moe_attention_forward(out0, att0, qkv, DB, DC, DD, DH);
    struct moe_dropout off = moe_dropout_make(0.0, 1, 2, 0, MOE_DROP_ATTN);
    moe_attention_forward_drop(out, att, NULL, qkv, DB, DC, DD, DH, &off);
    ck_assert_mem_eq(out, out0, nout * sizeof(float));
    ck_assert_mem_eq(att, att0, natt * sizeof(float));
    const float p = 0.25f;
    struct moe_dropout d = moe_dropout_make(p, 1, 2, 0, MOE_DROP_ATTN);
    omp_set_num_threads(1);
    moe_attention_forward_drop(out, att, attp, qkv, DB, DC, DD, DH, &d);
    omp_set_num_threads(2);
    moe_attention_forward_drop(out2, att2, attp, qkv, DB, DC, DD, DH, &d);
    ck_assert_mem_eq(out, out2, nout * sizeof(float));
    ck_assert_mem_eq(att, att2, natt * sizeof(float));
    ck_assert_mem_eq(attp, att0, natt * sizeof(float));
    size_t causal = 0, dropped = 0;
    for (size_t bh = 0; bh < DB * DH; bh++)
        for (size_t t = 0; t < DC; t++)
            for (size_t s = 0; s <= t; s++) {
                size_t i = (bh * DC + t) * DC + s;
                int keep = moe_dropout_keep(&d, i);
                ck_assert_float_eq(att[i], keep ? att0[i] * (1.0f / (1.0f - p)) : 0.0f);
                causal++;
                dropped += !keep;
            }
    double rate = (double)dropped / (double)causal;
    ck_assert_msg(rate > 0.17 && rate < 0.33, "dropped %zu of %zu", dropped, causal);
    struct moe_dropout d2 = moe_dropout_make(p, 1, 3, 0, MOE_DROP_ATTN);
    moe_attention_forward_drop(out2, att2, attp, qkv, DB, DC, DD, DH, &d2);
    ck_assert(memcmp(att, att2, natt * sizeof(float)) != 0);
    free(qkv), free(out0), free(att0), free(out), free(att), free(attp), free(att2), free(out2);
}
END_TEST

// Calling backward twice doubles the gradient (it adds, and does not depend on datt's contents).
START_TEST(test_attention_accumulate)
{
    enum { B = 2, C = 7, D = 12, H = 3 };
    static float qkv[B * C * 3 * D], out[B * C * D], att[B * H * C * C], dout[B * C * D];
    static float dqkv[B * C * 3 * D], dqkv1[B * C * 3 * D], datt[B * H * C * C];
    fill_u(qkv, B * C * 3 * D, 240, -1, 1);
    fill_u(dout, B * C * D, 241, -1, 1);
    moe_attention_forward(out, att, qkv, B, C, D, H);
    memset(dqkv, 0, sizeof dqkv);
    moe_attention_backward(dqkv, datt, dout, qkv, att, B, C, D, H);
    memcpy(dqkv1, dqkv, sizeof dqkv);
    ck_assert_double_gt(max_abs(dqkv1, B * C * 3 * D), 0.1);
    moe_attention_backward(dqkv, datt, dout, qkv, att, B, C, D, H);
    for (size_t i = 0; i < B * C * 3 * D; i++)
        ck_assert_float_eq_tol(dqkv[i], 2.0f * dqkv1[i], 1e-6f * (1.0f + fabsf(dqkv1[i])));
}
END_TEST

// ---------------------------------------------------------------- threads

#ifdef _OPENMP
struct att_run {
    float *out, *att, *dqkv, *datt;
};

static void run_threads(struct att_run *r, int threads, const float *qkv, const float *dout, size_t B, size_t C,
                        size_t D, size_t H)
{
    omp_set_num_threads(threads);
    ck_assert_int_eq(omp_get_max_threads(), threads);
    fill_nan(r->out, B * C * D);
    fill_nan(r->att, B * H * C * C);
    fill_nan(r->datt, B * H * C * C);
    memset(r->dqkv, 0, B * C * 3 * D * sizeof(float));
    moe_attention_forward(r->out, r->att, qkv, B, C, D, H);
    moe_attention_backward(r->dqkv, r->datt, dout, qkv, r->att, B, C, D, H);
    omp_set_num_threads(1);
}

// out, att and dqkv are bit-identical for 1, 2 and 3 threads (3 does not divide B * H).
START_TEST(test_attention_threads)
{
    enum { B = 2, C = 64, D = 128, H = 4 };
    const size_t nqkv = B * C * 3 * D, nout = B * C * D, natt = B * H * C * C;
    float *qkv = malloc(nqkv * sizeof(float)), *dout = malloc(nout * sizeof(float));
    struct att_run r[3];
    for (int k = 0; k < 3; k++) {
        r[k].out = malloc(nout * sizeof(float));
        r[k].att = malloc(natt * sizeof(float));
        r[k].dqkv = malloc(nqkv * sizeof(float));
        r[k].datt = malloc(natt * sizeof(float));
        ck_assert(r[k].out && r[k].att && r[k].dqkv && r[k].datt);
    }
    ck_assert(qkv && dout);
    fill_u(qkv, nqkv, 300, -2, 2);
    fill_u(dout, nout, 301, -1, 1);
    for (int k = 0; k < 3; k++)
        run_threads(&r[k], k + 1, qkv, dout, B, C, D, H);
    for (int k = 1; k < 3; k++) {
        ck_assert_mem_eq(r[k].out, r[0].out, nout * sizeof(float));
        ck_assert_mem_eq(r[k].att, r[0].att, natt * sizeof(float));
        ck_assert_mem_eq(r[k].dqkv, r[0].dqkv, nqkv * sizeof(float));
    }
    ck_assert_double_gt(max_abs(r[0].dqkv, nqkv), 0.1);
    for (int k = 0; k < 3; k++)
        free(r[k].out), free(r[k].att), free(r[k].dqkv), free(r[k].datt);
    free(qkv), free(dout);
}
END_TEST

// The same on the GEMM path (hs = 128 > 64) with C over one block of query rows.
START_TEST(test_attention_threads_gemm)
{
    enum { B = 1, C = 150, D = 384, H = 3 };
    const size_t nqkv = B * C * 3 * D, nout = B * C * D, natt = B * H * C * C;
    float *qkv = malloc(nqkv * sizeof(float)), *dout = malloc(nout * sizeof(float));
    struct att_run r[3];
    for (int k = 0; k < 3; k++) {
        r[k].out = malloc(nout * sizeof(float));
        r[k].att = malloc(natt * sizeof(float));
        r[k].dqkv = malloc(nqkv * sizeof(float));
        r[k].datt = malloc(natt * sizeof(float));
        ck_assert(r[k].out && r[k].att && r[k].dqkv && r[k].datt);
    }
    ck_assert(qkv && dout);
    fill_u(qkv, nqkv, 310, -2, 2);
    fill_u(dout, nout, 311, -1, 1);
    for (int k = 0; k < 3; k++)
        run_threads(&r[k], k + 1, qkv, dout, B, C, D, H);
    for (int k = 1; k < 3; k++) {
        ck_assert_mem_eq(r[k].out, r[0].out, nout * sizeof(float));
        ck_assert_mem_eq(r[k].att, r[0].att, natt * sizeof(float));
        ck_assert_mem_eq(r[k].dqkv, r[0].dqkv, nqkv * sizeof(float));
    }
    ck_assert_double_gt(max_abs(r[0].dqkv, nqkv), 0.1);
    for (int k = 0; k < 3; k++)
        free(r[k].out), free(r[k].att), free(r[k].dqkv), free(r[k].datt);
    free(qkv), free(dout);
}
END_TEST
#endif

// ---------------------------------------------------------------- embedding

enum { EB = 3, EC = 4, ED = 5, EV = 6, ELD = EC + 1, ECMAX = 7 };

// Windows of C + 1 ids (ld = C + 1); the last id of each row is never read and is -1 to prove it
// (the kernels assert id >= 0). Token 2 appears four times, 4 twice, 5 never.
static const int32_t etok[EB * ELD] = {
    2, 0, 2, 4, -1, //
    1, 2, 3, 4, -1, //
    2, 3, 0, 1, -1,
};

struct emb_ctx {
    float wte[EV * ED], wpe[ECMAX * ED], w[EB * EC * ED], out[EB * EC * ED];
};

static double emb_loss(void *p)
{
    struct emb_ctx *c = p;
    moe_embedding_forward(c->out, etok, ELD, c->wte, c->wpe, EB, EC, ED);
    double s = 0.0;
    for (size_t i = 0; i < EB * EC * ED; i++)
        s += (double)c->out[i] * c->w[i];
    return s;
}

START_TEST(test_embedding_forward)
{
    struct emb_ctx c;
    fill_u(c.wte, EV * ED, 400, -1, 1);
    fill_u(c.wpe, ECMAX * ED, 401, -1, 1);
    fill_nan(c.out, EB * EC * ED);
    moe_embedding_forward(c.out, etok, ELD, c.wte, c.wpe, EB, EC, ED);
    for (size_t b = 0; b < EB; b++)
        for (size_t t = 0; t < EC; t++)
            for (size_t i = 0; i < ED; i++)
                ck_assert_float_eq(c.out[(b * EC + t) * ED + i], c.wte[etok[b * ELD + t] * ED + i] + c.wpe[t * ED + i]);
}
END_TEST

// dwte and dwpe against finite differences (gradient buffers start nonzero: backward adds); the rows
// of dwte for tokens that do not occur and the rows of dwpe past C are left untouched.
START_TEST(test_embedding_grad)
{
    struct emb_ctx c;
    fill_u(c.wte, EV * ED, 410, -1, 1);
    fill_u(c.wpe, ECMAX * ED, 411, -1, 1);
    fill_u(c.w, EB * EC * ED, 412, -1, 1);
    float dwte[EV * ED], dwpe[ECMAX * ED], dwte0[EV * ED], dwpe0[ECMAX * ED], a[ECMAX * ED];
    fill_u(dwte0, EV * ED, 413, -1, 1);
    fill_u(dwpe0, ECMAX * ED, 414, -1, 1);
    memcpy(dwte, dwte0, sizeof dwte);
    memcpy(dwpe, dwpe0, sizeof dwpe);
    moe_embedding_backward(dwte, dwpe, c.w, etok, ELD, EB, EC, ED);

    grad_worst = 0.0;
    for (size_t i = 0; i < EV * ED; i++)
        a[i] = dwte[i] - dwte0[i];
    for (size_t i = 0; i < EV * ED; i++)
        check_grad(a[i], numeric_grad(&c.wte[i], H_KERNEL, emb_loss, &c), "embedding dwte", i);
    ck_assert_double_gt(max_abs(a, EV * ED), 0.5);
    ck_assert_mem_eq(dwte + 5 * ED, dwte0 + 5 * ED, ED * sizeof(float)); // token 5 does not occur
    for (size_t i = 0; i < ECMAX * ED; i++)
        a[i] = dwpe[i] - dwpe0[i];
    for (size_t i = 0; i < ECMAX * ED; i++)
        check_grad(a[i], numeric_grad(&c.wpe[i], H_KERNEL, emb_loss, &c), "embedding dwpe", i);
    ck_assert_double_gt(max_abs(a, ECMAX * ED), 0.5);
    ck_assert_mem_eq(dwpe + EC * ED, dwpe0 + EC * ED, (ECMAX - EC) * ED * sizeof(float));
    report_worst("embedding");

    // the closed form, summed in (b, t) order from zero: bit-identical
    float ze[EV * ED] = { 0 }, zp[ECMAX * ED] = { 0 }, re[EV * ED] = { 0 }, rp[ECMAX * ED] = { 0 };
    moe_embedding_backward(ze, zp, c.w, etok, ELD, EB, EC, ED);
    for (size_t b = 0; b < EB; b++)
        for (size_t t = 0; t < EC; t++)
            for (size_t i = 0; i < ED; i++) {
                re[etok[b * ELD + t] * ED + i] += c.w[(b * EC + t) * ED + i];
                rp[t * ED + i] += c.w[(b * EC + t) * ED + i];
            }
    ck_assert_mem_eq(ze, re, sizeof ze);
    ck_assert_mem_eq(zp, rp, sizeof zp);
}
END_TEST

static Suite *attention_suite(void)
{
    Suite *s = suite_create("attention");
    TCase *tc = tcase_create("attention");
    tcase_add_test(tc, test_attention_twin);
    tcase_add_test(tc, test_attention_ref_twin);
    tcase_add_test(tc, test_attention_rows);
    tcase_add_test(tc, test_attention_causal);
    tcase_add_test(tc, test_attention_one_position);
    tcase_add_test(tc, test_attention_grad);
    tcase_add_test(tc, test_attention_grad_special);
    tcase_add_test(tc, test_attention_accumulate);
    tcase_add_test(tc, test_attention_dropout);
#ifdef _OPENMP
    tcase_add_test(tc, test_attention_threads);
    tcase_add_test(tc, test_attention_threads_gemm);
#endif
    suite_add_tcase(s, tc);
    TCase *te = tcase_create("embedding");
    tcase_add_test(te, test_embedding_forward);
    tcase_add_test(te, test_embedding_grad);
    suite_add_tcase(s, te);
    return s;
}

int main(void)
{
    if (moe_test_init_blas(1))
        return 1;
    return moe_test_run(attention_suite());
}
