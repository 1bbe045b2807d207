// bench_attention.c: throwaway timing of the attention kernels (not built by meson).
// Times the reference twin (moe_attention_*_ref, double accumulators) against the fast kernels
// (moe_attention_*, which pick a path by shape) and against each of their two paths forced (GEMM,
// tile), forward and forward + backward, at the two shapes that matter and a few others, on 1
// thread, median of REPS repeats; prints milliseconds and the speedup ratios over the reference
// (the tile path is only timed up to its limit, hs <= HS_TILE_MAX; at hs = 128 the numbers in the
// file's header came from a copy with HS_TILE_MAX raised to 128).
// It includes lib/nn/attention.c itself to reach the static per-head paths (so the library's copy
// of that file is not linked), from the repository root:
//   cc -O2 -fopenmp -I lib dev/bench_attention.c build/lib/libmoe.a $(pkg-config --libs sleef)
//      -lblis -lcjson -lcsv -lz -lm -o /tmp/bench_attention && /tmp/bench_attention
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "nn/attention.c"

#define REPS 9

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void fill(float *x, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        x[i] = (float)((seed >> 8) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
    }
}

// every (b, h) pair through one path
#define FORCED(path)                                                                                             \
    static void fwd_##path(float *out, float *att, const float *qkv, size_t B, size_t C, size_t D, size_t H)    \
    {                                                                                                           \
        for (size_t bh = 0; bh < B * H; bh++)                                                                   \
            head_forward_##path(out + bh / H * C * D, att + bh * C * C, qkv + bh / H * C * 3 * D, C, D, D / H,  \
                                bh % H);                                                                        \
    }                                                                                                           \
    static void bwd_##path(float *dqkv, float *datt, const float *dout, const float *qkv, const float *att,      \
                           size_t B, size_t C, size_t D, size_t H)                                              \
    {                                                                                                           \
        for (size_t bh = 0; bh < B * H; bh++)                                                                   \
            head_backward_##path(dqkv + bh / H * C * 3 * D, datt + bh * C * C, dout + bh / H * C * D,           \
                                 qkv + bh / H * C * 3 * D, att + bh * C * C, C, D, D / H, bh % H);              \
        }
FORCED(gemm)
FORCED(tile)

struct shape {
    const char *name;
    size_t B, C, D, H;
};

struct bufs {
    float *qkv, *out, *att, *dout, *dqkv, *datt;
};

typedef void (*fwd_fn)(float *, float *, const float *, size_t, size_t, size_t, size_t);
typedef void (*bwd_fn)(float *, float *, const float *, const float *, const float *, size_t, size_t, size_t,
                       size_t);

// median seconds of one call (fwd alone when bwd is NULL, else fwd then bwd)
static double time_it(const struct shape *s, struct bufs *b, fwd_fn fwd, bwd_fn bwd)
{
    double t[REPS];
    fwd(b->out, b->att, b->qkv, s->B, s->C, s->D, s->H); // warm up
    for (int r = 0; r < REPS; r++) {
        double t0 = now();
        fwd(b->out, b->att, b->qkv, s->B, s->C, s->D, s->H);
        if (bwd)
            bwd(b->dqkv, b->datt, b->dout, b->qkv, b->att, s->B, s->C, s->D, s->H);
        t[r] = now() - t0;
    }
    qsort(t, REPS, sizeof *t, cmp);
    return t[REPS / 2];
}

int main(void)
{
    if (moe_blas_init(1, NULL))
        return 1;
#ifdef _OPENMP
    omp_set_num_threads(1);
#endif
    const struct shape shapes[] = {
        { "small B=32 C=64 D=64 H=4 (hs=16)", 32, 64, 64, 4 },
        { "base  B=16 C=256 D=256 H=4 (hs=64)", 16, 256, 256, 4 },
        { "other B=16 C=128 D=128 H=4 (hs=32)", 16, 128, 128, 4 },
        { "other B=8 C=256 D=128 H=4 (hs=32)", 8, 256, 128, 4 },
        { "other B=32 C=64 D=256 H=4 (hs=64)", 32, 64, 256, 4 },
        { "other B=8 C=512 D=128 H=8 (hs=16)", 8, 512, 128, 8 },
        { "other B=8 C=256 D=512 H=4 (hs=128)", 8, 256, 512, 4 },
        { "other B=4 C=512 D=512 H=4 (hs=128)", 4, 512, 512, 4 },
    };
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        const struct shape *s = &shapes[i];
        size_t nqkv = s->B * s->C * 3 * s->D, nout = s->B * s->C * s->D, natt = s->B * s->H * s->C * s->C;
        struct bufs b = { malloc(nqkv * 4), malloc(nout * 4), malloc(natt * 4), malloc(nout * 4), malloc(nqkv * 4),
                          malloc(natt * 4) };
        if (!b.qkv || !b.out || !b.att || !b.dout || !b.dqkv || !b.datt)
            return 1;
        fill(b.qkv, nqkv, 1);
        fill(b.dout, nout, 2);
        memset(b.dqkv, 0, nqkv * 4);
        double rf = time_it(s, &b, moe_attention_forward_ref, NULL);
        double ff = time_it(s, &b, moe_attention_forward, NULL);
        double gf = time_it(s, &b, fwd_gemm, NULL);
        const int tiles_ok = s->D / s->H <= HS_TILE_MAX; // the tile path's limit
        double tf = tiles_ok ? time_it(s, &b, fwd_tile, NULL) : NAN;
        double rb = time_it(s, &b, moe_attention_forward_ref, moe_attention_backward_ref);
        double fb = time_it(s, &b, moe_attention_forward, moe_attention_backward);
        double gb = time_it(s, &b, fwd_gemm, bwd_gemm);
        double tb = tiles_ok ? time_it(s, &b, fwd_tile, bwd_tile) : NAN;
        printf("%s (fast = %s path)\n"
               "  forward:            ref %8.3f ms  fast %8.3f ms (%5.2fx)  gemm %8.3f ms (%5.2fx)  tile %8.3f ms (%5.2fx)\n"
               "  forward + backward: ref %8.3f ms  fast %8.3f ms (%5.2fx)  gemm %8.3f ms (%5.2fx)  tile %8.3f ms (%5.2fx)\n",
               s->name, use_tiles(s->D / s->H) ? "tile" : "gemm", rf * 1e3, ff * 1e3, rf / ff, gf * 1e3,
               rf / gf, tf * 1e3, rf / tf, rb * 1e3, fb * 1e3, rb / fb, gb * 1e3, rb / gb, tb * 1e3, rb / tb);
        free(b.qkv), free(b.out), free(b.att), free(b.dout), free(b.dqkv), free(b.datt);
    }
    return 0;
}
