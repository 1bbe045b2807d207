// rng.c: Philox4x32-10 and the distributions built on it (see rng.h).
// reference: Salmon et al., SC 2011; constants from the paper (Random123).
#include "core/rng.h"

#include <math.h>

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

static inline void mulhilo(uint32_t a, uint32_t b, uint32_t *hi, uint32_t *lo)
{
    uint64_t p = (uint64_t)a * b;
    *hi = (uint32_t)(p >> 32);
    *lo = (uint32_t)p;
}

void moe_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4])
{
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; round++) {
        uint32_t hi0, lo0, hi1, lo1;
        mulhilo(PHILOX_M0, c0, &hi0, &lo0);
        mulhilo(PHILOX_M1, c2, &hi1, &lo1);
        uint32_t n0 = hi1 ^ c1 ^ k0;
        uint32_t n1 = lo1;
        uint32_t n2 = hi0 ^ c3 ^ k1;
        uint32_t n3 = lo0;
        c0 = n0; c1 = n1; c2 = n2; c3 = n3;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

void moe_rng_block(const struct moe_rng *r, uint64_t block, uint32_t out[4])
{
    uint32_t ctr[4] = { (uint32_t)block, (uint32_t)(block >> 32), r->stream, r->purpose };
    uint32_t key[2] = { (uint32_t)r->seed, (uint32_t)(r->seed >> 32) };
    moe_philox4x32_10(ctr, key, out);
}

uint32_t moe_rng_u32(const struct moe_rng *r, uint64_t i)
{
    uint32_t w[4];
    moe_rng_block(r, i >> 2, w);
    return w[i & 3];
}

static inline float u01(uint32_t w)
{
    // (w >> 8) in [0, 2^24); +0.5 keeps the result strictly inside (0, 1).
    return ((float)(w >> 8) + 0.5f) * (1.0f / 16777216.0f);
}

float moe_rng_uniform(const struct moe_rng *r, uint64_t i) { return u01(moe_rng_u32(r, i)); }

float moe_rng_normal(const struct moe_rng *r, uint64_t i)
{
    // Element i uses words 0,1 of block i; words 2,3 are left unused so each
    // normal depends on exactly one block.
    uint32_t w[4];
    moe_rng_block(r, i, w);
    double u1 = ((double)w[0] + 0.5) * (1.0 / 4294967296.0);
    double u2 = ((double)w[1] + 0.5) * (1.0 / 4294967296.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
}

uint32_t moe_rng_below(const struct moe_rng *r, uint64_t i, uint32_t n)
{
    return (uint32_t)(((uint64_t)moe_rng_u32(r, i) * n) >> 32);
}

void moe_rng_fill_uniform(const struct moe_rng *r, float *x, size_t n, float lo, float hi)
{
    for (size_t i = 0; i < n; i++)
        x[i] = lo + (hi - lo) * moe_rng_uniform(r, i);
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
