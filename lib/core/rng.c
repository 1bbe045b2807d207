// rng.c: Philox4x32-10 and the distributions built on it (see rng.h).
// The block function and the word conversions are in core/philox.h (shared with the GPU).
#include "core/rng.h"

#include "core/philox.h"

void moe_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4])
{
    moe_philox_block(ctr, key, out);
}

void moe_rng_block(const struct moe_rng *r, uint64_t block, uint32_t out[4])
{
    moe_philox_words(r->seed, r->purpose, r->stream, block, out);
}

uint32_t moe_rng_u32(const struct moe_rng *r, uint64_t i)
{
    uint32_t w[4];
    moe_rng_block(r, i >> 2, w);
    return w[i & 3];
}

float moe_rng_uniform(const struct moe_rng *r, uint64_t i) { return moe_philox_u01(moe_rng_u32(r, i)); }

float moe_rng_normal(const struct moe_rng *r, uint64_t i)
{
    // Element i uses words 0,1 of block i; words 2,3 are left unused so each
    // normal depends on exactly one block.
    uint32_t w[4];
    moe_rng_block(r, i, w);
    return moe_philox_normal(w[0], w[1]);
}

uint32_t moe_rng_below(const struct moe_rng *r, uint64_t i, uint32_t n)
{
    return (uint32_t)(((uint64_t)moe_rng_u32(r, i) * n) >> 32);
}

void moe_rng_fill_uniform(const struct moe_rng *r, float *x, size_t n, float lo, float hi)
{
    moe_rng_fill_uniform_at(r, x, n, 0, lo, hi);
}

void moe_rng_fill_uniform_at(const struct moe_rng *r, float *x, size_t n, uint64_t first, float lo, float hi)
{
    for (size_t i = 0; i < n; i++)
        x[i] = lo + (hi - lo) * moe_rng_uniform(r, first + i);
}

void moe_rng_fill_normal(const struct moe_rng *r, float *x, size_t n, float mean, float std)
{
    for (size_t i = 0; i < n; i++)
        x[i] = mean + std * moe_rng_normal(r, i);
}

void moe_rng_permutation(const struct moe_rng *r, uint32_t *perm, size_t n)
{
    for (size_t i = 0; i < n; i++)
        perm[i] = (uint32_t)i;
    for (size_t i = n; i > 1; i--) {
        uint32_t j = moe_rng_below(r, i - 1, (uint32_t)i);
        uint32_t t = perm[i - 1];
        perm[i - 1] = perm[j];
        perm[j] = t;
    }
}

uint32_t moe_hash32(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++) {
        h ^= (uint8_t)*s;
        h *= 16777619u;
    }
    return h;
}
