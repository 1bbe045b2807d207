// test_estimate.c: the resource estimate (model/estimate.c), the memory
// figures (core/sysmem.c) and the CLI's check (cmd/estimate.c).
//   - parameters equal moe_params_count of the model moe_model_create builds,
//     and active parameters equal what cli_routing_json reports, over every
//     model type, router, activation, norm, shared experts, moe_every, n_layer;
//     the Transformer LM (task MOE_TASK_LM, n_in = languages, n_out =
//     vocabulary) over the same grid plus tied embeddings and lang_router;
//   - the model's buffers are exactly the estimate's activations: the plan
//     moe_model_create allocated (every buffer bound, 64-byte aligned) sums to
//     the estimate's bytes, every tensor has the plan's index;
//   - the parameter, gradient and model buffers match what the allocator
//     really hands out (mallinfo2 before and after moe_model_create), for
//     mlp-moe and for named Transformer configs;
//   - FLOPs per token by hand for small configs;
//   - overflowing products, dispatch rows past 32-bit indices, absurd totals
//     and empty data are refused with the keys named, by the estimate and by
//     moe_model_create before it allocates;
//   - MOE_MEMORY_LIMIT, /proc/meminfo and cgroup parsing, and the one-line
//     refusal of cli_check_memory;
//   - a checkpoint read whole: counted for a whole run, or as far as the
//     optimizer, adapters and trainer allocated after it is freed do not cover it.
// It links the CLI's helper library (cmd/), so it checks the very functions
// the CLI uses.
#include <check.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "backend/backend.h"
#include "core/params.h"
#include "core/sysmem.h"
#include "dist/dist.h"
#include "io/config.h"
#include "model/estimate.h"
#include "model/model.h"
#include "train/train.h"
#include "testutil.h"

#include "cli.h"      // cmd/: cli_routing_json
#include "estimate.h" // cmd/: cli_check_memory, cli_estimate_json

static int make_cfg(struct moe_config *c, const char *const *ovs, size_t n)
{
    struct moe_err err = { 0 };
    int rc = moe_config_parse(c, moe_run_schema(), moe_run_schema_len(), "{}", "test", ovs, n, &err);
    ck_assert_msg(rc == 0, "config: %s", err.msg);
    return rc;
}

static size_t heap_in_use(void)
{
    struct mallinfo2 mi = mallinfo2();
    return mi.uordblks + mi.hblkhd;
}

// Whether mallinfo2 sees allocations (not under a sanitizer's or valgrind's allocator).
static int heap_measurable(void)
{
    size_t before = heap_in_use();
    // volatile: at -O2 GCC removes an unused malloc/free pair, and then every
    // heap check below would be skipped silently
    void *volatile p = malloc(1 << 20);
    size_t after = heap_in_use();
    free(p);
    return after >= before + (1 << 20);
}

// Build the model of the overrides and compare it with the estimate. With
// check_heap, also the bytes the allocator handed out against the estimate's
// parameters + gradients + activations (within 1% + 64 KiB: chunk headers and
// alignment slack are not counted).
static void check_config(const char *const *ovs, size_t n, enum moe_task task, size_t n_in, size_t n_out,
                         size_t max_batch, int check_heap, const char *label)
{
    struct moe_config cfg;
    struct moe_err err = { 0 };
    make_cfg(&cfg, ovs, n);
    struct moe_model_estimate est;
    int rc = moe_model_estimate(&cfg, NULL, task, n_in, n_out, 0, 0, max_batch, 0, &est, &err);
    ck_assert_msg(rc == 0, "%s: estimate: %s", label, err.msg);
    struct moe_model m;
    size_t before = heap_in_use();
    rc = moe_model_create(&m, &cfg, NULL, task, n_in, n_out, max_batch, &err);
    size_t after = heap_in_use();
    ck_assert_msg(rc == 0, "%s: create: %s", label, err.msg);
    size_t count = moe_params_count(&m.params);
    ck_assert_msg(est.parameters == count, "%s: estimate %zu parameters, model has %zu", label, est.parameters, count);
    // the model's buffers are its plan, the very declaration the estimate sums
    ck_assert_msg(moe_plan_buffer_bytes(&m.plan) == est.bytes_activations, "%s: model plan %zu bytes, estimate %zu",
                  label, moe_plan_buffer_bytes(&m.plan), est.bytes_activations);
    for (size_t i = 0; i < m.plan.n; i++) {
        const struct moe_plan_entry *pe = &m.plan.e[i];
        if (pe->role == MOE_ROLE_PARAM) {
            ck_assert_msg(pe->index && moe_params_find(&m.params, pe->name) == *pe->index, "%s: tensor %s", label,
                          pe->name);
            continue;
        }
        void *at = NULL;
        ck_assert_msg(pe->bind != NULL, "%s: buffer %s is not bound", label, pe->name);
        memcpy(&at, pe->bind, sizeof at);
        ck_assert_msg(at != NULL && (uintptr_t)at % 64 == 0, "%s: buffer %s at %p", label, pe->name, at);
    }
    size_t pbytes = (m.params.numel * sizeof(float) + 63) / 64 * 64;
    ck_assert_msg(est.bytes_params == pbytes && est.bytes_grads == pbytes, "%s: parameter buffer %zu, estimate %zu",
                  label, pbytes, est.bytes_params);
    if (m.n_moe_layers) {
        cJSON *sum = cJSON_CreateObject();
        cli_routing_json(sum, &m);
        double active = cJSON_GetObjectItem(sum, "active_parameters")->valuedouble;
        ck_assert_msg(active == est.active_parameters, "%s: cli active %.17g, estimate %.17g", label, active,
                      est.active_parameters);
        cJSON_Delete(sum);
    } else {
        ck_assert_msg(est.active_parameters == (double)count, "%s: dense model: active %.17g != %zu", label,
                      est.active_parameters, count);
    }
    if (check_heap && heap_measurable()) {
        double want = (double)(est.bytes_params + est.bytes_grads + est.bytes_activations);
        double got = (double)(after - before);
        if (getenv("MOE_TEST_VERBOSE"))
            fprintf(stderr, "%-28s allocated %10.0f  estimate %10.0f  (%+.2f%%)\n", label, got, want,
                    100.0 * (got - want) / want);
        ck_assert_msg(got <= want * 1.01 + 65536.0 && got >= want * 0.99 - 65536.0,
                      "%s: allocated %.0f bytes, estimate %.0f", label, got, want);
    }
    moe_model_release(&m);
    moe_config_release(&cfg);
}

START_TEST(test_dense_models)
{
    const char *types[][4] = {
        { "model.type=mixture", "model.expert=linear", "model.n_expert=4", "model.n_expert_hidden=8" },
        { "model.type=mixture", "model.expert=mlp", "model.n_expert=5", "model.n_expert_hidden=7" },
        { "model.type=mixture", "model.expert=mlp", "model.n_expert=1", "model.n_expert_hidden=1" },
        { "model.type=mlp", "model.n_hidden=13", "model.n_expert=4", "model.n_expert_hidden=8" },
        { "model.type=mlp", "model.n_hidden=1", "model.n_expert=4", "model.n_expert_hidden=8" },
    };
    for (size_t i = 0; i < sizeof types / sizeof *types; i++)
        for (int cls = 0; cls < 2; cls++) {
            char label[64];
            snprintf(label, sizeof label, "%s %s %s", types[i][0], types[i][1], cls ? "classes" : "regression");
            check_config(types[i], 4, cls ? MOE_TASK_CLASSIFICATION : MOE_TASK_REGRESSION, 3, cls ? 4 : 2, 9, 0,
                         label);
        }
}
END_TEST

// The routers (with their experts per token) and activations the grids cover.
static const struct { const char *router, *k; } routers[] = {
    { "softmax", "2" }, { "noisy-topk", "2" }, { "switch", "1" },
    { "gshard", "2" },  { "hash", "1" },       { "expert-choice", "3" }, { "deepseek", "3" },
};
static const char *const acts[] = { "relu", "gelu", "swiglu" };

// Every router x activation x norm x shared experts x moe_every x n_layer x
// dense width x bias balancing.
START_TEST(test_mlp_moe_grid)
{
    size_t cases = 0;
    for (size_t r = 0; r < sizeof routers / sizeof *routers; r++)
        for (size_t a = 0; a < 3; a++)
            for (int shared = 0; shared <= 2; shared += 2)
                for (int every = 1; every <= 3; every++)
                    for (int layers = 1; layers <= 4; layers += 3)
                        for (int rms = 0; rms < 2; rms++)
                            for (int fd = 0; fd < 2; fd++)
                                for (int bias = 0; bias < 2; bias++) {
                                    int bb = bias && (r == 0 || r == 2); // softmax, switch
                                    if (bias && !bb)
                                        continue;
                                    char o[12][64];
                                    snprintf(o[0], 64, "model.type=mlp-moe");
                                    snprintf(o[1], 64, "moe.router=%s", routers[r].router);
                                    snprintf(o[2], 64, "model.n_expert_used=%s", routers[r].k);
                                    snprintf(o[3], 64, "model.ffn_activation=%s", acts[a]);
                                    snprintf(o[4], 64, "model.n_expert_shared=%d", shared);
                                    snprintf(o[5], 64, "model.moe_every=%d", every);
                                    snprintf(o[6], 64, "model.n_layer=%d", layers);
                                    snprintf(o[7], 64, "model.norm=%s", rms ? "rmsnorm" : "layernorm");
                                    snprintf(o[8], 64, "model.n_ff_dense=%d", fd ? 11 : 0);
                                    snprintf(o[9], 64, "moe.bias_balance=%s", bb ? "true" : "false");
                                    snprintf(o[10], 64, "model.n_expert=5");
                                    snprintf(o[11], 64, "moe.ec_factor=1.7"); // fractional active experts
                                    const char *ovs[12];
                                    for (int i = 0; i < 12; i++)
                                        ovs[i] = o[i];
                                    char label[256];
                                    snprintf(label, sizeof label, "%s/%s/%s/shared %d/every %d/L %d/%s/fd %d/bias %d",
                                             routers[r].router, routers[r].k, acts[a], shared, every, layers,
                                             rms ? "rms" : "ln", fd, bb);
                                    int cls = (int)(cases % 2);
                                    check_config(ovs, 12, cls ? MOE_TASK_CLASSIFICATION : MOE_TASK_REGRESSION, 7,
                                                 cls ? 3 : 2, 6, 0, label);
                                    cases++;
                                }
    ck_assert_uint_gt(cases, 500);
}
END_TEST

// Model buffers at a realistic batch: the estimate against the allocator.
START_TEST(test_allocated_bytes)
{
    static const char *const routers[] = { "softmax", "noisy-topk", "switch", "gshard", "hash", "expert-choice" };
    for (size_t r = 0; r < 6; r++)
        for (int sw = 0; sw < 2; sw++) {
            char o[10][64];
            snprintf(o[0], 64, "model.type=mlp-moe");
            snprintf(o[1], 64, "moe.router=%s", routers[r]);
            snprintf(o[2], 64, "model.n_expert_used=%d", r == 2 || r == 4 ? 1 : 2);
            snprintf(o[3], 64, "model.ffn_activation=%s", sw ? "swiglu" : "gelu");
            snprintf(o[4], 64, "model.n_expert_shared=%d", sw);
            snprintf(o[5], 64, "model.n_layer=3");
            snprintf(o[6], 64, "model.moe_every=%d", sw ? 2 : 1);
            snprintf(o[7], 64, "model.n_expert=8");
            snprintf(o[8], 64, "model.n_embd=48");
            snprintf(o[9], 64, "model.n_ff=96");
            const char *ovs[10];
            for (int i = 0; i < 10; i++)
                ovs[i] = o[i];
            char label[64];
            snprintf(label, sizeof label, "%s swiglu %d", routers[r], sw);
            check_config(ovs, 10, MOE_TASK_CLASSIFICATION, 40, 10, 700, 1, label);
        }
    const char *mix[] = { "model.type=mixture", "model.expert=mlp", "model.n_expert=8", "model.n_expert_hidden=30" };
    check_config(mix, 4, MOE_TASK_REGRESSION, 20, 5, 3000, 1, "mixture");
    const char *mlp[] = { "model.type=mlp", "model.n_hidden=300" };
    check_config(mlp, 2, MOE_TASK_CLASSIFICATION, 50, 10, 3000, 1, "mlp");
}
END_TEST

// The Transformer LM (task MOE_TASK_LM: n_in = languages, n_out = vocabulary,
// max_batch in windows of model.n_ctx tokens). Named configs, each checked
// against the allocator at a realistic batch, with one and several languages
// and a bytes (256) or words (300) vocabulary.
#define TF_BASE "model.type=transformer", "model.n_embd=32", "model.n_head=4", "model.n_ctx=24", "model.n_ff=48"
START_TEST(test_transformer_named)
{
    static const struct {
        const char *label;
        const char *ovs[12];
    } cases[] = {
        { "dense (n_layer < moe_every)", { TF_BASE, "model.n_layer=2", "model.moe_every=3" } },
        { "dense, n_ff_dense", { TF_BASE, "model.n_layer=3", "model.moe_every=4", "model.n_ff_dense=40" } },
        { "switch, moe_every 2",
          { TF_BASE, "model.n_layer=4", "model.moe_every=2", "moe.router=switch", "model.n_expert=4",
            "model.n_expert_used=1" } },
        { "switch, tied embeddings",
          { TF_BASE, "model.n_layer=2", "model.moe_every=2", "moe.router=switch", "model.n_expert=4",
            "model.n_expert_used=1", "model.tie_embeddings=true" } },
        { "dense, tied embeddings", { TF_BASE, "model.n_layer=2", "model.moe_every=5", "model.tie_embeddings=true" } },
        { "softmax top-2, lang_router",
          { TF_BASE, "model.n_layer=3", "model.moe_every=1", "moe.router=softmax", "model.n_expert=4",
            "model.n_expert_used=2", "moe.lang_router=true" } },
        { "lang_router, moe_every 2, tied",
          { TF_BASE, "model.n_layer=4", "model.moe_every=2", "moe.router=switch", "model.n_expert=3",
            "model.n_expert_used=1", "moe.lang_router=true", "model.tie_embeddings=true" } },
        { "swiglu + rmsnorm, top-2",
          { TF_BASE, "model.n_layer=2", "model.moe_every=1", "moe.router=softmax", "model.n_expert=4",
            "model.ffn_activation=swiglu", "model.norm=rmsnorm" } },
        { "dense swiglu + rmsnorm",
          { TF_BASE, "model.n_layer=2", "model.moe_every=3", "model.ffn_activation=swiglu", "model.norm=rmsnorm" } },
        { "gshard + shared expert",
          { TF_BASE, "model.n_layer=2", "model.moe_every=1", "moe.router=gshard", "model.n_expert=4",
            "model.n_expert_used=2", "model.n_expert_shared=1" } },
        { "gshard + 2 shared, swiglu",
          { TF_BASE, "model.n_layer=3", "model.moe_every=2", "moe.router=gshard", "model.n_expert=6",
            "model.n_expert_used=2", "model.n_expert_shared=2", "model.ffn_activation=swiglu" } },
        { "expert-choice, lang_router",
          { TF_BASE, "model.n_layer=2", "model.moe_every=1", "moe.router=expert-choice", "model.n_expert=4",
            "moe.ec_factor=1.5", "moe.lang_router=true" } },
        { "hash", { TF_BASE, "model.n_layer=2", "model.moe_every=1", "moe.router=hash", "model.n_expert=4",
                    "model.n_expert_used=1", "moe.aux_loss=none" } },
        { "noisy-topk, shazeer",
          { TF_BASE, "model.n_layer=2", "model.moe_every=2", "moe.router=noisy-topk", "model.n_expert=4",
            "model.n_expert_used=2", "moe.aux_loss=shazeer" } },
        { "softmax + bias balance",
          { TF_BASE, "model.n_layer=2", "model.moe_every=1", "moe.router=softmax", "model.n_expert=4",
            "model.n_expert_used=2", "moe.bias_balance=true", "moe.aux_loss=none" } },
        { "dropout everywhere (attention: one more (B, H, C, C) per block)",
          { TF_BASE, "model.n_layer=2", "model.moe_every=2", "moe.router=softmax", "model.n_expert=4",
            "model.dropout.attention=0.1", "model.dropout.residual=0.1",
            "model.dropout.ffn=0.1" } },
    };
    static const size_t langs[] = { 1, 3 }, vocabs[] = { 256, 300 };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        size_t n = 0;
        while (n < 12 && cases[i].ovs[n])
            n++;
        for (size_t g = 0; g < 2; g++)
            for (size_t v = 0; v < 2; v++) {
                char label[160];
                snprintf(label, sizeof label, "transformer %s, %zu language(s), vocabulary %zu", cases[i].label,
                         langs[g], vocabs[v]);
                // 20 windows of 24 tokens: activations far above the 64 KiB slack of the heap check
                check_config(cases[i].ovs, n, MOE_TASK_LM, langs[g], vocabs[v], 20, g == 1 && v == 0, label);
            }
    }
}
END_TEST

// The Transformer over every router x activation x norm x shared experts x
// moe_every x n_layer x tied embeddings x language-aware routing (parameter
// counts and active parameters only).
START_TEST(test_transformer_grid)
{
    size_t cases = 0;
    for (size_t r = 0; r < sizeof routers / sizeof *routers; r++)
        for (size_t a = 0; a < 3; a++)
            for (int shared = 0; shared <= 1; shared++)
                for (int every = 1; every <= 3; every += 2)
                    for (int layers = 1; layers <= 3; layers += 2)
                        for (int rms = 0; rms < 2; rms++)
                            for (int tied = 0; tied < 2; tied++)
                                for (int lang = 0; lang < 2; lang++) {
                                    char o[14][64];
                                    snprintf(o[0], 64, "model.type=transformer");
                                    snprintf(o[1], 64, "moe.router=%s", routers[r].router);
                                    snprintf(o[2], 64, "model.n_expert_used=%s", routers[r].k);
                                    snprintf(o[3], 64, "model.ffn_activation=%s", acts[a]);
                                    snprintf(o[4], 64, "model.n_expert_shared=%d", shared);
                                    snprintf(o[5], 64, "model.moe_every=%d", every);
                                    snprintf(o[6], 64, "model.n_layer=%d", layers);
                                    snprintf(o[7], 64, "model.norm=%s", rms ? "rmsnorm" : "layernorm");
                                    snprintf(o[8], 64, "model.tie_embeddings=%s", tied ? "true" : "false");
                                    snprintf(o[9], 64, "moe.lang_router=%s", lang ? "true" : "false");
                                    snprintf(o[10], 64, "model.n_expert=5");
                                    snprintf(o[11], 64, "model.n_embd=12");
                                    snprintf(o[12], 64, "model.n_head=3");
                                    snprintf(o[13], 64, "model.n_ctx=%d", 5 + layers);
                                    const char *ovs[14];
                                    for (int i = 0; i < 14; i++)
                                        ovs[i] = o[i];
                                    char label[256];
                                    snprintf(label, sizeof label,
                                             "transformer %s/%s/%s/shared %d/every %d/L %d/%s/tied %d/lang %d",
                                             routers[r].router, routers[r].k, acts[a], shared, every, layers,
                                             rms ? "rms" : "ln", tied, lang);
                                    check_config(ovs, 14, MOE_TASK_LM, 1 + cases % 4, 200 + cases % 57, 3, 0,
                                                 label);
                                    cases++;
                                }
    ck_assert_uint_gt(cases, 500);
}
END_TEST

// Transformer parameters by hand: V = 256, G = 3, C = 8, D = 16, F = 32, E = 4,
// two blocks, block 1 sparse (moe_every = 2), layernorm, relu.
START_TEST(test_transformer_by_hand)
{
    const char *ovs[] = { "model.type=transformer", "model.n_embd=16", "model.n_head=2", "model.n_ctx=8",
                          "model.n_ff=32", "model.n_layer=2", "model.moe_every=2", "moe.router=switch",
                          "model.n_expert=4", "model.n_expert_used=1", "moe.lang_router=true" };
    struct moe_config cfg;
    struct moe_err err = { 0 };
    make_cfg(&cfg, ovs, 11);
    struct moe_model_estimate e;
    ck_assert_int_eq(moe_model_estimate(&cfg, NULL, MOE_TASK_LM, 3, 256, 0, 0, 4, 0, &e, &err), 0);
    size_t emb = 256 * 16 + 8 * 16;
    size_t attn = 2 * 16 + 3 * 16 * 16 + 16 * 16 + 2 * 16; // attn_norm, wqkv, wo, ffn_norm
    size_t dense_ffn = 2 * 32 * 16;                         // n_ff_dense = k * n_ff = 32
    size_t sparse = 4 * 16 + 2 * 4 * 32 * 16 + 3 * 16;      // router, experts w1 and w2, lang_emb (G x D)
    size_t head = 2 * 16 + 256 * 16;                        // final norm, head
    ck_assert_uint_eq(e.parameters, emb + 2 * attn + dense_ffn + sparse + head);
    ck_assert_double_eq(e.active_parameters, (double)e.parameters - 3.0 * 2 * 32 * 16);
    moe_config_release(&cfg);
    // tied: no head.weight
    const char *tied[] = { "model.type=transformer", "model.n_embd=16", "model.n_head=2", "model.n_ctx=8",
                           "model.n_ff=32", "model.n_layer=2", "model.moe_every=2", "moe.router=switch",
                           "model.n_expert=4", "model.n_expert_used=1", "moe.lang_router=true",
                           "model.tie_embeddings=true" };
    make_cfg(&cfg, tied, 12);
    struct moe_model_estimate t;
    ck_assert_int_eq(moe_model_estimate(&cfg, NULL, MOE_TASK_LM, 3, 256, 0, 0, 4, 0, &t, &err), 0);
    ck_assert_uint_eq(t.parameters, e.parameters - 256 * 16);
    moe_config_release(&cfg);
}
END_TEST

static struct moe_model_estimate estimate_of(const char *const *ovs, size_t n, enum moe_task task, size_t n_in,
                                             size_t n_out, size_t max_batch)
{
    struct moe_config cfg;
    struct moe_err err = { 0 };
    make_cfg(&cfg, ovs, n);
    struct moe_model_estimate est;
    int rc = moe_model_estimate(&cfg, NULL, task, n_in, n_out, 0, 0, max_batch, 0, &est, &err);
    ck_assert_msg(rc == 0, "estimate: %s", err.msg);
    moe_config_release(&cfg);
    return est;
}

START_TEST(test_flops)
{
    // mlp-moe, switch (k = 1), I = 8, D = 16, F = 32, E = 4, O = 3, one layer:
    // input 8*16 + router 4*16 + one expert 2*32*16 + head 3*16 = 1264 MACs.
    const char *sw[] = { "model.type=mlp-moe", "moe.router=switch", "model.n_expert_used=1", "model.n_embd=16",
                         "model.n_ff=32", "model.n_expert=4" };
    struct moe_model_estimate e = estimate_of(sw, 6, MOE_TASK_CLASSIFICATION, 8, 3, 4);
    ck_assert_double_eq(e.flops_forward_per_token, 2.0 * 1264);
    ck_assert_double_eq(e.flops_per_token, 6.0 * 1264);
    // parameters: 8*16+16 + norm 2*16 + router 64 + experts 2*4*32*16 + final norm 32 + head 48+3
    ck_assert_uint_eq(e.parameters, 144 + 32 + 64 + 4096 + 32 + 51);
    ck_assert_double_eq(e.active_parameters, (double)e.parameters - 3.0 * 2 * 32 * 16);
    // noisy top-2 with swiglu and a shared expert, two layers, the second dense
    // (moe_every = 2: block 1 is sparse, block 0 dense of width 2*32):
    // input 128 + dense 3*64*16 + routers 2*4*16 + 2 experts 2*3*32*16 + shared 3*32*16 + head 48
    const char *nz[] = { "model.type=mlp-moe", "moe.router=noisy-topk", "model.n_expert_used=2",
                         "model.n_embd=16",    "model.n_ff=32",         "model.n_expert=4",
                         "model.ffn_activation=swiglu", "model.n_expert_shared=1", "model.n_layer=2",
                         "model.moe_every=2" };
    e = estimate_of(nz, 10, MOE_TASK_REGRESSION, 8, 3, 4);
    ck_assert_double_eq(e.flops_forward_per_token, 2.0 * (128 + 3072 + 128 + 3072 + 1536 + 48));
    // mixture: gate E*D + every expert's E*O*D
    const char *mx[] = { "model.type=mixture", "model.n_expert=4" };
    e = estimate_of(mx, 2, MOE_TASK_REGRESSION, 2, 1, 4);
    ck_assert_double_eq(e.flops_forward_per_token, 2.0 * (4 * 2 + 4 * 1 * 2));
    ck_assert_double_eq(e.active_parameters, (double)e.parameters);
    // expert choice: ec_factor experts per token
    const char *ec[] = { "model.type=mlp-moe", "moe.router=expert-choice", "model.n_embd=16", "model.n_ff=32",
                         "model.n_expert=4", "moe.ec_factor=1.5" };
    e = estimate_of(ec, 6, MOE_TASK_CLASSIFICATION, 8, 3, 4);
    ck_assert_double_eq(e.flops_forward_per_token, 2.0 * (128 + 64 + 1.5 * 1024 + 48));
}
END_TEST

START_TEST(test_training_bytes)
{
    const char *ad[] = { "model.type=mlp", "model.n_hidden=10", "optim.type=adamw", "optim.batch_size=16" };
    struct moe_config cfg;
    struct moe_err err = { 0 };
    make_cfg(&cfg, ad, 4);
    struct moe_model_estimate tr, ev;
    ck_assert_int_eq(moe_model_estimate(&cfg, NULL, MOE_TASK_REGRESSION, 4, 2, 1000, 500, 500, 1, &tr, &err), 0);
    ck_assert_int_eq(moe_model_estimate(&cfg, NULL, MOE_TASK_REGRESSION, 4, 2, 1000, 500, 500, 0, &ev, &err), 0);
    ck_assert_uint_eq(tr.bytes_optimizer, 2 * tr.bytes_params);
    ck_assert_uint_eq(ev.bytes_optimizer, 0);
    ck_assert_uint_gt(tr.bytes_trainer, ev.bytes_trainer); // permutation, batch copy
    // synthetic data (x, y, group) for 1000 + 500 rows, plus the generator's
    // centres (4 x 4) and maps (4 x 2 x 4) and biases (4 x 2), in double, each rounded to 64 bytes
    size_t want = 0;
    size_t sizes[] = { 1000 * 16, 1000 * 8, 1000 * 4, 500 * 16, 500 * 8, 500 * 4, 16 * 8, 32 * 8, 8 * 8 };
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++)
        want += (sizes[i] + 63) / 64 * 64;
    ck_assert_uint_eq(tr.bytes_data, want);
    ck_assert_uint_eq(tr.bytes_readers, 0); // synthetic data: no files
    struct moe_dist_info mpi; // a build that links MPI maps its libraries too
    moe_dist_probe(&mpi);
    ck_assert_uint_eq(tr.bytes_process, MOE_ESTIMATE_PROCESS_BYTES + MOE_ESTIMATE_THREAD_BYTES + // 1 thread (main)
                                            (mpi.built ? MOE_ESTIMATE_MPI_BYTES : 0) +
                                            (moe_backend_built("cuda") ? MOE_ESTIMATE_CUDA_BYTES : 0));
    ck_assert_uint_eq(tr.bytes_total, tr.bytes_params + tr.bytes_grads + tr.bytes_optimizer + tr.bytes_activations +
                                          tr.bytes_trainer + tr.bytes_data + tr.bytes_readers + tr.bytes_process);
    moe_config_release(&cfg);
    const char *sgd[] = { "model.type=mlp", "optim.type=sgd" }, *gd[] = { "model.type=mlp", "optim.type=gd" };
    make_cfg(&cfg, sgd, 2);
    ck_assert_int_eq(moe_model_estimate(&cfg, NULL, MOE_TASK_REGRESSION, 4, 2, 100, 0, 100, 1, &tr, &err), 0);
    ck_assert_uint_eq(tr.bytes_optimizer, tr.bytes_params);
    moe_config_release(&cfg);
    make_cfg(&cfg, gd, 2);
    ck_assert_int_eq(moe_model_estimate(&cfg, NULL, MOE_TASK_REGRESSION, 4, 2, 100, 0, 100, 1, &tr, &err), 0);
    ck_assert_uint_eq(tr.bytes_optimizer, 0);
    moe_config_release(&cfg);
}
END_TEST

static size_t r64(size_t n) { return n ? (n + 63) / 64 * 64 : 64; }

// moe lora's estimate (MOE_RUN_LORA) against the run's own set-up on the
// model it builds (cmd/train_tune.c: tune.h moe_lora_setup, then
// moe_lora_alloc): the model's figures are the training estimate's (the frozen
// base keeps its gradients); the optimizer's moments are those of the floats
// moe_train_segments hands the optimizer (the trained tensors and slices, then
// the adapters), not of the whole model; bytes_adapters is what moe_lora_alloc
// allocates (mallinfo2 around it, within 1% + 4 KiB: chunk headers) and every
// other part is as before. Per-expert and shared adapters, routers trained or
// frozen, an expert slice trained, the Transformer's attention and experts.
START_TEST(test_lora_bytes)
{
    static const struct {
        const char *label;
        enum moe_task task;
        size_t n_in, n_out;
        const char *ovs[12];
    } cases[] = {
        { "mlp-moe, per-expert", MOE_TASK_CLASSIFICATION, 40, 10,
          { "model.type=mlp-moe", "model.n_embd=64", "model.n_ff=128", "model.n_expert=8", "model.n_layer=2",
            "optim.type=adamw", "lora.rank=4", "lora.targets=[\"*.experts.*\"]" } },
        { "mlp-moe, shared, routers frozen, accumulate 2", MOE_TASK_CLASSIFICATION, 40, 10,
          { "model.type=mlp-moe", "model.n_embd=64", "model.n_ff=128", "model.n_expert=8", "model.n_layer=2",
            "optim.type=sgd", "lora.rank=3", "lora.targets=[\"*.experts.*\", \"head.weight\"]",
            "lora.expert_mode=shared", "lora.freeze_router=true", "train.accumulate=2" } },
        { "mlp-moe, an expert slice trained", MOE_TASK_CLASSIFICATION, 40, 10,
          { "model.type=mlp-moe", "model.n_embd=64", "model.n_ff=96", "model.n_expert=4", "model.n_layer=2",
            "optim.type=adamw", "lora.rank=2", "lora.targets=[\"*.w2\"]",
            "train.trainable=[\"layers.0.moe.experts.w1@1-2\"]" } },
        { "transformer, attention and experts", MOE_TASK_LM, 1, 256,
          { "model.type=transformer", "model.n_embd=32", "model.n_head=4", "model.n_ctx=16", "model.n_ff=64",
            "model.n_layer=2", "model.moe_every=1", "model.n_expert=4", "optim.type=adamw", "lora.rank=4",
            "lora.targets=[\"*.attn.*\", \"*.experts.w1\"]" } },
    };
    const int heap = heap_measurable();
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        const char *label = cases[c].label;
        size_t n = 0;
        while (n < 12 && cases[c].ovs[n])
            n++;
        struct moe_config cfg;
        struct moe_run_cfg rc;
        struct moe_err err = { 0 };
        make_cfg(&cfg, cases[c].ovs, n);
        ck_assert_msg(moe_run_cfg_parse(&rc, &cfg, &err) == 0, "%s: %s", label, err.msg);
        const size_t T = 32, N = 1000;
        struct moe_model_estimate tr, lo;
        enum moe_task task = cases[c].task;
        ck_assert_msg(moe_run_estimate(&rc, NULL, task, cases[c].n_in, cases[c].n_out, N, N, T, MOE_RUN_TRAIN, &tr,
                                       &err) == 0, "%s: %s", label, err.msg);
        ck_assert_msg(moe_run_estimate(&rc, NULL, task, cases[c].n_in, cases[c].n_out, N, N, T, MOE_RUN_LORA, &lo,
                                       &err) == 0, "%s: %s", label, err.msg);
        ck_assert_uint_eq(lo.parameters, tr.parameters);
        ck_assert_uint_eq(lo.bytes_params, tr.bytes_params);
        ck_assert_uint_eq(lo.bytes_grads, tr.bytes_grads);
        ck_assert_uint_eq(lo.bytes_activations, tr.bytes_activations);
        ck_assert_uint_eq(lo.bytes_trainer, tr.bytes_trainer);
        ck_assert_uint_eq(tr.bytes_adapters, 0);
        ck_assert_uint_eq(lo.bytes_total, tr.bytes_total - tr.bytes_optimizer + lo.bytes_optimizer + lo.bytes_adapters);

        struct moe_model m;
        ck_assert_msg(moe_model_create_hp(&m, &rc.model, NULL, task, cases[c].n_in, cases[c].n_out, T, &err) == 0,
                      "%s: %s", label, err.msg);
        struct moe_tune_sel sel;
        struct moe_lora l;
        const struct moe_train_cfg *tc = &rc.train;
        ck_assert_msg(moe_lora_setup(&sel, &l, &m.params, &rc.lora, tc->trainable, tc->n_trainable, tc->freeze,
                                     tc->n_freeze, &err) == 0, "%s: %s", label, err.msg);
        size_t before = heap_in_use();
        ck_assert_msg(moe_lora_alloc(&l, &m.params, &err) == 0, "%s: %s", label, err.msg);
        size_t after = heap_in_use();
        if (heap) {
            double got = (double)(after - before), want = (double)lo.bytes_adapters;
            ck_assert_msg(got <= want * 1.01 + 4096.0 && got >= want * 0.99 - 4096.0,
                          "%s: the adapters took %.0f bytes, the estimate says %.0f", label, got, want);
        }
        ck_assert_uint_eq(moe_lora_bytes(&l), lo.bytes_adapters);
        // the optimizer's floats, as the trainer lays them out (trainer.c train_parts)
        const struct moe_train_layout b = { m.params.data, m.params.grad, l.p.data, l.p.grad, l.p.numel };
        size_t n_seg = moe_train_segments(&m.params, sel.frozen, sel.frozen_experts, &b, NULL), numel = 0;
        struct moe_optim_seg *segs = malloc(n_seg * sizeof *segs);
        ck_assert_ptr_nonnull(segs);
        moe_train_segments(&m.params, sel.frozen, sel.frozen_experts, &b, segs);
        for (size_t k = 0; k < n_seg; k++)
            numel += segs[k].n;
        free(segs);
        ck_assert_uint_lt(numel, m.params.numel);
        ck_assert_uint_eq(numel, moe_lora_trained(&sel, &m.params, &l));
        struct moe_plan op;
        struct moe_optim o;
        moe_plan_init(&op, &err);
        ck_assert_int_eq(moe_optim_declare(&o, &rc.optim, numel, &op), 0);
        size_t want = op.bytes[MOE_ROLE_OPTIM] + (tc->accumulate > 1 ? r64(numel * sizeof(float)) : 0);
        moe_plan_release(&op);
        ck_assert_msg(lo.bytes_optimizer == want, "%s: optimizer %zu, the trained floats' %zu", label,
                      lo.bytes_optimizer, want);
        moe_lora_release(&l);
        moe_tune_sel_release(&sel);
        moe_model_release(&m);
        moe_run_cfg_release(&rc);
        moe_config_release(&cfg);
    }
}
END_TEST

// ---- the data files: corpus, IDX and table figures against what the readers really make

static void put_file(const char *path, const void *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(buf, 1, len, f), len);
    fclose(f);
}

// The part of a loading peak that the run's later buffers do not cover.
static size_t readers_of(const struct moe_model_estimate *e, size_t loading)
{
    size_t later = e->bytes_params + e->bytes_grads + e->bytes_optimizer + e->bytes_activations + e->bytes_trainer;
    return loading > later ? loading - later : 0;
}

// Text: the corpus figures equal the loaded corpus's (token counts of both
// splits, word tokens counted by streaming included), the files are the readers'.
static void check_text(const char *dir, const char *tokens, size_t *ret_file_bytes)
{
    char path[512], tok[64];
    snprintf(path, sizeof path, "data.text.path=%s", dir);
    snprintf(tok, sizeof tok, "data.text.tokens=%s", tokens);
    const char *ovs[] = { "data.source=text", path, tok, "data.text.vocab_size=40", "data.text.train_eval_windows=7",
                          "model.type=transformer", "model.n_ctx=8", "model.n_embd=8", "model.n_head=2",
                          "model.n_layer=1", "model.n_expert=2", "model.n_expert_used=1", "model.n_ff=8",
                          "optim.batch_size=4" };
    struct moe_config cfg;
    struct moe_err err = { 0 };
    make_cfg(&cfg, ovs, sizeof ovs / sizeof *ovs);
    struct moe_data d;
    ck_assert_msg(moe_data_load(&d, &cfg, &err) == 0, "%s", err.msg);
    struct moe_model_estimate e;
    ck_assert_msg(moe_model_estimate(&cfg, NULL, MOE_TASK_LM, d.train.n_in, d.train.n_out, d.train.n, d.test.n, 4, 1, &e,
                                     &err) == 0, "%s", err.msg);
    int words = strcmp(tokens, "words") == 0;
    size_t V = d.corpus.vocab.n, want = 0, slots = 16;
    const struct moe_text *tx[] = { &d.corpus.train, &d.corpus.valid };
    for (int i = 0; i < 2; i++)
        want += r64(4 * tx[i]->n_tok) + r64(tx[i]->n_tok) + r64(8 * (tx[i]->n_tok + 1)) +
                r64(3 * sizeof(size_t) * tx[i]->n_seg);
    while (words && slots < 2 * V)
        slots *= 2;
    want += r64(16 * V) + r64((words ? 8 : 2) * V) + (words ? r64(4 * slots) : 0);
    want += r64(8 * d.train.n_win) + r64(8 * d.test.n_win);
    ck_assert_msg(e.bytes_data == want, "%s: data %zu, want %zu (tokens %zu + %zu)", tokens, e.bytes_data, want,
                  d.corpus.train.n_tok, d.corpus.valid.n_tok);
    size_t files = 0;
    struct stat st;
    for (size_t g = 0; g < d.corpus.n_lang; g++) {
        snprintf(path, sizeof path, "%s/%s.txt", dir, d.corpus.lang[g]);
        ck_assert_int_eq(stat(path, &st), 0);
        files += (size_t)st.st_size;
    }
    size_t loading = r64(files), cap = 1024;
    while (words && cap < 2 * V)
        cap *= 2;
    if (words && r64(48 * cap) > want)
        loading += r64(48 * cap) - want;
    ck_assert_uint_eq(e.bytes_readers, readers_of(&e, loading));
    ck_assert_uint_eq(e.bytes_total, e.bytes_params + e.bytes_grads + e.bytes_optimizer + e.bytes_activations +
                                         e.bytes_trainer + e.bytes_data + e.bytes_readers + e.bytes_process);
    *ret_file_bytes = files;
    moe_data_release(&d);
    moe_config_release(&cfg);
}

// An IDX file of n images of 8 x 8 bytes, or their n labels, raw or gzip.
static void put_idx(const char *path, int images, size_t n, int gz)
{
    size_t len = (images ? 16 : 8) + n * (images ? 64 : 1);
    unsigned char *b = calloc(len, 1);
    ck_assert_ptr_nonnull(b);
    b[2] = 8;
    b[3] = images ? 3 : 1;
    b[4] = (unsigned char)(n >> 24), b[5] = (unsigned char)(n >> 16), b[6] = (unsigned char)(n >> 8);
    b[7] = (unsigned char)n;
    if (images)
        b[11] = 8, b[15] = 8;
    size_t h = images ? 16 : 8;
    for (size_t i = 0; i < n * (images ? 64 : 1); i++)
        b[h + i] = (unsigned char)(images ? i * 7 : i % 10);
    if (gz) {
        gzFile f = gzopen(path, "wb");
        ck_assert_ptr_nonnull(f);
        ck_assert_int_eq(gzwrite(f, b, (unsigned)len), (int)len);
        gzclose(f);
    } else {
        put_file(path, b, len);
    }
    free(b);
}

START_TEST(test_data_files)
{
    char dir[] = "/tmp/moe_test_estimate_XXXXXX", path[600], sub[64];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    struct moe_err err = { 0 };
    // text: two languages, ASCII words (the cut falls inside a word: split there as the reader does)
    snprintf(sub, sizeof sub, "%s/corpus", dir);
    ck_assert_int_eq(mkdir(sub, 0700), 0);
    const char *langs[] = { "en", "fr" };
    for (int g = 0; g < 2; g++) {
        char text[6000];
        size_t n = 0;
        for (unsigned i = 0; n < sizeof text - 32; i++)
            n += (size_t)snprintf(text + n, sizeof text - n, "%s%u%s", g ? "mot" : "word", i * 7919 % 97,
                                  i % 11 == 10 ? ".\n" : i % 5 == 4 ? ", " : " ");
        snprintf(path, sizeof path, "%s/%s.txt", sub, langs[g]);
        put_file(path, text, n - (size_t)g * 101);
    }
    snprintf(path, sizeof path, "%s/.hidden", sub);
    put_file(path, "not a language", 14);
    size_t fb, fw;
    check_text(sub, "bytes", &fb);
    check_text(sub, "words", &fw);
    ck_assert_uint_eq(fb, fw);
    ck_assert_uint_gt(fb, 10000);

    // IDX, raw and gzip: the images and labels of a split are held while it is made
    for (int gz = 0; gz < 2; gz++) {
        char im[100], lb[100], ti[100], tl[100];
        snprintf(im, sizeof im, "data.idx.train_images=%s/im%d", dir, gz);
        snprintf(lb, sizeof lb, "data.idx.train_labels=%s/lb%d", dir, gz);
        snprintf(ti, sizeof ti, "data.idx.test_images=%s/ti%d", dir, gz);
        snprintf(tl, sizeof tl, "data.idx.test_labels=%s/tl%d", dir, gz);
        put_idx(strchr(im, '=') + 1, 1, 3000, gz);
        put_idx(strchr(lb, '=') + 1, 0, 3000, gz);
        put_idx(strchr(ti, '=') + 1, 1, 500, gz);
        put_idx(strchr(tl, '=') + 1, 0, 500, gz);
        const char *ovs[] = { "data.source=idx", im, lb, ti, tl, "data.idx.limit_train=200", "data.idx.limit_test=100",
                              "model.type=mlp", "model.n_hidden=4", "optim.batch_size=8", "train.max_batch_eval=8" };
        struct moe_config cfg;
        make_cfg(&cfg, ovs, sizeof ovs / sizeof *ovs);
        struct moe_data d;
        ck_assert_msg(moe_data_load(&d, &cfg, &err) == 0, "%s", err.msg);
        struct moe_model_estimate e;
        ck_assert_int_eq(moe_model_estimate(&cfg, NULL, MOE_TASK_CLASSIFICATION, 64, 10, d.train.n, d.test.n, 8, 1, &e,
                                            &err), 0);
        size_t test_split = r64(100 * 64 * 4) + r64(100 * 4), zlib = (size_t)576 << 10;
        ck_assert_uint_eq(e.bytes_data, r64(200 * 64 * 4) + r64(200 * 4) + test_split);
        size_t first = r64(3000 * 64) + r64(3000) + zlib - test_split, second = r64(500 * 64) + r64(500) + zlib;
        ck_assert_uint_eq(e.bytes_readers, readers_of(&e, first > second ? first : second));
        ck_assert_uint_gt(e.bytes_readers, 0);
        moe_data_release(&d);
        // not loaded (rows 0, as moe_model_create asks): no data, no files looked at
        ck_assert_int_eq(moe_model_estimate(&cfg, NULL, MOE_TASK_CLASSIFICATION, 64, 10, 0, 0, 8, 1, &e, &err), 0);
        ck_assert_uint_eq(e.bytes_data + e.bytes_readers, 0);
        moe_config_release(&cfg);
        const char *files[] = { im, lb, ti, tl };
        for (int i = 0; i < 4; i++)
            unlink(strchr(files[i], '=') + 1);
    }

    // table: the file and the parsed rows (features, labels with their text, split flags)
    char csv[120000];
    size_t n = (size_t)snprintf(csv, sizeof csv, "a,b,c\n");
    for (int i = 0; i < 3000; i++)
        n += (size_t)snprintf(csv + n, sizeof csv - n, "%d.25,%d.5,%s\n", i, i % 7, i % 3 ? "x" : "y");
    snprintf(path, sizeof path, "%s/t.csv", dir);
    put_file(path, csv, n);
    char tp[700];
    snprintf(tp, sizeof tp, "data.table.path=%s", path);
    const char *ovs[] = { "data.source=table", tp, "data.table.features=[\"a\",\"b\"]", "data.table.targets=[\"c\"]",
                          "model.type=mlp", "model.n_hidden=4", "optim.batch_size=8", "train.max_batch_eval=8" };
    struct moe_config cfg;
    make_cfg(&cfg, ovs, sizeof ovs / sizeof *ovs);
    struct moe_data d;
    ck_assert_msg(moe_data_load(&d, &cfg, &err) == 0, "%s", err.msg);
    ck_assert_uint_eq(d.train.n + d.test.n, 3000);
    struct moe_model_estimate e;
    ck_assert_int_eq(moe_model_estimate(&cfg, NULL, MOE_TASK_CLASSIFICATION, 2, 2, d.train.n, d.test.n, 8, 1, &e, &err), 0);
    size_t loading = r64(n) + r64(3000 * 2 * 4) + r64(3000 * (4 + sizeof(char *) + 32)) + r64(3000);
    ck_assert_uint_eq(e.bytes_readers, readers_of(&e, loading));
    ck_assert_uint_gt(e.bytes_readers, 0);
    moe_data_release(&d);
    moe_config_release(&cfg);
    unlink(path);
    for (int g = 0; g < 2; g++) {
        snprintf(path, sizeof path, "%s/%s.txt", sub, langs[g]);
        unlink(path);
    }
    snprintf(path, sizeof path, "%s/.hidden", sub);
    unlink(path);
    rmdir(sub);
    rmdir(dir);
}
END_TEST

// Refused with MOE_EINVAL (or code), the message containing every needle.
static void expect_refusal(const char *const *ovs, size_t n, size_t n_in, size_t n_out, size_t max_batch, int code,
                           const char *const *needles, size_t n_needles)
{
    struct moe_config cfg;
    struct moe_err err = { 0 };
    make_cfg(&cfg, ovs, n);
    struct moe_model_estimate est;
    memset(&est, 0x5a, sizeof est);
    int rc = moe_model_estimate(&cfg, NULL, MOE_TASK_CLASSIFICATION, n_in, n_out, 0, 0, max_batch, 0, &est, &err);
    ck_assert_msg(rc == code, "expected %d, got %d: %s", code, rc, err.msg);
    ck_assert_uint_eq(est.parameters, 0x5a5a5a5a5a5a5a5aull); // not written on failure
    ck_assert_msg(strchr(err.msg, '\n') == NULL, "one line: %s", err.msg);
    for (size_t i = 0; i < n_needles; i++)
        ck_assert_msg(strstr(err.msg, needles[i]) != NULL, "'%s' not in: %s", needles[i], err.msg);
    // moe_model_create refuses the same, before allocating (the heap does not grow)
    struct moe_model m;
    struct moe_err err2 = { 0 };
    size_t before = heap_in_use();
    rc = moe_model_create(&m, &cfg, NULL, MOE_TASK_CLASSIFICATION, n_in, n_out, max_batch, &err2);
    ck_assert_int_eq(rc, code);
    ck_assert_str_eq(err2.msg, err.msg);
    ck_assert_uint_le(heap_in_use(), before + 4096); // (0 <= 0 when the heap cannot be measured)
    moe_config_release(&cfg);
}

START_TEST(test_refusals)
{
    const char *moe[] = { "model.type=mlp-moe", "model.n_embd=64" };
    // an input projection of n_embd x features overflows
    const char *n1[] = { "overflows size_t", "model.n_embd", "data features" };
    expect_refusal(moe, 2, (size_t)1 << 62, 10, 8, MOE_EINVAL, n1, 3);
    // a batch whose hidden activations overflow
    const char *mlp[] = { "model.type=mlp", "model.n_hidden=8" };
    const char *n2[] = { "overflows size_t", "batch rows", "model.n_hidden" };
    expect_refusal(mlp, 2, 10, 10, (size_t)1 << 60, MOE_EINVAL, n2, 3);
    // a sparse layer's batch past 32-bit dispatch rows
    const char *n2b[] = { "dispatch rows", "model.n_expert_used" };
    expect_refusal(moe, 2, 10, 10, (size_t)1 << 40, MOE_EINVAL, n2b, 2);
    // expert choice: T x E slots past 32-bit dispatch rows
    const char *ec[] = { "model.type=mlp-moe", "moe.router=expert-choice", "model.n_expert=1024",
                         "model.n_embd=4", "model.n_ff=4" };
    const char *n3[] = { "dispatch rows", "model.n_expert", "2147483647" };
    expect_refusal(ec, 5, 10, 10, (size_t)1 << 24, MOE_EINVAL, n3, 3);
    // the schema's largest experts: 1024 x 2^20 x 2^16 floats per matrix, 256 layers
    const char *big[] = { "model.type=mlp-moe", "model.n_expert=1024", "model.n_ff=1048576", "model.n_embd=65536",
                          "model.n_layer=256", "model.ffn_activation=swiglu" };
    const char *n4[] = { "more than any machine has", "model.n_expert x model.n_ff x model.n_embd",
                         "1024 x 1048576 x 65536", "experts.w1" };
    expect_refusal(big, 6, 10, 10, 8, MOE_EINVAL, n4, 4);
    // a dense mixture of 1024 experts over 2^20 hidden units of 2^20 features
    const char *mx[] = { "model.type=mixture", "model.expert=mlp", "model.n_expert=1024",
                         "model.n_expert_hidden=1048576" };
    const char *n5[] = { "more than any machine has", "model.n_expert_hidden" };
    expect_refusal(mx, 4, (size_t)1 << 20, 10, 8, MOE_EINVAL, n5, 2);
    // no features, no classes
    const char *n6[] = { "no features" }, *n7[] = { "no classes" };
    expect_refusal(moe, 2, 0, 10, 8, MOE_ESHAPE, n6, 1);
    expect_refusal(moe, 2, 10, 0, 8, MOE_ESHAPE, n7, 1);
}
END_TEST

START_TEST(test_data_shape)
{
    struct moe_config cfg;
    struct moe_err err = { 0 };
    enum moe_task task;
    size_t n_in, n_out, n_train, n_test;
    const char *cl[] = { "data.synthetic.kind=classes", "data.synthetic.n_regions=6", "data.synthetic.n_in=3",
                         "data.synthetic.n_train=70", "data.synthetic.n_test=30" };
    make_cfg(&cfg, cl, 5);
    ck_assert_int_eq(moe_data_shape(&cfg, &task, &n_in, &n_out, &n_train, &n_test, &err), 1);
    ck_assert_int_eq(task, MOE_TASK_CLASSIFICATION);
    ck_assert_uint_eq(n_in, 3);
    ck_assert_uint_eq(n_out, 6);
    ck_assert_uint_eq(n_train, 70);
    ck_assert_uint_eq(n_test, 30);
    // what moe_data_load makes
    struct moe_data d;
    ck_assert_int_eq(moe_data_load(&d, &cfg, &err), 0);
    ck_assert_int_eq(d.train.task, task);
    ck_assert_uint_eq(d.train.n_in, n_in);
    ck_assert_uint_eq(d.train.n_out, n_out);
    ck_assert_uint_eq(d.train.n, n_train);
    ck_assert_uint_eq(d.test.n, n_test);
    moe_data_release(&d);
    moe_config_release(&cfg);
    const char *tb[] = { "data.source=table", "data.table.path=x.csv" };
    make_cfg(&cfg, tb, 2);
    ck_assert_int_eq(moe_data_shape(&cfg, &task, &n_in, &n_out, &n_train, &n_test, &err), 0);
    moe_config_release(&cfg);
    // the generator's maps alone: 4096 regions x 65536 targets x 65536 features in double
    const char *big[] = { "data.synthetic.n_regions=4096", "data.synthetic.n_in=65536", "data.synthetic.n_out=65536" };
    make_cfg(&cfg, big, 3);
    ck_assert_int_eq(moe_data_shape(&cfg, &task, &n_in, &n_out, &n_train, &n_test, &err), MOE_EINVAL);
    ck_assert_msg(strstr(err.msg, "data.synthetic.n_regions x data.synthetic.n_out x data.synthetic.n_in"), "%s",
                  err.msg);
    moe_config_release(&cfg);
}
END_TEST

START_TEST(test_bytes_parse)
{
    size_t v;
    ck_assert_int_eq(moe_bytes_parse("0", &v), 0);
    ck_assert_uint_eq(v, 0);
    ck_assert_int_eq(moe_bytes_parse("8589934592", &v), 0);
    ck_assert_uint_eq(v, 8589934592ull);
    ck_assert_int_eq(moe_bytes_parse("8G", &v), 0);
    ck_assert_uint_eq(v, 8589934592ull);
    ck_assert_int_eq(moe_bytes_parse("1.5GiB", &v), 0);
    ck_assert_uint_eq(v, 1610612736ull);
    ck_assert_int_eq(moe_bytes_parse("512k", &v), 0);
    ck_assert_uint_eq(v, 524288);
    ck_assert_int_eq(moe_bytes_parse("2TB", &v), 0);
    ck_assert_uint_eq(v, 2199023255552ull);
    ck_assert_int_eq(moe_bytes_parse("100B", &v), 0);
    ck_assert_uint_eq(v, 100);
    const char *bad[] = { "", "-1", " 5", "5 ", "1e9", "abc", "1.G", ".5G", "5X", "18446744073709551616", "16777216T" };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        ck_assert_msg(moe_bytes_parse(bad[i], &v) == -1, "accepted '%s'", bad[i]);
    char buf[32];
    moe_bytes_str(buf, sizeof buf, 512);
    ck_assert_str_eq(buf, "512 B");
    moe_bytes_str(buf, sizeof buf, 41.2 * 1073741824.0);
    ck_assert_str_eq(buf, "41.2 GiB");
    moe_bytes_str(buf, sizeof buf, 3.0 * 1099511627776.0);
    ck_assert_str_eq(buf, "3.0 TiB");
}
END_TEST

START_TEST(test_meminfo)
{
    const char *text = "MemTotal:       32768000 kB\nMemFree:         1000 kB\nMemAvailable:   24188960 kB\n";
    ck_assert_uint_eq(moe_meminfo_bytes(text, "MemAvailable"), (size_t)24188960 * 1024);
    ck_assert_uint_eq(moe_meminfo_bytes(text, "MemTotal"), (size_t)32768000 * 1024);
    ck_assert_uint_eq(moe_meminfo_bytes(text, "Mem"), SIZE_MAX);
    ck_assert_uint_eq(moe_meminfo_bytes(text, "SwapTotal"), SIZE_MAX);
}
END_TEST

// The headroom under a resource limit: the soft limit less what /proc/self/status says is used
// (here a given text), nothing when over, none when unlimited. RLIMIT_DATA's soft limit is
// lowered to 1 TiB for the check and put back.
START_TEST(test_rlimit)
{
    struct rlimit old;
    ck_assert_int_eq(getrlimit(RLIMIT_DATA, &old), 0);
    const rlim_t tib = (rlim_t)1 << 40;
    if (old.rlim_max != RLIM_INFINITY && old.rlim_max < tib)
        return; // a hard limit below the test's: nothing to lower to
    struct rlimit lim = { tib, old.rlim_max };
    ck_assert_int_eq(setrlimit(RLIMIT_DATA, &lim), 0);
    size_t h = 0;
    int have = moe_rlimit_headroom(RLIMIT_DATA, "Name:\tmoe\nVmSize:\t 9999 kB\nVmData:\t    2048 kB\n", &h);
    size_t h_status = h;
    int have_none = moe_rlimit_headroom(RLIMIT_DATA, "", &h);
    size_t h_none = h;
    ck_assert_int_eq(setrlimit(RLIMIT_DATA, &old), 0);
    ck_assert_int_eq(have, 1);
    ck_assert_uint_eq(h_status, (size_t)tib - 2048 * 1024); // VmData, not VmSize
    ck_assert_int_eq(have_none, 1);
    ck_assert_uint_eq(h_none, (size_t)tib); // no status text: the limit itself
    have = moe_rlimit_headroom(RLIMIT_DATA, "VmData:\t2048 kB\n", &h);
    if (old.rlim_cur == RLIM_INFINITY)
        ck_assert_int_eq(have, 0);
}
END_TEST

static void write_file(const char *dir, const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

START_TEST(test_cgroup)
{
    char dir[] = "/tmp/moe_test_cgroup_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    size_t h = 12345;
    ck_assert_int_eq(moe_cgroup_headroom(dir, &h), 0); // no limit files
    // v2: limit 1 GiB, usage 600 MiB of which 100 MiB inactive file pages
    write_file(dir, "memory.max", "1073741824\n");
    write_file(dir, "memory.current", "629145600\n");
    write_file(dir, "memory.stat", "anon 400000000\nfile 200000000\ninactive_file 104857600\nactive_file 5\n");
    ck_assert_int_eq(moe_cgroup_headroom(dir, &h), 1);
    ck_assert_uint_eq(h, 1073741824 - (629145600 - 104857600));
    write_file(dir, "memory.max", "max\n");
    ck_assert_int_eq(moe_cgroup_headroom(dir, &h), 0);
    // over the limit: no headroom
    write_file(dir, "memory.max", "1000\n");
    write_file(dir, "memory.stat", "inactive_file 0\n");
    ck_assert_int_eq(moe_cgroup_headroom(dir, &h), 1);
    ck_assert_uint_eq(h, 0);
    char path[512];
    const char *v2[] = { "memory.max", "memory.current", "memory.stat" };
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, v2[i]);
        unlink(path);
    }
    // v1: the "unlimited" sentinel, then a real limit
    write_file(dir, "memory.limit_in_bytes", "9223372036854771712\n");
    ck_assert_int_eq(moe_cgroup_headroom(dir, &h), 0);
    write_file(dir, "memory.limit_in_bytes", "2147483648\n");
    write_file(dir, "memory.usage_in_bytes", "1073741824\n");
    write_file(dir, "memory.stat", "cache 5\ninactive_file 7\ntotal_inactive_file 536870912\n");
    ck_assert_int_eq(moe_cgroup_headroom(dir, &h), 1);
    ck_assert_uint_eq(h, 2147483648ull - (1073741824 - 536870912));
    const char *v1[] = { "memory.limit_in_bytes", "memory.usage_in_bytes", "memory.stat" };
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, v1[i]);
        unlink(path);
    }
    rmdir(dir);
}
END_TEST

START_TEST(test_sysmem)
{
    unsetenv(MOE_MEMORY_LIMIT_ENV);
    struct moe_sysmem m;
    struct moe_err err = { 0 };
    ck_assert_int_eq(moe_sysmem_available(&m, &err), 0);
    ck_assert_uint_gt(m.available, 0);
    ck_assert_ptr_nonnull(m.source);
    setenv(MOE_MEMORY_LIMIT_ENV, "3G", 1);
    ck_assert_int_eq(moe_sysmem_available(&m, &err), 0);
    ck_assert_uint_eq(m.available, (size_t)3 << 30);
    ck_assert_str_eq(m.source, MOE_MEMORY_LIMIT_ENV);
    setenv(MOE_MEMORY_LIMIT_ENV, "lots", 1);
    ck_assert_int_eq(moe_sysmem_available(&m, &err), MOE_EINVAL);
    ck_assert_msg(strstr(err.msg, "'MOE_MEMORY_LIMIT'") && strstr(err.msg, "'lots'"), "%s", err.msg);
    unsetenv(MOE_MEMORY_LIMIT_ENV);
}
END_TEST

// Run f with stderr captured into buf; returns f's result.
static int with_stderr(char *buf, size_t len, int (*f)(const struct moe_model_estimate *, int),
                       const struct moe_model_estimate *e, int data_loaded)
{
    fflush(stderr);
    int saved = dup(2);
    FILE *tmp = tmpfile();
    ck_assert_ptr_nonnull(tmp);
    dup2(fileno(tmp), 2);
    int rc = f(e, data_loaded);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    rewind(tmp);
    size_t n = fread(buf, 1, len - 1, tmp);
    buf[n] = '\0';
    fclose(tmp);
    return rc;
}

static int check_train(const struct moe_model_estimate *e, int data_loaded)
{
    return cli_check_memory("train", e, data_loaded, 0);
}

static int check_train_ignore_memory(const struct moe_model_estimate *e, int data_loaded)
{
    return cli_check_memory("train", e, data_loaded, 1);
}

// The device memory of a run on a CUDA device: the plan's device buffers plus
// the runtime's reserve, and no wrap-around when they come near SIZE_MAX.
START_TEST(test_device_bytes)
{
    struct moe_model_estimate e;
    memset(&e, 0, sizeof e);
    e.bytes_params = 1000, e.bytes_grads = 1000, e.bytes_optimizer = 2000, e.bytes_activations = 5000;
    e.bytes_trainer = 7, e.bytes_data = 11, e.bytes_process = 13; // host memory: not on the device
    ck_assert_uint_eq(moe_estimate_device_bytes(&e), 9000 + MOE_ESTIMATE_CUDA_RESERVE_BYTES);
    e.bytes_adapters = 300; // moe lora: the device keeps its own adapters, W0 and scratch
    ck_assert_uint_eq(moe_estimate_device_bytes(&e), 9300 + MOE_ESTIMATE_CUDA_RESERVE_BYTES);
    e.bytes_adapters = 0;
    e.bytes_activations = SIZE_MAX - 4000 - MOE_ESTIMATE_CUDA_RESERVE_BYTES;
    ck_assert_uint_eq(moe_estimate_device_bytes(&e), SIZE_MAX);
    e.bytes_activations++;
    ck_assert_uint_eq(moe_estimate_device_bytes(&e), SIZE_MAX);
}
END_TEST

START_TEST(test_check_memory)
{
    const char *ovs[] = { "model.type=mlp-moe", "model.n_embd=256", "model.n_ff=1024", "model.n_expert=16" };
    struct moe_config cfg;
    struct moe_err err = { 0 };
    make_cfg(&cfg, ovs, 4);
    struct moe_model_estimate e;
    ck_assert_int_eq(moe_model_estimate(&cfg, NULL, MOE_TASK_CLASSIFICATION, 784, 10, 60000, 10000, 4096, 1, &e, &err), 0);
    ck_assert_uint_gt(e.bytes_total, (size_t)100 << 20);
    char out[1024];
    setenv(MOE_MEMORY_LIMIT_ENV, "1M", 1);
    ck_assert_int_eq(with_stderr(out, sizeof out, check_train, &e, 1), 1);
    ck_assert_msg(strncmp(out, "moe train: this config needs about ", 35) == 0, "%s", out);
    ck_assert_msg(strstr(out, "more than the 1.0 MiB that MOE_MEMORY_LIMIT allows\n"), "%s", out);
    ck_assert_ptr_eq(strchr(out, '\n'), out + strlen(out) - 1); // one line
    // a budget covers the data already loaded too: exactly the total fits, one byte less does not
    char lim[32];
    snprintf(lim, sizeof lim, "%zu", e.bytes_total);
    setenv(MOE_MEMORY_LIMIT_ENV, lim, 1);
    ck_assert_int_eq(with_stderr(out, sizeof out, check_train, &e, 1), 0);
    ck_assert_str_eq(out, "");
    snprintf(lim, sizeof lim, "%zu", e.bytes_total - 1);
    setenv(MOE_MEMORY_LIMIT_ENV, lim, 1);
    ck_assert_int_eq(with_stderr(out, sizeof out, check_train, &e, 0), 1);
    setenv(MOE_MEMORY_LIMIT_ENV, "1T", 1);
    ck_assert_int_eq(with_stderr(out, sizeof out, check_train, &e, 0), 0);
    setenv(MOE_MEMORY_LIMIT_ENV, "-3", 1);
    ck_assert_int_eq(with_stderr(out, sizeof out, check_train, &e, 0), 2);
    ck_assert_msg(strstr(out, "moe train: environment variable 'MOE_MEMORY_LIMIT'"), "%s", out);
    unsetenv(MOE_MEMORY_LIMIT_ENV);
    // measured: a config far past any machine's memory here is refused with the override named
    struct moe_model_estimate huge = e;
    huge.bytes_total = (size_t)1 << 62;
    ck_assert_int_eq(with_stderr(out, sizeof out, check_train, &huge, 0), 1);
    ck_assert_msg(strstr(out, "moe train: this config needs about 4.0 EiB plus 1.0 EiB of headroom, only ") &&
                      strstr(out, " available (--ignore-memory runs it anyway; MOE_MEMORY_LIMIT sets a budget)\n"),
                  "%s", out);
    // the headroom: a quarter of the estimate, at least 64 MiB, kept free of what the machine has;
    // --ignore-memory runs past it (and past the machine's figure), never past a MOE_MEMORY_LIMIT budget
    size_t avail;
    const char *src;
    ck_assert_int_eq(cli_memory_for_run(&e, 0, &avail, &src, &err), 0);
    ck_assert_str_ne(src, MOE_MEMORY_LIMIT_ENV);
    struct moe_model_estimate tight = e;
    tight.bytes_total = avail - ((size_t)16 << 20); // fits, but not with its headroom
    ck_assert_uint_eq(cli_memory_headroom(&tight, src), tight.bytes_total / 4 > CLI_HEADROOM_MIN
                                                             ? tight.bytes_total / 4 : CLI_HEADROOM_MIN);
    ck_assert_uint_eq(cli_memory_headroom(&tight, MOE_MEMORY_LIMIT_ENV), 0);
    ck_assert_int_eq(with_stderr(out, sizeof out, check_train, &tight, 0), 1);
    ck_assert_msg(strstr(out, " of headroom, only "), "%s", out);
    ck_assert_int_eq(with_stderr(out, sizeof out, check_train_ignore_memory, &tight, 0), 0); // --ignore-memory
    ck_assert_str_eq(out, "");
    struct moe_model_estimate roomy = e;
    roomy.bytes_total = (avail - CLI_HEADROOM_MIN) / 5 * 4; // total + max(total / 4, 64 MiB) <= avail
    ck_assert_int_eq(with_stderr(out, sizeof out, check_train, &roomy, 0), 0);
    setenv(MOE_MEMORY_LIMIT_ENV, "1M", 1);
    ck_assert_int_eq(with_stderr(out, sizeof out, check_train_ignore_memory, &e, 0), 1); // --ignore-memory does not pass a budget
    ck_assert_msg(strstr(out, "that MOE_MEMORY_LIMIT allows"), "%s", out);
    unsetenv(MOE_MEMORY_LIMIT_ENV);

    // the JSON
    setenv(MOE_MEMORY_LIMIT_ENV, "2G", 1);
    cJSON *j = cli_estimate_json(&e, 1);
    ck_assert_double_eq(cJSON_GetObjectItem(j, "parameters")->valuedouble, (double)e.parameters);
    ck_assert_double_eq(cJSON_GetObjectItem(j, "active_parameters")->valuedouble, e.active_parameters);
    ck_assert_double_eq(cJSON_GetObjectItem(j, "flops_per_token")->valuedouble, e.flops_per_token);
    cJSON *mb = cJSON_GetObjectItem(j, "memory_bytes");
    const char *keys[] = { "params", "grads", "optimizer", "activations", "trainer", "data", "data_readers",
                           "checkpoint", "process", "total" };
    size_t vals[] = { e.bytes_params, e.bytes_grads, e.bytes_optimizer, e.bytes_activations, e.bytes_trainer,
                      e.bytes_data, e.bytes_readers, e.bytes_checkpoint, e.bytes_process, e.bytes_total };
    for (int i = 0; i < 10; i++)
        ck_assert_double_eq(cJSON_GetObjectItem(mb, keys[i])->valuedouble, (double)vals[i]);
    ck_assert_double_eq(cJSON_GetObjectItem(j, "memory_available_bytes")->valuedouble, 2147483648.0);
    ck_assert_str_eq(cJSON_GetObjectItem(j, "memory_available_source")->valuestring, "MOE_MEMORY_LIMIT");
    ck_assert(cJSON_IsTrue(cJSON_GetObjectItem(j, "fits")));
    cJSON_Delete(j);
    setenv(MOE_MEMORY_LIMIT_ENV, "1K", 1);
    j = cli_estimate_json(&e, 1);
    ck_assert(cJSON_IsFalse(cJSON_GetObjectItem(j, "fits")));
    cJSON_Delete(j);
    // measured: the data already loaded counts as available to the run
    unsetenv(MOE_MEMORY_LIMIT_ENV);
    j = cli_estimate_json(&e, 0);
    double a0 = cJSON_GetObjectItem(j, "memory_available_bytes")->valuedouble;
    ck_assert_double_gt(a0, 0);
    cJSON_Delete(j);
    moe_config_release(&cfg);
}
END_TEST

// A command's bytes besides the run (cmd/estimate.h cli_extra_fn): *ctx bytes
// for a run of batches of 64 rows; ctx NULL fails.
static int extra_bytes(const struct moe_run_cfg *rc, enum moe_task task, size_t n_in, size_t n_out,
                       size_t max_batch, const void *ctx, size_t *ret_bytes, struct moe_err *err)
{
    ck_assert_ptr_nonnull(rc);
    ck_assert(task == MOE_TASK_CLASSIFICATION && n_in == 40 && n_out == 10 && max_batch == 64);
    if (!ctx)
        return moe_error(err, MOE_EINVAL, "no extra bytes");
    *ret_bytes = *(const size_t *)ctx;
    return 0;
}

// A checkpoint the run reads whole (cmd/estimate.h struct cli_ckpt_mem): all of
// it when held for the whole run; else what the optimizer, the adapters and the
// trainer, allocated once it is freed, leave over; in bytes_checkpoint and the
// total of cli_run_estimate, which is moe_run_estimate's without one.
// cli_run_estimate_ex adds what the command holds besides (compress) to the
// total, or fails with it.
START_TEST(test_checkpoint_bytes)
{
    struct moe_model_estimate e;
    memset(&e, 0, sizeof e);
    e.bytes_params = 1000, e.bytes_grads = 1000, e.bytes_activations = 5000, e.bytes_data = 11; // held at load
    e.bytes_optimizer = 2000, e.bytes_adapters = 300, e.bytes_trainer = 7;                      // allocated after
    ck_assert_uint_eq(cli_ckpt_peak_bytes(&e, 9000, 1), 9000);
    ck_assert_uint_eq(cli_ckpt_peak_bytes(&e, 9000, 0), 9000 - 2307);
    ck_assert_uint_eq(cli_ckpt_peak_bytes(&e, 2307, 0), 0);
    ck_assert_uint_eq(cli_ckpt_peak_bytes(&e, 1000, 0), 0);
    ck_assert_uint_eq(cli_ckpt_peak_bytes(&e, 0, 1), 0);
    e.bytes_trainer = SIZE_MAX; // saturates: covers any file
    ck_assert_uint_eq(cli_ckpt_peak_bytes(&e, SIZE_MAX, 0), 0);

    const char *ovs[] = { "model.type=mlp-moe", "model.n_embd=64", "model.n_ff=128", "model.n_expert=8",
                          "optim.type=adamw" };
    struct moe_config cfg;
    struct moe_run_cfg rc;
    struct moe_err err = { 0 };
    make_cfg(&cfg, ovs, 5);
    ck_assert_msg(moe_run_cfg_parse(&rc, &cfg, &err) == 0, "%s", err.msg);
    for (int kind = MOE_RUN_EVAL; kind <= MOE_RUN_TRAIN; kind++) {
        struct moe_model_estimate plain, none, held, freed, small;
        ck_assert_int_eq(moe_run_estimate(&rc, NULL, MOE_TASK_CLASSIFICATION, 40, 10, 1000, 500, 64, kind, &plain, &err),
                         0);
        ck_assert_uint_eq(plain.bytes_checkpoint, 0);
        ck_assert_int_eq(cli_run_estimate(&rc, NULL, MOE_TASK_CLASSIFICATION, 40, 10, 1000, 500, 64, kind, NULL, &none,
                                          &err), 0);
        ck_assert_int_eq(memcmp(&none, &plain, sizeof none), 0);
        const size_t later = plain.bytes_optimizer + plain.bytes_adapters + plain.bytes_trainer;
        const size_t big = later + 12345; // more than what comes after it
        const struct cli_ckpt_mem whole = { big, 1, 1 }, once = { big, 0, 0 }, less = { later / 2, 0, 0 };
        ck_assert_int_eq(cli_run_estimate(&rc, NULL, MOE_TASK_CLASSIFICATION, 40, 10, 1000, 500, 64, kind, &whole,
                                          &held, &err), 0);
        ck_assert_uint_eq(held.bytes_checkpoint, big);
        ck_assert_uint_eq(held.bytes_total, plain.bytes_total + big);
        struct moe_model_estimate more;
        const size_t extra = 4321;
        ck_assert_int_eq(cli_run_estimate_ex(&rc, NULL, MOE_TASK_CLASSIFICATION, 40, 10, 1000, 500, 64, kind, &whole,
                                             NULL, NULL, &more, &err), 0);
        ck_assert_int_eq(memcmp(&more, &held, sizeof more), 0);
        ck_assert_int_eq(cli_run_estimate_ex(&rc, NULL, MOE_TASK_CLASSIFICATION, 40, 10, 1000, 500, 64, kind, &whole,
                                             extra_bytes, &extra, &more, &err), 0);
        ck_assert_uint_eq(more.bytes_checkpoint, big);
        ck_assert_uint_eq(more.bytes_total, held.bytes_total + extra);
        ck_assert_int_eq(cli_run_estimate_ex(&rc, NULL, MOE_TASK_CLASSIFICATION, 40, 10, 1000, 500, 64, kind, NULL,
                                             extra_bytes, &extra, &more, &err), 0);
        ck_assert_uint_eq(more.bytes_total, plain.bytes_total + extra);
        ck_assert_int_eq(cli_run_estimate_ex(&rc, NULL, MOE_TASK_CLASSIFICATION, 40, 10, 1000, 500, 64, kind, &whole,
                                             extra_bytes, NULL, &more, &err), MOE_EINVAL);
        ck_assert_str_eq(err.msg, "no extra bytes");
        ck_assert_int_eq(cli_run_estimate(&rc, NULL, MOE_TASK_CLASSIFICATION, 40, 10, 1000, 500, 64, kind, &once,
                                          &freed, &err), 0);
        ck_assert_uint_eq(freed.bytes_checkpoint, 12345);
        ck_assert_uint_eq(freed.bytes_total, plain.bytes_total + 12345);
        ck_assert_int_eq(cli_run_estimate(&rc, NULL, MOE_TASK_CLASSIFICATION, 40, 10, 1000, 500, 64, kind, &less,
                                          &small, &err), 0);
        ck_assert_uint_eq(small.bytes_checkpoint, 0);
        ck_assert_uint_eq(small.bytes_total, plain.bytes_total);
    }
    moe_run_cfg_release(&rc);
    moe_config_release(&cfg);

    // the file's size as the reader reads it; 0 for what it refuses (no file, a directory)
    char dir[] = "/tmp/moe_test_ckpt_XXXXXX", path[600];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/ck.safetensors", dir);
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    for (int i = 0; i < 3000; i++)
        fputc(i & 0xff, f);
    fclose(f);
    ck_assert_uint_eq(cli_ckpt_file_bytes(path), 3000);
    ck_assert_uint_eq(cli_ckpt_file_bytes(dir), 0);
    ck_assert_uint_eq(cli_ckpt_file_bytes(NULL), 0);
    remove(path);
    ck_assert_uint_eq(cli_ckpt_file_bytes(path), 0);
    rmdir(dir);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("estimate");
    TCase *tc = tcase_create("estimate");
    tcase_add_test(tc, test_dense_models);
    tcase_add_test(tc, test_mlp_moe_grid);
    tcase_add_test(tc, test_allocated_bytes);
    tcase_add_test(tc, test_transformer_named);
    tcase_add_test(tc, test_transformer_grid);
    tcase_add_test(tc, test_transformer_by_hand);
    tcase_add_test(tc, test_flops);
    tcase_add_test(tc, test_training_bytes);
    tcase_add_test(tc, test_lora_bytes);
    tcase_add_test(tc, test_data_files);
    tcase_add_test(tc, test_refusals);
    tcase_add_test(tc, test_data_shape);
    tcase_add_test(tc, test_bytes_parse);
    tcase_add_test(tc, test_meminfo);
    tcase_add_test(tc, test_rlimit);
    tcase_add_test(tc, test_cgroup);
    tcase_add_test(tc, test_sysmem);
    tcase_add_test(tc, test_check_memory);
    tcase_add_test(tc, test_checkpoint_bytes);
    tcase_add_test(tc, test_device_bytes);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    if (moe_test_init_blas(1))
        return 1;
    return moe_test_run(suite());
}
