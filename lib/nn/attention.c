// attention.c: causal multi-head self-attention, forward and backward, over a packed qkv buffer.
// B = sequences, C = positions (context), D = n_embd, H = heads, hs = D / H (head size);
// t = query position, s = key position (s <= t), i = a column inside one head.
// qkv (B, C, 3D) holds [q | k | v] per position; att, datt (B, H, C, C); out, dout (B, C, D).
// Not here: the q/k/v and output projections (linear layers around this kernel), dropout,
// rotary or relative positions, key/value caches; and no BLIS (the per-head products are small).
// Work is split over (b, h) pairs only: each pair reads its own head's columns and writes its own
// rows of att/datt, its own head's columns of out and dqkv, and every sum runs in a fixed index
// order inside one pair, so the results are bit-identical for any OpenMP thread count.
// Kernels never allocate; per-element sums use double accumulators on the stack, ACC columns at a time.
// The `omp simd` loops run across columns, each column's sum still in s (or t) order: vectorising them
// reassociates nothing (and ISO C mode does not contract to FMA), so the vector width cannot change a value.
#include <assert.h>
#include <math.h>

#include "nn/nn.h"

#define ACC 64 // columns of a head accumulated in double per pass

// dst[s] = (float)(scale * (x . y_s)) for s < n, y_s = y + s * ldy, each dot summed in double in index
// order; four rows of y at a time so the four sums do not wait on each other (same result per s).
static void row_dots(float *dst, const float *x, const float *y, size_t ldy, size_t n, size_t hs, double scale)
{
    size_t s = 0;
    for (; s + 4 <= n; s += 4) {
        const float *y0 = y + s * ldy, *y1 = y0 + ldy, *y2 = y1 + ldy, *y3 = y2 + ldy;
        double d0 = 0.0, d1 = 0.0, d2 = 0.0, d3 = 0.0;
        for (size_t i = 0; i < hs; i++) {
            double xi = x[i];
            d0 += xi * y0[i];
            d1 += xi * y1[i];
            d2 += xi * y2[i];
            d3 += xi * y3[i];
        }
        dst[s] = (float)(d0 * scale);
        dst[s + 1] = (float)(d1 * scale);
        dst[s + 2] = (float)(d2 * scale);
        dst[s + 3] = (float)(d3 * scale);
    }
    for (; s < n; s++) {
        const float *ys = y + s * ldy;
        double d = 0.0;
        for (size_t i = 0; i < hs; i++)
            d += (double)x[i] * ys[i];
        dst[s] = (float)(d * scale);
    }
}

// reference: Vaswani et al. 2017, "Attention Is All You Need" (NeurIPS), scaled dot-product attention
//   out_t = sum_{s <= t} P[t, s] v_s,  P[t, :] = softmax_{s <= t}(q_t . k_s / sqrt(hs)),
// with the decoder mask (future positions get probability 0), once per head.
static void head_forward(float *out, float *att, const float *qkv, size_t C, size_t D, size_t hs, size_t h)
{
    const size_t ld = 3 * D; // row stride of qkv
    const float *q = qkv + h * hs, *k = qkv + D + h * hs, *v = qkv + 2 * D + h * hs;
    const double scale = 1.0 / sqrt((double)hs);
    for (size_t t = 0; t < C; t++) {
        const float *qt = q + t * ld;
        float *at = att + t * C;
        // the scaled scores, kept in att[t, :], and their max (softmax is shift-invariant; subtracting
        // the max keeps exp <= 1, and exp(0) = 1 exactly, so a row of one entry is exactly 1)
        row_dots(at, qt, k, ld, t + 1, hs, scale);
        float mx = at[0];
        for (size_t s = 1; s <= t; s++)
            mx = at[s] > mx ? at[s] : mx;
        // the normaliser sums the stored (float) exponentials, so the stored row sums to 1 up to
        // the rounding of each probability
        double sum = 0.0;
        for (size_t s = 0; s <= t; s++) {
            at[s] = (float)exp((double)at[s] - (double)mx);
            sum += at[s];
        }
        const double inv = 1.0 / sum;
        for (size_t s = 0; s <= t; s++)
            at[s] = (float)((double)at[s] * inv);
        for (size_t s = t + 1; s < C; s++)
            at[s] = 0.0f;
        // out_t = sum_s P[t, s] v_s, in s order, ACC columns at a time
        float *ot = out + t * D + h * hs;
        for (size_t i0 = 0; i0 < hs; i0 += ACC) {
            size_t n = hs - i0 < ACC ? hs - i0 : ACC;
            double acc[ACC] = { 0 };
            for (size_t s = 0; s <= t; s++) {
                const double p = at[s];
                const float *vs = v + s * ld + i0;
                #pragma omp simd
                for (size_t i = 0; i < n; i++)
                    acc[i] += p * vs[i];
            }
            for (size_t i = 0; i < n; i++)
                ot[i0 + i] = (float)acc[i];
        }
    }
}

void moe_attention_forward(float *out, float *att, const float *qkv, size_t B, size_t C, size_t D, size_t H)
{
    assert(H > 0 && D % H == 0);
    const size_t hs = D / H;
    const size_t BH = B * H;
    #pragma omp parallel for schedule(static) if (BH > 1)
    for (size_t bh = 0; bh < BH; bh++) {
        size_t b = bh / H, h = bh % H;
        head_forward(out + b * C * D, att + bh * C * C, qkv + b * C * 3 * D, C, D, hs, h);
    }
}

// Backward of one head, with dP = dO v^T and dS the gradient of the scaled scores:
//   dP[t, s] = dout_t . v_s,  dS[t, s] = P[t, s] (dP[t, s] - sum_{s'} P[t, s'] dP[t, s'])
//   dq_t += sum_s dS[t, s] k_s / sqrt(hs),  dk_s += sum_{t >= s} dS[t, s] q_t / sqrt(hs),
//   dv_s += sum_{t >= s} P[t, s] dout_t.
// datt holds dP, then dS in place (entries above the diagonal are left untouched).
static void head_backward(float *dqkv, float *datt, const float *dout, const float *qkv, const float *att,
                          size_t C, size_t D, size_t hs, size_t h)
{
    const size_t ld = 3 * D;
    const size_t off = h * hs;
    const float *q = qkv + off, *k = qkv + D + off, *v = qkv + 2 * D + off;
    float *dq = dqkv + off, *dk = dqkv + D + off, *dv = dqkv + 2 * D + off;
    const double scale = 1.0 / sqrt((double)hs);

    for (size_t t = 0; t < C; t++) {
        const float *go = dout + t * D + off, *pt = att + t * C;
        float *dat = datt + t * C;
        row_dots(dat, go, v, ld, t + 1, hs, 1.0);
        // sum_s P[t, s] dP[t, s] over the stored dP, so a row of one entry gets dS = 0 exactly
        double pdp = 0.0;
        for (size_t s = 0; s <= t; s++)
            pdp += (double)pt[s] * dat[s];
        for (size_t s = 0; s <= t; s++)
            dat[s] = (float)((double)pt[s] * ((double)dat[s] - pdp));
    }

    for (size_t i0 = 0; i0 < hs; i0 += ACC) {
        size_t n = hs - i0 < ACC ? hs - i0 : ACC;
        // dq_t: a row of dS against the rows of k
        for (size_t t = 0; t < C; t++) {
            const float *gt = datt + t * C;
            double acc[ACC] = { 0 };
            for (size_t s = 0; s <= t; s++) {
                const double g = gt[s];
                const float *ks = k + s * ld + i0;
                #pragma omp simd
                for (size_t i = 0; i < n; i++)
                    acc[i] += g * ks[i];
            }
            float *dqt = dq + t * ld + i0;
            for (size_t i = 0; i < n; i++)
                dqt[i] += (float)(acc[i] * scale);
        }
        // dk_s and dv_s: a column of dS (of P) against the rows of q (of dout), t >= s
        for (size_t s = 0; s < C; s++) {
            double acck[ACC] = { 0 }, accv[ACC] = { 0 };
            for (size_t t = s; t < C; t++) {
                const double g = datt[t * C + s], p = att[t * C + s];
                const float *qt = q + t * ld + i0, *go = dout + t * D + off + i0;
                #pragma omp simd
                for (size_t i = 0; i < n; i++) {
                    acck[i] += g * qt[i];
                    accv[i] += p * go[i];
                }
            }
            float *dks = dk + s * ld + i0, *dvs = dv + s * ld + i0;
            for (size_t i = 0; i < n; i++) {
                dks[i] += (float)(acck[i] * scale);
                dvs[i] += (float)accv[i];
            }
        }
    }
}

void moe_attention_backward(float *dqkv, float *datt, const float *dout, const float *qkv, const float *att,
                            size_t B, size_t C, size_t D, size_t H)
{
    assert(H > 0 && D % H == 0);
    const size_t hs = D / H;
    const size_t BH = B * H;
    #pragma omp parallel for schedule(static) if (BH > 1)
    for (size_t bh = 0; bh < BH; bh++) {
        size_t b = bh / H, h = bh % H;
        head_backward(dqkv + b * C * 3 * D, datt + bh * C * C, dout + b * C * D, qkv + b * C * 3 * D,
                      att + bh * C * C, C, D, hs, h);
    }
}
