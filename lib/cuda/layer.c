// layer.c: one sparse MoE layer on a CUDA device (layer.h), wired as
// moe/moe_layer.c wires the CPU one: router logits, routing, the capacity plan,
// gather, expert FFNs, combine, aux losses; then the backward in the CPU's
// order. C against cuda/ops.h (the launches of the kernel bodies in
// lib/cuda/kernels/, device memory, events) and cuda/blas.h (cuBLAS GEMMs)
// only: no CUDA here, so tests/cuda_host.c runs this same file on a machine
// without a GPU (test_cuda_layer_host). Not here: the model around the layer.
//
// T = tokens, D = n_embd, F = n_ff, E = n_expert, S = slots per token,
// N = kept rows (the plan's offset[E]).
//
// GEMMs: each expert product (a = xd W1^T, b = xd W3^T, yd = h W2^T; dh, dW2,
// dxd, dW3, dW1) is one grouped GEMM over the set's experts (blas.h's
// moe_cuda_gemm_grouped: cublasGemmGroupedBatchedEx, cuBLAS 12.5+, one group
// per non-empty expert block; with a libcublas without it, or one block only,
// cublasSgemm per block in expert order), on one stream (the default stream,
// which the launches use too). Not run on a GPU yet: no GPU was at hand when
// the grouped calls replaced the per-block loop; the host emulation runs them
// as that loop. The groups' shapes are host arrays: the plan's E + 1 offsets
// are copied device -> host once per forward (one small synchronous copy; the
// backward reuses them), and each grouped call copies its operand pointers
// host -> device (one small synchronous copy per call, blas.cu).
//
// Numerics: fp32 throughout; the GEMMs are blas.h's (cuBLAS without TF32, one
// handle, no atomics; blas.cu), everything here runs on one stream, and the
// kernels use no atomics (docs/cuda.md), so a run repeats its bits on the same GPU.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "cuda/blas.h"
#include "cuda/layer.h"
#include "cuda/linear.h"
#include "cuda/ops.h"
#include "moe/moe_layer.h"
#include "moe/route_stats.h"

#define LAYER_STRIDE ((uint64_t)1 << 40) // as moe_layer.c: random-draw index offset between layers
#define MAX_MARKS 48                     // phase boundaries per pass (forward + backward use about 30)
#define MAX_MEM 96

// A set of expert FFNs over a capacity plan (moe_layer.c runs two: the routed
// experts on the router's plan, and the shared experts on a plan where slot s
// of every token is shared expert s and nothing is dropped): E experts, S
// slots per token, room for N_max rows.
struct eset {
    size_t E, S, N_max;
    float *w1, *w3, *w2, *gw1, *gw3, *gw2; // (E, F, D), (E, F, D) swiglu, (E, D, F)
    struct moe_cuda_plan plan;
    size_t *off;                           // host copy of the plan's offsets (E + 1)
    float *xd, *yd, *dyd, *dxd;            // rows (N_max, D)
    float *a, *b, *hh, *da, *db, *dh;      // (N_max, F); b, db for swiglu
    struct moe_cuda_drop drop;             // the last forward's hidden dropout (p 0: off)
    struct moe_cuda_gemm_group *grp;       // (E) host: a grouped GEMM's products, one per expert
};

struct moe_cuda_layer {
    struct moe_layer_cfg c;
    size_t E, D, F, S, Sh, T_max;
    int swiglu, noisy, gated; // gated: the router has weights (all but hash)
    int own;                  // weights and gradients allocated here (moe_cuda_layer_create), not the caller's
    int eval;                 // evaluation passes only: no gradients, no backward buffers
    enum moe_cuda_act act;    // relu, gelu; silu for swiglu
    void *mem[MAX_MEM];       // every device allocation, freed together
    int n_mem;
    // the router's weights and their gradients: router (E, D), noise (E, D)
    float *wr, *wn, *gwr, *gwn;
    struct eset r, sh;        // the routed experts; the shared ones (Sh > 0)
    int32_t *sidx;            // (T_max, Sh): the shared plan's idx (slot s -> expert s)
    float *sgate;             // (T_max, Sh): its gates and priorities, all 1
    float *bias;              // (E) bias balancing's selection offsets (moe.bias_balance), or NULL
    int32_t *hexp, *hexp_h;   // (T_max) hash routing: each token's expert (device, host staging)
    size_t hash_T;            // tokens of the last moe_cuda_layer_set_keys (0: none yet)
    // routing (T, E) / (T, S) / (T)
    float *z, *u, *p, *lse, *h, *eps, *gate, *prio;
    int32_t *sel, *idx;
    float *xr, *jit, *dxr;    // (T, D): jittered router input, its factors, its gradient
    const float *radd;        // (T, D) added to the router's input (moe_cuda_layer_set_radd), or NULL
    float *dradd;             // (T, D) += its gradient in the backward, or NULL
    float *dgate, *dz, *du;   // (T, S), (T, E), (T, E)
    double *aux_f, *aux_P, *aux_v;
    // the last forward
    size_t T, cap;
    int train, jittered;
    double aux_value, z_value, loss;
    struct moe_cuda_route route;
    struct moe_cuda_route_ec ec;
    // phase timing
    int timed, n_marks;
    struct moe_cuda_event *ev[MAX_MARKS + 1];
    int ev_phase[MAX_MARKS + 1];
    double sec[MOE_PHASE_N];
};

// ---------------------------------------------------------------- timing marks

// The work since the previous mark belongs to phase ph (-1: to none, e.g.
// the caller's time between a forward and its backward).
static int mark_as(struct moe_cuda_layer *l, int ph, struct moe_err *err)
{
    if (!l->timed)
        return 0;
    if (l->n_marks >= MAX_MARKS - 1) // the last two events are the reference's
        return moe_error(err, MOE_EINVAL, "CUDA layer: more than %d timing marks between two reports",
                         MAX_MARKS - 1);
    l->ev_phase[l->n_marks] = ph;
    return moe_cuda_event_record(l->ev[l->n_marks++], err);
}

static int mark(struct moe_cuda_layer *l, enum moe_phase ph, struct moe_err *err) { return mark_as(l, (int)ph, err); }

// Close the pass's intervals into sec, and start the next pass's first mark.
static int marks_flush(struct moe_cuda_layer *l, struct moe_err *err)
{
    int rc;
    if (!l->timed || l->n_marks == 0)
        return 0;
    for (int i = 1; i < l->n_marks; i++) {
        double sec = 0.0;
        if (l->ev_phase[i] < 0)
            continue;
        if ((rc = moe_cuda_event_elapsed(&sec, l->ev[i - 1], l->ev[i], err)))
            return rc;
        l->sec[l->ev_phase[i]] += sec;
    }
    l->n_marks = 0;
    return 0;
}

// A forward starts: flush what the last passes marked, then the first boundary.
static int marks_begin(struct moe_cuda_layer *l, struct moe_err *err)
{
    int rc = marks_flush(l, err);
    return rc ? rc : mark_as(l, -1, err);
}

void moe_cuda_layer_timing(struct moe_cuda_layer *l, int on)
{
    l->timed = on;
    l->n_marks = 0;
}

int moe_cuda_layer_phases(struct moe_cuda_layer *l, double sec[MOE_PHASE_N], struct moe_err *err)
{
    int rc = marks_flush(l, err);
    if (rc)
        return rc;
    for (int i = 0; i < MOE_PHASE_N; i++) {
        sec[i] += l->sec[i];
        l->sec[i] = 0.0;
    }
    return 0;
}

// ---------------------------------------------------------------- create, weights

static int dalloc(struct moe_cuda_layer *l, void *ret, size_t bytes, const char *what, struct moe_err *err)
{
    void **p = (void **)ret;
    if (l->n_mem == MAX_MEM)
        return moe_error(err, MOE_EINVAL, "CUDA layer: more than %d buffers", MAX_MEM);
    int rc = moe_cuda_malloc(p, bytes, what, err);
    if (!rc)
        l->mem[l->n_mem++] = *p;
    return rc;
}

void moe_cuda_layer_free(struct moe_cuda_layer *l)
{
    if (!l)
        return;
    for (int i = 0; i < l->n_mem; i++)
        moe_cuda_free(l->mem[i]);
    for (int i = 0; i <= MAX_MARKS; i++)
        moe_cuda_event_free(l->ev[i]);
    free(l->r.off);
    free(l->sh.off);
    free(l->r.grp);
    free(l->sh.grp);
    free(l->hexp_h);
    free(l);
}

enum moe_cuda_act moe_cuda_ffn_act(enum moe_ffn_act a)
{
    return a == MOE_FFN_RELU ? MOE_CUDA_RELU : a == MOE_FFN_GELU ? MOE_CUDA_GELU : MOE_CUDA_SILU;
}

// A set's weights, gradients, plan and rows on the device: E experts of S
// slots per token for T tokens, at most N of the T S slots kept as rows
// (moe_router_rows: fewer for expert choice); shared names its buffers in
// errors.
static int eset_alloc(struct moe_cuda_layer *l, struct eset *s, size_t E, size_t S, size_t T, size_t N, int shared,
                      struct moe_err *err)
{
    const size_t D = l->D, F = l->F, TS = T * S, EFD = E * F * D, f = sizeof(float);
    const char *who = shared ? "shared" : "experts";
    s->E = E, s->S = S, s->N_max = N;
    if (!(s->off = (size_t *)calloc(E + 1, sizeof *s->off)) ||
        !(s->grp = (struct moe_cuda_gemm_group *)calloc(E ? E : 1, sizeof *s->grp)))
        return moe_error(err, MOE_ENOMEM, "out of memory");
    const int own = l->own, bw = !l->eval; // bw: the backward's buffers
    const struct moe_cuda_want b[] = {
        { own, &s->w1, EFD * f, "w1" },
        { own, &s->gw1, EFD * f, "w1 gradient" },
        { own && l->swiglu, &s->w3, EFD * f, "w3" },
        { own && l->swiglu, &s->gw3, EFD * f, "w3 gradient" },
        { own, &s->w2, EFD * f, "w2" },
        { own, &s->gw2, EFD * f, "w2 gradient" },
        { 1, &s->xd, N * D * f, "input rows" },
        { 1, &s->yd, N * D * f, "output rows" },
        { bw, &s->dyd, N * D * f, "output row gradients" },
        { bw, &s->dxd, N * D * f, "input row gradients" },
        { 1, &s->a, N * F * f, "pre-activations" },
        { 1, &s->hh, N * F * f, "hidden units" },
        { bw, &s->da, N * F * f, "pre-activation gradients" },
        { bw, &s->dh, N * F * f, "hidden gradients" },
        { l->swiglu, &s->b, N * F * f, "gate units" },
        { bw && l->swiglu, &s->db, N * F * f, "gate unit gradients" },
        { 1, &s->plan.row_tok, N * 4, "plan rows" },
        { 1, &s->plan.row_slot, N * 4, "plan slots" },
        { 1, &s->plan.slot_row, TS * 4, "plan slot rows" },
        { 1, &s->plan.offset, (E + 1) * sizeof(size_t), "plan offsets" },
        { 1, &s->plan.routed, E * sizeof(size_t), "plan routed" },
        { 1, &s->plan.dropped, E * sizeof(size_t), "plan dropped" },
        { 1, &s->plan.kept, TS, "plan kept" },
        { 1, &s->plan.n_kept, E * sizeof(size_t), "plan kept counts" },
        { 1, &s->plan.cnt, MOE_CUDA_PLAN_CNT(T, S, E) * sizeof(size_t), "plan chunk counts" },
    };
    int rc = 0;
    for (size_t i = 0; !rc && i < sizeof b / sizeof *b; i++)
        if (b[i].need) {
            char what[64];
            snprintf(what, sizeof what, "%s %s", who, b[i].what);
            rc = dalloc(l, b[i].p, b[i].bytes, what, err);
        }
    return rc;
}

// The shared plan's fixed routing: slot s of every token is shared expert s, gate and priority 1
// (moe_layer.c moe_layer_plan_bound).
static int shared_routing(struct moe_cuda_layer *l, struct moe_err *err)
{
    const size_t n = l->T_max * l->Sh;
    int32_t *idx = (int32_t *)malloc(n * sizeof *idx);
    float *one = (float *)malloc(n * sizeof *one);
    int rc = 0;
    if (!idx || !one)
        rc = moe_error(err, MOE_ENOMEM, "out of memory");
    for (size_t i = 0; !rc && i < n; i++)
        idx[i] = (int32_t)(i % l->Sh), one[i] = 1.0f;
    if (!rc && !(rc = moe_cuda_to_device(l->sidx, idx, n * sizeof *idx, err)))
        rc = moe_cuda_to_device(l->sgate, one, n * sizeof *one, err);
    free(idx), free(one);
    return rc;
}

int moe_cuda_layer_check(const struct moe_layer_cfg *c, size_t T_max, struct moe_err *err)
{
    const size_t S = moe_router_slots(&c->router), Sh = c->n_shared;
    const size_t n = (T_max ? T_max : 1) * (S > Sh ? S : Sh);
    // the plan's rows and the route's token indices are int32 on the device
    if (n / (S > Sh ? S : Sh) != (T_max ? T_max : 1) || n > (size_t)INT32_MAX || c->router.E > (size_t)INT32_MAX)
        return moe_error(err, MOE_EINVAL,
                         "CUDA layer: %zu tokens x %zu slots is more rows than the device layer indexes (%d)",
                         T_max, S > Sh ? S : Sh, INT32_MAX);
    return 0;
}

// The layer's weight (or gradient) pointers in moe_cuda_layer_tensors' order.
#define N_TENSORS 8
static void tensor_slots(struct moe_cuda_layer *l, int grad, float **s[N_TENSORS])
{
    float **w[N_TENSORS] = { &l->wr, &l->wn, &l->r.w1, &l->r.w3, &l->r.w2, &l->sh.w1, &l->sh.w3, &l->sh.w2 };
    float **g[N_TENSORS] = { &l->gwr, &l->gwn, &l->r.gw1, &l->r.gw3, &l->r.gw2, &l->sh.gw1, &l->sh.gw3, &l->sh.gw2 };
    for (int i = 0; i < N_TENSORS; i++)
        s[i] = grad ? g[i] : w[i];
}

static void tensor_ptrs(const struct moe_cuda_layer_tensors *t, float *v[N_TENSORS])
{
    float *x[N_TENSORS] = { t->router, t->noise, t->w1, t->w3, t->w2, t->sw1, t->sw3, t->sw2 };
    memcpy(v, x, sizeof x);
}

// Whether the layer has tensor i (moe_cuda_layer_tensors' order): the router's
// weight but with hash routing, the noise weight with noisy top-k, w3 with
// swiglu, the shared experts' with shared experts.
static int tensor_has(const struct moe_cuda_layer *l, int i)
{
    const int has[N_TENSORS] = { l->gated, l->noisy, 1, l->swiglu, 1, l->Sh > 0, l->Sh > 0 && l->swiglu, l->Sh > 0 };
    return has[i];
}

// Bytes of tensor i (moe_cuda_layer_tensors' order).
static size_t tensor_bytes(const struct moe_cuda_layer *l, int i)
{
    size_t E = i < 5 ? l->E : l->Sh;
    return (i < 2 ? E * l->D : E * l->F * l->D) * sizeof(float);
}

int moe_cuda_layer_create(struct moe_cuda_layer **ret, const struct moe_layer_cfg *c, size_t T_max,
                          struct moe_err *err)
{
    return moe_cuda_layer_create_in(ret, c, T_max, NULL, NULL, err);
}

int moe_cuda_layer_create_in(struct moe_cuda_layer **ret, const struct moe_layer_cfg *c, size_t T_max,
                             const struct moe_cuda_layer_tensors *w, const struct moe_cuda_layer_tensors *g,
                             struct moe_err *err)
{
    *ret = NULL;
    if (moe_cuda_layer_check(c, T_max, err))
        return MOE_EINVAL;
    struct moe_cuda_layer *l = (struct moe_cuda_layer *)calloc(1, sizeof *l);
    if (!l)
        return moe_error(err, MOE_ENOMEM, "out of memory");
    const struct moe_router_info *ri = moe_router_info(c->router.type);
    l->c = *c;
    l->E = c->router.E;
    l->D = c->D;
    l->F = c->F;
    l->S = moe_router_slots(&c->router);
    l->Sh = c->n_shared;
    l->T_max = T_max ? T_max : 1;
    l->swiglu = c->act == MOE_FFN_SWIGLU;
    l->noisy = ri->noise_weights;
    l->gated = ri->gate_weights;
    l->act = moe_cuda_ffn_act(c->act);
    l->own = w == NULL;
    l->eval = w && !g;
    const int own = l->own, bw = !l->eval, jitter = bw && c->jitter > 0.0;
    const size_t E = l->E, D = l->D, S = l->S, T = l->T_max, f = sizeof(float);
    int rc = moe_cuda_blas_init(err);
    for (int i = 0; !rc && i <= MAX_MARKS; i++)
        rc = moe_cuda_event_create(&l->ev[i], err);
    if (!rc && ri->token_table && !(l->hexp_h = (int32_t *)malloc(T * sizeof *l->hexp_h)))
        rc = moe_error(err, MOE_ENOMEM, "out of memory");
    const struct moe_cuda_want b[] = {
        { own && l->gated, &l->wr, E * D * f, "router.weight" },
        { own && l->gated, &l->gwr, E * D * f, "router.weight gradient" },
        { own && l->noisy, &l->wn, E * D * f, "router.noise_weight" },
        { own && l->noisy, &l->gwn, E * D * f, "router.noise_weight gradient" },
        { 1, &l->z, T * E * f, "router logits" },
        { 1, &l->p, T * E * f, "router probabilities" },
        { 1, &l->lse, T * f, "router lse" },
        { 1, &l->gate, T * S * f, "gates" },
        { 1, &l->prio, T * S * f, "priorities" },
        { 1, &l->sel, T * S * 4, "selections" },
        { 1, &l->idx, T * S * 4, "dispatch" },
        { l->noisy, &l->u, T * E * f, "noise logits" },
        { l->noisy, &l->h, T * E * f, "noisy logits" },
        { l->noisy, &l->eps, T * E * f, "noise draws" },
        { bw && l->noisy, &l->du, T * E * f, "noise logit gradients" },
        { l->gated, &l->xr, T * D * f, "router input" },
        { l->gated && jitter, &l->jit, T * D * f, "jitter" },
        { bw && l->gated, &l->dxr, T * D * f, "router input gradient" },
        { bw, &l->dgate, T * S * f, "gate gradients" },
        { bw, &l->dz, T * E * f, "logit gradients" },
        { 1, &l->aux_f, E * sizeof(double), "aux f" },
        { 1, &l->aux_P, E * sizeof(double), "aux P" },
        { 1, &l->aux_v, sizeof(double), "aux value" },
        { c->router.bias_balance, &l->bias, E * f, "router.bias" },
        { ri->token_table, &l->hexp, T * 4, "hash experts" },
        { l->Sh > 0, &l->sidx, T * l->Sh * 4, "shared routing" },
        { l->Sh > 0, &l->sgate, T * l->Sh * f, "shared gates" },
    };
    for (size_t i = 0; !rc && i < sizeof b / sizeof *b; i++)
        if (b[i].need)
            rc = dalloc(l, b[i].p, b[i].bytes, b[i].what, err);
    if (!rc)
        rc = eset_alloc(l, &l->r, E, S, T, moe_router_rows(&c->router, T), 0, err);
    if (!rc && l->Sh && !(rc = eset_alloc(l, &l->sh, l->Sh, l->Sh, T, T * l->Sh, 1, err)))
        rc = shared_routing(l, err);
    if (!rc && l->bias)
        rc = moe_cuda_memset(l->bias, 0, E * f, "router.bias", err);
    if (!rc && own)
        rc = moe_cuda_layer_zero_grad(l, err);
    for (int grad = 0; !rc && !own && grad < (g ? 2 : 1); grad++) { // the caller's buffers
        float **slot[N_TENSORS], *to[N_TENSORS];
        tensor_slots(l, grad, slot);
        tensor_ptrs(grad ? g : w, to);
        for (int i = 0; i < N_TENSORS; i++)
            *slot[i] = tensor_has(l, i) ? to[i] : NULL;
    }
    if (rc) {
        moe_cuda_layer_free(l);
        return rc;
    }
    *ret = l;
    return 0;
}

size_t moe_cuda_layer_slots(const struct moe_cuda_layer *l) { return l->S; }

void moe_cuda_layer_set_radd(struct moe_cuda_layer *l, const float *radd, float *dradd)
{
    l->radd = radd;
    l->dradd = dradd;
}

int moe_cuda_layer_set_weights(struct moe_cuda_layer *l, const struct moe_cuda_layer_tensors *host,
                               struct moe_err *err)
{
    float **own[N_TENSORS], *from[N_TENSORS];
    tensor_slots(l, 0, own);
    tensor_ptrs(host, from);
    for (int i = 0; i < N_TENSORS; i++) {
        int rc;
        if (*own[i] && !from[i])
            return moe_error(err, MOE_EINVAL, "CUDA layer: no host data for weight tensor %d", i);
        if (*own[i] && (rc = moe_cuda_to_device(*own[i], from[i], tensor_bytes(l, i), err)))
            return rc;
    }
    return 0;
}

int moe_cuda_layer_zero_grad(struct moe_cuda_layer *l, struct moe_err *err)
{
    float **g[N_TENSORS];
    tensor_slots(l, 1, g);
    for (int i = 0; i < N_TENSORS; i++) {
        int rc;
        if (*g[i] && (rc = moe_cuda_memset(*g[i], 0, tensor_bytes(l, i), "gradients", err)))
            return rc;
    }
    return 0;
}

int moe_cuda_layer_get_grads(const struct moe_cuda_layer *l, const struct moe_cuda_layer_tensors *host,
                             struct moe_err *err)
{
    float **g[N_TENSORS], *to[N_TENSORS];
    tensor_slots((struct moe_cuda_layer *)l, 1, g);
    tensor_ptrs(host, to);
    for (int i = 0; i < N_TENSORS; i++) {
        int rc;
        if (to[i] && *g[i] && (rc = moe_cuda_to_host(to[i], *g[i], tensor_bytes(l, i), err)))
            return rc;
    }
    return 0;
}

int moe_cuda_layer_set_bias(struct moe_cuda_layer *l, const float *bias, struct moe_err *err)
{
    return l->bias && bias ? moe_cuda_to_device(l->bias, bias, l->E * sizeof(float), err) : 0;
}

int moe_cuda_layer_get_bias(const struct moe_cuda_layer *l, float *bias, struct moe_err *err)
{
    return l->bias && bias ? moe_cuda_to_host(bias, l->bias, l->E * sizeof(float), err) : 0;
}

int moe_cuda_layer_set_keys(struct moe_cuda_layer *l, const uint32_t *keys, const int32_t *table, size_t V,
                            size_t T, struct moe_err *err)
{
    if (!l->hexp)
        return 0;
    if (T > l->T_max)
        return moe_error(err, MOE_EINVAL, "CUDA layer: %zu tokens, allocated for %zu", T, l->T_max);
    if (V == 0)
        return moe_error(err, MOE_EINVAL, "CUDA layer: hash routing without a table");
    for (size_t t = 0; t < T; t++) // moe_layer_forward's lookup
        l->hexp_h[t] = table[keys[t] % V];
    l->hash_T = T;
    return T ? moe_cuda_to_device(l->hexp, l->hexp_h, T * sizeof(int32_t), err) : 0;
}

int moe_cuda_layer_memzero(void *p, size_t bytes, struct moe_err *err)
{
    return moe_cuda_memset(p, 0, bytes, "buffer", err);
}

// ---------------------------------------------------------------- expert GEMMs

// One product over every expert block of set s as one grouped GEMM (blas.h;
// groups in expert order, an empty block skipped): for each expert e with
// n_e rows, C_e (n_e, N) = A_e op(W_e) + beta C_e, A_e and C_e block e's rows
// of A (K floats a row) and C (N floats), W_e expert e's weight, (N, K) with
// tb (x W^T, nn/linear.c's forward), (K, N) without (dy W, its input gradient).
static int expert_rows(struct eset *s, int tb, size_t N, size_t K, const float *A, const float *W, float beta,
                       float *C, const char *what, struct moe_err *err)
{
    for (size_t e = 0; e < s->E; e++) {
        size_t o = s->off[e];
        s->grp[e] = (struct moe_cuda_gemm_group){ s->off[e + 1] - o, N, K, A + o * K, W + e * N * K, C + o * N };
    }
    return moe_cuda_gemm_grouped(0, tb, s->E, s->grp, 1.0f, K, tb ? K : N, beta, N, what, err);
}

// A weight gradient over every expert block of set s as one grouped GEMM:
// for each expert e, dW_e (M, N) += dY_e^T X_e (nn/linear.c's backward), the
// block's n_e rows the inner dimension; dY_e and X_e block e's rows of dY (M
// floats a row) and X (N floats).
static int expert_grads(struct eset *s, size_t M, size_t N, const float *dY, const float *X, float *dW,
                        const char *what, struct moe_err *err)
{
    for (size_t e = 0; e < s->E; e++) {
        size_t o = s->off[e];
        s->grp[e] = (struct moe_cuda_gemm_group){ M, N, s->off[e + 1] - o, dY + o * M, X + o * N, dW + e * M * N };
    }
    return moe_cuda_gemm_grouped(1, 0, s->E, s->grp, 1.0f, M, N, 1.0f, N, what, err);
}

// ---------------------------------------------------------------- forward

// The expert FFNs over a set's plan blocks (experts.c expert_forward): a =
// xd W1^T (b = xd W3^T) for every expert, then the activation over all N
// rows at once (the blocks are contiguous), the hidden dropout, then yd =
// h W2^T for every expert.
static int experts_forward(struct moe_cuda_layer *l, struct eset *s, size_t N, struct moe_err *err)
{
    const size_t D = l->D, F = l->F;
    int rc;
    if ((rc = expert_rows(s, 1, F, D, s->xd, s->w1, 0.0f, s->a, "expert w1", err)) ||
        (l->swiglu && (rc = expert_rows(s, 1, F, D, s->xd, s->w3, 0.0f, s->b, "expert w3", err))))
        return rc;
    if ((rc = mark(l, MOE_PHASE_FFN_GEMM, err)) || (rc = moe_cuda_act_forward(l->act, s->hh, s->a, N * F, err)))
        return rc;
    if (l->swiglu) {
        if ((rc = moe_cuda_mul(s->hh, s->b, N * F, err)))
            return rc;
    }
    // hidden dropout (experts.c moe_ffn_forward_drop): row r's mask key is its token and slot
    if ((rc = moe_cuda_dropout_rows(s->hh, N, F, s->plan.row_tok, s->plan.row_slot, s->S, &s->drop, err)) ||
        (rc = mark(l, MOE_PHASE_ACTIVATION, err)) ||
        (rc = expert_rows(s, 1, D, F, s->hh, s->w2, 0.0f, s->yd, "expert w2", err)))
        return rc;
    return mark(l, MOE_PHASE_FFN_GEMM, err);
}

// moe_experts_forward over a set: its plan from idx, prio (T, S) with
// capacity cap, the offsets to the host (the GEMM shapes), gather, the FFNs,
// out += the gated combine.
static int eset_forward(struct moe_cuda_layer *l, struct eset *s, float *out, const float *x, const int32_t *idx,
                        const float *prio, const float *gate, size_t T, size_t cap, int prob, struct moe_err *err)
{
    const size_t E = s->E, D = l->D;
    int rc;
    if ((rc = moe_cuda_dispatch_plan(&s->plan, idx, prio, T, s->S, E, cap, prob, err)) ||
        (rc = moe_cuda_to_host(s->off, s->plan.offset, (E + 1) * sizeof(size_t), err)))
        return rc;
    const size_t N = s->off[E];
    if (N > s->N_max) // the plan's rows are bounded by moe_router_rows; more would overrun the row buffers
        return moe_error(err, MOE_EINVAL, "CUDA layer: the plan kept %zu rows, allocated for %zu", N, s->N_max);
    if ((rc = moe_cuda_gather(s->xd, x, &s->plan, E, s->N_max, D, err)) || (rc = mark(l, MOE_PHASE_DISPATCH, err)) ||
        (rc = experts_forward(l, s, N, err)))
        return rc;
    if ((rc = moe_cuda_combine(out, s->yd, gate, s->plan.slot_row, T, s->S, D, err)))
        return rc;
    return mark(l, MOE_PHASE_COMBINE, err);
}

static int has_smooth_load(const struct moe_layer_cfg *c)
{
    return moe_router_info(c->router.type)->noise_weights && c->router.K < c->router.E;
}

// moe_layer.c aux_forward: the unweighted value of the layer's convention and
// the z-loss, and their weighted sum.
static int aux_forward(struct moe_cuda_layer *l, struct moe_err *err)
{
    const struct moe_layer_cfg *c = &l->c;
    const double E = (double)l->E;
    double v = NAN, weighted = 0.0, sum;
    int rc;
    if (c->aux == MOE_AUX_SWITCH || c->aux == MOE_AUX_GSHARD || c->aux == MOE_AUX_TOPK_ALL) {
        size_t n_slots = c->aux == MOE_AUX_TOPK_ALL ? l->S : 1;
        if ((rc = moe_cuda_aux_fp(&sum, NULL, l->sel, l->p, l->T, l->E, l->S, n_slots, 0.0, l->aux_f, l->aux_P,
                                  l->aux_v, err)))
            return rc;
        v = c->aux == MOE_AUX_GSHARD ? E * E * (sum / E) : E * sum; // aux_loss.c's expressions
        weighted = c->aux_weight * v;
    } else if (c->aux == MOE_AUX_SHAZEER) {
        double imp = 0.0, load = 0.0;
        if ((rc = moe_cuda_aux_importance(&imp, NULL, l->idx, l->gate, l->T, l->E, l->S, 0.0f, l->aux_f, l->aux_P,
                                          l->aux_v, err)) ||
            (has_smooth_load(c) &&
             (rc = moe_cuda_aux_load(&load, NULL, NULL, l->z, l->u, l->h, l->eps, l->sel, l->T, l->E, l->S,
                                     c->router.K, 0.0f, l->aux_f, l->aux_P, l->aux_v, err))))
            return rc;
        v = imp + load;
        weighted = c->w_importance * imp + c->w_load * load;
    }
    if ((rc = moe_cuda_aux_z(&l->z_value, NULL, l->lse, l->p, l->T, l->E, 0.0f, l->aux_v, err)))
        return rc;
    l->aux_value = v;
    l->loss = weighted + c->z_weight * l->z_value;
    return 0;
}

// The router's forward (moe_layer_forward up to the capacity plan): hash
// routing from the keys' experts; else the router input (x + radd, Switch
// jitter in training: the sum first), the logits, and the top-K or expert
// choice routing; then bias balancing's update in training.
static int route_forward(struct moe_cuda_layer *l, const float *x, size_t T, int train, uint64_t seed,
                         uint64_t step, struct moe_err *err)
{
    const struct moe_layer_cfg *c = &l->c;
    const size_t E = l->E, D = l->D, S = l->S;
    const struct moe_router_info *ri = moe_router_info(c->router.type);
    const uint64_t base = (uint64_t)c->index * LAYER_STRIDE;
    int rc;
    l->jittered = 0;
    if (ri->token_table) {
        if (l->hash_T != T)
            return moe_error(err, MOE_EINVAL, "CUDA layer: hash routing of %zu tokens without their keys", T);
        return moe_cuda_route_hash_forward((int)T, (int)E, l->p, l->lse, l->sel, l->idx, l->gate, l->prio, l->hexp,
                                           err);
    }
    const float *rin = x;
    l->jittered = train && c->jitter > 0.0;
    if (l->radd && ((rc = moe_cuda_copy(l->xr, x, T * D * sizeof(float), err)) ||
                    (rc = moe_cuda_add(l->xr, l->radd, T * D, err))))
        return rc;
    if (l->jittered) {
        if ((rc = moe_cuda_jitter(l->xr, l->jit, l->radd ? l->xr : x, T * D, (float)c->jitter, seed, MOE_RNG_JITTER,
                                  (uint32_t)step, base, err)))
            return rc;
    }
    if (l->radd || l->jittered)
        rin = l->xr;
    if ((rc = moe_cuda_linear_forward(l->z, rin, l->wr, NULL, T, D, E, "router", err)) ||
        (l->noisy && (rc = moe_cuda_linear_forward(l->u, rin, l->wn, NULL, T, D, E, "router noise", err))))
        return rc;
    if (ri->quota) { // expert choice (the evaluation's ec_eval mode outside training)
        struct moe_cuda_route_ec *a = &l->ec;
        a->T = (int)T;
        a->E = (int)E;
        a->ec_factor = c->router.ec_factor;
        a->mode = train ? (int)MOE_EC_EVAL_FULL : (int)c->router.ec_eval;
        a->seq = (int)c->router.seq;
        return moe_cuda_route_ec_forward(a, l->p, l->lse, l->sel, l->idx, l->gate, l->prio, l->z, err);
    }
    struct moe_rng rng = moe_rng_make(seed, ri->rng, (uint32_t)step);
    struct moe_cuda_route *a = &l->route;
    memset(a, 0, sizeof *a);
    a->T = (int)T;
    a->E = (int)E;
    a->K = (int)S;
    a->raw_gates = c->router.type == MOE_ROUTER_SWITCH || c->router.type == MOE_ROUTER_DEEPSEEK;
    a->noisy = l->noisy;
    a->gshard_random = c->router.type == MOE_ROUTER_GSHARD && c->router.second == MOE_SECOND_RANDOM;
    a->train = train;
    a->seed = rng.seed;
    a->purpose = rng.purpose;
    a->stream = rng.stream;
    a->base = base;
    const float *sel_bias = l->bias && ri->bias_balance ? l->bias : NULL; // moe_router_forward's sel_bias
    if ((rc = moe_cuda_route_forward(a, l->p, l->lse, l->h, l->eps, l->sel, l->idx, l->gate, l->prio, l->z, l->u,
                                     sel_bias, err)))
        return rc;
    if (train && l->bias) // after routing, as moe_layer_forward
        return moe_cuda_bias_update(l->bias, l->sel, T * S, E, c->bias_rate, err);
    return 0;
}

int moe_cuda_layer_forward(struct moe_cuda_layer *l, float *out, const float *x, size_t T, int train,
                           uint64_t seed, uint64_t step, double *ret_loss, struct moe_err *err)
{
    const struct moe_layer_cfg *c = &l->c;
    const struct moe_router_info *ri = moe_router_info(c->router.type);
    int rc;
    if (T > l->T_max)
        return moe_error(err, MOE_EINVAL, "CUDA layer: %zu tokens, allocated for %zu", T, l->T_max);
    if (train && l->eval)
        return moe_error(err, MOE_EINVAL, "CUDA layer: a training pass of a layer made for evaluation passes only");
    l->T = T;
    l->train = train;
    const double pd = train ? c->ffn_dropout : 0.0;
    l->r.drop = moe_cuda_drop_of(moe_dropout_make(pd, seed, step, c->index, MOE_DROP_FFN));
    l->sh.drop = moe_cuda_drop_of(moe_dropout_make(pd, seed, step, c->index, MOE_DROP_SHARED));
    if ((rc = marks_begin(l, err)) || (rc = route_forward(l, x, T, train, seed, step, err)) ||
        (rc = mark(l, MOE_PHASE_ROUTER, err)))
        return rc;
    // the routed experts over the capacity plan (expert choice: every chosen row), then the shared ones
    l->cap = ri->quota ? T : moe_capacity(train ? c->capacity_factor : c->eval_capacity_factor, T, l->S, l->E);
    if ((rc = eset_forward(l, &l->r, out, x, l->idx, l->prio, l->gate, T, l->cap, c->drop == MOE_DROP_PROB, err)) ||
        (l->Sh && (rc = eset_forward(l, &l->sh, out, x, l->sidx, l->sgate, l->sgate, T, T, 0, err))))
        return rc;
    if (ri->probs) {
        if ((rc = aux_forward(l, err)))
            return rc;
    } else {
        l->aux_value = l->z_value = NAN;
        l->loss = 0.0;
    }
    if ((rc = mark(l, MOE_PHASE_AUX, err)))
        return rc;
    if (ret_loss)
        *ret_loss = l->loss;
    return 0;
}

// ---------------------------------------------------------------- backward

// experts.c expert_backward over every block of a set, each product one
// grouped GEMM over the experts: dh = dyd W2, dW2 += dyd^T h; the
// activation's backward over all rows; dxd = db W3 + da W1 (swiglu's w3 term
// first, as nn/linear.c's order in moe_ffn_backward: the w3 call ends before
// the w1 call adds), dW3 += db^T xd, dW1 += da^T xd. Every buffer is summed
// into in the per-expert loop's order (each dW by one product, dxd by the w3
// then the w1 product), so the host emulation keeps the CPU's bits.
static int experts_backward(struct moe_cuda_layer *l, struct eset *s, size_t N, struct moe_err *err)
{
    const size_t D = l->D, F = l->F;
    int rc;
    if ((rc = expert_rows(s, 0, F, D, s->dyd, s->w2, 0.0f, s->dh, "expert w2 backward (dh)", err)) ||
        (rc = expert_grads(s, D, F, s->dyd, s->hh, s->gw2, "expert w2 backward (dw2)", err)))
        return rc;
    if ((rc = mark(l, MOE_PHASE_FFN_GEMM, err)) ||
        (rc = moe_cuda_dropout_rows(s->dh, N, F, s->plan.row_tok, s->plan.row_slot, s->S, &s->drop, err)))
        return rc;
    if (l->swiglu) {
        if ((rc = moe_cuda_act_forward(MOE_CUDA_SILU, s->db, s->a, N * F, err)))
            return rc;
        if ((rc = moe_cuda_swiglu_back(s->db, s->dh, s->b, N * F, err)))
            return rc;
    }
    if ((rc = moe_cuda_act_backward(l->act, s->da, s->dh, s->a, N * F, err)) ||
        (rc = mark(l, MOE_PHASE_ACTIVATION, err)))
        return rc;
    if (l->swiglu &&
        ((rc = expert_rows(s, 0, D, F, s->db, s->w3, 0.0f, s->dxd, "expert w3 backward (dx)", err)) ||
         (rc = expert_grads(s, F, D, s->db, s->xd, s->gw3, "expert w3 backward (dw3)", err))))
        return rc;
    if ((rc = expert_rows(s, 0, D, F, s->da, s->w1, l->swiglu ? 1.0f : 0.0f, s->dxd, "expert w1 backward (dx)",
                          err)) ||
        (rc = expert_grads(s, F, D, s->da, s->xd, s->gw1, "expert w1 backward (dw1)", err)))
        return rc;
    return mark(l, MOE_PHASE_FFN_GEMM, err);
}

// moe_experts_backward over a set: the combine's backward (dgate += when not
// NULL), the FFNs', then dx += the rows' input gradients, token by token.
static int eset_backward(struct moe_cuda_layer *l, struct eset *s, float *dx, float *dgate, const float *dout,
                         const float *gate, struct moe_err *err)
{
    const size_t T = l->T, D = l->D, N = s->off[s->E];
    int rc;
    if ((rc = moe_cuda_combine_backward(s->dyd, dgate, dout, s->yd, gate, &s->plan, s->E, s->N_max, s->S, D, err)) ||
        (rc = mark(l, MOE_PHASE_COMBINE, err)) || (rc = experts_backward(l, s, N, err)))
        return rc;
    if (T > 0 && (rc = moe_cuda_scatter(dx, s->dxd, s->plan.slot_row, T, s->S, D, err)))
        return rc;
    return mark(l, MOE_PHASE_COMBINE, err);
}

// moe_layer.c aux_backward: the balancing and z gradients into dz (and du,
// dgate for Shazeer's losses).
static int aux_backward(struct moe_cuda_layer *l, struct moe_err *err)
{
    const struct moe_layer_cfg *c = &l->c;
    const double E = (double)l->E;
    int rc;
    // f and P as the forward left them (aux_forward, the same route): only the gradients here
    if (c->aux == MOE_AUX_SWITCH || c->aux == MOE_AUX_GSHARD || c->aux == MOE_AUX_TOPK_ALL) {
        size_t n_slots = c->aux == MOE_AUX_TOPK_ALL ? l->S : 1;
        double scale = (double)(float)c->aux_weight * E; // aux_loss.c: coef (a float) times E
        if ((rc = moe_cuda_aux_fp(NULL, l->dz, l->sel, l->p, l->T, l->E, l->S, n_slots, scale, l->aux_f, l->aux_P,
                                  l->aux_v, err)))
            return rc;
    } else if (c->aux == MOE_AUX_SHAZEER) {
        double v; // the launches give the value again with the gradients (the forward's is kept)
        if ((rc = moe_cuda_aux_importance(&v, l->dgate, l->idx, l->gate, l->T, l->E, l->S, (float)c->w_importance,
                                          l->aux_f, l->aux_P, l->aux_v, err)) ||
            (has_smooth_load(c) &&
             (rc = moe_cuda_aux_load(&v, l->dz, l->du, l->z, l->u, l->h, l->eps, l->sel, l->T, l->E, l->S,
                                     c->router.K, (float)c->w_load, l->aux_f, l->aux_P, l->aux_v, err))))
            return rc;
    }
    if (c->z_weight > 0.0 &&
        (rc = moe_cuda_aux_z(NULL, l->dz, l->lse, l->p, l->T, l->E, (float)c->z_weight, l->aux_v, err)))
        return rc;
    return 0;
}

int moe_cuda_layer_backward(struct moe_cuda_layer *l, float *dx, const float *dout, const float *x,
                            struct moe_err *err)
{
    const size_t T = l->T, E = l->E, D = l->D, S = l->S;
    int rc;
    if (l->eval)
        return moe_error(err, MOE_EINVAL, "CUDA layer: a backward of a layer made for evaluation passes only");
    if ((rc = mark_as(l, -1, err))) // the caller's time since the forward counts for no phase
        return rc;
    // the routed experts (dgate zeroed first, as moe_layer_backward), then the shared ones
    if ((rc = moe_cuda_memset(l->dgate, 0, T * S * sizeof(float), "gate gradients", err)) ||
        (rc = eset_backward(l, &l->r, dx, l->dgate, dout, l->gate, err)) ||
        (l->Sh && (rc = eset_backward(l, &l->sh, dx, NULL, dout, l->sgate, err))))
        return rc;
    if (!l->gated) // hash routing: nothing upstream of the table
        return 0;
    // the auxiliary losses' gradients, then the router's backward
    if ((rc = moe_cuda_memset(l->dz, 0, T * E * sizeof(float), "logit gradients", err)) ||
        (l->noisy && (rc = moe_cuda_memset(l->du, 0, T * E * sizeof(float), "noise gradients", err))) ||
        (rc = aux_backward(l, err)) || (rc = mark(l, MOE_PHASE_AUX, err)))
        return rc;
    if ((rc = moe_router_info(l->c.router.type)->quota
                  ? moe_cuda_route_ec_backward((int)T, (int)E, l->dz, l->dgate, l->sel, l->idx, l->p, err)
                  : moe_cuda_route_backward(&l->route, l->dz, l->du, l->dgate, l->sel, l->idx, l->p, l->z, l->h,
                                            l->eps, l->u, err)))
        return rc;
    const int own = l->jittered || l->radd; // the router read xr: its gradient apart, then to dx (and dradd)
    const float *rin = own ? l->xr : x;
    float *dr = own ? l->dxr : dx;
    if (own && (rc = moe_cuda_memset(l->dxr, 0, T * D * sizeof(float), "router input gradients", err)))
        return rc;
    if ((rc = moe_cuda_linear_backward(dr, l->gwr, NULL, l->dz, rin, l->wr, T, D, E, 1.0f, "router backward", err)) ||
        (l->noisy && (rc = moe_cuda_linear_backward(dr, l->gwn, NULL, l->du, rin, l->wn, T, D, E, 1.0f,
                                                    "router noise backward", err))))
        return rc;
    // g = dxr jit (jittered) or dxr: dx += g, dradd += g (moe_layer.c's order)
    if (own && T > 0) {
        if ((rc = l->jittered ? moe_cuda_jitter_back(dx, l->dxr, l->jit, T * D, err)
                              : moe_cuda_add(dx, l->dxr, T * D, err)) ||
            (l->dradd && (rc = l->jittered ? moe_cuda_jitter_back(l->dradd, l->dxr, l->jit, T * D, err)
                                           : moe_cuda_add(l->dradd, l->dxr, T * D, err))))
            return rc;
    }
    return mark(l, MOE_PHASE_ROUTER, err);
}

// ---------------------------------------------------------------- the last pass, on the host

int moe_cuda_layer_route(const struct moe_cuda_layer *l, int32_t *sel, int32_t *idx, float *gate,
                         size_t *ret_rows, double *ret_aux, double *ret_z, struct moe_err *err)
{
    const size_t n = l->T * l->S;
    int rc;
    if ((sel && (rc = moe_cuda_to_host(sel, l->sel, n * 4, err))) ||
        (idx && (rc = moe_cuda_to_host(idx, l->idx, n * 4, err))) ||
        (gate && (rc = moe_cuda_to_host(gate, l->gate, n * sizeof(float), err))))
        return rc;
    if (ret_rows)
        *ret_rows = l->r.off[l->E];
    if (ret_aux)
        *ret_aux = l->aux_value;
    if (ret_z)
        *ret_z = l->z_value;
    return 0;
}

void moe_cuda_layer_set_eval_capacity(struct moe_cuda_layer *l, double cf) { l->c.eval_capacity_factor = cf; }

int moe_cuda_layer_route_to(const struct moe_cuda_layer *l, struct moe_route *r, struct moe_dispatch *plan,
                            struct moe_err *err)
{
    const size_t n = l->T * l->S;
    int rc;
    if ((rc = moe_cuda_to_host(r->sel, l->sel, n * sizeof(int32_t), err)) ||
        (rc = moe_cuda_to_host(r->gate, l->gate, n * sizeof(float), err)) ||
        (rc = moe_cuda_to_host(plan->slot_row, l->r.plan.slot_row, n * sizeof(int32_t), err)))
        return rc;
    r->T = l->T;
    return 0;
}

int moe_cuda_layer_route_acc(const struct moe_cuda_layer *l, struct moe_route_acc *acc, const int32_t *label,
                             struct moe_route *r, struct moe_dispatch *plan, struct moe_err *err)
{
    const size_t T = l->T, E = l->E, S = l->S, f = sizeof(float);
    int rc;
    if ((rc = moe_cuda_to_host(r->sel, l->sel, T * S * sizeof(int32_t), err)) ||
        (rc = moe_cuda_to_host(r->idx, l->idx, T * S * sizeof(int32_t), err)) ||
        (rc = moe_cuda_to_host(r->gate, l->gate, T * S * f, err)) ||
        (rc = moe_cuda_to_host(r->prio, l->prio, T * S * f, err)) ||
        (rc = moe_cuda_to_host(r->p, l->p, T * E * f, err)) || (rc = moe_cuda_to_host(r->lse, l->lse, T * f, err)) ||
        (rc = moe_cuda_to_host(plan->routed, l->r.plan.routed, E * sizeof(size_t), err)) ||
        (rc = moe_cuda_to_host(plan->dropped, l->r.plan.dropped, E * sizeof(size_t), err)))
        return rc;
    r->T = T, r->E = E, r->S = S;
    moe_route_acc_add(acc, r, plan, label, l->aux_value, l->z_value, moe_router_info(l->c.router.type)->probs);
    return 0;
}

// ---------------------------------------------------------------- FLOPs and the dense reference

// The GEMMs of a pass, each set's experts merged into one block of all its N
// kept rows: row-major (M, N, K) with the transposes the layer's own call
// uses, the set whose buffers hold operands that large (NULL: the router's),
// and the role that says which of them.
enum role { R_LOGITS, R_IN, R_OUT, R_DH, R_DW2, R_DX, R_DW, R_RDX, R_RDW };
struct shape {
    size_t M, N, K;
    int ta, tb;
    enum role r;
    const struct eset *s;
};

static size_t set_shapes(const struct moe_cuda_layer *l, const struct eset *set, int backward, struct shape *s)
{
    const size_t D = l->D, F = l->F, N = set->off[set->E], n_in = l->swiglu ? 2 : 1;
    size_t n = 0;
    for (size_t i = 0; i < n_in; i++)
        s[n++] = (struct shape){ N, F, D, 0, 1, R_IN, set };     // a (b) = xd W^T
    s[n++] = (struct shape){ N, D, F, 0, 1, R_OUT, set };        // yd = h W2^T
    if (!backward)
        return n;
    s[n++] = (struct shape){ N, F, D, 0, 0, R_DH, set };         // dh = dyd W2
    s[n++] = (struct shape){ D, F, N, 1, 0, R_DW2, set };        // dW2 += dyd^T h
    for (size_t i = 0; i < n_in; i++) {
        s[n++] = (struct shape){ N, D, F, 0, 0, R_DX, set };     // dxd (+)= d{b,a} W
        s[n++] = (struct shape){ F, D, N, 1, 0, R_DW, set };     // dW += d{b,a}^T xd
    }
    return n;
}

#define MAX_SHAPES 32
static size_t pass_shapes(const struct moe_cuda_layer *l, int backward, struct shape *s)
{
    const size_t T = l->T, E = l->E, D = l->D;
    const size_t nr = !l->gated ? 0 : l->noisy ? 2 : 1;
    size_t n = 0;
    for (size_t i = 0; i < nr; i++)
        s[n++] = (struct shape){ T, E, D, 0, 1, R_LOGITS, NULL }; // z (u) = x W^T
    n += set_shapes(l, &l->r, backward, s + n);
    if (l->Sh)
        n += set_shapes(l, &l->sh, backward, s + n);
    if (!backward)
        return n;
    for (size_t i = 0; i < nr; i++) {
        s[n++] = (struct shape){ T, D, E, 0, 0, R_RDX, NULL };    // dx += dz W
        s[n++] = (struct shape){ E, D, T, 1, 0, R_RDW, NULL };    // dW += dz^T x
    }
    return n;
}

double moe_cuda_layer_flops(const struct moe_cuda_layer *l, int backward)
{
    struct shape s[MAX_SHAPES];
    size_t n = pass_shapes(l, backward, s);
    double flops = 0.0;
    for (size_t i = 0; i < n; i++)
        flops += 2.0 * (double)s[i].M * (double)s[i].N * (double)s[i].K;
    return flops;
}

// One dense GEMM of shape s on layer buffers at least as large as its
// operands (their contents do not matter: only the time counts).
static int dense(struct moe_cuda_layer *l, const struct shape *s, struct moe_err *err)
{
    const float *A, *B;
    float *C;
    const struct eset *e = s->s ? s->s : &l->r;
    switch (s->r) {
    case R_LOGITS: A = l->xr, B = l->wr, C = l->z; break; // (xd may have fewer than T rows: expert choice)
    case R_IN: A = e->xd, B = e->w1, C = e->a; break;
    case R_OUT: A = e->hh, B = e->w2, C = e->yd; break;
    case R_DH: A = e->dyd, B = e->w2, C = e->dh; break;
    case R_DW2: A = e->dyd, B = e->hh, C = e->gw2; break;
    case R_DX: A = e->da, B = e->w1, C = e->dxd; break;
    case R_DW: A = e->da, B = e->xd, C = e->gw1; break;
    case R_RDX: A = l->dz, B = l->wr, C = l->dxr; break;
    default: A = l->dz, B = l->xr, C = l->gwr; break;
    }
    size_t lda = s->ta ? s->M : s->K, ldb = s->tb ? s->K : s->N;
    return moe_cuda_gemm(s->ta, s->tb, s->M, s->N, s->K, 1.0f, A, lda, B, ldb, 0.0f, C, s->N, "dense reference",
                         err);
}

int moe_cuda_layer_reference(struct moe_cuda_layer *l, int backward, double *ret_seconds,
                             double *ret_flops, struct moe_err *err)
{
    struct shape s[MAX_SHAPES];
    size_t n = pass_shapes(l, backward, s);
    struct moe_cuda_event *t0 = l->ev[MAX_MARKS - 1], *t1 = l->ev[MAX_MARKS]; // spare events (marks stop short)
    int rc = marks_flush(l, err);
    if (rc || (rc = moe_cuda_event_record(t0, err)))
        return rc;
    for (size_t i = 0; i < n; i++)
        if ((rc = dense(l, &s[i], err)))
            return rc;
    if ((rc = moe_cuda_event_record(t1, err)) || (rc = moe_cuda_event_elapsed(ret_seconds, t0, t1, err)))
        return rc;
    *ret_flops = moe_cuda_layer_flops(l, backward);
    return 0;
}

// ---------------------------------------------------------------- timer

struct moe_cuda_timer {
    struct moe_cuda_event *a, *b;
};

int moe_cuda_timer_create(struct moe_cuda_timer **ret, struct moe_err *err)
{
    struct moe_cuda_timer *t = calloc(1, sizeof *t);
    *ret = NULL;
    if (!t)
        return moe_error(err, MOE_ENOMEM, "out of memory");
    int rc = moe_cuda_event_create(&t->a, err);
    if (!rc)
        rc = moe_cuda_event_create(&t->b, err);
    if (rc) {
        moe_cuda_timer_free(t);
        return rc;
    }
    *ret = t;
    return 0;
}

void moe_cuda_timer_free(struct moe_cuda_timer *t)
{
    if (!t)
        return;
    moe_cuda_event_free(t->a);
    moe_cuda_event_free(t->b);
    free(t);
}

int moe_cuda_timer_start(struct moe_cuda_timer *t, struct moe_err *err) { return moe_cuda_event_record(t->a, err); }

int moe_cuda_timer_stop(struct moe_cuda_timer *t, double *ret_seconds, struct moe_err *err)
{
    int rc = moe_cuda_event_record(t->b, err);
    return rc ? rc : moe_cuda_event_elapsed(ret_seconds, t->a, t->b, err);
}
