// layer.h: one sparse MoE layer (moe/moe_layer.h's math) resident on a CUDA
// device: its weights and gradients, the router, the capacity plan, the
// expert FFNs through cuBLAS, the combine, the balancing and z losses, and
// the backward of all of it. Callable from C. Every float pointer a forward,
// backward or reference takes is device memory; weights and gradients cross
// to and from the host through set_weights / get_grads.
//
// T = tokens, D = n_embd, F = n_ff, E = n_expert, K = n_expert_used,
// S = slots per token.
//
// What it covers: every router of moe/router.h (softmax top-K, switch, gshard
// with both second-expert policies, deepseek, noisy-topk, expert choice with
// every ec_eval mode, and hash routing from the keys' table entries); relu,
// gelu and swiglu experts; shared experts (model.n_expert_shared); both drop
// policies and the capacity formula of moe/dispatch.h; Switch input jitter;
// the experts' hidden dropout (model.dropout.ffn, training passes); the
// switch / gshard / topk-all balancing losses, Shazeer's importance and load
// losses and the z-loss with their gradients; DeepSeek-V3's bias balancing
// (moe.bias_balance: the offsets on the device, updated after each training
// batch's routing). Not here: expert parallelism, the rest of a model
// (cuda/model.h).
// Built only with CUDA; a build without it links lib/cuda/layer_none.c,
// whose moe_cuda_layer_create says so.
#ifndef MOE_CUDA_LAYER_H
#define MOE_CUDA_LAYER_H

#include <stddef.h>
#include <stdint.h>

#include "core/prof.h"
#include "core/status.h"
#include "cuda/ops.h" // moe_cuda_use_device, moe_cuda_malloc, ...
#include "nn/nn.h"     // struct moe_dropout

#ifdef __cplusplus
extern "C" {
#endif

struct moe_layer_cfg;
struct moe_cuda_layer;

// One device buffer of a create function's table: need (0: skipped), where
// its pointer goes, its bytes, its name in an out-of-memory error.
struct moe_cuda_want {
    int need;
    void *p;
    size_t bytes;
    const char *what;
};

// A dropout site (nn.h moe_dropout_make's) as the launches take it.
static inline struct moe_cuda_drop moe_cuda_drop_of(struct moe_dropout x)
{
    return (struct moe_cuda_drop){ .p = x.p, .seed = x.seed, .step = x.step, .site = x.site };
}
struct moe_route;
struct moe_route_acc;
struct moe_dispatch;

// A device layer for batches of up to T_max tokens with the settings of c
// (moe_layer_cfg_parse's, or the model's first sparse layer's), every buffer
// allocated on the current device, weights, gradients and bias balancing's
// offsets zero. MOE_EINVAL with the reason when c and T_max ask for more rows
// than the device layer indexes (int32); MOE_EIO / MOE_ENOMEM naming the CUDA
// or cuBLAS call that failed.
int moe_cuda_layer_create(struct moe_cuda_layer **ret, const struct moe_layer_cfg *c, size_t T_max,
                          struct moe_err *err);
struct moe_cuda_layer_tensors;
// The same layer with its weights in the caller's device buffers w and their
// gradients in g (moe_cuda_layer_tensors' layout, below: a model's flat
// registry, cuda/model.h), of which it allocates none (the pointers of
// tensors it does not have are ignored), and the gradients left as they are. g NULL: a layer for evaluation passes only (a teacher's, route
// statistics'), without gradients or the backward's buffers; a training
// forward or a backward of it is refused (MOE_EINVAL).
int moe_cuda_layer_create_in(struct moe_cuda_layer **ret, const struct moe_layer_cfg *c, size_t T_max,
                             const struct moe_cuda_layer_tensors *w, const struct moe_cuda_layer_tensors *g,
                             struct moe_err *err);
// The same refusal without creating anything: 0 when the device layer does c.
int moe_cuda_layer_check(const struct moe_layer_cfg *c, size_t T_max, struct moe_err *err);
// The activation kernel of an FFN activation: relu, gelu; silu for swiglu
// (whose gate product is a separate launch).
enum moe_ffn_act;
enum moe_cuda_act moe_cuda_ffn_act(enum moe_ffn_act a);
void moe_cuda_layer_free(struct moe_cuda_layer *l);

// One pointer per tensor of the layer in the checkpoint layout (moe_layer.h),
// host or device memory as the function says; NULL for what the layer does
// not have (or, where a function says so, what is not wanted).
struct moe_cuda_layer_tensors {
    float *router, *noise;  // (E, D): all routers but hash; noisy-topk
    float *w1, *w3, *w2;    // the routed experts: (E, F, D), (E, F, D) swiglu, (E, D, F)
    float *sw1, *sw3, *sw2; // the shared experts: (Sh, F, D), (Sh, F, D) swiglu, (Sh, D, F)
};

// Host weights copied to the device (every tensor the layer has is needed).
int moe_cuda_layer_set_weights(struct moe_cuda_layer *l, const struct moe_cuda_layer_tensors *host,
                               struct moe_err *err);
// Bias balancing's offsets (E floats, host memory; the CPU layer's
// router.bias state) to and from the device; nothing without bias balancing.
int moe_cuda_layer_set_bias(struct moe_cuda_layer *l, const float *bias, struct moe_err *err);
int moe_cuda_layer_get_bias(const struct moe_cuda_layer *l, float *bias, struct moe_err *err);
// Hash routing: the next forward's T tokens go to experts table[keys[t] % V]
// (host memory: the keys and the CPU layer's table, looked up here as
// moe_layer_forward does, the experts copied to the device). Call before each
// forward of a hash layer (a forward of another T refuses); nothing for other
// routers.
int moe_cuda_layer_set_keys(struct moe_cuda_layer *l, const uint32_t *keys, const int32_t *table, size_t V,
                            size_t T, struct moe_err *err);
// Zero every gradient on the device.
int moe_cuda_layer_zero_grad(struct moe_cuda_layer *l, struct moe_err *err);
// The gradients to the host (host pointers; NULL: not copied).
int moe_cuda_layer_get_grads(const struct moe_cuda_layer *l, const struct moe_cuda_layer_tensors *host,
                             struct moe_err *err);

// out (T, D) += MoE(x), x (T, D), both device memory, as moe_layer_forward
// with acc and label NULL (hash keys: moe_cuda_layer_set_keys): train (noise,
// jitter, GShard's random policy, the training capacity factor, bias
// balancing's update), seed and step (the random streams).
// *ret_loss (may be NULL): the weighted auxiliary loss of the batch.
int moe_cuda_layer_forward(struct moe_cuda_layer *l, float *out, const float *x, size_t T, int train, uint64_t seed,
                           uint64_t step, double *ret_loss, struct moe_err *err);
// Backward of the last forward (moe_layer_backward): dx (T, D) +=, weight
// gradients +=, with the auxiliary losses' gradients; dout, dx, x device memory
// (x: the forward's input).
int moe_cuda_layer_backward(struct moe_cuda_layer *l, float *dx, const float *dout, const float *x,
                            struct moe_err *err);

// The last forward's routing on the host: sel, idx (T, S), gate (T, S) (any
// may be NULL); *ret_rows: the rows the experts ran (kept assignments); the
// unweighted aux and z values (aux NaN for none; both NaN for hash routing).
int moe_cuda_layer_route(const struct moe_cuda_layer *l, int32_t *sel, int32_t *idx, float *gate, size_t *ret_rows,
                         double *ret_aux, double *ret_z, struct moe_err *err);
// The last forward's routing statistics added to acc as moe_layer_forward adds
// them (moe/route_stats.h moe_route_acc_add): its sel, idx, gate, prio, p and
// lse and the plan's per-expert counts copied into r and plan, host buffers
// for at least the forward's tokens (moe_route_alloc, moe_dispatch_alloc),
// whose other fields are not used; label (T) the tokens' labels, or NULL.
int moe_cuda_layer_route_acc(const struct moe_cuda_layer *l, struct moe_route_acc *acc, const int32_t *label,
                             struct moe_route *r, struct moe_dispatch *plan, struct moe_err *err);
size_t moe_cuda_layer_slots(const struct moe_cuda_layer *l);
// The evaluation capacity factor of the next evaluation passes (moe route-stats
// --capacity-factors; moe_model_layers_set_eval_capacity's).
void moe_cuda_layer_set_eval_capacity(struct moe_cuda_layer *l, double cf);
// The last forward's routing into a CPU layer's buffers of at least its T
// tokens (sel, gate of its route, slot_row of its plan: kept slots' rows, -1
// dropped), so that what reads a CPU layer's last pass (moe route-stats
// --trace) reads the device's.
int moe_cuda_layer_route_to(const struct moe_cuda_layer *l, struct moe_route *r, struct moe_dispatch *plan,
                            struct moe_err *err);
// What moe_layer's radd and dradd are (language-aware routing): from the
// next forward on, the router sees x + radd (radd (T, D) device memory, or
// NULL: x alone); the next backward adds the gradient with respect to radd
// into dradd (NULL: not wanted). Set before each pass, as the CPU model does.
void moe_cuda_layer_set_radd(struct moe_cuda_layer *l, const float *radd, float *dradd);

// Timing by phase (CUDA events at the phase boundaries of forward and
// backward): with on, each pass records its events; moe_cuda_layer_phases
// waits for the device and adds each phase's seconds since the last call into
// sec (indexed by enum moe_phase: ROUTER, DISPATCH, FFN_GEMM, ACTIVATION,
// COMBINE, AUX).
void moe_cuda_layer_timing(struct moe_cuda_layer *l, int on);
int moe_cuda_layer_phases(struct moe_cuda_layer *l, double sec[MOE_PHASE_N], struct moe_err *err);

// The dense reference of the last pass: the same cuBLAS sgemm calls that pass
// made (router and experts), with every expert's block merged into one GEMM
// over all the kept rows (same shapes otherwise, same total FLOPs), timed with
// events. backward: the forward's and the backward's GEMMs, else the forward's.
// *ret_seconds, *ret_flops (2 M N K summed). Overwrites the layer's scratch
// and gradients: run no backward after it without a new forward.
int moe_cuda_layer_reference(struct moe_cuda_layer *l, int backward, double *ret_seconds, double *ret_flops,
                             struct moe_err *err);
// The FLOPs (2 M N K summed) of the last forward's GEMMs, and with backward
// also the backward's.
double moe_cuda_layer_flops(const struct moe_cuda_layer *l, int backward);

// Seconds between two points of the device's stream: a CUDA event pair
// (moe bench's timer). start records now; stop records and waits.
struct moe_cuda_timer;
int moe_cuda_timer_create(struct moe_cuda_timer **ret, struct moe_err *err);
void moe_cuda_timer_free(struct moe_cuda_timer *t);
int moe_cuda_timer_start(struct moe_cuda_timer *t, struct moe_err *err);
int moe_cuda_timer_stop(struct moe_cuda_timer *t, double *ret_seconds, struct moe_err *err);

// Set `bytes` bytes of device memory to zero (cudaMemset), for callers that
// hold device buffers of their own (moe bench, the tests).
int moe_cuda_layer_memzero(void *p, size_t bytes, struct moe_err *err);

#ifdef __cplusplus
}
#endif

#endif
