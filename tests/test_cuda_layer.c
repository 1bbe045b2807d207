// test_cuda_layer.c: the device MoE layer (lib/cuda/layer.c) against the CPU
// layer (moe/moe_layer.c) on a GPU: the same weights, input and output
// gradient; one forward and one backward on each side; then the routing, the
// kept rows, the auxiliary values, the output, the input gradient and every
// weight gradient compared, for several routers, activations and capacity
// settings (drops included). Exit 77 (meson: skipped) where no GPU is usable.
//
// What must agree, and how closely:
//   - routing (sel, idx) and the capacity plan's row count: identical. Near
//     ties could flip on the device (its logits come from cuBLAS, its
//     probabilities through its expf), so the input rows of tokens whose
//     routing lies within 1e-5 (relative) of a tie are redrawn before the
//     comparison until none is left: the top-(S+1) keys' gaps, and for
//     GShard's random policy 2 g2 against its uniform draw;
//   - gates: within 1e-5 (the softmax through expf: a few ulps);
//   - the aux and z values: within 1e-5 relative (double sums of those p);
//   - out, dx and the weight gradients: max |device - cpu| <= tol * max |cpu|
//     per tensor, tol = 1e-4 (router.weight's gradient: 5e-4). cuBLAS sums
//     each GEMM's products in its own order, not BLIS's, and fp32 sums of K
//     terms in two orders differ by about sqrt(K) ulps of the terms' magnitude
//     (K up to F = 256 or the rows of a block, a few hundred): 1e-6 to 1e-5 of
//     the largest value; 1e-4 leaves a margin of 10 or more. The router
//     weight's gradient sums dz^T x over all T tokens, whose terms cancel (a
//     token's dz sums to about zero over the experts), so its error relative to
//     its own largest value is larger. Every tensor's figures are printed as a
//     note line "# name: max abs diff A, max rel-to-max R" on stdout; on an
//     H200 the largest was 7.2e-7 (results/cuda-bench/test_cuda_layer.log).
// Built with -DMOE_TEST_CUDA_HOST, lib/cuda/layer.c and tests/cuda_host.c
// (test_cuda_layer_host), the same comparisons run the device layer's code
// on the host emulation of the CUDA ops, without the probe: there the GEMMs,
// exp and tanh are the CPU library's own, and every tolerance is 0.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "cuda/layer.h"
#include "cuda/ops.h"
#include "cuda_test.h"
#include "moe/moe_layer.h"

#define TIE_TOL 1e-5

static void fill(float *x, size_t n, uint32_t stream, float lo, float hi)
{
    struct moe_rng r = moe_rng_make(17, MOE_RNG_DATA, stream);
    moe_rng_fill_uniform(&r, x, n, lo, hi);
}

// max |a - b| and that over max |b|, as a note line; fails above tol.
static void compare(const char *cname, const char *what, const float *a, const float *b, size_t n, double tol)
{
    double d = 0.0, m = 0.0;
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(a[i]))
            bad++;
        d = fmax(d, fabs((double)a[i] - b[i]));
        m = fmax(m, fabs((double)b[i]));
    }
    double r = m > 0.0 ? d / m : d;
    printf("# %s %s: max abs diff %.3g, max rel-to-max %.3g\n", cname, what, d, r);
    EXPECT(bad == 0 && r <= tol, "%s %s: %zu non-finite, max |diff| %.3g = %.3g of max |cpu| %.3g > %.3g", cname,
           what, bad, d, r, m, tol);
}

static double rel(double a, double b) { return fabs(a - b) / fmax(fmax(fabs(a), fabs(b)), 1e-30); }

// Whether token t's routing on the CPU lies within TIE_TOL of a tie.
static int near_tie(const struct moe_layer *l, size_t t, int train, uint64_t seed, uint64_t step)
{
    const struct moe_route *r = &l->route;
    const size_t E = r->E, S = r->S;
    const float *v = (r->h ? r->h : r->p) + t * E;
    float k[64];
    if (moe_router_info(l->c.router.type)->token_table)
        return 0; // hash routing: no scores
    for (size_t e = 0; e < E; e++) // insertion sort, descending (the selection's keys: + bias balancing's offsets)
    {
        size_t j = e;
        float ke = l->bias ? v[e] + l->bias[e] : v[e];
        while (j > 0 && k[j - 1] < ke) {
            k[j] = k[j - 1];
            j--;
        }
        k[j] = ke;
    }
    for (size_t s = 0; s < S && s + 1 < E; s++)
        if (rel(k[s], k[s + 1]) < TIE_TOL)
            return 1;
    if (l->c.router.type == MOE_ROUTER_GSHARD && l->c.router.second == MOE_SECOND_RANDOM && train) {
        const float *p = r->p + t * E;
        double g2 = (double)p[r->sel[t * 2 + 1]] / ((double)p[r->sel[t * 2]] + p[r->sel[t * 2 + 1]]);
        struct moe_rng rng = moe_rng_make(seed, moe_router_info(MOE_ROUTER_GSHARD)->rng, (uint32_t)step);
        double U = moe_rng_uniform(&rng, (uint64_t)l->c.index * ((uint64_t)1 << 40) + t);
        if (rel(2.0 * g2, U) < TIE_TOL)
            return 1;
    }
    return 0;
}

// Expert choice: the tokens within TIE_TOL of an expert's quota boundary,
// flagged in redo (T). Full selection (training, ec_eval full): each expert's
// C-th and (C+1)-th best of all T tokens; prefix / position: the same among
// each position's candidates (moe/router.c route_expert_choice_causal's);
// topk: the token's own top-k over its probabilities.
static int cmp_desc(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

static void ec_boundary(const float *p, size_t E, size_t e, const int32_t *cand, size_t n, size_t C, char *redo)
{
    if (C == 0 || C >= n)
        return;
    float *v = malloc(n * sizeof *v);
    for (size_t i = 0; i < n; i++)
        v[i] = p[(size_t)cand[i] * E + e];
    qsort(v, n, sizeof *v, cmp_desc);
    if (rel(v[C - 1], v[C]) < TIE_TOL)
        for (size_t i = 0; i < n; i++) { // every candidate at either value
            float x = p[(size_t)cand[i] * E + e];
            if (x == v[C - 1] || x == v[C])
                redo[cand[i]] = 1;
        }
    free(v);
}

static size_t ec_ties(const struct moe_layer *l, size_t T, int train, char *redo)
{
    const struct moe_router_cfg *c = &l->c.router;
    const size_t E = c->E;
    const float *p = l->route.p;
    enum moe_ec_eval mode = train ? MOE_EC_EVAL_FULL : c->ec_eval;
    memset(redo, 0, T);
    int32_t *cand = malloc(T * sizeof *cand);
    if (mode == MOE_EC_EVAL_TOPK) {
        size_t K = (size_t)floor(c->ec_factor + 0.5);
        K = K < 1 ? 1 : K > E ? E : K;
        for (size_t t = 0; t < T && K < E; t++) {
            float v[64];
            memcpy(v, p + t * E, E * sizeof *v);
            qsort(v, E, sizeof *v, cmp_desc);
            redo[t] |= rel(v[K - 1], v[K]) < TIE_TOL;
        }
    } else if (mode == MOE_EC_EVAL_FULL) {
        for (size_t t = 0; t < T; t++)
            cand[t] = (int32_t)t;
        for (size_t e = 0; e < E; e++)
            ec_boundary(p, E, e, cand, T, moe_router_quota(c, T), redo);
    } else {
        size_t L = c->seq > 1 ? c->seq : 1, B = T / L;
        for (size_t e = 0; e < E; e++)
            for (size_t s = 0; s < L; s++) {
                size_t lo = mode == MOE_EC_EVAL_PREFIX ? 0 : s, n = 0;
                for (size_t w = 0; w < B; w++)
                    for (size_t q = lo; q <= s; q++)
                        cand[n++] = (int32_t)(w * L + q);
                ec_boundary(p, E, e, cand, n, moe_router_quota(c, B * (s - lo + 1)), redo);
            }
    }
    free(cand);
    size_t n = 0;
    for (size_t t = 0; t < T; t++)
        n += redo[t] != 0;
    return n;
}

struct lcase {
    const char *name;
    enum moe_router_type router;
    size_t E, K, T, D, F;
    enum moe_ffn_act act;
    double cf;
    enum moe_aux_type aux;
    double jitter;
    int train;
    // beyond the first cases' settings (0: off)
    size_t n_shared;           // shared experts
    int bias;                  // bias balancing (from random offsets, rate 1e-3)
    size_t V;                  // hash routing's table
    double ec_factor;          // expert choice
    enum moe_ec_eval ec_eval;
    size_t seq;                // tokens per sequence (expert choice's causal evaluation)
    double ffn_dropout;
};

static void run_case(const struct lcase *k)
{
    struct moe_err err;
    struct moe_layer_cfg lc;
    memset(&lc, 0, sizeof lc);
    lc.router.type = k->router;
    lc.router.E = k->E;
    lc.router.K = k->K;
    lc.router.second = MOE_SECOND_RANDOM;
    lc.D = k->D;
    lc.F = k->F;
    lc.act = k->act;
    lc.capacity_factor = k->cf;
    lc.eval_capacity_factor = k->cf;
    lc.drop = MOE_DROP_ORDER;
    lc.jitter = k->jitter;
    lc.aux = k->aux;
    lc.aux_weight = 0.01;
    lc.z_weight = 1e-3;
    lc.router_init_scale = 1.0;
    lc.index = 1;
    lc.n_shared = k->n_shared;
    lc.router.bias_balance = k->bias;
    lc.bias_rate = 1e-3;
    lc.hash_vocab = k->V;
    lc.router.ec_factor = k->ec_factor;
    lc.router.ec_eval = k->ec_eval;
    lc.router.seq = k->seq;
    lc.w_importance = 0.1;
    lc.w_load = 0.05;
    lc.ffn_dropout = k->ffn_dropout;
    const size_t T = k->T, D = k->D, TD = T * D;
    const uint64_t seed = 23, step = 5;

    struct moe_params p;
    struct moe_layer l;
    moe_params_init(&p);
    if (moe_layer_declare(&l, &lc, "layers.1.moe", &p, &err) || moe_params_alloc(&p, &err) ||
        moe_layer_alloc(&l, T, &err))
        die(&err);
    moe_layer_init(&l, &p, 3, 1.0f);
    if (l.i_noise >= 0) { // noisy-topk starts both at zero: random here, so both matter
        fill(moe_params_data(&p, l.i_noise), p.t[l.i_noise].numel, 31, -0.3f, 0.3f);
        fill(moe_params_data(&p, l.i_router), p.t[l.i_router].numel, 32, -0.3f, 0.3f);
    }
    const size_t S = l.S, E = k->E;
    float *x = malloc(TD * 4), *dout = malloc(TD * 4), *out = calloc(TD, 4), *dx = calloc(TD, 4);
    float *bias0 = calloc(E, 4), *bias2 = calloc(E, 4);
    uint32_t *keys = calloc(T, sizeof *keys);
    char *redo = calloc(T, 1);
    fill(x, TD, 1, -1.0f, 1.0f);
    fill(dout, TD, 2, -1.0f, 1.0f);
    if (l.bias) // offsets that change the selection: a spread like the experts' probabilities
        fill(bias0, E, 33, -0.05f, 0.05f);
    for (size_t t = 0; t < T; t++) // hash keys over the table, some repeated
        keys[t] = (uint32_t)((t * 2654435761u) % (k->V ? k->V : 1));
    const int ec = moe_router_info(k->router)->quota;

    // the CPU forward, with near-tie rows redrawn until there are none
    size_t redrawn = 0;
    for (int round = 0;; round++) {
        memset(out, 0, TD * 4);
        if (l.bias) // each forward in training moves the offsets: every try starts from the same ones
            memcpy(l.bias, bias0, E * 4);
        moe_layer_forward(&l, &p, out, x, T, keys, k->train, seed, step, NULL, NULL);
        size_t ties = ec ? ec_ties(&l, T, k->train, redo) : 0;
        for (size_t t = 0; t < T; t++)
            if (ec ? redo[t] : near_tie(&l, t, k->train, seed, step)) {
                fill(x + t * D, D, 100 + (uint32_t)(round * T + t), -1.0f, 1.0f);
                ties += !ec;
            }
        redrawn += ties;
        if (ties == 0)
            break;
        if (round == 50) {
            EXPECT(0, "%s: still %zu near ties after 50 redraws", k->name, ties);
            break;
        }
    }
    moe_params_zero_grad(&p);
    moe_layer_backward(&l, &p, dx, dout, x);
    printf("# %s: T %zu D %zu F %zu E %zu S %zu, %zu rows kept, %zu dropped, %zu rows redrawn near ties\n", k->name,
           T, D, k->F, E, S, l.plan.n_rows, l.plan.n_dropped, redrawn);

    // the device
    struct moe_cuda_layer *dl;
    if (moe_cuda_layer_create(&dl, &lc, T, &err))
        die(&err);
#define HW(i) ((i) >= 0 ? moe_params_data(&p, (i)) : NULL)
    const struct moe_cuda_layer_tensors hw = { HW(l.i_router), HW(l.i_noise), HW(l.i_w1), HW(l.i_w3),
                                               HW(l.i_w2),     HW(l.i_sw1),   HW(l.i_sw3), HW(l.i_sw2) };
#undef HW
    if (moe_cuda_layer_set_weights(dl, &hw, &err) || moe_cuda_layer_set_bias(dl, bias0, &err) ||
        moe_cuda_layer_set_keys(dl, keys, l.table, k->V, T, &err))
        die(&err);
    float *d_x = dev(x, TD * 4), *d_dout = dev(dout, TD * 4), *d_out = dev(NULL, TD * 4), *d_dx = dev(NULL, TD * 4);
    double loss = 0.0;
    if (moe_cuda_layer_memzero(d_out, TD * 4, &err) || moe_cuda_layer_memzero(d_dx, TD * 4, &err) ||
        moe_cuda_layer_forward(dl, d_out, d_x, T, k->train, seed, step, &loss, &err) ||
        moe_cuda_layer_backward(dl, d_dx, d_dout, d_x, &err))
        die(&err);

#ifdef MOE_TEST_CUDA_HOST
    // On the host emulation the GEMMs are moe_gemm and every exp and tanh the
    // library's own (tests/cuda_host.c): every value must be the CPU layer's,
    // bit for bit.
    const double ts = 0.0;
#else
    const double ts = 1.0; // tolerance scale
#endif
    int32_t *sel = malloc(T * S * 4), *idx = malloc(T * S * 4);
    float *gate = malloc(T * S * 4), *o2 = malloc(TD * 4), *dx2 = malloc(TD * 4);
    size_t rows = 0;
    double aux = 0.0, z = 0.0;
    if (moe_cuda_layer_route(dl, sel, idx, gate, &rows, &aux, &z, &err))
        die(&err);
    size_t diff = 0;
    double gd = 0.0;
    for (size_t i = 0; i < T * S; i++) {
        diff += sel[i] != l.route.sel[i] || idx[i] != l.route.idx[i];
        gd = fmax(gd, fabs((double)gate[i] - l.route.gate[i]));
    }
    printf("# %s routing: %zu of %zu slots differ; gates max abs diff %.3g; rows %zu vs %zu\n", k->name, diff, T * S,
           gd, rows, l.plan.n_rows);
    EXPECT(diff == 0, "%s: %zu slots routed differently", k->name, diff);
    EXPECT(gd <= 1e-5 * ts, "%s: gates differ by %.3g", k->name, gd);
    EXPECT(rows == l.plan.n_rows, "%s: %zu rows kept on the device, %zu on the CPU", k->name, rows, l.plan.n_rows);
    printf("# %s aux: device %.9g cpu %.9g; z: device %.9g cpu %.9g; loss: device %.9g cpu %.9g\n", k->name, aux,
           l.aux_value, z, l.z_value, loss, l.loss);
    EXPECT(isnan(l.aux_value) ? isnan(aux) : rel(aux, l.aux_value) <= 1e-5 * ts, "%s: aux %.9g vs %.9g", k->name, aux,
           l.aux_value);
    EXPECT(isnan(l.z_value) ? isnan(z) : rel(z, l.z_value) <= 1e-5 * ts, "%s: z %.9g vs %.9g", k->name, z,
           l.z_value);
    if (l.bias) { // one training forward moved the offsets on both sides: integer counts, exactly
        if (moe_cuda_layer_get_bias(dl, bias2, &err))
            die(&err);
        size_t moved = 0, bd = 0;
        for (size_t e = 0; e < E; e++)
            moved += l.bias[e] != bias0[e], bd += bias2[e] != l.bias[e];
        printf("# %s bias balancing: %zu of %zu offsets moved; %zu differ from the CPU's\n", k->name, moved, E, bd);
        EXPECT(bd == 0 && moved == (k->train ? E : 0), "%s: bias offsets (%zu moved, %zu differ)", k->name, moved,
               bd);
    }
    EXPECT(rel(loss, l.loss) <= 1e-5 * ts || fabs(loss - l.loss) < 1e-12 * ts, "%s: loss %.9g vs %.9g", k->name, loss, l.loss);

    host(o2, d_out, TD * 4);
    host(dx2, d_dx, TD * 4);
    compare(k->name, "out", o2, out, TD, 1e-4 * ts);
    compare(k->name, "dx", dx2, dx, TD, 1e-4 * ts);
    struct {
        const char *name;
        int i;
        double tol;
    } w[] = { { "router.weight grad", l.i_router, 5e-4 },
              { "router.noise_weight grad", l.i_noise, 5e-4 },
              { "experts.w1 grad", l.i_w1, 1e-4 },
              { "experts.w3 grad", l.i_w3, 1e-4 },
              { "experts.w2 grad", l.i_w2, 1e-4 },
              { "shared.w1 grad", l.i_sw1, 1e-4 },
              { "shared.w3 grad", l.i_sw3, 1e-4 },
              { "shared.w2 grad", l.i_sw2, 1e-4 } };
    float *g[8] = { 0 };
    for (int i = 0; i < 8; i++)
        if (w[i].i >= 0)
            g[i] = malloc(p.t[w[i].i].numel * 4);
    const struct moe_cuda_layer_tensors hg = { g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7] };
    if (moe_cuda_layer_get_grads(dl, &hg, &err))
        die(&err);
    for (int i = 0; i < 8; i++)
        if (g[i]) {
            compare(k->name, w[i].name, g[i], moe_params_grad(&p, w[i].i), p.t[w[i].i].numel, w[i].tol * ts);
            free(g[i]);
        }

    // the timing paths moe bench uses: phases of a timed pass, the dense reference
    double sec[MOE_PHASE_N] = { 0 }, ref = 0.0, flops = 0.0, sum = 0.0;
    moe_cuda_layer_timing(dl, 1);
    if (moe_cuda_layer_zero_grad(dl, &err) || moe_cuda_layer_set_keys(dl, keys, l.table, k->V, T, &err) ||
        moe_cuda_layer_forward(dl, d_out, d_x, T, k->train, seed, step, NULL, &err) ||
        moe_cuda_layer_backward(dl, d_dx, d_dout, d_x, &err) || moe_cuda_layer_phases(dl, sec, &err) ||
        moe_cuda_layer_reference(dl, 1, &ref, &flops, &err))
        die(&err);
    moe_cuda_layer_timing(dl, 0);
    for (int ph = 0; ph < MOE_PHASE_N; ph++)
        sum += sec[ph];
    printf("# %s timing: phases %.3g s (router %.3g, dispatch %.3g, gemm %.3g, act %.3g, combine %.3g, aux %.3g); "
           "dense reference %.3g s for %.3g flops\n", k->name, sum, sec[MOE_PHASE_ROUTER], sec[MOE_PHASE_DISPATCH],
           sec[MOE_PHASE_FFN_GEMM], sec[MOE_PHASE_ACTIVATION], sec[MOE_PHASE_COMBINE], sec[MOE_PHASE_AUX], ref, flops);
    EXPECT(sum > 0.0 && isfinite(sum) && ref > 0.0 && flops == moe_cuda_layer_flops(dl, 1), "%s: timing paths",
           k->name);

    moe_cuda_free(d_x), moe_cuda_free(d_dout), moe_cuda_free(d_out), moe_cuda_free(d_dx);
    moe_cuda_layer_free(dl);
    free(sel), free(idx), free(gate), free(o2), free(dx2), free(x), free(dout), free(out), free(dx);
    free(bias0), free(bias2), free(keys), free(redo);
    moe_layer_release(&l);
    moe_params_release(&p);
}

int main(void)
{
    int rc = cuda_test_begin();
    if (rc)
        return rc;
    static const struct lcase cases[] = {
        { "switch-top1-relu-drops", MOE_ROUTER_SWITCH, 8, 1, 512, 64, 128, MOE_FFN_RELU, 1.0, MOE_AUX_SWITCH, 0.01, 1, .n_shared = 0 },
        { "gshard-top2-swiglu", MOE_ROUTER_GSHARD, 8, 2, 512, 64, 128, MOE_FFN_SWIGLU, 1.25, MOE_AUX_GSHARD, 0.0, 1, .n_shared = 0 },
        { "softmax-top2-gelu-eval", MOE_ROUTER_SOFTMAX, 8, 2, 512, 64, 128, MOE_FFN_GELU, 1.0, MOE_AUX_TOPK_ALL, 0.0,
          0, .n_shared = 0 },
        { "noisy-top2-relu", MOE_ROUTER_NOISY_TOPK, 8, 2, 512, 64, 128, MOE_FFN_RELU, 1.25, MOE_AUX_NONE, 0.0, 1, .n_shared = 0 },
        { "deepseek-top3-swiglu-large", MOE_ROUTER_DEEPSEEK, 16, 3, 2048, 128, 256, MOE_FFN_SWIGLU, 0.0,
          MOE_AUX_SWITCH, 0.0, 1, .n_shared = 0 },
        // the routers and options of the second version: hash routing, expert choice, shared experts,
        // bias balancing, Shazeer's losses, prob drops, expert dropout
        { "hash-relu-shared2", MOE_ROUTER_HASH, 8, 1, 512, 64, 128, MOE_FFN_RELU, 1.25, MOE_AUX_NONE, 0.0, 1,
          .n_shared = 2, .V = 97 },
        { "expert-choice-swiglu", MOE_ROUTER_EXPERT_CHOICE, 8, 2, 512, 64, 128, MOE_FFN_SWIGLU, 0.0, MOE_AUX_NONE,
          0.0, 1, .ec_factor = 2.0 },
        { "expert-choice-eval-prefix", MOE_ROUTER_EXPERT_CHOICE, 8, 2, 512, 64, 128, MOE_FFN_GELU, 0.0,
          MOE_AUX_NONE, 0.0, 0, .ec_factor = 1.5, .ec_eval = MOE_EC_EVAL_PREFIX, .seq = 64 },
        { "expert-choice-eval-topk", MOE_ROUTER_EXPERT_CHOICE, 8, 2, 512, 64, 128, MOE_FFN_RELU, 0.0, MOE_AUX_NONE,
          0.0, 0, .ec_factor = 2.0, .ec_eval = MOE_EC_EVAL_TOPK },
        { "softmax-top2-bias-balance-shared1", MOE_ROUTER_SOFTMAX, 8, 2, 512, 64, 128, MOE_FFN_SWIGLU, 1.0,
          MOE_AUX_NONE, 0.0, 1, .n_shared = 1, .bias = 1 },
        { "deepseek-top2-bias-balance-eval", MOE_ROUTER_DEEPSEEK, 8, 2, 512, 64, 128, MOE_FFN_GELU, 1.0,
          MOE_AUX_NONE, 0.0, 0, .bias = 1 },
        { "noisy-top2-shazeer-dropout", MOE_ROUTER_NOISY_TOPK, 8, 2, 512, 64, 128, MOE_FFN_RELU, 1.0,
          MOE_AUX_SHAZEER, 0.0, 1, .n_shared = 1, .ffn_dropout = 0.2 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        run_case(&cases[i]);
    // what the device layer refuses, with a reason: more rows than its int32 indices reach
    {
        struct moe_layer_cfg lc;
        struct moe_err err;
        struct moe_cuda_layer *dl = NULL;
        memset(&lc, 0, sizeof lc);
        lc.router.type = MOE_ROUTER_SOFTMAX;
        lc.router.E = 4;
        lc.router.K = 2;
        lc.D = 8;
        lc.F = 8;
        EXPECT(moe_cuda_layer_create(&dl, &lc, (size_t)INT32_MAX, &err) == MOE_EINVAL && strstr(err.msg, "rows") &&
                   !dl,
               "a layer of 2^31 tokens x 2 slots accepted");
        EXPECT(moe_cuda_layer_check(&lc, 1024, &err) == 0, "a layer of 1024 tokens refused: %s", err.msg);
        moe_cuda_layer_free(dl);
    }
    printf("%s: %d failures\n", failures ? "FAIL" : "ok", failures);
    return failures ? 1 : 0;
}
