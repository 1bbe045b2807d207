// dispatch.h: the capacity plan (moe/dispatch.c moe_dispatch_plan) and the
// gather and combine around the expert FFNs (moe/experts.c), as host/device
// functions (core/hd.h) over index spaces a GPU launch covers:
//   1. keep order (MOE_DROP_PROB only): one thread per (slot, token) finds its
//      place among the tokens of its slot, by priority, ties to the lower token
//      (GShard's first choices before second choices, batch-prioritised within
//      a slot: Lepikhin et al. 2020; Riquelme et al. 2021);
//   2. keep, 3. offsets, 4. rows: the plan in chunks of consecutive positions
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
//      to the slot's gate gradient (a slot has one row: one writer).
// Every result equals the CPU's: the same decisions and the same sums in the
// same order. T = tokens, S = slots per token, E = experts, D = width.
// Not here: the expert GEMMs (cuBLAS) and their backward.
#ifndef MOE_K_DISPATCH_H
#define MOE_K_DISPATCH_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "core/hd.h"

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
