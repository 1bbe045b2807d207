// estimate.c: resource estimate of a run (see estimate.h). Walks the same
// declarations and allocations the models make, in the same order, but only
// adds sizes, each product and sum checked with __builtin_*_overflow. Works on
// typed settings only: no config key is read here (train/ parses them).
// T = rows in a batch, I = n_in, D = width (n_embd, or n_in for the mixture
// and the mlp), O = n_out, E = n_expert, K = n_expert_used, S = slots per token,
// F = n_ff, Fd = dense FFN width, Sh = shared experts, H = hidden units,
// L = n_layer, V = hash_vocab, G = groups or labels counted by the statistics.
#include "model/estimate.h"

#include <assert.h>
#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include "core/gemm.h"
#include "core/params.h"
#include "core/sysmem.h"
#include "io/corpus.h"
#include "io/vocab.h"
#include "moe/experts.h"
#include "model/model.h"
#include "moe/router.h"

// One dimension of a product, with the config key (or data property) behind it.
struct dim {
    size_t v;
    const char *key;
};
#define DIMS(...) sizeof((struct dim[]){ __VA_ARGS__ }) / sizeof(struct dim), (const struct dim[]){ __VA_ARGS__ }

// What the batch dimension is made of (cmd/: the training batch or the evaluation chunk).
#define KEY_T "batch rows (optim.batch_size, train.max_batch_eval)"
#define KEY_I "data features"
#define KEY_O "data targets/classes"

struct est {
    struct moe_err *err;
    int rc;              // first failure
    size_t count;        // parameters (moe_params_count)
    size_t numel;        // floats of the parameter buffer, with each tensor's 16-float alignment
    size_t largest_bytes;
    char largest[200];
};

static size_t round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

// "model.n_expert x model.n_ff x model.n_embd = 4 x 128 x 64" into buf.
static void describe(char *buf, size_t len, size_t n, const struct dim *d, size_t unit)
{
    size_t o = 0;
    for (size_t i = 0; i < n && o < len; i++)
        o += (size_t)snprintf(buf + o, len - o, "%s%s", i ? " x " : "", d[i].key);
    for (size_t i = 0; i < n && o < len; i++)
        o += (size_t)snprintf(buf + o, len - o, "%s%zu", i ? " x " : " = ", d[i].v);
    if (unit > 1 && o < len)
        snprintf(buf + o, len - o, " x %zu bytes", unit);
}

// *ret = unit * prod(d); on overflow record an error naming the keys.
static int product(struct est *e, size_t *ret, size_t unit, size_t n, const struct dim *d)
{
    size_t p = unit;
    *ret = 0;
    for (size_t i = 0; i < n; i++) {
        if (__builtin_mul_overflow(p, d[i].v, &p)) {
            char what[300];
            describe(what, sizeof what, n, d, unit);
            e->rc = moe_error(e->err, MOE_EINVAL, "%s overflows size_t", what);
            return -1;
        }
    }
    *ret = p;
    return 0;
}

static void add(struct est *e, size_t *acc, size_t v, const char *what)
{
    if (!e->rc && __builtin_add_overflow(*acc, v, acc))
        e->rc = moe_error(e->err, MOE_EINVAL, "the %s of this config overflows size_t", what);
}

static void note_largest(struct est *e, size_t bytes, const char *kind, const char *name, size_t n,
                         const struct dim *d)
{
    if (bytes <= e->largest_bytes)
        return;
    char what[160];
    describe(what, sizeof what, n, d, 0);
    e->largest_bytes = bytes;
    snprintf(e->largest, sizeof e->largest, "%s '%s' (%s)", kind, name, what);
}

// A tensor declared as moe_params_add does: numel floats at the next 16-float boundary.
static void tensor(struct est *e, const char *name, size_t n, const struct dim *d)
{
    size_t bytes;
    if (e->rc || product(e, &bytes, sizeof(float), n, d))
        return;
    size_t numel = bytes / sizeof(float);
    add(e, &e->count, numel, "parameter count");
    if (!e->rc && (e->numel > SIZE_MAX - 15 || __builtin_add_overflow(round_up(e->numel, 16), numel, &e->numel)))
        e->rc = moe_error(e->err, MOE_EINVAL, "the parameter count of this config overflows size_t");
    if (!e->rc)
        note_largest(e, bytes, "tensor", name, n, d);
}

// A buffer of prod(d) elements of `size` bytes, as moe_alloc rounds it (64-byte
// multiple, at least 64), added to *acc.
static void buffer(struct est *e, size_t *acc, const char *name, size_t size, size_t n, const struct dim *d)
{
    size_t bytes;
    if (e->rc || product(e, &bytes, size, n, d))
        return;
    if (bytes > SIZE_MAX - 63) {
        e->rc = moe_error(e->err, MOE_EINVAL, "buffer '%s' overflows size_t", name);
        return;
    }
    bytes = bytes ? round_up(bytes, 64) : 64;
    add(e, acc, bytes, "memory estimate");
    if (!e->rc)
        note_largest(e, bytes, "buffer", name, n, d);
}
// One more float per parameter (the parameter, gradient and moment buffers,
// which are not reported as "the largest buffer": their tensors are).
static void flat(struct est *e, size_t *acc)
{
    if (e->rc)
        return;
    if (e->numel > (SIZE_MAX - 63) / sizeof(float)) {
        e->rc = moe_error(e->err, MOE_EINVAL, "the parameter buffer of this config overflows size_t");
        return;
    }
    add(e, acc, e->numel ? round_up(e->numel * sizeof(float), 64) : 64, "memory estimate");
}
#define TENSOR(e, name, ...) tensor(e, name, DIMS(__VA_ARGS__))
#define BUF(e, acc, name, size, ...) buffer(e, acc, name, size, DIMS(__VA_ARGS__))

// Rows of a dispatch plan are int32 (dispatch.c): T * S must stay below 2^31.
static void dispatch_rows(struct est *e, size_t T, size_t S, const char *slot_key)
{
    size_t n;
    if (e->rc || product(e, &n, 1, DIMS({ T, KEY_T }, { S, slot_key })))
        return;
    if (n > (size_t)INT32_MAX)
        e->rc = moe_error(e->err, MOE_EINVAL,
                          "%s x %s = %zu x %zu dispatch rows per batch, more than the %d that 32-bit row indices hold",
                          KEY_T, slot_key, T, S, INT32_MAX);
}

// ---------------------------------------------------------------- models

struct shape {
    enum moe_task task;
    size_t I, O, T;
    size_t n_expert;     // of the dense statistics (the mixture's gate), else 0
    size_t n_group;      // groups of the data (synthetic regions), for statistics
    // sparse layers, for statistics
    size_t n_sparse, E, S;
    double macs;         // multiply-accumulates per token, forward
    double active;       // active parameters (mlp-moe; set once every tensor is counted)
    int dense_active;    // dense model: active = parameters
};

// model/mixture.c
static void est_mixture(struct est *e, const struct moe_model_hp *hp, struct shape *s, size_t *act)
{
    size_t D = s->I, O = s->O, T = s->T, E = hp->n_expert, H = hp->n_expert_hidden;
    const char *kh = "model.n_expert_hidden";
    struct dim dE = { E, "model.n_expert" }, dD = { D, KEY_I }, dO = { O, KEY_O }, dH = { H, kh }, dT = { T, KEY_T };
    TENSOR(e, "gate.weight", dE, dD);
    TENSOR(e, "gate.bias", dE);
    if (H) {
        TENSOR(e, "experts.w1", dE, dH, dD);
        TENSOR(e, "experts.b1", dE, dH);
        TENSOR(e, "experts.w2", dE, dO, dH);
        TENSOR(e, "experts.b2", dE, dO);
    } else {
        TENSOR(e, "experts.weight", dE, dO, dD);
        TENSOR(e, "experts.bias", dE, dO);
    }
    struct dim dH1 = { H ? H : 1, kh };
    const char *te[] = { "z", "p", "post", "dz" };
    for (int i = 0; i < 4; i++)
        BUF(e, act, te[i], sizeof(float), dT, dE);
    BUF(e, act, "o", sizeof(float), dT, dE, dO);
    BUF(e, act, "dout", sizeof(float), dT, dE, dO);
    BUF(e, act, "hid", sizeof(float), dE, dT, dH1);
    BUF(e, act, "dhid", sizeof(float), dT, dH1);
    BUF(e, act, "dpre", sizeof(float), dT, dH1);
    BUF(e, act, "target", sizeof(float), dT, dO);
    BUF(e, act, "pred", sizeof(float), dT, dO);
    s->n_expert = E;
    s->dense_active = 1;
    s->macs = (double)E * (double)D + (H ? (double)E * ((double)H * D + (double)O * H) : (double)E * O * D);
}

// model/mlp.c
static void est_mlp(struct est *e, const struct moe_model_hp *hp, struct shape *s, size_t *act)
{
    size_t D = s->I, O = s->O, T = s->T, H = hp->n_hidden;
    struct dim dD = { D, KEY_I }, dO = { O, KEY_O }, dH = { H, "model.n_hidden" }, dT = { T, KEY_T };
    TENSOR(e, "hidden.weight", dH, dD);
    TENSOR(e, "hidden.bias", dH);
    TENSOR(e, "output.weight", dO, dH);
    TENSOR(e, "output.bias", dO);
    const char *th[] = { "hid", "dhid", "dpre" }, *to[] = { "y", "dy", "target", "pred" };
    for (int i = 0; i < 3; i++)
        BUF(e, act, th[i], sizeof(float), dT, dH);
    for (int i = 0; i < 4; i++)
        BUF(e, act, to[i], sizeof(float), dT, dO);
    s->dense_active = 1;
    s->macs = (double)H * D + (double)O * H;
}

// moe/router.c, dispatch.c, experts.c: what moe_layer_alloc allocates for one sparse layer.
static void est_layer_scratch(struct est *e, size_t *act, const struct moe_router_cfg *rc, size_t T, size_t D,
                              size_t F, size_t Sh, int swiglu, size_t V)
{
    size_t E = rc->E, S = moe_router_slots(rc);
    const struct moe_router_info *ri = moe_router_info(rc->type);
    const char *skey = ri->quota ? "model.n_expert" : "model.n_expert_used";
    struct dim dT = { T, KEY_T }, dE = { E, "model.n_expert" }, dS = { S, skey }, dD = { D, "model.n_embd" },
               dE1 = { E + 1, "model.n_expert + 1" };
    dispatch_rows(e, T, S, skey);
    // rows the expert buffers hold: T*S, or for expert choice at most E quotas
    size_t N = 0;
    if (!e->rc && product(e, &N, 1, DIMS(dT, dS)) == 0)
        N = moe_router_rows(rc, T); // T * S fits: no overflow
    if (e->rc)
        return;
    // route (router.c)
    int noisy = ri->noise_weights;
    const char *rte[] = { "route.z", "route.p", "route.u", "route.eps", "route.h" };
    for (int i = 0; i < (noisy ? 5 : 2); i++)
        BUF(e, act, rte[i], sizeof(float), dT, dE);
    BUF(e, act, "route.lse", sizeof(float), dT);
    const char *rts[] = { "route.sel", "route.idx", "route.gate", "route.prio" };
    for (int i = 0; i < 4; i++)
        BUF(e, act, rts[i], 4, dT, dS);
    // dispatch plan (dispatch.c), routed and shared
    for (int shared = 0; shared <= (Sh > 0); shared++) {
        struct dim pS = shared ? (struct dim){ Sh, "model.n_expert_shared" } : dS;
        struct dim pE = shared ? pS : dE, pE1 = shared ? (struct dim){ Sh + 1, "model.n_expert_shared + 1" } : dE1;
        if (shared)
            dispatch_rows(e, T, Sh, "model.n_expert_shared");
        BUF(e, act, "plan.offset", sizeof(size_t), pE1);
        const char *pn[] = { "plan.row_tok", "plan.row_slot", "plan.slot_row", "plan.order", "plan.key" };
        for (int i = 0; i < 5; i++)
            BUF(e, act, pn[i], 4, dT, pS);
        const char *pe[] = { "plan.routed", "plan.dropped", "plan.fill" };
        for (int i = 0; i < 3; i++)
            BUF(e, act, pe[i], sizeof(size_t), pE);
    }
    // expert buffers (experts.c): one allocation of 4 (N, D) and 4 or 6 (N, F) chunks, each rounded to 16 floats
    for (int shared = 0; shared <= (Sh > 0); shared++) {
        size_t rows = N, nd, nf, total;
        if (shared && product(e, &rows, 1, DIMS(dT, { Sh, "model.n_expert_shared" })))
            return;
        struct dim dN = { rows, shared ? KEY_T " x model.n_expert_shared" : KEY_T " x slots per token" };
        if (product(e, &nd, 1, DIMS(dN, dD)) || product(e, &nf, 1, DIMS(dN, { F, "model.n_ff" })))
            return;
        if (nd > SIZE_MAX - 15 || nf > SIZE_MAX - 15) {
            e->rc = moe_error(e->err, MOE_EINVAL, "expert buffers of %zu rows overflow size_t", rows);
            return;
        }
        nd = round_up(nd, 16);
        nf = round_up(nf, 16);
        size_t a, b;
        if (__builtin_mul_overflow(nd, 4, &a) || __builtin_mul_overflow(nf, swiglu ? 6 : 4, &b) ||
            __builtin_add_overflow(a, b, &total)) {
            e->rc = moe_error(e->err, MOE_EINVAL, "expert buffers of %zu rows overflow size_t", rows);
            return;
        }
        BUF(e, act, shared ? "shared expert buffers" : "expert buffers", sizeof(float),
            { total, shared ? "(4 x model.n_embd + 4 or 6 x model.n_ff) x " KEY_T " x model.n_expert_shared"
                            : "(4 x model.n_embd + 4 or 6 x model.n_ff) x " KEY_T " x slots per token" });
    }
    if (Sh) {
        BUF(e, act, "s_idx", 4, dT, { Sh, "model.n_expert_shared" });
        BUF(e, act, "s_gate", 4, dT, { Sh, "model.n_expert_shared" });
    }
    const char *td[] = { "xr", "jit", "dxr" };
    for (int i = 0; i < 3; i++)
        BUF(e, act, td[i], sizeof(float), dT, dD);
    BUF(e, act, "hash_expert", 4, dT);
    BUF(e, act, "dgate", sizeof(float), dT, dS);
    BUF(e, act, "dz", sizeof(float), dT, dE);
    BUF(e, act, "du", sizeof(float), dT, dE);
    if (rc->bias_balance)
        BUF(e, act, "router.bias", sizeof(float), dE);
    if (ri->token_table)
        BUF(e, act, "router.hash_table", 4, { V, "moe.hash_vocab" });
}

// The tensors of sparse layer l (moe/moe_layer.c moe_layer_declare).
static void est_sparse_tensors(struct est *e, size_t l, const struct moe_router_cfg *rc, size_t D, size_t F,
                               size_t Sh, int swiglu)
{
    char name[MOE_NAME_MAX + 32];
    struct dim dD = { D, "model.n_embd" }, dE = { rc->E, "model.n_expert" }, dF = { F, "model.n_ff" },
               dSh = { Sh, "model.n_expert_shared" };
    const struct moe_router_info *ri = moe_router_info(rc->type);
#define LNAME(fmt) (snprintf(name, sizeof name, fmt, l), name)
    if (ri->gate_weights)
        TENSOR(e, LNAME("layers.%zu.moe.router.weight"), dE, dD);
    if (ri->noise_weights)
        TENSOR(e, LNAME("layers.%zu.moe.router.noise_weight"), dE, dD);
    TENSOR(e, LNAME("layers.%zu.moe.experts.w1"), dE, dF, dD);
    if (swiglu)
        TENSOR(e, LNAME("layers.%zu.moe.experts.w3"), dE, dF, dD);
    TENSOR(e, LNAME("layers.%zu.moe.experts.w2"), dE, dD, dF);
    if (Sh) {
        TENSOR(e, LNAME("layers.%zu.moe.shared.w1"), dSh, dF, dD);
        if (swiglu)
            TENSOR(e, LNAME("layers.%zu.moe.shared.w3"), dSh, dF, dD);
        TENSOR(e, LNAME("layers.%zu.moe.shared.w2"), dSh, dD, dF);
    }
#undef LNAME
}

// The FFN of block l: a sparse layer's tensors (and the routed experts a token
// does not use, into *inactive) or a dense FFN of width dFd; its MACs per token.
static void est_ffn_block(struct est *e, struct shape *s, size_t l, int sparse, const struct moe_router_cfg *rc,
                          size_t D, size_t F, size_t Sh, int swiglu, struct dim dFd, double *inactive)
{
    double per_expert = (double)F * (double)D * (swiglu ? 3.0 : 2.0);
    if (sparse) {
        const struct moe_router_info *ri = moe_router_info(rc->type);
        double E = (double)rc->E, used = moe_router_experts_per_token(rc);
        double router_macs = (ri->gate_weights ? E * (double)D : 0.0) + (ri->noise_weights ? E * (double)D : 0.0);
        est_sparse_tensors(e, l, rc, D, F, Sh, swiglu);
        // the same expression, in the same order, as cli_routing_json
        *inactive += (E - used) * per_expert;
        s->macs += router_macs + used * per_expert + (double)Sh * per_expert;
        s->n_sparse++;
        return;
    }
    char name[MOE_NAME_MAX + 32];
    struct dim dD = { D, "model.n_embd" };
#define LNAME(fmt) (snprintf(name, sizeof name, fmt, l), name)
    TENSOR(e, LNAME("layers.%zu.ffn.w1"), dFd, dD);
    if (swiglu)
        TENSOR(e, LNAME("layers.%zu.ffn.w3"), dFd, dD);
    TENSOR(e, LNAME("layers.%zu.ffn.w2"), dD, dFd);
#undef LNAME
    s->macs += (double)dFd.v * D * (swiglu ? 3.0 : 2.0);
}

// The FFN scratch of all blocks: n_sparse sparse layers' (identical) buffers and
// the dense blocks' activations, for T tokens (dT names them).
static void est_ffn_scratch(struct est *e, size_t *act, const struct moe_router_cfg *rc, struct dim dT, size_t D,
                            size_t F, size_t Sh, int swiglu, size_t V, size_t L, size_t n_sparse, struct dim dFd)
{
    size_t per_layer = 0, dense_layer = 0, all;
    if (n_sparse) {
        est_layer_scratch(e, &per_layer, rc, dT.v, D, F, Sh, swiglu, V);
        if (!e->rc && product(e, &all, 1, DIMS({ per_layer, "bytes per sparse layer" },
                                               { n_sparse, "sparse layers (model.n_layer, model.moe_every)" })) == 0)
            add(e, act, all, "memory estimate");
    }
    if (n_sparse < L) {
        BUF(e, &dense_layer, "ffn.a", sizeof(float), dT, dFd);
        BUF(e, &dense_layer, "ffn.hh", sizeof(float), dT, dFd);
        if (swiglu)
            BUF(e, &dense_layer, "ffn.b", sizeof(float), dT, dFd);
        if (!e->rc && product(e, &all, 1, DIMS({ dense_layer, "bytes per dense layer" },
                                               { L - n_sparse, "dense layers (model.n_layer, model.moe_every)" })) == 0)
            add(e, act, all, "memory estimate");
    }
}

// The width of dense FFN blocks, named after the keys it comes from.
static struct dim dense_width(const struct moe_model_hp *hp)
{
    return (struct dim){ hp->n_ff_dense, hp->n_ff_dense_auto ? "model.n_expert_used x model.n_ff" : "model.n_ff_dense" };
}

// model/mlp_moe.c and moe/moe_layer.c
static void est_mlp_moe(struct est *e, const struct moe_model_hp *hp, struct shape *s, size_t *act)
{
    size_t I = s->I, O = s->O, T = s->T;
    size_t D = hp->n_embd, L = hp->n_layer, F = hp->n_ff, every = hp->moe_every, E = hp->n_expert;
    size_t Sh = hp->n_expert_shared, V = hp->moe.hash_vocab;
    int rms = hp->rms, swiglu = hp->ffn_act == MOE_FFN_SWIGLU;
    const struct moe_router_cfg rc = hp->moe.router;
    struct dim dI = { I, KEY_I }, dO = { O, KEY_O }, dD = { D, "model.n_embd" }, dT = { T, KEY_T },
               dL1 = { L + 1, "model.n_layer + 1" }, dFd = dense_width(hp);
    double inactive = 0.0;
    s->macs = (double)I * D + (double)O * D;

    char name[MOE_NAME_MAX + 32];
    TENSOR(e, "input.weight", dD, dI);
    TENSOR(e, "input.bias", dD);
    for (size_t l = 0; l < L && !e->rc; l++) {
        int sparse = l % every == every - 1;
#define LNAME(fmt) (snprintf(name, sizeof name, fmt, l), name)
        TENSOR(e, LNAME("layers.%zu.norm.weight"), dD);
        if (!rms)
            TENSOR(e, LNAME("layers.%zu.norm.bias"), dD);
        est_ffn_block(e, s, l, sparse, &rc, D, F, Sh, swiglu, dFd, &inactive);
#undef LNAME
    }
    TENSOR(e, "norm.weight", dD);
    if (!rms)
        TENSOR(e, "norm.bias", dD);
    TENSOR(e, "head.weight", dO, dD);
    TENSOR(e, "head.bias", dO);
    if (e->rc)
        return;

    est_ffn_scratch(e, act, &rc, dT, D, F, Sh, swiglu, V, L, s->n_sparse, dFd);
    BUF(e, act, "h (residual stream)", sizeof(float), dL1, dT, dD);
    BUF(e, act, "n (normalised inputs)", sizeof(float), dL1, dT, dD);
    BUF(e, act, "mean", sizeof(float), dL1, dT);
    BUF(e, act, "rstd", sizeof(float), dL1, dT);
    const char *to[] = { "y", "dy", "target", "pred" }, *td[] = { "dh", "dn", "tmp" }, *tf[] = { "da", "db", "dhh" };
    for (int i = 0; i < 4; i++)
        BUF(e, act, to[i], sizeof(float), dT, dO);
    for (int i = 0; i < 3; i++)
        BUF(e, act, td[i], sizeof(float), dT, dD);
    for (int i = 0; i < 3; i++)
        BUF(e, act, tf[i], sizeof(float), dT, dFd);
    BUF(e, act, "keys", 4, dT);
    s->E = E;
    s->S = moe_router_slots(&rc);
    s->active = (double)e->count - inactive;
}

// model/transformer.c: T = windows x model.n_ctx tokens, O = vocabulary, I = languages.
static void est_transformer(struct est *e, const struct moe_model_hp *hp, struct shape *s, size_t *act)
{
    size_t G = s->I, V = s->O, B = s->T;
    size_t C = hp->n_ctx, H = hp->n_head, D = hp->n_embd, L = hp->n_layer, F = hp->n_ff, every = hp->moe_every;
    size_t E = hp->n_expert, Sh = hp->n_expert_shared;
    int rms = hp->rms, tied = hp->tie_embeddings, lang = hp->moe.lang_router, swiglu = hp->ffn_act == MOE_FFN_SWIGLU;
    const struct moe_router_cfg rc = hp->moe.router;
    size_t T;
    if (product(e, &T, 1, DIMS({ B, KEY_T }, { C, "model.n_ctx" })))
        return;
    struct dim dV = { V, "vocabulary" }, dG = { G, "languages" }, dD = { D, "model.n_embd" },
               dC = { C, "model.n_ctx" }, dT = { T, KEY_T " x model.n_ctx" }, dD3 = { 3 * D, "3 x model.n_embd" },
               dL1 = { L + 1, "model.n_layer + 1" }, dB = { B, KEY_T }, dH = { H, "model.n_head" },
               dFd = dense_width(hp);
    double inactive = 0.0;
    // head, and per block the projections and attention over (C + 1) / 2 positions on average (QK and AV)
    s->macs = (double)V * D;
    char name[MOE_NAME_MAX + 32];
    TENSOR(e, "tok_emb.weight", dV, dD);
    TENSOR(e, "pos_emb.weight", dC, dD);
    for (size_t l = 0; l < L && !e->rc; l++) {
        int sparse = l % every == every - 1;
#define LNAME(fmt) (snprintf(name, sizeof name, fmt, l), name)
        TENSOR(e, LNAME("layers.%zu.attn_norm.weight"), dD);
        if (!rms)
            TENSOR(e, LNAME("layers.%zu.attn_norm.bias"), dD);
        TENSOR(e, LNAME("layers.%zu.attn.wqkv"), dD3, dD);
        TENSOR(e, LNAME("layers.%zu.attn.wo"), dD, dD);
        TENSOR(e, LNAME("layers.%zu.ffn_norm.weight"), dD);
        if (!rms)
            TENSOR(e, LNAME("layers.%zu.ffn_norm.bias"), dD);
        s->macs += 4.0 * (double)D * D + 2.0 * (double)D * ((double)C + 1.0) / 2.0;
        est_ffn_block(e, s, l, sparse, &rc, D, F, Sh, swiglu, dFd, &inactive);
        if (sparse && lang)
            TENSOR(e, LNAME("layers.%zu.moe.lang_emb"), dG, dD);
#undef LNAME
    }
    TENSOR(e, "norm.weight", dD);
    if (!rms)
        TENSOR(e, "norm.bias", dD);
    if (!tied)
        TENSOR(e, "head.weight", dV, dD);
    if (e->rc)
        return;

    size_t every_layer = 0, all;
    est_ffn_scratch(e, act, &rc, dT, D, F, Sh, swiglu, V, L, s->n_sparse, dFd);
    const char *bd[] = { "n1", "ao", "m", "n2" }, *bt[] = { "mean1", "rstd1", "mean2", "rstd2" };
    for (int i = 0; i < 4; i++)
        BUF(e, &every_layer, bd[i], sizeof(float), dT, dD);
    for (int i = 0; i < 4; i++)
        BUF(e, &every_layer, bt[i], sizeof(float), dT);
    BUF(e, &every_layer, "qkv", sizeof(float), dT, dD3);
    BUF(e, &every_layer, "att", sizeof(float), dB, dH, dC, dC);
    if (!e->rc && product(e, &all, 1, DIMS({ every_layer, "bytes per block" }, { L, "model.n_layer" })) == 0)
        add(e, act, all, "memory estimate");
    BUF(e, act, "h (residual stream)", sizeof(float), dL1, dT, dD);
    BUF(e, act, "nf", sizeof(float), dT, dD);
    BUF(e, act, "meanf", sizeof(float), dT);
    BUF(e, act, "rstdf", sizeof(float), dT);
    BUF(e, act, "logits", sizeof(float), dT, dV);
    BUF(e, act, "dlogits", sizeof(float), dT, dV);
    const char *td[] = { "dh", "dn", "tmp" }, *tf[] = { "da", "db", "dhh" };
    for (int i = 0; i < 3; i++)
        BUF(e, act, td[i], sizeof(float), dT, dD);
    BUF(e, act, "dqkv", sizeof(float), dT, dD3);
    BUF(e, act, "datt", sizeof(float), dB, dH, dC, dC);
    BUF(e, act, "dao", sizeof(float), dT, dD);
    for (int i = 0; i < 3; i++)
        BUF(e, act, tf[i], sizeof(float), dT, dFd);
    BUF(e, act, "radd", sizeof(float), dT, dD);
    BUF(e, act, "dradd", sizeof(float), dT, dD);
    BUF(e, act, "target", 4, dT);
    BUF(e, act, "label", 4, dT);
    BUF(e, act, "keys", 4, dT);
    s->E = E;
    s->S = moe_router_slots(&rc);
    s->active = (double)e->count - inactive;
    s->n_group = G;
}

// Evaluation and routing statistics (model.c moe_stats_init*, moe/route_stats.c), one set.
static void est_stats(struct est *e, const struct shape *s, size_t *acc)
{
    struct dim dE = { s->n_expert, "model.n_expert" }, dG = { s->n_group, "data.synthetic.n_regions" };
    if (s->n_expert) {
        BUF(e, acc, "stats.gate_sum", sizeof(double), dE);
        if (s->n_group)
            BUF(e, acc, "stats.contingency", sizeof(uint64_t), dE, dG);
    }
    if (s->task == MOE_TASK_LM) {
        BUF(e, acc, "stats.lang_loss", sizeof(double), { s->n_group, "languages" });
        BUF(e, acc, "stats.lang_tokens", sizeof(uint64_t), { s->n_group, "languages" });
        BUF(e, acc, "stats.lang_bytes", sizeof(double), { s->n_group, "languages" });
    }
    if (!s->n_sparse)
        return;
    size_t one = 0, n_label = s->task == MOE_TASK_LM ? 5 * s->n_group
                              : s->task == MOE_TASK_CLASSIFICATION ? s->O : s->n_group;
    struct dim rE = { s->E, "model.n_expert" };
    const char *pe[] = { "routed", "dropped", "gate_sum", "prob_sum" };
    for (int i = 0; i < 4; i++)
        BUF(e, &one, pe[i], sizeof(double), rE);
    if (s->S >= 2)
        BUF(e, &one, "route statistics co-selection", sizeof(uint64_t), rE, rE);
    if (n_label)
        BUF(e, &one, "route statistics labels", sizeof(uint64_t), rE, { n_label, KEY_O });
    size_t all;
    if (!e->rc && product(e, &all, 1, DIMS({ one, "bytes per sparse layer" }, { s->n_sparse, "sparse layers" })) == 0)
        add(e, acc, all, "memory estimate");
}

// A split as moe_dataset_alloc sizes it: name.x, name.y or name.label, name.group.
static void est_split(struct est *e, size_t *acc, const char *split, const char *rows_key, const struct shape *s,
                      size_t rows, int group)
{
    char name[64];
    struct dim dR = { rows, rows_key }, dI = { s->I, KEY_I }, dO = { s->O, KEY_O };
    snprintf(name, sizeof name, "%s.x", split);
    BUF(e, acc, name, sizeof(float), dR, dI);
    if (s->task == MOE_TASK_REGRESSION) {
        snprintf(name, sizeof name, "%s.y", split);
        BUF(e, acc, name, sizeof(float), dR, dO);
    } else {
        snprintf(name, sizeof name, "%s.label", split);
        BUF(e, acc, name, 4, dR);
    }
    if (group) {
        snprintf(name, sizeof name, "%s.group", split);
        BUF(e, acc, name, 4, dR);
    }
}

// The synthetic generator's temporaries (io/synth.c), freed once the data is
// made but part of the peak while making it: centres (R, D) and, for
// regression, maps (R, O, D) and biases (R, O), in double.
static void est_synth_temporaries(struct est *e, const struct moe_synth_spec *sp, size_t *acc, size_t I, size_t O)
{
    int classes = strcmp(sp->kind, "classes") == 0;
    struct dim dR = { sp->n_regions, "data.synthetic.n_regions" },
               dI = { I, "data.synthetic.n_in" }, dO = { O, "data.synthetic.n_out" };
    BUF(e, acc, "synthetic centres", sizeof(double), dR, dI);
    if (!classes) {
        BUF(e, acc, "synthetic maps", sizeof(double), dR, dO, dI);
        BUF(e, acc, "synthetic biases", sizeof(double), dR, dO);
    }
}

// ---------------------------------------------------------------- data files
// What the data readers hold, from the files the config names, without reading
// them whole: sizes (stat), IDX headers, and for word tokens one streaming pass
// that counts tokens. A file that cannot be read counts 0 (the reader itself
// reports it). These figures follow io/corpus.c, io/vocab.c, io/idx.c and io/table.c.

// The corpus of data.text.path as io/corpus.c reads it: per file, the bytes used
// (max_bytes), the training/validation cut, the tokens of each part, and the
// training windows of C + 1 tokens at steps of C (moe_text_fixed_windows).
struct text_files {
    size_t files, bytes;
    size_t tok[2];          // tokens of the training and validation splits
    size_t train_windows;   // every non-overlapping training window
};

// Word tokens in bytes [0, cut) and [cut, n) of a file: a run of word bytes is
// one token, every other byte is one (moe_tokenize of the word kind).
static void count_word_tokens(const char *path, size_t n, size_t cut, size_t tok[2])
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return;
    unsigned char buf[1 << 14];
    size_t pos = 0;
    int in_word = 0;
    while (pos < n) {
        size_t got = fread(buf, 1, n - pos < sizeof buf ? n - pos : sizeof buf, f);
        if (got == 0)
            break;
        for (size_t i = 0; i < got; i++, pos++) {
            int w = moe_word_byte(buf[i]);
            if (pos == cut)
                in_word = 0;
            tok[pos >= cut] += !(w && in_word);
            in_word = w;
        }
    }
    fclose(f);
}

static void text_file(struct text_files *t, const char *path, off_t size, const struct moe_corpus_spec *sp, size_t C)
{
    size_t n = (size_t)size, max = sp->max_bytes;
    if (max && max < n)
        n = max;
    if (n == 0)
        return;
    double nv = floor(sp->valid_fraction * (double)n);
    size_t cut = nv >= (double)n ? 1 : n - (size_t)nv, tok[2] = { 0, 0 };
    if (sp->tokens == MOE_TOK_WORDS) {
        count_word_tokens(path, n, cut, tok);
    } else {
        tok[0] = cut;
        tok[1] = n - cut;
    }
    t->files++;
    t->bytes += n;
    t->tok[0] += tok[0];
    t->tok[1] += tok[1];
    t->train_windows += tok[0] >= 1 && C ? (tok[0] - 1) / C : 0;
}

// The files of data.text.path as io/corpus.c lists them: the file itself, or the
// regular files of a directory whose name does not start with '.'.
static void text_files_of(struct text_files *t, const struct moe_corpus_spec *sp, size_t C)
{
    memset(t, 0, sizeof *t);
    const char *path = sp->path;
    struct stat st;
    if (!path || stat(path, &st) != 0)
        return;
    if (S_ISREG(st.st_mode)) {
        text_file(t, path, st.st_size, sp, C);
        return;
    }
    DIR *d = S_ISDIR(st.st_mode) ? opendir(path) : NULL;
    if (!d)
        return;
    for (struct dirent *de; (de = readdir(d));) {
        char full[4096];
        if (de->d_name[0] == '.' ||
            snprintf(full, sizeof full, "%s%s%s", path, path[0] && path[strlen(path) - 1] == '/' ? "" : "/",
                     de->d_name) >= (int)sizeof full)
            continue;
        if (stat(full, &st) == 0 && S_ISREG(st.st_mode))
            text_file(t, full, st.st_size, sp, C);
    }
    closedir(d);
}

// The corpus as held (moe_corpus_load, moe_text_fixed_windows) into *data: per
// split the token ids (4), byte classes (1) and cumulative byte offsets (8) of
// each token, and the segments; the vocabulary of V tokens (pointers, lengths,
// the token bytes, at 8 a word, and the lookup table); the evaluation windows'
// starts (8 bytes each): n_valid_windows (the loaded split's rows) and the
// training split's data.text.train_eval_windows. *extra: what the reader holds
// besides while loading: every file's bytes, and the word counts of a vocabulary
// being built (32 bytes a slot, at least 2 slots a word, and half as much again
// while the table grows), beyond the streams that are not yet allocated then.
static void est_text(struct est *e, const struct moe_data_cfg *c, size_t C, size_t V, size_t n_valid_windows,
                     size_t *data, size_t *extra)
{
    struct text_files t;
    text_files_of(&t, &c->text.corpus, C);
    const char *kt[2] = { "training tokens (data.text.path)", "validation tokens (data.text.path)" };
    const char *names[2][3] = { { "corpus train.tok", "corpus train.cls", "corpus train.off" },
                                { "corpus valid.tok", "corpus valid.cls", "corpus valid.off" } };
    size_t streams = 0;
    for (int s = 0; s < 2; s++) {
        struct dim dn = { t.tok[s], kt[s] }, dn1 = { t.tok[s] + 1, kt[s] };
        BUF(e, &streams, names[s][0], 4, dn);
        BUF(e, &streams, names[s][1], 1, dn);
        BUF(e, &streams, names[s][2], 8, dn1);
        BUF(e, &streams, s ? "corpus valid.seg" : "corpus train.seg", 3 * sizeof(size_t), { t.files, "text files" });
    }
    int words = c->text.corpus.tokens == MOE_TOK_WORDS;
    size_t vocab = 0, slots = 16;
    struct dim dV = { V, "vocabulary" };
    BUF(e, &vocab, "vocabulary tokens", 2 * sizeof(size_t), dV);
    BUF(e, &vocab, "vocabulary bytes", words ? 8 : 2, dV);
    while (words && slots < 2 * V)
        slots *= 2;
    if (words)
        BUF(e, &vocab, "vocabulary lookup", 4, { slots, "2 x vocabulary, to a power of two" });
    size_t max = c->text.train_eval_windows;
    size_t win_train = max && max < t.train_windows ? max : t.train_windows;
    BUF(e, &vocab, "training evaluation windows", sizeof(size_t), { win_train, "data.text.train_eval_windows" });
    BUF(e, &vocab, "validation evaluation windows", sizeof(size_t), { n_valid_windows, "validation windows" });
    add(e, data, streams, "memory estimate");
    add(e, data, vocab, "memory estimate");
    // while loading: the files, and the word counts before the streams exist
    size_t counts = 0;
    if (words && !c->text.vocab_path) {
        size_t cap = 1024;
        while (cap < 2 * V)
            cap *= 2;
        BUF(e, &counts, "word counts", 48, { cap, "2 x distinct words, to a power of two" });
    }
    BUF(e, extra, "text files", 1, { t.bytes, "bytes of data.text.path" });
    if (counts > streams + vocab)
        add(e, extra, counts - streams - vocab, "memory estimate");
}

// The bytes io/idx.c holds for an IDX file: the product of the dimensions in its
// header, read through zlib as the reader does (raw or gzip); 0 if unreadable.
static size_t idx_data_bytes(const char *path)
{
    gzFile f = path ? gzopen(path, "rb") : NULL;
    if (!f)
        return 0;
    unsigned char h[4 + 4 * 4];
    size_t count = 0;
    if (gzread(f, h, 4) == 4 && h[0] == 0 && h[1] == 0 && h[3] >= 1 && h[3] <= 4 &&
        gzread(f, h + 4, 4u * h[3]) == (int)(4 * h[3])) {
        count = 1;
        for (int k = 0; k < h[3]; k++) {
            const unsigned char *b = h + 4 + 4 * k;
            size_t dim = (size_t)b[0] << 24 | (size_t)b[1] << 16 | (size_t)b[2] << 8 | b[3];
            if (__builtin_mul_overflow(count, dim, &count) || count > ((size_t)1 << 34)) {
                count = 0; // the reader refuses it
                break;
            }
        }
    }
    gzclose(f);
    return count;
}

// zlib's buffers for one IDX file (gzbuffer 128 KiB: input and output, doubled)
// and its inflate state and window.
#define IDX_ZLIB_BYTES ((size_t)576 << 10)

// io/idx.c reads a split's images and labels whole, then makes the split (held
// in bytes_data) and frees them: the training files while the test split does
// not exist yet, the test files besides both splits.
static void est_idx(struct est *e, const struct moe_data_cfg *c, size_t test_split, size_t *extra)
{
    const char *files[2][2] = { { "data.idx.train_images", "data.idx.train_labels" },
                                { "data.idx.test_images", "data.idx.test_labels" } };
    const char *paths[2][2] = { { c->idx.train_images, c->idx.train_labels },
                                { c->idx.test_images, c->idx.test_labels } };
    size_t held[2] = { 0, 0 };
    for (int s = 0; s < 2; s++) {
        for (int k = 0; k < 2; k++) {
            size_t n = idx_data_bytes(paths[s][k]);
            if (n)
                BUF(e, &held[s], files[s][k], 1, { n, "bytes of the IDX data (its header's dimensions)" });
        }
        if (held[s])
            add(e, &held[s], IDX_ZLIB_BYTES, "memory estimate");
    }
    size_t first = held[0] > test_split ? held[0] - test_split : 0;
    *extra = first > held[1] ? first : held[1];
}

// io/table.c: the whole file, and the kept rows as parsed (features, targets or
// labels with their text, the split flag) while the splits are made.
static void est_table(struct est *e, const struct moe_data_cfg *c, const struct shape *s, size_t rows,
                      size_t *extra)
{
    struct stat st;
    const char *path = c->table.path;
    if (path && stat(path, &st) == 0 && S_ISREG(st.st_mode))
        BUF(e, extra, "table file", 1, { (size_t)st.st_size, "bytes of data.table.path" });
    struct dim dR = { rows, "table rows" };
    BUF(e, extra, "parsed features", sizeof(float), dR, { s->I, KEY_I });
    if (s->task == MOE_TASK_REGRESSION)
        BUF(e, extra, "parsed targets", sizeof(float), dR, { s->O, KEY_O });
    else
        BUF(e, extra, "parsed labels", 4 + sizeof(char *) + 32, dR); // id, pointer, the label's text
    BUF(e, extra, "parsed split flags", 1, dR);
}

// The parameters and activations of each model (the model table's order).
static void (*const est_model[])(struct est *e, const struct moe_model_hp *hp, struct shape *s, size_t *act) = {
    [MOE_MODEL_MIXTURE] = est_mixture,
    [MOE_MODEL_MLP] = est_mlp,
    [MOE_MODEL_MLP_MOE] = est_mlp_moe,
    [MOE_MODEL_TRANSFORMER] = est_transformer,
};

int moe_model_estimate_hp(const struct moe_model_hp *hp, const struct moe_data_cfg *data,
                          const struct moe_estimate_loop *loop, enum moe_task task, size_t n_in, size_t n_out,
                          size_t n_train_rows, size_t n_test_rows, size_t max_batch, struct moe_model_estimate *ret,
                          struct moe_err *err)
{
    assert(n_in > 0 && n_out > 0); // moe_model_check
    struct est e = { .err = err };
    struct moe_model_estimate r;
    memset(&r, 0, sizeof r);
    int synthetic = data && data->source == MOE_DATA_SYNTHETIC;
    int loaded = data && (n_train_rows || n_test_rows); // the data's bytes are counted
    struct shape s = { .task = task, .I = n_in, .O = n_out, .T = max_batch ? max_batch : 1,
                       .n_group = synthetic ? data->synthetic.n_regions : 0 };
    est_model[hp->type](&e, hp, &s, &r.bytes_activations);
    if (e.rc)
        return e.rc;
    r.parameters = e.count;
    r.active_parameters = s.dense_active ? (double)e.count : s.active;
    r.flops_forward_per_token = 2.0 * s.macs;
    r.flops_per_token = 3.0 * r.flops_forward_per_token;
    flat(&e, &r.bytes_params);
    flat(&e, &r.bytes_grads);

    // the training loop (train/trainer.c, optim.c) or one set of statistics
    est_stats(&e, &s, &r.bytes_trainer);
    if (loop) {
        for (int i = 0; i < loop->moments; i++)
            flat(&e, &r.bytes_optimizer);
        est_stats(&e, &s, &r.bytes_trainer); // evaluation (train and test) and batch statistics
        est_stats(&e, &s, &r.bytes_trainer);
        BUF(&e, &r.bytes_trainer, "row permutation", 4, { n_train_rows ? n_train_rows : 1, "training rows" });
        BUF(&e, &r.bytes_trainer, "gate means", sizeof(double), { s.n_expert + 1, "model.n_expert + 1" });
        BUF(&e, &r.bytes_trainer, "gate means", sizeof(double), { s.n_expert + 1, "model.n_expert + 1" });
        size_t bs = loop->batch_size;
        if (bs == 0 || bs > n_train_rows) // full batch
            bs = n_train_rows;
        if (bs > s.T)
            bs = s.T;
        if (task == MOE_TASK_LM) { // trainer.c lm_buf: windows of n_ctx + 1 tokens, classes, languages, bytes
            struct dim dB = { bs ? bs : 1, "optim.batch_size" }, dC1 = { hp->n_ctx + 1, "model.n_ctx + 1" };
            BUF(&e, &r.bytes_trainer, "batch tokens", 4, dB, dC1);
            BUF(&e, &r.bytes_trainer, "batch classes", 1, dB, dC1);
            BUF(&e, &r.bytes_trainer, "batch languages", 4, dB);
            BUF(&e, &r.bytes_trainer, "batch bytes", 8, dB);
        } else if (loop->shuffle && bs < n_train_rows) {
            est_split(&e, &r.bytes_trainer, "batch", "optim.batch_size", &s, bs, synthetic);
        }
    }
    // The data (loaded: rows known), and what its reader holds besides while loading.
    size_t loading = 0; // the readers' temporaries at the loading peak, beyond bytes_data
    if (task == MOE_TASK_LM) {
        if (loaded)
            est_text(&e, data, hp->n_ctx, n_out, n_test_rows, &r.bytes_data, &loading);
    } else if (loaded) {
        size_t train = 0, test = 0;
        if (n_train_rows)
            est_split(&e, &train, "train", "training rows", &s, n_train_rows, synthetic);
        if (n_test_rows)
            est_split(&e, &test, "test", "test rows", &s, n_test_rows, synthetic);
        add(&e, &r.bytes_data, train, "memory estimate");
        add(&e, &r.bytes_data, test, "memory estimate");
        if (synthetic)
            est_synth_temporaries(&e, &data->synthetic, &r.bytes_data, n_in, n_out);
        if (data->standardize)
            BUF(&e, &r.bytes_data, "standardisation statistics", sizeof(float), { 2 * n_in, "2 x " KEY_I });
        size_t rows;
        if (data->source == MOE_DATA_IDX)
            est_idx(&e, data, test, &loading);
        else if (data->source == MOE_DATA_TABLE && !__builtin_add_overflow(n_train_rows, n_test_rows, &rows))
            est_table(&e, data, &s, rows, &loading);
    }
    // The peak is the larger of loading and training: the temporaries count as
    // far as the buffers allocated after them do not cover them.
    size_t after = 0;
    size_t later[] = { r.bytes_params, r.bytes_grads, r.bytes_optimizer, r.bytes_activations, r.bytes_trainer };
    for (size_t i = 0; i < sizeof later / sizeof *later; i++)
        add(&e, &after, later[i], "memory estimate");
    r.bytes_readers = loading > after ? loading - after : 0;
    const struct moe_blas_info *blas = moe_blas_get_info();
    size_t threads = blas && blas->threads > 1 ? (size_t)blas->threads : 1;
    r.bytes_process = MOE_ESTIMATE_PROCESS_BYTES + threads * MOE_ESTIMATE_THREAD_BYTES;

    size_t parts[] = { r.bytes_params, r.bytes_grads, r.bytes_optimizer, r.bytes_activations, r.bytes_trainer,
                       r.bytes_data, r.bytes_readers, r.bytes_process };
    for (size_t i = 0; i < sizeof parts / sizeof *parts; i++)
        add(&e, &r.bytes_total, parts[i], "memory estimate");
    if (e.rc)
        return e.rc;
    r.largest_bytes = e.largest_bytes;
    snprintf(r.largest, sizeof r.largest, "%s", e.largest);
    if (r.bytes_total > MOE_ESTIMATE_MAX_BYTES) {
        char need[32], lim[32], big[32];
        moe_bytes_str(need, sizeof need, (double)r.bytes_total);
        moe_bytes_str(lim, sizeof lim, (double)MOE_ESTIMATE_MAX_BYTES);
        moe_bytes_str(big, sizeof big, (double)r.largest_bytes);
        return moe_error(err, MOE_EINVAL,
                         "this config needs about %s, more than any machine has (limit %s); the largest is %s at %s",
                         need, lim, r.largest, big);
    }
    *ret = r;
    return 0;
}

int moe_data_shape_cfg(const struct moe_data_cfg *c, enum moe_task *ret_task, size_t *ret_n_in, size_t *ret_n_out,
                       size_t *ret_n_train, size_t *ret_n_test, struct moe_err *err)
{
    if (c->source != MOE_DATA_SYNTHETIC)
        return 0;
    const struct moe_synth_spec *sp = &c->synthetic;
    int classes = strcmp(sp->kind, "classes") == 0;
    struct shape s = { .task = classes ? MOE_TASK_CLASSIFICATION : MOE_TASK_REGRESSION, .I = sp->n_in, .O = sp->n_out };
    size_t n_train = sp->n_train, n_test = sp->n_test;
    struct est e = { .err = err };
    size_t bytes = 0;
    est_split(&e, &bytes, "train", "data.synthetic.n_train", &s, n_train, 1);
    if (n_test)
        est_split(&e, &bytes, "test", "data.synthetic.n_test", &s, n_test, 1);
    est_synth_temporaries(&e, sp, &bytes, s.I, s.O);
    if (e.rc)
        return e.rc;
    if (bytes > MOE_ESTIMATE_MAX_BYTES) {
        char need[32], lim[32];
        moe_bytes_str(need, sizeof need, (double)bytes);
        moe_bytes_str(lim, sizeof lim, (double)MOE_ESTIMATE_MAX_BYTES);
        return moe_error(err, MOE_EINVAL,
                         "the synthetic data (data.synthetic.*) needs about %s, more than any machine has (limit %s); "
                         "the largest is %s",
                         need, lim, e.largest);
    }
    *ret_task = s.task;
    *ret_n_in = s.I;
    *ret_n_out = s.O;
    *ret_n_train = n_train;
    *ret_n_test = n_test;
    return 1;
}
