// prof.c: phase timers and the GEMM shape record (see prof.h).
#include "core/prof.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

int moe_prof_enabled;
double moe_prof_seconds[MOE_PHASE_N];
static struct moe_gemm_record *g_record;

static const char *const phase_names[MOE_PHASE_N] = {
    "router", "dispatch", "ffn_gemm", "activation", "combine", "aux",
    "attention", "linear", "norm", "loss", "embedding", "optimizer",
};

double moe_prof_clock(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

const char *moe_phase_name(enum moe_phase ph) { return phase_names[ph]; }

void moe_prof_reset(void) { memset(moe_prof_seconds, 0, sizeof moe_prof_seconds); }

static _Thread_local double t_local[MOE_PHASE_N]; // this thread's sums inside a region
static double g_pending[MOE_PHASE_N];             // every thread's, flushed at the region's end

void moe_prof_add(enum moe_phase ph, double seconds)
{
#ifdef _OPENMP
    if (omp_in_parallel()) {
        t_local[ph] += seconds;
        return;
    }
#endif
    moe_prof_seconds[ph] += seconds;
}

void moe_prof_region_flush(void)
{
    if (!moe_prof_enabled)
        return;
    #pragma omp critical(moe_prof_region)
    for (int i = 0; i < MOE_PHASE_N; i++) {
        g_pending[i] += t_local[i];
        t_local[i] = 0.0;
    }
}

void moe_prof_region_end(double t0)
{
    if (!moe_prof_enabled)
        return;
    const double wall = moe_prof_clock() - t0;
    double sum = 0.0;
    for (int i = 0; i < MOE_PHASE_N; i++)
        sum += g_pending[i];
    for (int i = 0; i < MOE_PHASE_N; i++) {
        if (sum > 0.0)
            moe_prof_seconds[i] += wall * (g_pending[i] / sum);
        g_pending[i] = 0.0;
    }
}

void moe_gemm_record_into(struct moe_gemm_record *r)
{
    if (r) {
        r->n = 0;
        r->failed = 0;
    }
    g_record = r;
}

void moe_gemm_record_add(int trans_a, int trans_b, size_t M, size_t N, size_t K)
{
    if (!g_record)
        return;
    #pragma omp critical(moe_gemm_record)
    {
        struct moe_gemm_record *r = g_record;
        size_t i = 0;
        while (i < r->n && !(r->shape[i].trans_a == trans_a && r->shape[i].trans_b == trans_b &&
                             r->shape[i].M == M && r->shape[i].N == N && r->shape[i].K == K))
            i++;
        if (i == r->n && r->n == r->cap) {
            size_t cap = r->cap ? 2 * r->cap : 64;
            struct moe_gemm_shape *s = realloc(r->shape, cap * sizeof *s);
            if (s) {
                r->shape = s;
                r->cap = cap;
            } else {
                r->failed = 1;
            }
        }
        if (i < r->n)
            r->shape[i].count++;
        else if (r->n < r->cap)
            r->shape[r->n++] = (struct moe_gemm_shape){ trans_a, trans_b, M, N, K, 1 };
    }
}

void moe_gemm_record_release(struct moe_gemm_record *r)
{
    if (!r)
        return;
    if (g_record == r)
        g_record = NULL;
    free(r->shape);
    memset(r, 0, sizeof *r);
}

double moe_gemm_record_flops(const struct moe_gemm_record *r)
{
    double f = 0.0;
    for (size_t i = 0; i < r->n; i++)
        f += 2.0 * (double)r->shape[i].M * (double)r->shape[i].N * (double)r->shape[i].K * (double)r->shape[i].count;
    return f;
}
