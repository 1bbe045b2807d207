// rng.h: the counter-based random number generator (Philox4x32-10).
// Every random number is a pure function of (seed, purpose, stream, index):
// no hidden state, so draws do not depend on thread count or scheduling order
// and a GPU backend can reproduce them. `stream` is typically the step, the
// epoch, or a hash of a tensor name; `index` the element.
// reference: Salmon, Moraes, Dror & Shaw, "Parallel random numbers: as easy as
// 1, 2, 3" (SC 2011), Philox4x32 with 10 rounds.
#ifndef MOE_RNG_H
#define MOE_RNG_H

#include <stddef.h>
#include <stdint.h>

// Purposes keep unrelated uses apart: the same (seed, stream, index) under two
// purposes gives independent numbers. Append new ones at the end (values are
// part of the reproducibility contract).
enum moe_rng_purpose {
    MOE_RNG_INIT = 1,      // parameter initialisation (stream = hash of tensor name)
    MOE_RNG_DATA = 2,      // synthetic data generation
    MOE_RNG_SHUFFLE = 3,   // mini-batch order (stream = epoch)
    MOE_RNG_SPLIT = 4,     // random train/test split
    MOE_RNG_NOISE = 5,     // router noise (stream = step)
    MOE_RNG_JITTER = 6,    // router input jitter
    MOE_RNG_DISPATCH = 7,  // stochastic dispatch decisions
    MOE_RNG_DROPOUT = 8,   // dropout masks (nn/dropout.c: stream = step, index = site * 2^40 + element)
    MOE_RNG_WINDOW = 9,    // language-model training windows (stream = epoch, index = window)
    MOE_RNG_MOEBERT = 10,  // MoEBERT random neuron order (stream = block)
    MOE_RNG_GENERATE = 11, // moe generate: sampling (stream 0, index = generated token)
    MOE_RNG_PRUNE = 12,    // moe compress: random expert pruning's scores (stream = layer, index = expert)
};

struct moe_rng {
    uint64_t seed;
    uint32_t purpose;
    uint32_t stream;
};

static inline struct moe_rng moe_rng_make(uint64_t seed, uint32_t purpose, uint32_t stream)
{
    struct moe_rng r = { seed, purpose, stream };
    return r;
}

// The raw block function: 4 words out for counter ctr and key.
void moe_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);

// Four 32-bit words for block `block` of this generator.
void moe_rng_block(const struct moe_rng *r, uint64_t block, uint32_t out[4]);
uint32_t moe_rng_u32(const struct moe_rng *r, uint64_t i);
// Uniform in the open interval (0, 1), 24-bit resolution.
float moe_rng_uniform(const struct moe_rng *r, uint64_t i);
// Standard normal (Box-Muller on the pair of words of element i).
float moe_rng_normal(const struct moe_rng *r, uint64_t i);
// Uniform integer in [0, n) (n > 0), by 64-bit multiply-shift (negligible bias for small n).
uint32_t moe_rng_below(const struct moe_rng *r, uint64_t i, uint32_t n);
void moe_rng_fill_uniform(const struct moe_rng *r, float *x, size_t n, float lo, float hi);
// Draws first .. first + n - 1 of the same stream (a part of a larger fill).
void moe_rng_fill_uniform_at(const struct moe_rng *r, float *x, size_t n, uint64_t first, float lo, float hi);
void moe_rng_fill_normal(const struct moe_rng *r, float *x, size_t n, float mean, float std);
// A random permutation of 0..n-1 (Fisher-Yates with draws indexed by position).
void moe_rng_permutation(const struct moe_rng *r, uint32_t *perm, size_t n);
// FNV-1a 32-bit hash of a string (used as the stream for named tensors).
uint32_t moe_hash32(const char *s);

#endif
