// select.h: radix selection's shared parts (core/hd.h host/device
// functions): 64-bit keys whose order is "comes first", and the digit pick.
// reference: Knuth, TAOCP vol. 3, 5.2.5 (radix sorting, most significant
// digit first), used here to select rather than sort: to find the n-th key of
// a set, pass p counts the keys that agree with the digits found so far by
// their next 4-bit digit, and the digit holding the n-th key is kept. 16
// passes fix a 64-bit key. Counting only (integers, any order: the same
// sums), so a GPU block gives the bits of one thread doing it all. The
// passes stop early once the digits found split the keys (moe_k_select_pick).
// Users: expert choice in training (route.h), the capacity plan's keep pass
// by priority (dispatch.h).
#ifndef MOE_K_SELECT_H
#define MOE_K_SELECT_H

#include <stdint.h>
#include <string.h>

#include "core/hd.h"

#define MOE_K_SELECT_BINS 16 // 4-bit digits: at most 16 passes over a 64-bit key

// v's bits in unsigned order: a < b as floats iff the results compare so
// (negative floats flipped whole, the rest with the sign bit set), -0 taken
// as +0 so the two are equal as == has them. A NaN lands above +inf (sign
// clear) or below -inf (sign set); callers that give NaN a place map it first.
static inline MOE_HD uint32_t moe_k_f32_order(float v)
{
    if (v == 0.0f)
        v = 0.0f;
    uint32_t b;
    memcpy(&b, &v, sizeof b);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// A key from a value's order and an index: larger value first, then the
// lower index (the low 32 bits hold ~t; t < 2^32). Distinct for distinct t.
static inline MOE_HD uint64_t moe_k_select_key(uint32_t order, int64_t t)
{
    return ((uint64_t)order << 32) | (uint64_t)(0xFFFFFFFFu - (uint32_t)t);
}

// Does key k agree with prefix above bit shift + 4 (the digits found so far)?
static inline MOE_HD int moe_k_select_agrees(uint64_t k, uint64_t prefix, int shift)
{
    return shift + 4 >= 64 || (k >> (shift + 4)) == (prefix >> (shift + 4));
}

// With tot the bins of a pass (the keys agreeing with prefix, by digit at
// shift), and need the wanted key's place (1 = the largest) among them: the
// digit holding it goes into prefix, and need drops by the keys of the digits
// above. Returns 1 when the wanted key is the smallest of those agreeing with
// the new prefix (need == their count): then prefix itself, its lower digits
// 0, already splits the keys as the wanted key does (every key at least the
// wanted one is at least prefix, every other key below it), and the passes
// can stop. With distinct values that happens once a range holds one key,
// within p's or a priority's 32 bits: 5 to 7 passes, not 16, for 8 experts
// over 65536 tokens' softmax of uniform logits.
static inline MOE_HD int moe_k_select_pick(uint64_t *prefix, int64_t *need, const uint64_t *tot, int shift)
{
    int d = MOE_K_SELECT_BINS - 1;
    for (; d > 0 && *need > (int64_t)tot[d]; d--)
        *need -= (int64_t)tot[d];
    *prefix |= (uint64_t)d << shift;
    return *need == (int64_t)tot[d];
}

// A block's bins added up as an emulated block (threads run in turn) has
// them: tot[d] = the sum over threads k of cnt[d * threads + k].
static inline MOE_HD void moe_k_select_tot(uint64_t *tot, const uint32_t *cnt, size_t threads)
{
    for (int d = 0; d < MOE_K_SELECT_BINS; d++) {
        tot[d] = 0;
        for (size_t k = 0; k < threads; k++)
            tot[d] += cnt[(size_t)d * threads + k];
    }
}

#endif
