// dev/select-bench.c: the device's two radix selections (lib/cuda/kernels/
// select.h) against the O(T) counts per thread they replaced, both run here on
// one CPU core as the host emulation runs them (every thread of a launch in
// turn), on the same inputs; prints both times, their ratio, and how many
// decisions differ (must be 0). A measure of the work each does, not of a GPU.
//   cc -O2 -std=c11 -D_GNU_SOURCE -Ilib dev/select-bench.c -o /tmp/select-bench -lm
//   /tmp/select-bench [T [E]]     (default T = 16384, E = 8; T = 65536 takes minutes)
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "cuda/kernels/dispatch.h"
#include "cuda/kernels/route.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

// A uniform float in [0, 1) from a 64-bit LCG (Knuth's MMIX constants).
static float unit(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (float)(*s >> 40) / 16777216.0f;
}

int main(int argc, char **argv)
{
    const int64_t T = argc > 1 ? atoll(argv[1]) : 16384;
    const int E = argc > 2 ? atoi(argv[2]) : 8;
    const size_t TE = (size_t)T * (size_t)E, S = 2, TS = (size_t)T * S;
    if (T < 1 || E < 1) {
        fprintf(stderr, "select-bench: T and E must be positive\n");
        return 2;
    }
    float *z = malloc((size_t)E * 4), *p = malloc(TE * 4), *lse = malloc((size_t)T * 4), *g = malloc(TE * 4);
    float *q = malloc(TE * 4), *prio = malloc(TS * 4);
    int32_t *s1 = malloc(TE * 4), *s2 = malloc(TE * 4), *ix = malloc(TE * 4), *idx = malloc(TS * 4);
    int32_t *order = malloc(TS * 4);
    uint8_t *k1 = calloc(TS, 1), *k2 = calloc(TS, 1);
    uint32_t *bins = malloc(256 * MOE_K_SELECT_BINS * sizeof *bins);
    size_t *cnt = calloc((size_t)E, sizeof *cnt), *routed = malloc((size_t)E * sizeof(size_t));
    size_t *kept = malloc((size_t)E * sizeof(size_t)), *dropped = malloc((size_t)E * sizeof(size_t));
    if (!z || !p || !lse || !g || !q || !prio || !s1 || !s2 || !ix || !idx || !order || !k1 || !k2 || !bins || !cnt ||
        !routed || !kept || !dropped) {
        fprintf(stderr, "select-bench: out of memory\n");
        return 1;
    }
    uint64_t seed = 1;
    for (int64_t t = 0; t < T; t++) { // the router's softmax of logits uniform in [-2, 2)
        for (int e = 0; e < E; e++)
            z[e] = 4.0f * unit(&seed) - 2.0f;
        moe_k_softmax_row(p + t * E, lse + t, z, E);
    }
    for (size_t i = 0; i < TS; i++) { // two distinct experts a token, priorities uniform
        idx[i] = (int32_t)(((size_t)(unit(&seed) * (float)E) + i % S) % (size_t)E);
        prio[i] = unit(&seed);
    }

    // expert choice in training: a block of 256 per expert, against one thread per (token, expert)
    double t0 = now();
    for (int e = 0; e < E; e++)
        moe_k_ec_select_column(s2, ix, g, q, bins, p, T, E, e, 1.0, 256);
    double t1 = now();
    for (int64_t t = 0; t < T; t++)
        for (int e = 0; e < E; e++)
            moe_k_ec_slot(s1, ix, g, q, p, T, E, t, e, 1.0, MOE_K_EC_FULL, 0);
    double t2 = now();
    size_t bad = 0;
    for (size_t i = 0; i < TE; i++)
        bad += s1[i] != s2[i];
    printf("expert choice, T %lld, E %d: selection %.4f s, pair rank %.3f s, ratio %.0f, slots differing %zu\n",
           (long long)T, E, t1 - t0, t2 - t1, (t2 - t1) / (t1 - t0), bad);

    // the keep by priority at capacity T S / E: a block of 256 per (slot, expert), against the places
    const size_t cap = TS / (size_t)E;
    t0 = now();
    for (size_t b = 0; b < S * (size_t)E; b++)
        moe_k_prob_block(k2, routed, kept, dropped, bins, idx, prio, (size_t)T, S, cap, b / (size_t)E,
                         (int32_t)(b % (size_t)E), 256);
    t1 = now();
    for (size_t s = 0; s < S; s++)
        for (size_t t = 0; t < (size_t)T; t++)
            order[s * (size_t)T + moe_k_prob_place(prio, (size_t)T, S, s, t)] = (int32_t)t;
    moe_k_chunk_keep(cnt, k1, idx, order, (size_t)T, S, cap, TS, 0);
    t2 = now();
    bad = 0;
    for (size_t i = 0; i < TS; i++)
        bad += k1[i] != k2[i];
    printf("keep by priority, T %lld, S 2, E %d, capacity %zu: selection %.4f s, places %.3f s, ratio %.0f, "
           "decisions differing %zu\n",
           (long long)T, E, cap, t1 - t0, t2 - t1, (t2 - t1) / (t1 - t0), bad);
    return 0;
}
