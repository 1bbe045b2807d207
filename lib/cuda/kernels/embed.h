// embed.h: the token + position embedding (nn/embedding.c) as host/device
// functions (core/hd.h). Forward: one thread per (token, column). Backward
// without atomics, in the CPU's order of additions:
//   - token rows: the tokens sorted stably by id (a stable radix sort on the
//     device; any stable sort on the host) give, for each id, its tokens in
//     (sequence, position) order; one thread per (id, column) adds their
//     gradients in that order;
//   - position rows: one thread per (position, column) adds the sequences'
//     gradients in sequence order.
// Each gradient value has one writer and the same sum as the CPU's serial
// scatter-add. B = sequences, C = positions, D = width; ld = row stride of the
// token ids (>= C).
// reference: Radford et al. 2018 (GPT): h_0 = U W_e + W_p.
#ifndef MOE_K_EMBED_H
#define MOE_K_EMBED_H

#include <stddef.h>
#include <stdint.h>

#include "core/hd.h"

// out[(b C + c), i] = wte[tok[b, c], i] + wpe[c, i], for row = b C + c.
static inline MOE_HD void moe_k_embed_forward(float *out, const int32_t *tok, size_t ld, const float *wte,
                                              const float *wpe, size_t C, size_t D, size_t row, size_t i)
{
    size_t b = row / C, c = row % C;
    out[row * D + i] = wte[(size_t)tok[b * ld + c] * D + i] + wpe[c * D + i];
}

// dwte[id, i] += dout[r, i] for the rows r = order[start..end) (id's tokens, in order).
static inline MOE_HD void moe_k_embed_backward_tok(float *dwte, const float *dout, const int32_t *order, size_t start,
                                                   size_t end, size_t D, size_t id, size_t i)
{
    float acc = dwte[id * D + i];
    for (size_t k = start; k < end; k++)
        acc += dout[(size_t)order[k] * D + i];
    dwte[id * D + i] = acc;
}

// The first k in [0, n) with sorted[k] >= id (n if none): where id's rows
// start in the sorted ids, so id's rows are [lower(id), lower(id + 1)).
static inline MOE_HD size_t moe_k_lower_bound(const int32_t *sorted, size_t n, int32_t id)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (sorted[mid] < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

// dwpe[c, i] += dout[(b C + c), i] over b in order.
static inline MOE_HD void moe_k_embed_backward_pos(float *dwpe, const float *dout, size_t B, size_t C, size_t D,
                                                   size_t c, size_t i)
{
    float acc = dwpe[c * D + i];
    for (size_t b = 0; b < B; b++)
        acc += dout[(b * C + c) * D + i];
    dwpe[c * D + i] = acc;
}

// Language-aware routing (model/transformer.c, moe.lang_router): the
// language embedding le (G, D) of each token's window, radd[t, i] =
// le[lang[t / C], i] (lang NULL: language 0), one thread per (token, column);
// and its gradient, dle[g, i] += dradd[t, i] over the tokens t of g's windows
// in token order (the CPU's serial scatter-add), one thread per (language,
// column). B windows of C tokens.
static inline MOE_HD void moe_k_lang_rows(float *radd, const float *le, const int32_t *lang, size_t C, size_t D,
                                          size_t t, size_t i)
{
    size_t g = lang ? (size_t)lang[t / C] : 0;
    radd[t * D + i] = le[g * D + i];
}

static inline MOE_HD void moe_k_lang_grad(float *dle, const float *dradd, const int32_t *lang, size_t B, size_t C,
                                          size_t D, size_t g, size_t i)
{
    float acc = dle[g * D + i];
    for (size_t w = 0; w < B; w++) {
        if ((lang ? (size_t)lang[w] : 0) != g)
            continue;
        for (size_t c = 0; c < C; c++)
            acc += dradd[(w * C + c) * D + i];
    }
    dle[g * D + i] = acc;
}

#endif
