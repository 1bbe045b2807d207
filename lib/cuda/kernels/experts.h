// experts.h: the MoE layer's small element-wise steps around the expert GEMMs
// as host/device functions (core/hd.h), in the CPU's order of operations:
// Switch Transformer input jitter (Fedus et al. 2022, sec. 2.4; moe/moe_layer.c),
// SwiGLU's product and its backward (Shazeer 2020; moe/experts.c), and the
// scatter of the experts' input gradients back to their tokens
// (moe_experts_scatter). One thread per value, or per (token, column) for the
// scatter; tests/test_kernels.c runs them over those index spaces against the
// CPU library.
#ifndef MOE_K_EXPERTS_H
#define MOE_K_EXPERTS_H

#include <stddef.h>
#include <stdint.h>

#include "core/hd.h"
#include "core/philox.h"

// Value i of the router input under jitter: jit = 1 + eps (2 U - 1), U the
// uniform of counter base + i (word (base + i) & 3 of Philox block (base + i) >> 2
// under (seed, purpose, stream), as moe_rng_uniform); xr = x jit.
static inline MOE_HD void moe_k_jitter(float *xr, float *jit, const float *x, float eps, uint64_t seed,
                                       uint32_t purpose, uint32_t stream, uint64_t base, size_t i)
{
    uint64_t k = base + i;
    uint32_t w[4];
    moe_philox_words(seed, purpose, stream, k >> 2, w);
    jit[i] = 1.0f + eps * (2.0f * moe_philox_u01(w[k & 3]) - 1.0f);
    xr[i] = x[i] * jit[i];
}

// dx[i] += dxr[i] jit[i]: the jittered input's gradient back to x.
static inline MOE_HD void moe_k_jitter_back(float *dx, const float *dxr, const float *jit, size_t i)
{
    dx[i] += dxr[i] * jit[i];
}

// SwiGLU's forward, h = silu(a) already: h *= b.
static inline MOE_HD void moe_k_mul(float *h, const float *b, size_t i) { h[i] *= b[i]; }

// Its backward with db holding silu(a): db = silu(a) dh, then dh = dh b.
static inline MOE_HD void moe_k_swiglu_back(float *db, float *dh, const float *b, size_t i)
{
    db[i] *= dh[i];
    dh[i] *= b[i];
}

// dx[t, c] += dxd[row, c] over token t's kept slots, in slot order (slot_row
// -1: nothing).
static inline MOE_HD void moe_k_scatter(float *dx, const float *dxd, const int32_t *slot_row, size_t S, size_t D,
                                        size_t t, size_t c)
{
    float o = dx[t * D + c];
    for (size_t s = 0; s < S; s++) {
        int32_t r = slot_row[t * S + s];
        if (r >= 0)
            o += dxd[(size_t)r * D + c];
    }
    dx[t * D + c] = o;
}

#endif
