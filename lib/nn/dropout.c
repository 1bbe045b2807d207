// dropout.c: inverted dropout with masks from the counter-based generator.
// reference: Srivastava, Hinton, Krizhevsky, Sutskever & Salakhutdinov 2014,
// "Dropout: a simple way to prevent neural networks from overfitting" (JMLR 15),
// in the "inverted" form: at training time y = x * m / (1 - p), m ~ Bernoulli(1 - p),
// so that E[y] = x and evaluation is the identity (no rescaling of the weights).
// The backward is the same multiplication: dx = dy * m / (1 - p).
//
// Element i of a site keeps iff the 32-bit word u_i >= p * 2^32, u_i being word
// i & 3 of Philox block i >> 2 of (seed, MOE_RNG_DROPOUT, stream = step), with
// i = site * 2^40 + element (nn.h). So a mask is a pure function of (seed, step,
// site, element): the same at any thread count, on resume, and in the backward,
// which draws it again instead of keeping it.
#include <stdint.h>

#include "core/philox.h"
#include "core/rng.h"
#include "nn/nn.h"

#define CHUNK 4096 // elements per parallel chunk (a multiple of 4: chunks start on a block)

static uint32_t threshold(float p) { return (uint32_t)((double)p * 4294967296.0); }

int moe_dropout_keep(const struct moe_dropout *d, uint64_t element)
{
    uint64_t i = ((uint64_t)d->site << MOE_DROP_SITE_SHIFT) + element;
    uint32_t w[4];
    moe_philox_words(d->seed, MOE_RNG_DROPOUT, (uint32_t)d->step, i >> 2, w);
    return w[i & 3] >= threshold(d->p);
}

// x[r * ld + j] *= m / (1 - p) for j < n, element index key + j.
static void apply_run(const struct moe_dropout *d, float *x, size_t n, uint64_t key, uint32_t thr, float scale)
{
    uint64_t i = ((uint64_t)d->site << MOE_DROP_SITE_SHIFT) + key;
    uint32_t w[4];
    uint64_t blk = UINT64_MAX;
    for (size_t j = 0; j < n; j++, i++) {
        if ((i >> 2) != blk) {
            blk = i >> 2;
            moe_philox_words(d->seed, MOE_RNG_DROPOUT, (uint32_t)d->step, blk, w);
        }
        x[j] = w[i & 3] >= thr ? x[j] * scale : 0.0f;
    }
}

void moe_dropout_apply(const struct moe_dropout *d, float *x, size_t n, uint64_t first)
{
    if (!moe_dropout_on(d) || n == 0)
        return;
    const uint32_t thr = threshold(d->p);
    const float scale = 1.0f / (1.0f - d->p);
    const size_t nc = (n + CHUNK - 1) / CHUNK;
    #pragma omp parallel for schedule(static) if (nc > 1)
    for (size_t c = 0; c < nc; c++) {
        size_t j0 = c * CHUNK, len = n - j0 < CHUNK ? n - j0 : CHUNK;
        apply_run(d, x + j0, len, first + j0, thr, scale);
    }
}

void moe_dropout_rows(const struct moe_dropout *d, float *x, size_t N, size_t F, const int32_t *row_tok,
                      const int32_t *row_slot, size_t S)
{
    if (!moe_dropout_on(d) || N == 0)
        return;
    const uint32_t thr = threshold(d->p);
    const float scale = 1.0f / (1.0f - d->p);
    #pragma omp parallel for schedule(static) if (N * F >= CHUNK)
    for (size_t r = 0; r < N; r++) {
        uint64_t key = row_tok ? (uint64_t)row_tok[r] * S + (uint64_t)row_slot[r] : r;
        apply_run(d, x + r * F, F, key * F, thr, scale);
    }
}
