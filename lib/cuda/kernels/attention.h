// attention.h: causal multi-head self-attention (nn/attention.c), forward and
// backward, as host/device functions (core/hd.h).
//
// reference: Vaswani et al. 2017, "Attention Is All You Need" (NeurIPS),
// scaled dot-product attention with the decoder's causal mask, per head:
//   S[t, s] = q_t . k_s / sqrt(hs),  P[t, :] = softmax_{s <= t}(S[t, :]),  o_t = sum_{s <= t} P[t, s] v_s;
// its gradient (the softmax Jacobian applied row by row):
//   dP[t, s] = do_t . v_s,  dS[t, s] = P[t, s] (dP[t, s] - sum_{s' <= t} P[t, s'] dP[t, s']),
//   dq_t += sum_{s <= t} dS[t, s] k_s / sqrt(hs),  dk_s += sum_{t >= s} dS[t, s] q_t / sqrt(hs),
//   dv_s += sum_{t >= s} P[t, s] do_t.
// B = sequences, C = positions, D = n_embd, H = heads, hs = D / H; t = query
// position, s = key position, bh = b H + h. qkv (B, C, 3D) holds [q | k | v]
// per position (head h: columns h hs .. h hs + hs - 1 of each); out, dout (B,
// C, D); att, datt (B, H, C, C). The forward saves what the CPU's backward
// reads: the probabilities P in att, zeros above the diagonal.
//
// Threads (each value has one writer; no atomics):
//   forward:  the scores in tiles of MOE_K_ATTN_TILE queries x MOE_K_ATTN_TILE
//             keys of one (b, h), a block each: the tile's q and k rows staged
//             in shared memory, MOE_K_ATTN_CHUNK head dimensions at a time,
//             one thread per 4 elements (bh, t, s), each summing its own dot
//             product over the chunks in index order (moe_k_attn_dot_chunk:
//             the bits of moe_k_attn_dot); 0 for s > t, and tiles wholly
//             above the diagonal stage nothing;
//             MOE_K_ATTN_LANES per row (bh, t), lane j on keys j, j + 8, ...:
//             the max of the lanes' maxima subtracted, exp (the caller's),
//             each lane's part of the normaliser (moe_k_attn_lane_part), lane
//             0 the tree and the tail (moe_k_attn_lanes_finish), normalised;
//             one per element (b, t, column) of out: sum over s <= t.
//   backward: dP tiled as the scores (dout rows against v rows), 0 for s > t;
//             MOE_K_ATTN_LANES per row (bh, t): sum_s P dP as the normaliser,
//             then dS in place;
//             one per element (b, position, column) of dqkv: dq over s <= t,
//             dk and dv over t >= s, added to what is there.
//
// The order of operations is the CPU tile path's (nn/attention.c, hs <= 64),
// where every output element is one float accumulator summed in index order
// from +0 (mul, then add; no FMA on either side): the dot products over
// i = 0..hs-1, out and dq over s = 0..t, dk and dv over t = s..C-1; the
// softmax's normaliser and sum_s P dP over MOE_K_ATTN_LANES interleaved lanes
// (full groups of 8 only), joined in a fixed tree, then the tail in order; P =
// e (1 / sum). The tile path also adds the exact zeros of the masked entries
// next to the diagonal (its blocks of 4 rows), which change no sum of finite
// values except a -0 into +0. So given the same exponentials the results are
// the CPU's bits for hs <= 64; for hs > 64 the CPU multiplies with BLIS (its
// own order, FMA) and the two agree within rounding (tests/test_kernels.c).
// The exponentials are not called here: a device uses its expf, the CPU
// test SLEEF's (core/vmath.h), as for cross-entropy (loss.h).
//
// Attention-probability dropout (moe_attention_forward_drop; kernels/dropout.h):
// after the softmax, one thread per element (bh, t, s) copies P into attp and
// replaces P by P' = P m / (1 - p) on and below the diagonal, the mask element
// being the element's index in att (bh C C + t C + s), as on the CPU; out and
// dv then read P' (att), and the backward turns dP' into dP with the same mask
// (one thread per element) before dS, which reads P (attp).
#ifndef MOE_K_ATTENTION_H
#define MOE_K_ATTENTION_H

#include <math.h>
#include <stddef.h>

#include "core/hd.h"
#include "cuda/kernels/dropout.h"

#define MOE_K_ATTN_LANES 8 // nn/attention.c LANES
#define MOE_K_ATTN_TILE 32  // queries and keys per tile of the tiled score and dP kernels
#define MOE_K_ATTN_CHUNK 64 // head dimensions a tile stages at a time

// 1 / sqrt(hs) as the CPU rounds it.
static inline MOE_HD float moe_k_attn_scale(size_t hs) { return (float)(1.0 / sqrt((double)hs)); }

// acc + sum_i x[i] y[i] over i < n, added in index order to one float: a
// chunk of moe_k_attn_dot's sum (chunks taken in order from acc = 0, then
// times alpha, give its bits; the tiled score and dP kernel sums so).
static inline MOE_HD float moe_k_attn_dot_chunk(float acc, const float *x, const float *y, size_t n)
{
    for (size_t i = 0; i < n; i++)
        acc += x[i] * y[i];
    return acc;
}

// alpha * sum_i x[i] y[i] over i < n, one float accumulator in index order.
static inline MOE_HD float moe_k_attn_dot(const float *x, const float *y, size_t n, float alpha)
{
    return alpha * moe_k_attn_dot_chunk(0.0f, x, y, n);
}

// The lanes' fixed tree (nn/attention.c lane_sum).
static inline MOE_HD float moe_k_attn_lanes_join(const float *a)
{
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

// sum_s x[s] (y NULL) or sum_s x[s] y[s] over s < n as nn/attention.c's
// lane_sum takes it: MOE_K_ATTN_LANES interleaved float lanes over the full
// groups of 8, joined in the fixed tree, then the tail in order. In two steps,
// so that a row's launch can give each lane its own thread: lane j's part (its
// keys j, j + 8, ... of the full groups, in order), then, from the 8 parts,
// the tree and the tail (moe_k_attn_lane_sum: both on one thread).
static inline MOE_HD float moe_k_attn_lane_part(const float *x, const float *y, size_t n, size_t j)
{
    float a = 0.0f;
    for (size_t s = j; s + MOE_K_ATTN_LANES - j <= n; s += MOE_K_ATTN_LANES)
        a += y ? x[s] * y[s] : x[s];
    return a;
}

static inline MOE_HD float moe_k_attn_lanes_finish(const float *a, const float *x, const float *y, size_t n)
{
    float sum = moe_k_attn_lanes_join(a);
    for (size_t s = n - n % MOE_K_ATTN_LANES; s < n; s++)
        sum += y ? x[s] * y[s] : x[s];
    return sum;
}

static inline MOE_HD float moe_k_attn_lane_sum(const float *x, const float *y, size_t n)
{
    float a[MOE_K_ATTN_LANES];
    for (size_t j = 0; j < MOE_K_ATTN_LANES; j++)
        a[j] = moe_k_attn_lane_part(x, y, n, j);
    return moe_k_attn_lanes_finish(a, x, y, n);
}

// The largest of row[j], row[j + 8], ... below n (-inf if none): the lanes'
// maxima, whose maximum is the row's (exact in any order).
static inline MOE_HD float moe_k_attn_lane_max(const float *row, size_t n, size_t j)
{
    float m = -INFINITY;
    for (size_t s = j; s < n; s += MOE_K_ATTN_LANES)
        m = row[s] > m ? row[s] : m;
    return m;
}

// ---------------------------------------------------------------- forward

// Element (bh, t, s) of att: S[t, s] for s <= t, 0 above the diagonal.
static inline MOE_HD void moe_k_attn_score(float *att, const float *qkv, size_t C, size_t D, size_t H, size_t bh,
                                           size_t t, size_t s)
{
    float *a = att + (bh * C + t) * C + s;
    if (s > t) {
        *a = 0.0f;
        return;
    }
    const size_t b = bh / H, h = bh % H, hs = D / H, ld = 3 * D;
    const float *q = qkv + (b * C + t) * ld + h * hs, *k = qkv + (b * C + s) * ld + D + h * hs;
    *a = moe_k_attn_dot(q, k, hs, moe_k_attn_scale(hs));
}

// Row r = bh C + t of att: its scores att[r, 0..n) (n = t + 1, the keys of
// query t) := score - max. The max is exact in any order. Returns n: the
// caller then takes att[r, s] := exp(att[r, s]) for s < n.
static inline MOE_HD size_t moe_k_attn_shift_row(float *att, size_t C, size_t r)
{
    float *row = att + r * C;
    const size_t n = r % C + 1;
    float m = row[0];
    for (size_t s = 1; s < n; s++)
        m = row[s] > m ? row[s] : m;
    for (size_t s = 0; s < n; s++)
        row[s] -= m;
    return n;
}

// Row r = bh C + t: att[r, 0..n) := e / sum(e) from the exponentials e there:
// the sum over the lanes (full groups of MOE_K_ATTN_LANES), the tree, then the
// tail in order; each entry times the reciprocal (nn/attention.c normalise).
static inline MOE_HD void moe_k_attn_normalise_row(float *att, size_t C, size_t r)
{
    float *row = att + r * C;
    const size_t n = r % C + 1;
    const float inv = 1.0f / moe_k_attn_lane_sum(row, NULL, n);
    for (size_t s = 0; s < n; s++)
        row[s] *= inv;
}

// Element (b, t, col) of out: sum_{s <= t} P[t, s] v_s[i], col = h hs + i.
static inline MOE_HD void moe_k_attn_out(float *out, const float *att, const float *qkv, size_t C, size_t D, size_t H,
                                         size_t b, size_t t, size_t col)
{
    const size_t hs = D / H, h = col / hs, ld = 3 * D;
    const float *p = att + ((b * H + h) * C + t) * C, *v = qkv + b * C * ld + 2 * D + col;
    float acc = 0.0f;
    for (size_t s = 0; s <= t; s++)
        acc += p[s] * v[s * ld];
    out[(b * C + t) * D + col] = acc;
}

// ---------------------------------------------------------------- backward

// Element (bh, t, s) of datt: dP[t, s] for s <= t, 0 above the diagonal.
static inline MOE_HD void moe_k_attn_dp(float *datt, const float *dout, const float *qkv, size_t C, size_t D, size_t H,
                                        size_t bh, size_t t, size_t s)
{
    float *d = datt + (bh * C + t) * C + s;
    if (s > t) {
        *d = 0.0f;
        return;
    }
    const size_t b = bh / H, h = bh % H, hs = D / H;
    const float *g = dout + (b * C + t) * D + h * hs, *v = qkv + (b * C + s) * 3 * D + 2 * D + h * hs;
    *d = moe_k_attn_dot(g, v, hs, 1.0f);
}

// Row r = bh C + t: d = datt[r, 0..n), p = att[r, 0..n), n = t + 1:
// d := p (d - sum_s p[s] d[s]) (dP to dS in place), the sum as in
// moe_k_attn_normalise_row (nn/attention.c dsoftmax).
static inline MOE_HD void moe_k_attn_dsoftmax_row(float *datt, const float *att, size_t C, size_t r)
{
    float *d = datt + r * C;
    const float *p = att + r * C;
    const size_t n = r % C + 1;
    const float pdp = moe_k_attn_lane_sum(p, d, n);
    for (size_t s = 0; s < n; s++)
        d[s] = p[s] * (d[s] - pdp);
}

// Element (b, r, j) of dqkv (j < 3D), added to: j in [0, D): dq_r; [D, 2D):
// dk_r; [2D, 3D): dv_r, from dS (datt) and P (att).
static inline MOE_HD void moe_k_attn_dqkv(float *dqkv, const float *datt, const float *att, const float *dout,
                                          const float *qkv, size_t C, size_t D, size_t H, size_t b, size_t r, size_t j)
{
    const size_t part = j / D, col = j % D, hs = D / H, h = col / hs, ld = 3 * D;
    const size_t bh = b * H + h;
    const float *qkv_b = qkv + b * C * ld;
    float acc = 0.0f, alpha = moe_k_attn_scale(hs);
    if (part == 0) { // dq_t, t = r: a row of dS against the keys s <= t
        const float *ds = datt + (bh * C + r) * C, *k = qkv_b + D + col;
        for (size_t s = 0; s <= r; s++)
            acc += ds[s] * k[s * ld];
    } else if (part == 1) { // dk_s, s = r: a column of dS against the queries t >= s
        const float *ds = datt + bh * C * C + r, *q = qkv_b + col;
        for (size_t t = r; t < C; t++)
            acc += ds[t * C] * q[t * ld];
    } else { // dv_s: a column of P against dout_t, t >= s
        const float *p = att + bh * C * C + r, *g = dout + b * C * D + col;
        for (size_t t = r; t < C; t++)
            acc += p[t * C] * g[t * D];
        alpha = 1.0f;
    }
    float *o = dqkv + (b * C + r) * ld + j;
    *o += alpha * acc;
}

// Dropout of the probabilities, element i of att (B, H, C, C) after the
// softmax: attp[i] = P; att[i] = P' for s <= t (the masked entries stay 0).
static inline MOE_HD void moe_k_attn_drop(float *att, float *attp, const struct moe_k_drop *d, size_t C, size_t i)
{
    attp[i] = att[i];
    if (i % C <= i / C % C)
        moe_k_dropout(att, d, 0, i);
}

// The backward's mask, element i of datt holding dP' (from moe_k_attn_dp):
// dP = dP' m / (1 - p) for s <= t.
static inline MOE_HD void moe_k_attn_drop_grad(float *datt, const struct moe_k_drop *d, size_t C, size_t i)
{
    if (i % C <= i / C % C)
        moe_k_dropout(datt, d, 0, i);
}

#endif
