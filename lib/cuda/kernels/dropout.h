// dropout.h: inverted dropout (nn/dropout.c) as host/device functions
// (core/hd.h), one thread per element.
//
// reference: Srivastava, Hinton, Krizhevsky, Sutskever & Salakhutdinov 2014,
// "Dropout: a simple way to prevent neural networks from overfitting" (JMLR
// 15), inverted: y = x m / (1 - p), m ~ Bernoulli(1 - p); the backward
// multiplies by the same mask, drawn again.
//
// Element `element` of a site keeps iff word (i & 3) of Philox block i >> 2 of
// (seed, MOE_RNG_DROPOUT, stream = step) is at least p 2^32, with
// i = site 2^40 + element: the CPU's mask (nn/nn.h struct moe_dropout,
// MOE_DROP_SITE_SHIFT), so a device draws the same masks bit for bit. The
// scaled value x * (1 / (1 - p)) is one float multiplication on both sides.
#ifndef MOE_K_DROPOUT_H
#define MOE_K_DROPOUT_H

#include <stddef.h>
#include <stdint.h>

#include "core/hd.h"
#include "core/philox.h"
#include "core/rng.h"

#define MOE_K_DROP_SITE_SHIFT 40 // nn/nn.h MOE_DROP_SITE_SHIFT (tests/test_kernels.c checks they agree)

// A site's mask and scale, as the launch passes them to every thread.
struct moe_k_drop {
    uint64_t seed, step;
    uint32_t site;
    uint32_t threshold; // p 2^32, as nn/dropout.c rounds it
    float scale;        // 1 / (1 - p)
};

// The mask and scale of drop probability p (0 <= p < 1) at (seed, step, site).
static inline MOE_HD struct moe_k_drop moe_k_drop_make(float p, uint64_t seed, uint64_t step, uint32_t site)
{
    struct moe_k_drop d;
    d.seed = seed;
    d.step = step;
    d.site = site;
    d.threshold = (uint32_t)((double)p * 4294967296.0);
    d.scale = 1.0f / (1.0f - p);
    return d;
}

// Whether element `element` of the site is kept.
static inline MOE_HD int moe_k_drop_keep(const struct moe_k_drop *d, uint64_t element)
{
    uint64_t i = ((uint64_t)d->site << MOE_K_DROP_SITE_SHIFT) + element;
    uint32_t w[4];
    moe_philox_words(d->seed, MOE_RNG_DROPOUT, (uint32_t)d->step, i >> 2, w);
    return w[i & 3] >= d->threshold;
}

// x[j] of a run whose element 0 is mask element `first`: kept and scaled, or 0.
static inline MOE_HD void moe_k_dropout(float *x, const struct moe_k_drop *d, uint64_t first, size_t j)
{
    x[j] = moe_k_drop_keep(d, first + j) ? x[j] * d->scale : 0.0f;
}

#endif
