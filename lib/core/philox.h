// philox.h: the Philox4x32-10 block function and the conversions of its words
// to uniform and normal numbers, as host/device inline functions (core/hd.h),
// so that the CPU (core/rng.c) and a GPU draw the same numbers from the same
// (seed, purpose, stream, index) counters.
// reference: Salmon, Moraes, Dror & Shaw, "Parallel random numbers: as easy as
// 1, 2, 3" (SC 2011), Philox4x32 with 10 rounds; constants from the paper.
// Not here: the generator's interface and the distributions over arrays
// (core/rng.h).
#ifndef MOE_PHILOX_H
#define MOE_PHILOX_H

#include <math.h>
#include <stdint.h>

#include "core/hd.h"

#define MOE_PHILOX_M0 0xD2511F53u
#define MOE_PHILOX_M1 0xCD9E8D57u
#define MOE_PHILOX_W0 0x9E3779B9u
#define MOE_PHILOX_W1 0xBB67AE85u

// out = Philox4x32-10(counter ctr, key).
static inline MOE_HD void moe_philox_block(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4])
{
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; round++) {
        uint64_t p0 = (uint64_t)MOE_PHILOX_M0 * c0, p1 = (uint64_t)MOE_PHILOX_M1 * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
        uint32_t n1 = (uint32_t)p1;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        uint32_t n3 = (uint32_t)p0;
        c0 = n0;
        c1 = n1;
        c2 = n2;
        c3 = n3;
        k0 += MOE_PHILOX_W0;
        k1 += MOE_PHILOX_W1;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

// The four words of block `block` of the generator (seed, purpose, stream):
// counter (block low, block high, stream, purpose), key (seed low, seed high).
static inline MOE_HD void moe_philox_words(uint64_t seed, uint32_t purpose, uint32_t stream, uint64_t block,
                                           uint32_t out[4])
{
    uint32_t ctr[4], key[2];
    ctr[0] = (uint32_t)block;
    ctr[1] = (uint32_t)(block >> 32);
    ctr[2] = stream;
    ctr[3] = purpose;
    key[0] = (uint32_t)seed;
    key[1] = (uint32_t)(seed >> 32);
    moe_philox_block(ctr, key, out);
}

// Uniform in the open interval (0, 1) from one word: 24-bit resolution,
// (w >> 8) + 0.5 keeps it strictly inside.
static inline MOE_HD float moe_philox_u01(uint32_t w) { return ((float)(w >> 8) + 0.5f) * (1.0f / 16777216.0f); }

// Standard normal by Box-Muller from two words (double inside; the device's
// log and cos may differ from the host's in the last bits of the double, which
// rounding to float almost always hides).
static inline MOE_HD float moe_philox_normal(uint32_t w0, uint32_t w1)
{
    double u1 = ((double)w0 + 0.5) * (1.0 / 4294967296.0);
    double u2 = ((double)w1 + 0.5) * (1.0 / 4294967296.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * 3.14159265358979323846 * u2));
}

#endif
