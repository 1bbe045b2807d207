// attention.c: causal multi-head self-attention, forward and backward, over a packed qkv buffer.
// B = sequences, C = positions (context), D = n_embd, H = heads, hs = D / H (head size);
// t = query position, s = key position (s <= t), i = a column inside one head.
// qkv (B, C, 3D) holds [q | k | v] per position; att, datt (B, H, C, C); out, dout (B, C, D).
// Not here: the q/k/v and output projections (linear layers around this kernel),
// rotary or relative positions, key/value caches.
//
// reference: Vaswani et al. 2017, "Attention Is All You Need" (NeurIPS), scaled dot-product attention
//   S = Q K^T / sqrt(hs),  P[t, :] = softmax_{s <= t}(S[t, :]) (decoder mask: P[t, s] = 0 for s > t),  O = P V;
// backward, dS being the gradient of the scaled scores (the softmax Jacobian applied row by row):
//   dP = dO V^T,  dS[t, s] = P[t, s] (dP[t, s] - sum_{s'} P[t, s'] dP[t, s']),
//   dQ += dS K / sqrt(hs),  dK += dS^T Q / sqrt(hs),  dV += P^T dO.
//
// Float throughout (this file summed every dot product in double until the kernels were rewritten
// for speed; that code is kept at the bottom as the reference twin moe_attention_forward_ref /
// backward_ref, which tests/test_attention.c compares the fast kernels against). Per (b, h) pair,
// the six products above (S, O; dP, dQ, dK, dV) run on one of two paths, chosen by head size only:
//   - tile path (hs <= HS_TILE_MAX = 64): register-tiled loops on 8-float vectors, 4 rows x 16
//     columns (or keys) per block, over the causal triangle in groups of 4 rows (tiles of 16 keys
//     for S and dP), so only the 4 x 4 (16 x 16) triangles at the diagonal of the masked half are
//     computed;
//   - GEMM path (hs > 64): float GEMMs through moe_gemm_serial (single-threaded BLIS, FMA
//     microkernels) on blocks of TB query rows, rows t0..t1-1 needing keys 0..t1-1 only.
// Measured on one thread (dev/bench_attention.c, AMD EPYC, BLIS 0.9 zen3 kernels): BLIS costs
// ~4 us of set-up per call, which dominates the small per-head products (64 x 64 x 16 takes 6 us),
// so the tile path wins at every hs <= 64 tried: forward + backward 4.3x faster than the GEMM path
// at hs = 16, C = 64; 1.6x at hs = 32, C = 128; 2.2x at hs = 64, C = 64; 1.07x at hs = 64, C = 256.
// At hs = 128 (tile path with its limit raised) the GEMM path is 1.05x faster at C = 256 and 1.2x
// at C = 512.
// On both paths the masked entries a block reaches are written as exact zeros (P above the
// diagonal by forward's contract, dS by backward) before a product reads them, so they add +-0 to
// the sums. One difference from the twin: a NaN or Inf in q, k, v or dout can leak, as 0 * Inf or
// 0 * NaN, into outputs of the same block that do not depend on it (the twin never reads masked
// positions); finite inputs give exactly the causal result.
// Softmax: row max subtracted first (so exp(0) = 1 exactly: a row with one entry has probability
// exactly 1 and dS exactly 0), exponentials by SLEEF's moe_vexpf (deterministic, within 1 ULP),
// normaliser and sum_s P dP as float sums over LANES interleaved partial sums in a fixed tree.
//
// Determinism: work is split over (b, h) pairs only (schedule(static)); each pair reads its own
// head's columns and writes its own rows of att/datt, its own head's columns of out and dqkv. Every
// sum inside a pair runs in an order fixed by (C, hs) alone: each tile-path output is one
// accumulator summed in index order (mul, then add: GCC's ISO C mode does not contract to FMA and
// the clones do not enable it), the partial-sum lanes are explicit in the source, and BLIS never
// splits k. The vector width (the SSE2 default or the AVX2 clone of the hot loops) maps lanes to
// registers without reassociating.
// So results are bit-identical for any OpenMP thread count (and on either clone); they may differ
// in the last bits between CPUs whose BLIS microkernels or SLEEF paths differ (vmath.h).
// Kernels never allocate, but for the GEMM path's pack buffers (core/gemm_pack.c: grown once per thread
// on first use; BLIS's own pool for products under its size threshold); the tile path's transposed
// key tile is HS_TILE_MAX x 16 floats on the stack).
#include <assert.h>
#include <math.h>
#include <string.h>

#include "core/gemm.h"
#include "core/hot.h"
#include "core/vmath.h"
#include "nn/nn.h"

// GEMM path: query rows per causal block. Smaller blocks skip more of the masked triangle (the
// products do about (1 + TB / C) / 2 of the full-square work) but make more, smaller BLIS calls;
// at hs = 128 and 256, C = 256 and 512, 128 measured best (32: 1.3-1.4x slower, 64 and 256: 1.1x).
#define TB 128
// Interleaved partial sums per row reduction: one AVX2 register, two SSE2 ones.
#define LANES 8

// Hot row loops get an AVX2 clone next to the SSE2 default (core/hot.h).
#define HOT MOE_HOT

// sum of the lanes in a fixed tree
static inline float lane_sum(const float a[LANES])
{
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

// row[0..n) := row[0..n) - max(row[0..n)), n >= 1; the max is exact whatever the order.
HOT static void sub_max(float *row, size_t n)
{
    float m[LANES];
    for (size_t j = 0; j < LANES; j++)
        m[j] = row[0];
    size_t s = 0;
    for (; s + LANES <= n; s += LANES)
        for (size_t j = 0; j < LANES; j++)
            m[j] = row[s + j] > m[j] ? row[s + j] : m[j];
    for (; s < n; s++)
        m[0] = row[s] > m[0] ? row[s] : m[0];
    float mx = m[0];
    for (size_t j = 1; j < LANES; j++)
        mx = m[j] > mx ? m[j] : mx;
    for (s = 0; s < n; s++)
        row[s] -= mx;
}

// row[0..n) := row / sum(row), the sum over LANES partial sums then the tail in order; the
// normaliser sums the stored (float) exponentials, so the row sums to 1 up to the rounding of each
// probability (and a row of one entry 1 is exactly 1).
HOT static void normalise(float *row, size_t n)
{
    float a[LANES] = { 0 };
    size_t s = 0;
    for (; s + LANES <= n; s += LANES)
        for (size_t j = 0; j < LANES; j++)
            a[j] += row[s + j];
    float sum = lane_sum(a);
    for (; s < n; s++)
        sum += row[s];
    const float inv = 1.0f / sum;
    for (s = 0; s < n; s++)
        row[s] *= inv;
}

// d[0..n) := p * (d - sum_s p[s] d[s]) for s < n (dP to dS in place), the sum as in normalise.
HOT static void dsoftmax(float *d, const float *p, size_t n)
{
    float a[LANES] = { 0 };
    size_t s = 0;
    for (; s + LANES <= n; s += LANES)
        for (size_t j = 0; j < LANES; j++)
            a[j] += p[s + j] * d[s + j];
    float pdp = lane_sum(a);
    for (; s < n; s++)
        pdp += p[s] * d[s];
    for (s = 0; s < n; s++)
        d[s] = p[s] * (d[s] - pdp);
}

// att row t: scores in row[0..n) (n = t + 1) to probabilities; row[n..C) := 0.
static void softmax_row(float *row, size_t n, size_t C)
{
    sub_max(row, n);
    moe_vexpf(row, row, n);
    normalise(row, n);
    memset(row + n, 0, (C - n) * sizeof *row);
}

// datt row t: dP in d[0..n) to dS; d[n..zero_end) := 0 (the masked entries the products read).
static void dsoftmax_row(float *d, const float *p, size_t n, size_t zero_end)
{
    dsoftmax(d, p, n);
    memset(d + n, 0, (zero_end - n) * sizeof *d);
}

// Attention-probability dropout (Srivastava et al. 2014, inverted; nn/dropout.c): after the softmax
// of row t, attp keeps P[t, :] and att gets P'[t, s] = P[t, s] m[t, s] / (1 - p) for s <= t (the
// masked entries stay 0), so O = P' V and dV = P'^T dO read att unchanged; the backward takes
// dP' = dO V^T, dP = dP' m / (1 - p) (the mask drawn again), and dS from dP and P (attp).
// first: the mask index of this head's element (0, 0).
static void drop_rows(float *att, float *attp, size_t t0, size_t t1, size_t C, const struct moe_dropout *drop,
                      uint64_t first)
{
    if (!moe_dropout_on(drop))
        return;
    for (size_t t = t0; t < t1; t++) {
        memcpy(attp + t * C, att + t * C, C * sizeof *att);
        moe_dropout_apply(drop, att + t * C, t + 1, first + t * C);
    }
}

// dP' to dP in rows t0..t1-1 of datt (keys s <= t).
static void drop_grad_rows(float *datt, size_t t0, size_t t1, size_t C, const struct moe_dropout *drop,
                           uint64_t first)
{
    if (!moe_dropout_on(drop))
        return;
    for (size_t t = t0; t < t1; t++)
        moe_dropout_apply(drop, datt + t * C, t + 1, first + t * C);
}

// ---------------------------------------------------------------- GEMM path
// One head: for each block of query rows t0..t1-1, S = Q K^T / sqrt(hs) into att[t0..t1-1, 0..t1-1],
// softmax over s <= t with the rest of each row set to 0, then O = P V over keys 0..t1-1.
static void head_forward_gemm(float *out, float *att, float *attp, const float *qkv, size_t C, size_t D, size_t hs,
                              size_t h, const struct moe_dropout *drop, uint64_t first)
{
    const size_t ld = 3 * D; // row stride of qkv
    const float *q = qkv + h * hs, *k = q + D, *v = q + 2 * D;
    const float scale = (float)(1.0 / sqrt((double)hs));
    for (size_t t0 = 0; t0 < C; t0 += TB) {
        const size_t t1 = C - t0 < TB ? C : t0 + TB, n = t1 - t0;
        moe_gemm_serial(0, 1, n, t1, hs, scale, q + t0 * ld, ld, k, ld, 0.0f, att + t0 * C, C);
        for (size_t t = t0; t < t1; t++)
            softmax_row(att + t * C, t + 1, C);
        drop_rows(att, attp, t0, t1, C, drop, first);
        moe_gemm_serial(0, 0, n, hs, t1, 1.0f, att + t0 * C, C, v, ld, 0.0f, out + t0 * D + h * hs, D);
    }
}

// One head. Per block of rows t0..t1-1: dP = dO V^T into datt (keys 0..t1-1), dS in place (0 above
// the diagonal inside the block), dQ += dS K / sqrt(hs). Then per block of key rows s0..s1-1, over
// t >= s0: dK += dS^T Q / sqrt(hs) and dV += P^T dO (the entries t < s in the diagonal block are the
// zeros written above, and the zeros forward wrote into att).
static void head_backward_gemm(float *dqkv, float *datt, const float *dout, const float *qkv, const float *att,
                               const float *pp, size_t C, size_t D, size_t hs, size_t h,
                               const struct moe_dropout *drop, uint64_t first)
{
    const size_t ld = 3 * D;
    const size_t off = h * hs;
    const float *q = qkv + off, *k = q + D, *v = q + 2 * D, *go = dout + off;
    float *dq = dqkv + off, *dk = dq + D, *dv = dq + 2 * D;
    const float scale = (float)(1.0 / sqrt((double)hs));
    for (size_t t0 = 0; t0 < C; t0 += TB) {
        const size_t t1 = C - t0 < TB ? C : t0 + TB, n = t1 - t0;
        moe_gemm_serial(0, 1, n, t1, hs, 1.0f, go + t0 * D, D, v, ld, 0.0f, datt + t0 * C, C);
        drop_grad_rows(datt, t0, t1, C, drop, first);
        for (size_t t = t0; t < t1; t++)
            dsoftmax_row(datt + t * C, pp + t * C, t + 1, t1);
        moe_gemm_serial(0, 0, n, hs, t1, scale, datt + t0 * C, C, k, ld, 1.0f, dq + t0 * ld, ld);
    }
    for (size_t s0 = 0; s0 < C; s0 += TB) {
        const size_t s1 = C - s0 < TB ? C : s0 + TB, m = s1 - s0, K = C - s0;
        moe_gemm_serial(1, 0, m, hs, K, scale, datt + s0 * C + s0, C, q + s0 * ld, ld, 1.0f, dk + s0 * ld, ld);
        moe_gemm_serial(1, 0, m, hs, K, 1.0f, att + s0 * C + s0, C, go + s0 * D, D, 1.0f, dv + s0 * ld, ld);
    }
}

// ---------------------------------------------------------------- tile path
// Register-tiled float loops on 8-float vectors (GCC/Clang vector extensions: AVX2 registers in the
// avx2 clone, pairs of SSE2 registers in the default one; elementwise, so the same values). Each
// output element is one accumulator summed in index order (mul, then add), R = 4 rows at a time.
typedef float vf8 __attribute__((vector_size(32)));
#define LD8(v, p) memcpy(&(v), (p), sizeof(vf8))
#define ST8(p, v) memcpy((p), &(v), sizeof(vf8))
#define UNROLL _Pragma("GCC unroll 8")
#define AI static inline __attribute__((always_inline))
#define KT 16          // keys per tile of the score kernel (two vectors)
#define HS_TILE_MAX 64 // the tile path's transposed key tile (HS_TILE_MAX x KT floats) lives on the stack

// S[t + r, s0 + j] = alpha * sum_i x_{t+r}[i] yt[i, j] for r < R, j < nj (yt: the key tile, transposed).
AI void nt_block(float *S, size_t lds, const float *x, size_t ldx, const float *yt, size_t hs, size_t t, size_t s0,
                 size_t nj, float alpha, size_t R)
{
    vf8 acc[4][2] = { { { 0 } } };
    for (size_t i = 0; i < hs; i++) {
        vf8 y0, y1;
        LD8(y0, yt + i * KT);
        LD8(y1, yt + i * KT + 8);
        UNROLL for (size_t r = 0; r < R; r++)
        {
            const float xi = x[(t + r) * ldx + i];
            acc[r][0] += xi * y0;
            acc[r][1] += xi * y1;
        }
    }
    UNROLL for (size_t r = 0; r < R; r++)
    {
        float *sp = S + (t + r) * lds + s0;
        vf8 a0 = alpha * acc[r][0], a1 = alpha * acc[r][1];
        if (nj == KT) {
            ST8(sp, a0);
            ST8(sp + 8, a1);
        } else { // the last tile of a row: store only the keys that exist
            float tmp[KT];
            ST8(tmp, a0);
            ST8(tmp + 8, a1);
            memcpy(sp, tmp, nj * sizeof *tmp);
        }
    }
}

// S[t, s] = alpha * (x_t . y_s) for every t >= s0 of each key tile s0..s0+KT-1, so every t >= s
// (and a few s > t next to the diagonal, which the caller overwrites or ignores); x, y rows at
// strides ldx, ldy; hs <= HS_TILE_MAX.
HOT static void nt_scores(float *S, size_t lds, const float *x, size_t ldx, const float *y, size_t ldy, size_t C,
                          size_t hs, float alpha)
{
    assert(hs <= HS_TILE_MAX);
    float yt[HS_TILE_MAX * KT];
    for (size_t s0 = 0; s0 < C; s0 += KT) {
        const size_t nj = C - s0 < KT ? C - s0 : KT;
        for (size_t j = 0; j < nj; j++)
            for (size_t i = 0; i < hs; i++)
                yt[i * KT + j] = y[(s0 + j) * ldy + i];
        for (size_t j = nj; j < KT; j++)
            for (size_t i = 0; i < hs; i++)
                yt[i * KT + j] = 0.0f;
        size_t t = s0;
        for (; t + 4 <= C; t += 4)
            nt_block(S, lds, x, ldx, yt, hs, t, s0, nj, alpha, 4);
        for (; t < C; t++)
            nt_block(S, lds, x, ldx, yt, hs, t, s0, nj, alpha, 1);
    }
}

// Rows t..t+R-1, columns c..c+8*NV-1: acc = sum_{s < n} w[t + r, s] y_s[c..], then o = alpha * acc,
// or o += alpha * acc when add.
AI void nn_block(float *o, size_t ldo, const float *w, size_t ldw, const float *y, size_t ldy, size_t t, size_t n,
                 size_t c, float alpha, int add, size_t R, size_t NV)
{
    vf8 acc[4][2] = { { { 0 } } };
    for (size_t s = 0; s < n; s++) {
        vf8 yv[2];
        UNROLL for (size_t v = 0; v < NV; v++) LD8(yv[v], y + s * ldy + c + 8 * v);
        UNROLL for (size_t r = 0; r < R; r++)
        {
            const float wr = w[(t + r) * ldw + s];
            UNROLL for (size_t v = 0; v < NV; v++) acc[r][v] += wr * yv[v];
        }
    }
    UNROLL for (size_t r = 0; r < R; r++) UNROLL for (size_t v = 0; v < NV; v++)
    {
        float *op = o + (t + r) * ldo + c + 8 * v;
        vf8 a = alpha * acc[r][v];
        if (add) {
            vf8 cur;
            LD8(cur, op);
            a = cur + a;
        }
        ST8(op, a);
    }
}

// The same for columns c..hs-1 (fewer than 8), one scalar accumulator per element.
AI void nn_tail(float *o, size_t ldo, const float *w, size_t ldw, const float *y, size_t ldy, size_t t, size_t n,
                size_t c, size_t hs, float alpha, int add, size_t R)
{
    for (size_t r = 0; r < R; r++)
        for (size_t i = c; i < hs; i++) {
            float acc = 0.0f;
            for (size_t s = 0; s < n; s++)
                acc += w[(t + r) * ldw + s] * y[s * ldy + i];
            o[(t + r) * ldo + i] = add ? o[(t + r) * ldo + i] + alpha * acc : alpha * acc;
        }
}

AI void nn_group(float *o, size_t ldo, const float *w, size_t ldw, const float *y, size_t ldy, size_t t, size_t n,
                 size_t hs, float alpha, int add, size_t R)
{
    size_t c = 0;
    for (; c + 16 <= hs; c += 16)
        nn_block(o, ldo, w, ldw, y, ldy, t, n, c, alpha, add, R, 2);
    if (c + 8 <= hs) {
        nn_block(o, ldo, w, ldw, y, ldy, t, n, c, alpha, add, R, 1);
        c += 8;
    }
    if (c < hs)
        nn_tail(o, ldo, w, ldw, y, ldy, t, n, c, hs, alpha, add, R);
}

// o_t (=, or += when add) alpha * sum_s w[t, s] y_s over t < C, rows in groups of 4 from t = 0, each
// group over s <= its last row: w must be 0 at s > t up to the end of t's group.
HOT static void nn_rows(float *o, size_t ldo, const float *w, size_t ldw, const float *y, size_t ldy, size_t C,
                        size_t hs, float alpha, int add)
{
    size_t t = 0;
    for (; t + 4 <= C; t += 4)
        nn_group(o, ldo, w, ldw, y, ldy, t, t + 4, hs, alpha, add, 4);
    for (; t < C; t++)
        nn_group(o, ldo, w, ldw, y, ldy, t, t + 1, hs, alpha, add, 1);
}

// Keys s..s+R-1, columns c..c+8*NV-1: o_{s+r} += alpha * sum_{t = s}^{C-1} w[t, s + r] x_t[c..].
AI void tn_block(float *o, size_t ldo, const float *w, size_t ldw, const float *x, size_t ldx, size_t s, size_t C,
                 size_t c, float alpha, size_t R, size_t NV)
{
    vf8 acc[4][2] = { { { 0 } } };
    for (size_t t = s; t < C; t++) {
        vf8 xv[2];
        UNROLL for (size_t v = 0; v < NV; v++) LD8(xv[v], x + t * ldx + c + 8 * v);
        UNROLL for (size_t r = 0; r < R; r++)
        {
            const float wr = w[t * ldw + s + r];
            UNROLL for (size_t v = 0; v < NV; v++) acc[r][v] += wr * xv[v];
        }
    }
    UNROLL for (size_t r = 0; r < R; r++) UNROLL for (size_t v = 0; v < NV; v++)
    {
        float *op = o + (s + r) * ldo + c + 8 * v;
        vf8 cur, a = alpha * acc[r][v];
        LD8(cur, op);
        cur += a;
        ST8(op, cur);
    }
}

AI void tn_tail(float *o, size_t ldo, const float *w, size_t ldw, const float *x, size_t ldx, size_t s, size_t C,
                size_t c, size_t hs, float alpha, size_t R)
{
    for (size_t r = 0; r < R; r++)
        for (size_t i = c; i < hs; i++) {
            float acc = 0.0f;
            for (size_t t = s; t < C; t++)
                acc += w[t * ldw + s + r] * x[t * ldx + i];
            o[(s + r) * ldo + i] += alpha * acc;
        }
}

AI void tn_group(float *o, size_t ldo, const float *w, size_t ldw, const float *x, size_t ldx, size_t s, size_t C,
                 size_t hs, float alpha, size_t R)
{
    size_t c = 0;
    for (; c + 16 <= hs; c += 16)
        tn_block(o, ldo, w, ldw, x, ldx, s, C, c, alpha, R, 2);
    if (c + 8 <= hs) {
        tn_block(o, ldo, w, ldw, x, ldx, s, C, c, alpha, R, 1);
        c += 8;
    }
    if (c < hs)
        tn_tail(o, ldo, w, ldw, x, ldx, s, C, c, hs, alpha, R);
}

// o_s += alpha * sum_{t >= s} w[t, s] x_t over s < C, keys in groups of 4 from s = 0, each group over
// t >= its first key: w must be 0 at s > t up to the end of t's group.
HOT static void tn_cols(float *o, size_t ldo, const float *w, size_t ldw, const float *x, size_t ldx, size_t C,
                        size_t hs, float alpha)
{
    size_t s = 0;
    for (; s + 4 <= C; s += 4)
        tn_group(o, ldo, w, ldw, x, ldx, s, C, hs, alpha, 4);
    for (; s < C; s++)
        tn_group(o, ldo, w, ldw, x, ldx, s, C, hs, alpha, 1);
}

// end of t's group of 4 rows (the tile kernels' masked entries that must be 0), at most C
static size_t group_end(size_t t, size_t C) { return (t | 3) + 1 < C ? (t | 3) + 1 : C; }

static void head_forward_tile(float *out, float *att, float *attp, const float *qkv, size_t C, size_t D, size_t hs,
                              size_t h, const struct moe_dropout *drop, uint64_t first)
{
    const size_t ld = 3 * D;
    const float *q = qkv + h * hs, *k = q + D, *v = q + 2 * D;
    const float scale = (float)(1.0 / sqrt((double)hs));
    nt_scores(att, C, q, ld, k, ld, C, hs, scale);
    for (size_t t = 0; t < C; t++)
        softmax_row(att + t * C, t + 1, C);
    drop_rows(att, attp, 0, C, C, drop, first);
    nn_rows(out + h * hs, D, att, C, v, ld, C, hs, 1.0f, 0);
}

static void head_backward_tile(float *dqkv, float *datt, const float *dout, const float *qkv, const float *att,
                               const float *pp, size_t C, size_t D, size_t hs, size_t h,
                               const struct moe_dropout *drop, uint64_t first)
{
    const size_t ld = 3 * D;
    const size_t off = h * hs;
    const float *q = qkv + off, *k = q + D, *v = q + 2 * D, *go = dout + off;
    float *dq = dqkv + off, *dk = dq + D, *dv = dq + 2 * D;
    const float scale = (float)(1.0 / sqrt((double)hs));
    nt_scores(datt, C, go, D, v, ld, C, hs, 1.0f);
    drop_grad_rows(datt, 0, C, C, drop, first);
    for (size_t t = 0; t < C; t++)
        dsoftmax_row(datt + t * C, pp + t * C, t + 1, group_end(t, C));
    nn_rows(dq, ld, datt, C, k, ld, C, hs, scale, 1);
    tn_cols(dk, ld, datt, C, q, ld, C, hs, scale);
    tn_cols(dv, ld, att, C, go, D, C, hs, 1.0f);
}

// ---------------------------------------------------------------- dispatch

// The path of a head: by head size only (see the top of the file for the measurements), so every
// (b, h) pair of a call takes the same one.
static int use_tiles(size_t hs) { return hs <= HS_TILE_MAX; }

static void head_forward(float *out, float *att, float *attp, const float *qkv, size_t C, size_t D, size_t hs,
                         size_t h, const struct moe_dropout *drop, uint64_t first)
{
    if (use_tiles(hs))
        head_forward_tile(out, att, attp, qkv, C, D, hs, h, drop, first);
    else
        head_forward_gemm(out, att, attp, qkv, C, D, hs, h, drop, first);
}

static void head_backward(float *dqkv, float *datt, const float *dout, const float *qkv, const float *att,
                          const float *pp, size_t C, size_t D, size_t hs, size_t h, const struct moe_dropout *drop,
                          uint64_t first)
{
    if (use_tiles(hs))
        head_backward_tile(dqkv, datt, dout, qkv, att, pp, C, D, hs, h, drop, first);
    else
        head_backward_gemm(dqkv, datt, dout, qkv, att, pp, C, D, hs, h, drop, first);
}

void moe_attention_forward_drop(float *out, float *att, float *attp, const float *qkv, size_t B, size_t C, size_t D,
                                size_t H, const struct moe_dropout *drop)
{
    assert(H > 0 && D % H == 0);
    assert(!moe_dropout_on(drop) || attp);
    const size_t hs = D / H;
    const size_t BH = B * H;
    #pragma omp parallel for schedule(static) if (BH > 1)
    for (size_t bh = 0; bh < BH; bh++) {
        size_t b = bh / H, h = bh % H;
        head_forward(out + b * C * D, att + bh * C * C, attp ? attp + bh * C * C : NULL, qkv + b * C * 3 * D, C, D,
                     hs, h, drop, (uint64_t)bh * C * C);
    }
}

void moe_attention_forward(float *out, float *att, const float *qkv, size_t B, size_t C, size_t D, size_t H)
{
    moe_attention_forward_drop(out, att, NULL, qkv, B, C, D, H, NULL);
}

void moe_attention_backward_drop(float *dqkv, float *datt, const float *dout, const float *qkv, const float *att,
                                 const float *attp, size_t B, size_t C, size_t D, size_t H,
                                 const struct moe_dropout *drop)
{
    assert(H > 0 && D % H == 0);
    const int on = moe_dropout_on(drop);
    assert(!on || attp);
    const size_t hs = D / H;
    const size_t BH = B * H;
    #pragma omp parallel for schedule(static) if (BH > 1)
    for (size_t bh = 0; bh < BH; bh++) {
        size_t b = bh / H, h = bh % H;
        head_backward(dqkv + b * C * 3 * D, datt + bh * C * C, dout + b * C * D, qkv + b * C * 3 * D,
                      att + bh * C * C, (on ? attp : att) + bh * C * C, C, D, hs, h, drop, (uint64_t)bh * C * C);
    }
}

void moe_attention_backward(float *dqkv, float *datt, const float *dout, const float *qkv, const float *att,
                            size_t B, size_t C, size_t D, size_t H)
{
    moe_attention_backward_drop(dqkv, datt, dout, qkv, att, NULL, B, C, D, H, NULL);
}

// ---------------------------------------------------------------- reference twin
// The kernel as it was before the float GEMMs, kept as the plain reference the tests compare the
// fast kernels against: every dot product summed in double in index order, scalar double exp,
// ACC columns of a head accumulated in double at a time. Same split over (b, h), so it is also
// bit-identical for any thread count.

#define ACC 64 // columns of a head accumulated in double per pass

// dst[s] = (float)(scale * (x . y_s)) for s < n, y_s = y + s * ldy, each dot summed in double in index
// order; four rows of y at a time so the four sums do not wait on each other (same result per s).
static void row_dots_ref(float *dst, const float *x, const float *y, size_t ldy, size_t n, size_t hs, double scale)
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
static void head_forward_ref(float *out, float *att, const float *qkv, size_t C, size_t D, size_t hs, size_t h)
{
    const size_t ld = 3 * D; // row stride of qkv
    const float *q = qkv + h * hs, *k = qkv + D + h * hs, *v = qkv + 2 * D + h * hs;
    const double scale = 1.0 / sqrt((double)hs);
    for (size_t t = 0; t < C; t++) {
        const float *qt = q + t * ld;
        float *at = att + t * C;
        // the scaled scores, kept in att[t, :], and their max (softmax is shift-invariant; subtracting
        // the max keeps exp <= 1, and exp(0) = 1 exactly, so a row of one entry is exactly 1)
        row_dots_ref(at, qt, k, ld, t + 1, hs, scale);
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

void moe_attention_forward_ref(float *out, float *att, const float *qkv, size_t B, size_t C, size_t D, size_t H)
{
    assert(H > 0 && D % H == 0);
    const size_t hs = D / H;
    const size_t BH = B * H;
    #pragma omp parallel for schedule(static) if (BH > 1)
    for (size_t bh = 0; bh < BH; bh++) {
        size_t b = bh / H, h = bh % H;
        head_forward_ref(out + b * C * D, att + bh * C * C, qkv + b * C * 3 * D, C, D, hs, h);
    }
}

// Backward of one head, with dP = dO v^T and dS the gradient of the scaled scores:
//   dP[t, s] = dout_t . v_s,  dS[t, s] = P[t, s] (dP[t, s] - sum_{s'} P[t, s'] dP[t, s'])
//   dq_t += sum_s dS[t, s] k_s / sqrt(hs),  dk_s += sum_{t >= s} dS[t, s] q_t / sqrt(hs),
//   dv_s += sum_{t >= s} P[t, s] dout_t.
// datt holds dP, then dS in place (entries above the diagonal are left untouched).
static void head_backward_ref(float *dqkv, float *datt, const float *dout, const float *qkv,
                              const float *att, size_t C, size_t D, size_t hs, size_t h)
{
    const size_t ld = 3 * D;
    const size_t off = h * hs;
    const float *q = qkv + off, *k = qkv + D + off, *v = qkv + 2 * D + off;
    float *dq = dqkv + off, *dk = dqkv + D + off, *dv = dqkv + 2 * D + off;
    const double scale = 1.0 / sqrt((double)hs);

    for (size_t t = 0; t < C; t++) {
        const float *go = dout + t * D + off, *pt = att + t * C;
        float *dat = datt + t * C;
        row_dots_ref(dat, go, v, ld, t + 1, hs, 1.0);
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

void moe_attention_backward_ref(float *dqkv, float *datt, const float *dout, const float *qkv,
                                const float *att, size_t B, size_t C, size_t D, size_t H)
{
    assert(H > 0 && D % H == 0);
    const size_t hs = D / H;
    const size_t BH = B * H;
    #pragma omp parallel for schedule(static) if (BH > 1)
    for (size_t bh = 0; bh < BH; bh++) {
        size_t b = bh / H, h = bh % H;
        head_backward_ref(dqkv + b * C * 3 * D, datt + bh * C * C, dout + b * C * D, qkv + b * C * 3 * D,
                          att + bh * C * C, C, D, hs, h);
    }
}
