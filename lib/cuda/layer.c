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
// GEMMs: one cublasSgemm per expert block and per product, on one stream (the
// default stream, which the launches use too), in expert order. This is the
// first version: cublasGemmGroupedBatchedEx (CUDA 12.5+) could run each product
// for all experts in one call, but takes its per-group row counts on the host
// either way; not tried yet. The row counts: the plan's E + 1 offsets are
// copied device -> host once per forward (one small synchronous copy; the
// backward reuses them).
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
#define MAX_MARKS 32                     // phase boundaries per pass (forward + backward use about 16)
#define MAX_MEM 64

struct moe_cuda_layer {
    struct moe_layer_cfg c;
    size_t E, D, F, S, T_max, N_max;
    int swiglu, noisy;
    enum moe_cuda_act act;   // relu, gelu; silu for swiglu
    void *mem[MAX_MEM];      // every device allocation, freed together
    int n_mem;
    // weights and their gradients: router (E, D), noise (E, D), w1, w3 (E, F, D), w2 (E, D, F)
    float *wr, *wn, *w1, *w3, *w2;
    float *gwr, *gwn, *gw1, *gw3, *gw2;
    // routing (T, E) / (T, S) / (T)
    float *z, *u, *p, *lse, *h, *eps, *gate, *prio;
    int32_t *sel, *idx;
    float *xr, *jit, *dxr;   // (T, D): jittered router input, its factors, its gradient
    const float *radd;       // (T, D) added to the router's input (moe_cuda_layer_set_radd), or NULL
    float *dradd;            // (T, D) += its gradient in the backward, or NULL
    struct moe_cuda_plan plan;
    // expert rows (N_max, D) and (N_max, F)
    float *xd, *yd, *dyd, *dxd;
    float *a, *b, *hh, *da, *db, *dh;
    float *dgate, *dz, *du;  // (T, S), (T, E), (T, E)
    double *aux_f, *aux_P, *aux_v;
    size_t *off;             // host copy of the plan's offsets (E + 1)
    // the last forward
    size_t T, cap;
    int train, jittered;
    struct moe_cuda_drop drop; // the experts' hidden dropout of the last forward (p 0: off)
    double aux_value, z_value, loss;
    struct moe_cuda_route route;
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

// What the device layer does not do, as the one-line reason (NULL: supported).
static const char *unsupported(const struct moe_layer_cfg *c)
{
    const struct moe_router_info *ri = moe_router_info(c->router.type);
    if (ri->token_table || ri->quota || !ri->gate_weights)
        return "hash routing and expert choice are not on the device yet";
    if (c->router.bias_balance)
        return "bias balancing (moe.bias_balance) is not on the device yet";
    if (c->n_shared)
        return "shared experts (model.n_expert_shared) are not on the device yet";
    if (c->aux == MOE_AUX_SHAZEER)
        return "Shazeer's importance and load losses (moe.aux_loss shazeer) have no device kernels yet";
    return NULL;
}

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
    free(l->off);
    free(l);
}

enum moe_cuda_act moe_cuda_ffn_act(enum moe_ffn_act a)
{
    return a == MOE_FFN_RELU ? MOE_CUDA_RELU : a == MOE_FFN_GELU ? MOE_CUDA_GELU : MOE_CUDA_SILU;
}

int moe_cuda_layer_check(const struct moe_layer_cfg *c, struct moe_err *err)
{
    const char *why = unsupported(c);
    return why ? moe_error(err, MOE_EINVAL, "CUDA layer: %s (router %s)", why, moe_router_name(c->router.type)) : 0;
}

int moe_cuda_layer_create(struct moe_cuda_layer **ret, const struct moe_layer_cfg *c, size_t T_max,
                          struct moe_err *err)
{
    *ret = NULL;
    if (moe_cuda_layer_check(c, err))
        return MOE_EINVAL;
    struct moe_cuda_layer *l = calloc(1, sizeof *l);
    if (!l)
        return moe_error(err, MOE_ENOMEM, "out of memory");
    l->c = *c;
    l->E = c->router.E;
    l->D = c->D;
    l->F = c->F;
    l->S = moe_router_slots(&c->router);
    l->T_max = T_max ? T_max : 1;
    l->N_max = l->T_max * l->S;
    l->swiglu = c->act == MOE_FFN_SWIGLU;
    l->noisy = moe_router_info(c->router.type)->noise_weights;
    l->act = moe_cuda_ffn_act(c->act);
    const size_t E = l->E, D = l->D, F = l->F, S = l->S, T = l->T_max, N = l->N_max, f = sizeof(float);
    const size_t EFD = E * F * D;
    int rc = 0;
    l->off = (size_t *)calloc(E + 1, sizeof *l->off);
    if (!l->off)
        rc = moe_error(err, MOE_ENOMEM, "out of memory");
    if (!rc)
        rc = moe_cuda_blas_init(err);
    for (int i = 0; !rc && i <= MAX_MARKS; i++)
        rc = moe_cuda_event_create(&l->ev[i], err);
    struct {
        void *p;
        size_t bytes;
        const char *what;
    } b[] = {
        { &l->wr, E * D * f, "router.weight" }, { &l->gwr, E * D * f, "router.weight gradient" },
        { &l->w1, EFD * f, "experts.w1" },      { &l->gw1, EFD * f, "experts.w1 gradient" },
        { &l->w2, EFD * f, "experts.w2" },      { &l->gw2, EFD * f, "experts.w2 gradient" },
        { &l->z, T * E * f, "router logits" },  { &l->p, T * E * f, "router probabilities" },
        { &l->lse, T * f, "router lse" },       { &l->gate, T * S * f, "gates" },
        { &l->prio, T * S * f, "priorities" },  { &l->sel, T * S * 4, "selections" },
        { &l->idx, T * S * 4, "dispatch" },     { &l->xr, T * D * f, "router input" },
        { &l->jit, T * D * f, "jitter" },       { &l->dxr, T * D * f, "router input gradient" },
        { &l->xd, N * D * f, "expert inputs" }, { &l->yd, N * D * f, "expert outputs" },
        { &l->dyd, N * D * f, "expert output gradients" }, { &l->dxd, N * D * f, "expert input gradients" },
        { &l->a, N * F * f, "expert pre-activations" },    { &l->hh, N * F * f, "expert hidden units" },
        { &l->da, N * F * f, "expert pre-activation gradients" }, { &l->dh, N * F * f, "expert hidden gradients" },
        { &l->dgate, T * S * f, "gate gradients" }, { &l->dz, T * E * f, "logit gradients" },
        { &l->aux_f, E * sizeof(double), "aux f" }, { &l->aux_P, E * sizeof(double), "aux P" },
        { &l->aux_v, sizeof(double), "aux value" },
        { &l->plan.row_tok, T * S * 4, "plan rows" }, { &l->plan.row_slot, T * S * 4, "plan slots" },
        { &l->plan.slot_row, T * S * 4, "plan slot rows" },
        { &l->plan.offset, (E + 1) * sizeof(size_t), "plan offsets" },
        { &l->plan.routed, E * sizeof(size_t), "plan routed" },
        { &l->plan.dropped, E * sizeof(size_t), "plan dropped" },
        { &l->plan.order, T * S * 4, "plan order" }, { &l->plan.kept, T * S, "plan kept" },
        { &l->plan.n_kept, E * sizeof(size_t), "plan kept counts" },
        { &l->plan.cnt, MOE_CUDA_PLAN_CNT(T, S, E) * sizeof(size_t), "plan chunk counts" },
    };
    for (size_t i = 0; !rc && i < sizeof b / sizeof *b; i++)
        rc = dalloc(l, b[i].p, b[i].bytes, b[i].what, err);
    struct {
        int need;
        void *p;
        size_t bytes;
        const char *what;
    } opt[] = {
        { l->swiglu, &l->w3, EFD * f, "experts.w3" },
        { l->swiglu, &l->gw3, EFD * f, "experts.w3 gradient" },
        { l->swiglu, &l->b, N * F * f, "expert gate units" },
        { l->swiglu, &l->db, N * F * f, "expert gate unit gradients" },
        { l->noisy, &l->wn, E * D * f, "router.noise_weight" },
        { l->noisy, &l->gwn, E * D * f, "router.noise_weight gradient" },
        { l->noisy, &l->u, T * E * f, "noise logits" },
        { l->noisy, &l->h, T * E * f, "noisy logits" },
        { l->noisy, &l->eps, T * E * f, "noise draws" },
        { l->noisy, &l->du, T * E * f, "noise logit gradients" },
    };
    for (size_t i = 0; !rc && i < sizeof opt / sizeof *opt; i++)
        if (opt[i].need)
            rc = dalloc(l, opt[i].p, opt[i].bytes, opt[i].what, err);
    if (!rc)
        rc = moe_cuda_layer_zero_grad(l, err);
    if (rc) {
        moe_cuda_layer_free(l);
        return rc;
    }
    *ret = l;
    return 0;
}

// Free one of the layer's own buffers (NULL: nothing).
static void dfree(struct moe_cuda_layer *l, void *p)
{
    for (int i = 0; p && i < l->n_mem; i++)
        if (l->mem[i] == p) {
            moe_cuda_free(p);
            l->mem[i] = l->mem[--l->n_mem];
            return;
        }
}

void moe_cuda_layer_bind(struct moe_cuda_layer *l, float *wr, float *wn, float *w1, float *w3, float *w2,
                         float *gwr, float *gwn, float *gw1, float *gw3, float *gw2)
{
    float **own[] = { &l->wr, &l->wn, &l->w1, &l->w3, &l->w2, &l->gwr, &l->gwn, &l->gw1, &l->gw3, &l->gw2 };
    float *to[] = { wr, wn, w1, w3, w2, gwr, gwn, gw1, gw3, gw2 };
    for (size_t i = 0; i < sizeof own / sizeof *own; i++)
        if (*own[i]) { // the buffers this layer has (w3 for swiglu, the noise weight for noisy-topk)
            dfree(l, *own[i]);
            *own[i] = to[i];
        }
}

size_t moe_cuda_layer_slots(const struct moe_cuda_layer *l) { return l->S; }

void moe_cuda_layer_set_radd(struct moe_cuda_layer *l, const float *radd, float *dradd)
{
    l->radd = radd;
    l->dradd = dradd;
}

int moe_cuda_layer_set_weights(struct moe_cuda_layer *l, const float *router, const float *noise,
                               const float *w1, const float *w3, const float *w2, struct moe_err *err)
{
    const size_t ED = l->E * l->D * sizeof(float), EFD = l->E * l->F * l->D * sizeof(float);
    int rc;
    if ((rc = moe_cuda_to_device(l->wr, router, ED, err)) || (rc = moe_cuda_to_device(l->w1, w1, EFD, err)) ||
        (rc = moe_cuda_to_device(l->w2, w2, EFD, err)))
        return rc;
    if (l->swiglu && (rc = moe_cuda_to_device(l->w3, w3, EFD, err)))
        return rc;
    if (l->noisy && (rc = moe_cuda_to_device(l->wn, noise, ED, err)))
        return rc;
    return 0;
}

int moe_cuda_layer_zero_grad(struct moe_cuda_layer *l, struct moe_err *err)
{
    const size_t ED = l->E * l->D * sizeof(float), EFD = l->E * l->F * l->D * sizeof(float);
    struct {
        float *p;
        size_t n;
    } g[] = { { l->gwr, ED }, { l->gw1, EFD }, { l->gw2, EFD }, { l->gw3, EFD }, { l->gwn, ED } };
    for (size_t i = 0; i < sizeof g / sizeof *g; i++) {
        int rc;
        if (g[i].p && (rc = moe_cuda_memset(g[i].p, 0, g[i].n, "gradients", err)))
            return rc;
    }
    return 0;
}

int moe_cuda_layer_get_grads(const struct moe_cuda_layer *l, float *router, float *noise, float *w1,
                             float *w3, float *w2, struct moe_err *err)
{
    const size_t ED = l->E * l->D * sizeof(float), EFD = l->E * l->F * l->D * sizeof(float);
    struct {
        float *dst;
        const float *src;
        size_t n;
    } g[] = { { router, l->gwr, ED }, { noise, l->gwn, ED }, { w1, l->gw1, EFD }, { w3, l->gw3, EFD },
              { w2, l->gw2, EFD } };
    for (size_t i = 0; i < sizeof g / sizeof *g; i++) {
        int rc;
        if (g[i].dst && g[i].src && (rc = moe_cuda_to_host(g[i].dst, g[i].src, g[i].n, err)))
            return rc;
    }
    return 0;
}

int moe_cuda_layer_memzero(void *p, size_t bytes, struct moe_err *err)
{
    return moe_cuda_memset(p, 0, bytes, "buffer", err);
}

// ---------------------------------------------------------------- forward

// The expert FFNs over the plan's blocks (experts.c expert_forward): per
// expert a = xd W1^T (b = xd W3^T), then the activation over all N rows at
// once (the blocks are contiguous), then per expert yd = h W2^T.
static int experts_forward(struct moe_cuda_layer *l, size_t N, struct moe_err *err)
{
    const size_t D = l->D, F = l->F, E = l->E;
    int rc;
    for (size_t e = 0; e < E; e++) {
        size_t o = l->off[e], n = l->off[e + 1] - o;
        const float *xe = l->xd + o * D;
        if ((rc = moe_cuda_linear_forward(l->a + o * F, xe, l->w1 + e * F * D, NULL, n, D, F, "expert w1", err)) ||
            (l->swiglu &&
             (rc = moe_cuda_linear_forward(l->b + o * F, xe, l->w3 + e * F * D, NULL, n, D, F, "expert w3", err))))
            return rc;
    }
    if ((rc = mark(l, MOE_PHASE_FFN_GEMM, err)) || (rc = moe_cuda_act_forward(l->act, l->hh, l->a, N * F, err)))
        return rc;
    if (l->swiglu) {
        if ((rc = moe_cuda_mul(l->hh, l->b, N * F, err)))
            return rc;
    }
    // hidden dropout (experts.c moe_ffn_forward_drop): row r's mask key is its token and slot
    if ((rc = moe_cuda_dropout_rows(l->hh, N, F, l->plan.row_tok, l->plan.row_slot, l->S, &l->drop, err)) ||
        (rc = mark(l, MOE_PHASE_ACTIVATION, err)))
        return rc;
    for (size_t e = 0; e < E; e++) {
        size_t o = l->off[e], n = l->off[e + 1] - o;
        if ((rc = moe_cuda_linear_forward(l->yd + o * D, l->hh + o * F, l->w2 + e * D * F, NULL, n, F, D, "expert w2",
                                          err)))
            return rc;
    }
    return mark(l, MOE_PHASE_FFN_GEMM, err);
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
    }
    if ((rc = moe_cuda_aux_z(&l->z_value, NULL, l->lse, l->p, l->T, l->E, 0.0f, l->aux_v, err)))
        return rc;
    l->aux_value = v;
    l->loss = weighted + c->z_weight * l->z_value;
    return 0;
}

int moe_cuda_layer_forward(struct moe_cuda_layer *l, float *out, const float *x, size_t T, int train,
                           uint64_t seed, uint64_t step, double *ret_loss, struct moe_err *err)
{
    const struct moe_layer_cfg *c = &l->c;
    const size_t E = l->E, D = l->D, S = l->S;
    const struct moe_router_info *ri = moe_router_info(c->router.type);
    int rc;
    if (T > l->T_max)
        return moe_error(err, MOE_EINVAL, "CUDA layer: %zu tokens, allocated for %zu", T, l->T_max);
    l->T = T;
    l->train = train;
    const uint64_t base = (uint64_t)c->index * LAYER_STRIDE;
    l->drop = moe_cuda_drop_of(moe_dropout_make(train ? c->ffn_dropout : 0.0, seed, step, c->index, MOE_DROP_FFN));
    if ((rc = marks_begin(l, err)))
        return rc;
    // router input (Switch jitter in training), logits, routing
    // (moe_layer.c: xr = (x + radd) jit, the sum first)
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
    if ((rc = moe_cuda_route_forward(a, l->p, l->lse, l->h, l->eps, l->sel, l->idx, l->gate, l->prio, l->z, l->u,
                                     NULL, err)) ||
        (rc = mark(l, MOE_PHASE_ROUTER, err)))
        return rc;
    // capacity plan (in chunks), its offsets to
    // the host (the GEMM shapes), gather
    l->cap = moe_capacity(train ? c->capacity_factor : c->eval_capacity_factor, T, S, E);
    if ((rc = moe_cuda_dispatch_plan(&l->plan, l->idx, l->prio, T, S, E, l->cap, c->drop == MOE_DROP_PROB, err)) ||
        (rc = moe_cuda_to_host(l->off, l->plan.offset, (E + 1) * sizeof(size_t), err)))
        return rc;
    const size_t N = l->off[E];
    if ((rc = moe_cuda_gather(l->xd, x, &l->plan, E, l->N_max, D, err)) || (rc = mark(l, MOE_PHASE_DISPATCH, err)) ||
        (rc = experts_forward(l, N, err)))
        return rc;
    if ((rc = moe_cuda_combine(out, l->yd, l->gate, l->plan.slot_row, T, S, D, err)) ||
        (rc = mark(l, MOE_PHASE_COMBINE, err)) || (rc = aux_forward(l, err)) || (rc = mark(l, MOE_PHASE_AUX, err)))
        return rc;
    if (ret_loss)
        *ret_loss = l->loss;
    return 0;
}

// ---------------------------------------------------------------- backward

// experts.c expert_backward over every block: dh = dyd W2, dW2 += dyd^T h;
// the activation's backward over all rows; dxd = db W3 + da W1 (swiglu's w3
// term first, as nn/linear.c's order in moe_ffn_backward), dW3 += db^T xd,
// dW1 += da^T xd.
static int experts_backward(struct moe_cuda_layer *l, size_t N, struct moe_err *err)
{
    const size_t D = l->D, F = l->F, E = l->E;
    int rc;
    for (size_t e = 0; e < E; e++) {
        size_t o = l->off[e], n = l->off[e + 1] - o;
        if (n == 0)
            continue;
        if ((rc = moe_cuda_gemm(0, 0, n, F, D, 1.0f, l->dyd + o * D, D, l->w2 + e * D * F, F, 0.0f, l->dh + o * F, F,
                                "expert w2 backward (dh)", err)) ||
            (rc = moe_cuda_gemm(1, 0, D, F, n, 1.0f, l->dyd + o * D, D, l->hh + o * F, F, 1.0f, l->gw2 + e * D * F, F,
                                "expert w2 backward (dw2)", err)))
            return rc;
    }
    if ((rc = mark(l, MOE_PHASE_FFN_GEMM, err)) ||
        (rc = moe_cuda_dropout_rows(l->dh, N, F, l->plan.row_tok, l->plan.row_slot, l->S, &l->drop, err)))
        return rc;
    if (l->swiglu) {
        if ((rc = moe_cuda_act_forward(MOE_CUDA_SILU, l->db, l->a, N * F, err)))
            return rc;
        if ((rc = moe_cuda_swiglu_back(l->db, l->dh, l->b, N * F, err)))
            return rc;
    }
    if ((rc = moe_cuda_act_backward(l->act, l->da, l->dh, l->a, N * F, err)) ||
        (rc = mark(l, MOE_PHASE_ACTIVATION, err)))
        return rc;
    for (size_t e = 0; e < E; e++) {
        size_t o = l->off[e], n = l->off[e + 1] - o;
        float beta = 0.0f;
        if (n == 0)
            continue;
        if (l->swiglu) {
            if ((rc = moe_cuda_linear_backward(l->dxd + o * D, l->gw3 + e * F * D, NULL, l->db + o * F, l->xd + o * D,
                                               l->w3 + e * F * D, n, D, F, 0.0f, "expert w3 backward", err)))
                return rc;
            beta = 1.0f;
        }
        if ((rc = moe_cuda_linear_backward(l->dxd + o * D, l->gw1 + e * F * D, NULL, l->da + o * F, l->xd + o * D,
                                           l->w1 + e * F * D, n, D, F, beta, "expert w1 backward", err)))
            return rc;
    }
    return mark(l, MOE_PHASE_FFN_GEMM, err);
}

// moe_layer.c aux_backward: the balancing and z gradients into dz.
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
    }
    if (c->z_weight > 0.0 &&
        (rc = moe_cuda_aux_z(NULL, l->dz, l->lse, l->p, l->T, l->E, (float)c->z_weight, l->aux_v, err)))
        return rc;
    return 0;
}

int moe_cuda_layer_backward(struct moe_cuda_layer *l, float *dx, const float *dout, const float *x,
                            struct moe_err *err)
{
    const size_t T = l->T, E = l->E, D = l->D, S = l->S, N = l->off[E];
    int rc;
    if ((rc = mark_as(l, -1, err))) // the caller's time since the forward counts for no phase
        return rc;
    // combine backward: dyd, dgate (zeroed first, as moe_layer_backward)
    if ((rc = moe_cuda_memset(l->dgate, 0, T * S * sizeof(float), "gate gradients", err)) ||
        (rc = moe_cuda_combine_backward(l->dyd, l->dgate, dout, l->yd, l->gate, &l->plan, E, l->N_max, S, D, err)) ||
        (rc = mark(l, MOE_PHASE_COMBINE, err)) || (rc = experts_backward(l, N, err)))
        return rc;
    if (T > 0) {
        if ((rc = moe_cuda_scatter(dx, l->dxd, l->plan.slot_row, T, S, D, err)))
            return rc;
    }
    if ((rc = mark(l, MOE_PHASE_COMBINE, err)))
        return rc;
    // the auxiliary losses' gradients, then the router's backward
    if ((rc = moe_cuda_memset(l->dz, 0, T * E * sizeof(float), "logit gradients", err)) ||
        (l->noisy && (rc = moe_cuda_memset(l->du, 0, T * E * sizeof(float), "noise gradients", err))) ||
        (rc = aux_backward(l, err)) || (rc = mark(l, MOE_PHASE_AUX, err)))
        return rc;
    if ((rc = moe_cuda_route_backward(&l->route, l->dz, l->du, l->dgate, l->sel, l->idx, l->p, l->z, l->h, l->eps,
                                      l->u, err)))
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
        *ret_rows = l->off[l->E];
    if (ret_aux)
        *ret_aux = l->aux_value;
    if (ret_z)
        *ret_z = l->z_value;
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
        (rc = moe_cuda_to_host(plan->routed, l->plan.routed, E * sizeof(size_t), err)) ||
        (rc = moe_cuda_to_host(plan->dropped, l->plan.dropped, E * sizeof(size_t), err)))
        return rc;
    r->T = T, r->E = E, r->S = S;
    moe_route_acc_add(acc, r, plan, label, l->aux_value, l->z_value, moe_router_info(l->c.router.type)->probs);
    return 0;
}

// ---------------------------------------------------------------- FLOPs and the dense reference

// The GEMMs of a pass, experts merged into one block of all N kept rows:
// row-major (M, N, K) with the transposes the layer's own call uses, and the
// role that says which of the layer's buffers hold operands that large.
enum role { R_LOGITS, R_IN, R_OUT, R_DH, R_DW2, R_DX, R_DW, R_RDX, R_RDW };
struct shape {
    size_t M, N, K;
    int ta, tb;
    enum role r;
};

static size_t pass_shapes(const struct moe_cuda_layer *l, int backward, struct shape *s)
{
    const size_t T = l->T, E = l->E, D = l->D, F = l->F, N = l->off[l->E];
    const size_t nr = l->noisy ? 2 : 1, n_in = l->swiglu ? 2 : 1;
    size_t n = 0;
    for (size_t i = 0; i < nr; i++)
        s[n++] = (struct shape){ T, E, D, 0, 1, R_LOGITS }; // z (u) = x W^T
    for (size_t i = 0; i < n_in; i++)
        s[n++] = (struct shape){ N, F, D, 0, 1, R_IN };     // a (b) = xd W^T
    s[n++] = (struct shape){ N, D, F, 0, 1, R_OUT };        // yd = h W2^T
    if (!backward)
        return n;
    s[n++] = (struct shape){ N, F, D, 0, 0, R_DH };         // dh = dyd W2
    s[n++] = (struct shape){ D, F, N, 1, 0, R_DW2 };        // dW2 += dyd^T h
    for (size_t i = 0; i < n_in; i++) {
        s[n++] = (struct shape){ N, D, F, 0, 0, R_DX };     // dxd (+)= d{b,a} W
        s[n++] = (struct shape){ F, D, N, 1, 0, R_DW };     // dW += d{b,a}^T xd
    }
    for (size_t i = 0; i < nr; i++) {
        s[n++] = (struct shape){ T, D, E, 0, 0, R_RDX };    // dx += dz W
        s[n++] = (struct shape){ E, D, T, 1, 0, R_RDW };    // dW += dz^T x
    }
    return n;
}

double moe_cuda_layer_flops(const struct moe_cuda_layer *l, int backward)
{
    struct shape s[16];
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
    switch (s->r) {
    case R_LOGITS: A = l->xd, B = l->wr, C = l->z; break;
    case R_IN: A = l->xd, B = l->w1, C = l->a; break;
    case R_OUT: A = l->hh, B = l->w2, C = l->yd; break;
    case R_DH: A = l->dyd, B = l->w2, C = l->dh; break;
    case R_DW2: A = l->dyd, B = l->hh, C = l->gw2; break;
    case R_DX: A = l->da, B = l->w1, C = l->dxd; break;
    case R_DW: A = l->da, B = l->xd, C = l->gw1; break;
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
    struct shape s[16];
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
