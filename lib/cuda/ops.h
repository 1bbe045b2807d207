// ops.h: the CUDA backend's first operations, callable from C: device memory,
// and launches of the kernel bodies in lib/cuda/kernels/ (router, norms,
// optimizer update). Every pointer argument of a launch is device memory.
// Each function returns 0 or MOE_EIO with the failing CUDA call named in err.
// Built only with CUDA (meson -Dcuda); nothing here runs without a GPU.
// Not here: choosing a backend or probing devices (lib/backend/), the models'
// use of these operations (later), GEMMs (cuBLAS).
#ifndef MOE_CUDA_OPS_H
#define MOE_CUDA_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"

#ifdef __cplusplus
extern "C" {
#endif

// Device memory.
int moe_cuda_malloc(void **ret, size_t bytes, const char *what, struct moe_err *err);
void moe_cuda_free(void *p);
int moe_cuda_to_device(void *dst, const void *src, size_t bytes, struct moe_err *err);
int moe_cuda_to_host(void *dst, const void *src, size_t bytes, struct moe_err *err);

// The router's forward for T tokens (moe/router.c moe_router_forward, for
// softmax, gshard, noisy-topk, switch and deepseek): p, lse from z; for
// noisy-topk h, eps from z and u (eps drawn in training, 0 otherwise); sel,
// idx, gate, prio (T, K). bias (E) or NULL: selection offsets.
struct moe_cuda_route {
    int T, E, K;
    int raw_gates;        // switch, deepseek: gate = p (else softmax over the selected logits)
    int noisy;            // noisy-topk
    int gshard_random;    // GShard's random second expert (training)
    int train;
    uint64_t seed;        // the counters of the noise / the second expert's draw
    uint32_t purpose, stream;
    uint64_t base;
};
int moe_cuda_route_forward(const struct moe_cuda_route *a, float *p, float *lse, float *h, float *eps, int32_t *sel,
                           int32_t *idx, float *gate, float *prio, const float *z, const float *u, const float *bias,
                           struct moe_err *err);

// LayerNorm (b non-NULL: mean written) or RMSNorm (b NULL: mean unused) over T
// rows of D: nn/norm.c's forward, the same lanes and tree.
int moe_cuda_norm_forward(float *y, float *mean, float *rstd, const float *x, const float *g, const float *b,
                          size_t T, size_t D, float eps, struct moe_err *err);

// One optimizer update of n weights (kernels/optim.h: the step's scalars).
struct moe_k_optim;
int moe_cuda_optim_update(const struct moe_k_optim *o, float *w, float *g, float *m, float *v, size_t n,
                          struct moe_err *err);

#ifdef __cplusplus
}
#endif

#endif
