// dispatch.h: the capacity plan (moe/dispatch.c moe_dispatch_plan) and the
// gather and combine around the expert FFNs (moe/experts.c), as host/device
// functions (core/hd.h) over index spaces a GPU launch covers:
//   1. keep order (MOE_DROP_PROB only): by priority within a slot, ties to
//      the lower token, slot by slot (GShard's first choices before second
//      choices, batch-prioritised within a slot: Lepikhin et al. 2020;
//      Riquelme et al. 2021). The device keeps by it without writing it out:
//      a block per (slot, expert) selects the slot's best assignments to the
//      expert that still fit (below); the tests also run the naive twin, one
//      thread per (slot, token) finding its place, then the keep pass 2;
//   2. keep (token order), 3. offsets, 4. rows: the plan in chunks of consecutive positions
//      (below): one thread per chunk counts its assignments per expert, one
//      thread per expert scans those counts over the chunks in order, one
//      thread per chunk decides its assignments from the counts before it:
//      kept iff fewer than `cap` assignments to the expert came before in keep
//      order; then the offsets (one thread: prefix sums of the kept counts);
//      then the rows, each expert's kept assignments in token order from its
//      offset;
//   5. gather: one thread per (row, column) copies a token's input to its row;
//   6. combine: one thread per (token, column) adds its slots' gated outputs
//      in slot order (no atomics: each output value has one writer).
//   7. combine backward: one thread per row scales the token's output gradient
//      by its gate into the row and adds dout . y (double, in column order)
//      to the slot's gate gradient (a slot has one row: one writer). On a GPU
//      in row tiles (below): one thread per (row, column) of a column chunk
//      writes dyd and stages its product, one thread per row adds the chunk's
//      products in column order: the same sum, with coalesced rows.
// Every result equals the CPU's: the same decisions and the same sums in the
// same order. T = tokens, S = slots per token, E = experts, D = width.
// Not here: the expert GEMMs (cuBLAS) and their backward.
#ifndef MOE_K_DISPATCH_H
#define MOE_K_DISPATCH_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "core/hd.h"
#include "cuda/kernels/select.h"

// Token a (priority ka) before token b (kb) in the keep order by priority: the
// higher priority first, ties to the lower token, a NaN (a router that
// overflowed) counted as -infinity (moe/dispatch.c's prob_key and
// prob_before): a total order, so the places below are a permutation and no
// two threads write one place, NaN or not.
static inline MOE_HD int moe_k_prob_before(float ka, size_t a, float kb, size_t b)
{
    ka = ka != ka ? -INFINITY : ka;
    kb = kb != kb ? -INFINITY : kb;
    return ka > kb || (ka == kb && a < b);
}

// 1. The place of token t in slot s's keep order by priority (prio (T, S)):
// the number of tokens that come before it. order[s * T + place] = t.
static inline MOE_HD size_t moe_k_prob_place(const float *prio, size_t T, size_t S, size_t s, size_t t)
{
    float k = prio[t * S + s];
    size_t before = 0;
    for (size_t u = 0; u < T; u++)
        before += (size_t)moe_k_prob_before(prio[u * S + s], u, k, t);
    return before;
}

// 1-2 by selection (MOE_DROP_PROB; what the device runs: the places above
// cost O(T) per (slot, token), O(T^2 S) a plan, and stay as its naive twin).
// In keep order (slot-major, within a slot by priority) an assignment of slot
// s to expert e is kept iff A + r < cap, with A the assignments to e in the
// slots before s and r its place among slot s's assignments to e. So slot s
// keeps its R = cap - A best assignments to e (none when A >= cap): a
// selection of the R-th best key among them (select.h), which needs no order
// written out. A block per (slot, expert): each thread tallies and counts a
// stride of the tokens; the block adds (integers), one thread picks.

// Token t's key in slot s: larger priority first, then the lower token; a
// NaN as -infinity, -0 as +0 (moe_k_prob_before's order).
static inline MOE_HD uint64_t moe_k_prob_key(const float *prio, size_t S, size_t s, size_t t)
{
    float v = prio[t * S + s];
    return moe_k_select_key(moe_k_f32_order(v != v ? -INFINITY : v), (int64_t)t);
}

// One thread's tally over tokens first, first + stride, ... < T: *before +=
// its assignments to e in slots 0 .. s - 1, *here += in slot s.
static inline MOE_HD void moe_k_prob_tally(uint64_t *before, uint64_t *here, const int32_t *idx, size_t T, size_t S,
                                           size_t s, int32_t e, size_t first, size_t stride)
{
    for (size_t t = first; t < T; t += stride) {
        for (size_t j = 0; j < s; j++)
            *before += idx[t * S + j] == e;
        *here += idx[t * S + s] == e;
    }
}

// One thread's pass: zero cnt[d * cs] (d < 16), then count digit
// (key >> shift) & 15 of slot s's assignments to e among its tokens whose key
// agrees with prefix above bit shift + 4.
static inline MOE_HD void moe_k_prob_count(uint32_t *cnt, size_t cs, const int32_t *idx, const float *prio, size_t T,
                                           size_t S, size_t s, int32_t e, uint64_t prefix, int shift, size_t first,
                                           size_t stride)
{
    for (int d = 0; d < MOE_K_SELECT_BINS; d++)
        cnt[d * cs] = 0;
    for (size_t t = first; t < T; t += stride) {
        if (idx[t * S + s] != e)
            continue;
        uint64_t k = moe_k_prob_key(prio, S, s, t);
        if (moe_k_select_agrees(k, prefix, shift))
            cnt[((k >> shift) & 15u) * cs]++;
    }
}

// The block's plan for (s, e) from its tallies: how many to keep (R, at most
// here) and whether a selection is needed (0 < R < here).
static inline MOE_HD uint64_t moe_k_prob_quota(uint64_t before, uint64_t here, size_t cap)
{
    uint64_t R = before < cap ? cap - before : 0;
    return R < here ? R : here;
}

// One thread's marks: kept[t S + s] = 1 for its tokens' slot-s assignments to
// e whose key is at least thr (0: all of them), when R > 0.
static inline MOE_HD void moe_k_prob_mark(uint8_t *kept, const int32_t *idx, const float *prio, size_t T, size_t S,
                                          size_t s, int32_t e, uint64_t R, uint64_t thr, size_t first, size_t stride)
{
    if (R == 0)
        return;
    for (size_t t = first; t < T; t += stride)
        if (idx[t * S + s] == e && moe_k_prob_key(prio, S, s, t) >= thr)
            kept[t * S + s] = 1;
}

// The last slot's block writes expert e's counts: routed = before + here.
static inline MOE_HD void moe_k_prob_counts(size_t *routed, size_t *n_kept, size_t *dropped, uint64_t before,
                                            uint64_t here, size_t cap, size_t e)
{
    size_t r = (size_t)(before + here), k = r < cap ? r : cap;
    routed[e] = r;
    n_kept[e] = k;
    dropped[e] = r - k;
}

// Block (s, e) of `threads` threads emulated in turn, cnt holding threads x 16
// bins (bin d of thread k at d * threads + k, as the kernel's shared array);
// kept is cleared beforehand; routed, n_kept, dropped (E) written for s = S - 1.
static inline MOE_HD void moe_k_prob_block(uint8_t *kept, size_t *routed, size_t *n_kept, size_t *dropped,
                                           uint32_t *cnt, const int32_t *idx, const float *prio, size_t T, size_t S,
                                           size_t cap, size_t s, int32_t e, size_t threads)
{
    uint64_t before = 0, here = 0, thr = 0;
    for (size_t k = 0; k < threads; k++)
        moe_k_prob_tally(&before, &here, idx, T, S, s, e, k, threads);
    uint64_t R = moe_k_prob_quota(before, here, cap);
    if (R > 0 && R < here) {
        int64_t need = (int64_t)R;
        int done = 0;
        for (int shift = 64 - 4; shift >= 0 && !done; shift -= 4) {
            uint64_t tot[MOE_K_SELECT_BINS];
            for (size_t k = 0; k < threads; k++)
                moe_k_prob_count(cnt + k, threads, idx, prio, T, S, s, e, thr, shift, k, threads);
            moe_k_select_tot(tot, cnt, threads);
            done = moe_k_select_pick(&thr, &need, tot, shift);
        }
    }
    for (size_t k = 0; k < threads; k++)
        moe_k_prob_mark(kept, idx, prio, T, S, s, e, R, thr, k, threads);
    if (s + 1 == S)
        moe_k_prob_counts(routed, n_kept, dropped, before, here, cap, (size_t)e);
}

// 3. offset (E + 1) from the kept counts (E); returns the kept rows, offset[E].
static inline MOE_HD size_t moe_k_dispatch_offsets(size_t *offset, const size_t *n_kept, size_t E)
{
    offset[0] = 0;
    for (size_t e = 0; e < E; e++)
        offset[e + 1] = offset[e] + n_kept[e];
    return offset[E];
}

// 5. xd[r, c] = x[row_tok[r], c].
static inline MOE_HD void moe_k_gather(float *xd, const float *x, const int32_t *row_tok, size_t D, size_t r, size_t c)
{
    xd[r * D + c] = x[(size_t)row_tok[r] * D + c];
}

// 6. out[t, c] += sum over t's kept slots s, in slot order, of gate[t, s] yd[slot_row[t, s], c].
static inline MOE_HD void moe_k_combine(float *out, const float *yd, const float *gate, const int32_t *slot_row,
                                        size_t S, size_t D, size_t t, size_t c)
{
    float o = out[t * D + c];
    for (size_t s = 0; s < S; s++) {
        int32_t r = slot_row[t * S + s];
        if (r >= 0)
            o += gate[t * S + s] * yd[(size_t)r * D + c];
    }
    out[t * D + c] = o;
}

// 7. Row r of the combine's backward: dyd[r, :] = gate[t, s] dout[t, :] and
// dgate[t, s] += dout[t, :] . yd[r, :] (when dgate is non-NULL), t, s = the row's token and slot.
static inline MOE_HD void moe_k_combine_backward(float *dyd, float *dgate, const float *dout, const float *yd,
                                                 const float *gate, const int32_t *row_tok, const int32_t *row_slot,
                                                 size_t S, size_t D, size_t r)
{
    size_t t = (size_t)row_tok[r], ts = t * S + (size_t)row_slot[r];
    const float g = gate[ts];
    const float *dot = dout + t * D, *yr = yd + r * D;
    float *dyr = dyd + r * D;
    double acc = 0.0;
    for (size_t i = 0; i < D; i++) {
        dyr[i] = g * dot[i];
        acc += (double)dot[i] * yr[i];
    }
    if (dgate)
        dgate[ts] += (float)acc;
}

// 7 in tiles of MOE_K_CB_ROWS rows by MOE_K_CB_COLS columns (lib/cuda/ops.cu
// combine_backward_kernel; one thread per row reading its row alone made every
// load of a warp touch 32 rows): element (r, c) writes dyd[r, c] = g dout[t, c],
// g = the row's gate, t its token, and returns its product dout[t, c] y[r, c]
// in double (exact: two floats' product fits a double's significand, so a
// contracted multiply-add elsewhere gives the same bits); row r's thread adds
// the chunk's products in column order (moe_k_sum_tile, cuda/kernels/aux.h),
// chunk after chunk, and at the end dgate[t, s] += (float)acc: the additions of
// moe_k_combine_backward in its order.
#define MOE_K_CB_ROWS 32
#define MOE_K_CB_COLS 128

static inline MOE_HD double moe_k_combine_backward_elem(float *dyd, const float *dout, const float *yd, float g,
                                                        size_t t, size_t D, size_t r, size_t c)
{
    const float d = dout[t * D + c];
    dyd[r * D + c] = g * d;
    return (double)d * yd[r * D + c];
}

// 2-4 in chunks of ch consecutive positions: (a) one thread per chunk counts
// its assignments per expert; (b) one thread per expert scans those counts
// over the chunks in order; (c) one thread per chunk decides its assignments
// from the counts before it. Keep pass: positions in keep order (slot-major;
// within a slot `order`, or token order), kept iff fewer than cap assignments
// to the expert came before. Rows: positions = assignments t S + s, only the
// kept ones, each to the next row of its expert's block. Counting only: the
// plan is the same whatever ch (tests/test_kernels.c checks chunk sizes from 1
// to past T S against the CPU), and no thread walks all T S positions.

// Position q of the keep order -> its assignment t S + s.
static inline MOE_HD size_t moe_k_keep_at(const int32_t *order, size_t T, size_t S, size_t q)
{
    size_t s = q / T, j = q % T, t = order ? (size_t)order[s * T + j] : j;
    return t * S + s;
}

// (a) chunk c's count per expert into cnt (E): rows 0: the keep pass's
// positions (through order); rows 1: the kept assignments (kept non-NULL).
static inline MOE_HD void moe_k_chunk_count(size_t *cnt, const int32_t *idx, const int32_t *order, const uint8_t *kept,
                                            size_t T, size_t S, size_t E, size_t ch, size_t c, int rows)
{
    size_t n = T * S, lo = c * ch, hi = lo + ch < n ? lo + ch : n;
    for (size_t e = 0; e < E; e++)
        cnt[e] = 0;
    for (size_t q = lo; q < hi; q++) {
        size_t i = rows ? q : moe_k_keep_at(order, T, S, q);
        int32_t e = idx[i];
        if (e >= 0 && (!rows || kept[i]))
            cnt[e]++;
    }
}

// (b) expert e over the chunks' counts cnt (n_chunks, E), in chunk order:
// each becomes start + the count before its chunk; returns the total.
static inline MOE_HD size_t moe_k_chunk_scan(size_t *cnt, size_t n_chunks, size_t E, size_t e, size_t start)
{
    size_t run = 0;
    for (size_t c = 0; c < n_chunks; c++) {
        size_t k = cnt[c * E + e];
        cnt[c * E + e] = start + run;
        run += k;
    }
    return run;
}

// (c) keep: chunk c's positions in order; before (E) = the assignments to
// each expert before the chunk (advanced here); kept[i] = 1 while below cap.
static inline MOE_HD void moe_k_chunk_keep(size_t *before, uint8_t *kept, const int32_t *idx, const int32_t *order,
                                           size_t T, size_t S, size_t cap, size_t ch, size_t c)
{
    size_t n = T * S, lo = c * ch, hi = lo + ch < n ? lo + ch : n;
    for (size_t q = lo; q < hi; q++) {
        size_t i = moe_k_keep_at(order, T, S, q);
        int32_t e = idx[i];
        if (e < 0)
            continue;
        if (before[e] < cap)
            kept[i] = 1;
        before[e]++;
    }
}

// (c) rows: chunk c's kept assignments in (token, slot) order, each to row
// next[e]++ (next: the expert's offset plus the kept ones before the chunk).
static inline MOE_HD void moe_k_chunk_rows(size_t *next, const int32_t *idx, const uint8_t *kept, size_t T, size_t S,
                                           size_t ch, size_t c, int32_t *row_tok, int32_t *row_slot,
                                           int32_t *slot_row)
{
    size_t n = T * S, lo = c * ch, hi = lo + ch < n ? lo + ch : n;
    for (size_t i = lo; i < hi; i++) {
        int32_t e = idx[i];
        if (e < 0 || !kept[i])
            continue;
        size_t r = next[e]++;
        row_tok[r] = (int32_t)(i / S);
        row_slot[r] = (int32_t)(i % S);
        slot_row[i] = (int32_t)r;
    }
}

#endif
