// test_transformer.c: the decoder-only Transformer LM (model/transformer.c)
// end to end: the gradient of the whole model (next-token loss plus the
// sparse layers' weighted auxiliary losses) against central differences for
// dense, Switch, GShard, shared-expert, hash, noisy top-k and expert-choice
// blocks, tied embeddings and language-aware routing; hash routing keys on the
// token id; tokens outside the vocabulary are refused; the per-language and
// bits-per-byte statistics add up.
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"
#include "io/config.h"
#include "io/corpus.h"
#include "model/model.h"
#include "moe/moe_layer.h"
#include "testutil.h"
#include "train/train.h"

#define H_STEP 3e-3f

// B windows of C + 1 tokens over V ids, G languages.
enum { B = 3, C = 5, V = 11, G = 2 };

struct lm_ctx {
    struct moe_model m;
    struct moe_batch b;
    int32_t tok[B * (C + 1)], lang[B];
    uint8_t cls[B * (C + 1)];
    uint64_t bytes[B];
};

static struct moe_config load_cfg(const char *json)
{
    struct moe_config cfg;
    struct moe_err err;
    int rc = moe_config_parse(&cfg, moe_run_schema(), moe_run_schema_len(), json, "test", NULL, 0, &err);
    ck_assert_msg(rc == 0, "%s", err.msg);
    return cfg;
}

static void make_batch(struct lm_ctx *c, uint32_t stream)
{
    struct moe_rng r = moe_rng_make(5, MOE_RNG_DATA, stream);
    for (size_t i = 0; i < B * (C + 1); i++) {
        c->tok[i] = (int32_t)moe_rng_below(&r, i, V);
        c->cls[i] = (uint8_t)(c->tok[i] % MOE_N_BYTE_CLASS);
    }
    for (size_t w = 0; w < B; w++) {
        c->lang[w] = (int32_t)(w % G);
        c->bytes[w] = C + w; // as if some tokens were longer than a byte
    }
    memset(&c->b, 0, sizeof c->b);
    c->b.n = B;
    c->b.tok = c->tok;
    c->b.cls = c->cls;
    c->b.lang = c->lang;
    c->b.bytes = c->bytes;
    c->b.step = 3;
}

static void build(struct lm_ctx *c, struct moe_config *cfg)
{
    struct moe_err err;
    int rc = moe_model_create(&c->m, cfg, NULL, MOE_TASK_LM, G, V, B, &err);
    ck_assert_msg(rc == 0, "create: %s", err.msg);
    moe_model_init_weights(&c->m, 3);
    // away from the symmetric start (zero routers, unit gains, zero language embeddings)
    fill_u(c->m.params.data, c->m.params.numel, 31, -0.6f, 0.6f);
    for (size_t i = 0; i < c->m.params.n; i++)
        if (strstr(c->m.params.t[i].name, "norm.weight"))
            for (size_t j = 0; j < c->m.params.t[i].numel; j++)
                c->m.params.data[c->m.params.t[i].offset + j] += 1.0f;
}

static const char *const grad_cfgs[8];

// A model of grad_cfgs[cfg_index] with a batch from stream; close_ctx frees both.
static struct lm_ctx *open_ctx(int cfg_index, uint32_t stream, struct moe_config *cfg)
{
    *cfg = load_cfg(grad_cfgs[cfg_index]);
    struct lm_ctx *c = calloc(1, sizeof *c);
    ck_assert_ptr_nonnull(c);
    build(c, cfg);
    make_batch(c, stream);
    return c;
}

static void close_ctx(struct lm_ctx *c, struct moe_config *cfg)
{
    moe_model_release(&c->m);
    free(c);
    moe_config_release(cfg);
}

// The objective the gradient is of: mean next-token loss plus the layers'
// weighted auxiliary losses, and a signature of the routing (selections and
// drops) so that finite differences that change the routing can be skipped.
static double objective(struct lm_ctx *c, unsigned *sig_out)
{
    struct moe_stats st;
    struct moe_err err;
    ck_assert_int_eq(moe_stats_init(&st, 0, 0, &err), 0);
    ck_assert_int_eq(moe_stats_init_lang(&st, G, &err), 0);
    int rc = moe_model_run(&c->m, &c->b, 1, &st, &err);
    ck_assert_msg(rc == 0, "run: %s", err.msg);
    ck_assert_uint_eq(st.n, B * C);
    double f = st.loss / (double)st.n;
    unsigned sig = 0;
    for (size_t i = 0; i < c->m.n_moe_layers; i++) {
        struct moe_layer *l = c->m.ops->moe_layer_at(&c->m, i);
        f += l->loss;
        for (size_t j = 0; j < l->T * l->S; j++)
            sig = sig * 31u + (unsigned)l->route.sel[j] * 7u + (l->plan.slot_row[j] >= 0);
    }
    *sig_out = sig;
    moe_stats_release(&st);
    return f;
}

static double fd_objective(void *c, unsigned *sig) { return objective(c, sig); }

static const char *const grad_cfgs[8] = {
    // dense: two blocks, layernorm, gelu, separate head
    "{\"model\":{\"type\":\"transformer\",\"n_ctx\":5,\"n_embd\":8,\"n_head\":2,\"n_layer\":2,\"moe_every\":3,"
    "\"n_ff\":6,\"n_expert_used\":1,\"ffn_activation\":\"gelu\"}}",
    // switch in every other block, z-loss, jitter, rmsnorm, swiglu, tied embeddings, language-aware routing
    "{\"model\":{\"type\":\"transformer\",\"n_ctx\":5,\"n_embd\":8,\"n_head\":2,\"n_layer\":2,\"moe_every\":2,"
    "\"n_ff\":4,\"n_expert\":3,\"n_expert_used\":1,\"ffn_activation\":\"swiglu\",\"norm\":\"rmsnorm\",\"tie_embeddings\":true},"
    "\"moe\":{\"router\":\"switch\",\"aux_weight\":0.3,\"z_weight\":0.01,\"jitter\":0.01,\"capacity_factor\":0,\"lang_router\":true}}",
    // gshard (second expert always), a shared expert, drops at capacity 1, one head
    "{\"model\":{\"type\":\"transformer\",\"n_ctx\":5,\"n_embd\":6,\"n_head\":1,\"n_layer\":1,\"n_ff\":4,\"n_expert\":4,"
    "\"n_expert_used\":2,\"n_expert_shared\":1,\"ffn_activation\":\"relu\"},"
    "\"moe\":{\"router\":\"gshard\",\"second_policy\":\"all\",\"aux_loss\":\"gshard\",\"aux_weight\":0.2,\"capacity_factor\":1}}",
    // hash routing by token id
    "{\"model\":{\"type\":\"transformer\",\"n_ctx\":5,\"n_embd\":8,\"n_head\":4,\"n_layer\":1,\"n_ff\":4,\"n_expert\":3,"
    "\"n_expert_used\":1,\"ffn_activation\":\"gelu\"},\"moe\":{\"router\":\"hash\",\"capacity_factor\":0}}",
    // noisy top-k with Shazeer's smooth load, language-aware routing
    "{\"model\":{\"type\":\"transformer\",\"n_ctx\":5,\"n_embd\":8,\"n_head\":2,\"n_layer\":1,\"n_ff\":4,\"n_expert\":4,"
    "\"n_expert_used\":2,\"ffn_activation\":\"gelu\"},\"moe\":{\"router\":\"noisy-topk\",\"aux_loss\":\"shazeer\","
    "\"w_importance\":0.2,\"w_load\":0.2,\"capacity_factor\":0,\"lang_router\":true}}",
    // expert choice
    "{\"model\":{\"type\":\"transformer\",\"n_ctx\":5,\"n_embd\":8,\"n_head\":2,\"n_layer\":1,\"n_ff\":4,\"n_expert\":3,"
    "\"n_expert_used\":1,\"ffn_activation\":\"relu\"},\"moe\":{\"router\":\"expert-choice\",\"ec_factor\":1.5}}",
    // dropout everywhere in a dense model (fixed mask: the batch's step): attention probabilities,
    // both residual branches, the FFN's hidden units
    "{\"model\":{\"type\":\"transformer\",\"n_ctx\":5,\"n_embd\":8,\"n_head\":2,\"n_layer\":2,\"moe_every\":3,"
    "\"n_ff\":6,\"n_expert_used\":1,\"ffn_activation\":\"gelu\",\"dropout\":{\"attention\":0.3,\"residual\":0.2,\"ffn\":0.3}}}",
    // dropout with a sparse block: softmax top-2 with a shared expert (routed and shared hidden
    // dropout), swiglu, rmsnorm, then a dense block
    "{\"model\":{\"type\":\"transformer\",\"n_ctx\":5,\"n_embd\":8,\"n_head\":1,\"n_layer\":2,\"moe_every\":1,"
    "\"n_ff\":4,\"n_expert\":3,\"n_expert_used\":2,\"n_expert_shared\":1,\"ffn_activation\":\"swiglu\",\"norm\":\"rmsnorm\","
    "\"dropout\":{\"attention\":0.2,\"residual\":0.3,\"ffn\":0.4}},"
    "\"moe\":{\"router\":\"softmax\",\"aux_loss\":\"switch\",\"aux_weight\":0.1,\"capacity_factor\":0}}",
};

START_TEST(test_grad)
{
    struct moe_config cfg;
    struct lm_ctx *c = open_ctx(_i, 70 + (uint32_t)_i, &cfg);
    unsigned sig0;
    moe_params_zero_grad(&c->m.params);
    objective(c, &sig0);
    size_t numel = c->m.params.numel;
    float *grad = malloc(numel * sizeof *grad);
    memcpy(grad, c->m.params.grad, numel * sizeof *grad);
    struct fd_tally all = { 0 };
    for (size_t ti = 0; ti < c->m.params.n; ti++) {
        const struct moe_tensor *t = &c->m.params.t[ti];
        struct fd_tally one = { 0 };
        char what[160];
        snprintf(what, sizeof what, "config %d: %s", _i, t->name);
        check_grad_routed(c->m.params.data + t->offset, grad + t->offset, t->numel, H_STEP, fd_objective, c, sig0,
                          what, &one);
        all.checked += one.checked;
        all.skipped += one.skipped;
        // every tensor takes part (embedding rows of unused ids and unused
        // positions aside, a whole tensor with zero gradient is a wiring bug)
        ck_assert_msg(one.biggest > 1e-4, "config %d: tensor '%s' has no gradient (max %g)", _i, t->name, one.biggest);
    }
    size_t checked = all.checked, skipped = all.skipped;
    ck_assert_msg(skipped * 20 <= checked, "config %d: %zu of %zu elements changed the routing", _i, skipped,
                  checked + skipped);
    if (getenv("MOE_GRAD_VERBOSE"))
        fprintf(stderr, "transformer config %d: %zu checked, %zu skipped, worst %.3g\n", _i, checked, skipped,
                grad_worst);
    free(grad);
    close_ctx(c, &cfg);
}
END_TEST

// Hash routing sends every occurrence of a token id to table[id].
START_TEST(test_hash_by_token)
{
    struct moe_config cfg;
    struct lm_ctx *c = open_ctx(3, 90, &cfg);
    struct moe_err err;
    ck_assert_int_eq(moe_model_run(&c->m, &c->b, 0, NULL, &err), 0);
    struct moe_layer *l = c->m.ops->moe_layer_at(&c->m, 0);
    ck_assert_ptr_nonnull(l->table);
    ck_assert_uint_eq(l->c.hash_vocab, V);
    for (size_t w = 0; w < B; w++)
        for (size_t p = 0; p < C; p++) {
            int32_t id = c->tok[w * (C + 1) + p];
            ck_assert_int_eq(l->route.sel[(w * C + p) * l->S], l->table[id]);
        }
    close_ctx(c, &cfg);
}
END_TEST

// Statistics: tokens, bytes and per-language sums add up to the totals.
START_TEST(test_stats)
{
    struct moe_config cfg;
    struct lm_ctx *c = open_ctx(1, 91, &cfg);
    struct moe_stats st;
    struct moe_err err;
    ck_assert_int_eq(moe_stats_init(&st, 0, 0, &err), 0);
    ck_assert_int_eq(moe_stats_init_lang(&st, G, &err), 0);
    ck_assert_int_eq(moe_model_run(&c->m, &c->b, 0, &st, &err), 0);
    ck_assert_uint_eq(st.n, B * C);
    double bytes = 0, loss = 0;
    uint64_t tokens = 0;
    for (size_t g = 0; g < G; g++) {
        bytes += st.lang_bytes[g];
        loss += st.lang_loss[g];
        tokens += st.lang_tokens[g];
    }
    ck_assert_uint_eq(tokens, st.n);
    ck_assert_double_eq_tol(loss, st.loss, 1e-9 * fabs(st.loss));
    ck_assert_double_eq(bytes, (double)(B * C + 0 + 1 + 2));
    ck_assert_double_eq(st.bytes, bytes);
    // a fresh model predicts about uniformly: loss near ln V per token
    ck_assert(st.loss / (double)st.n > 0.5 * log((double)V) && st.loss / (double)st.n < 3.0 * log((double)V));
    moe_stats_release(&st);
    close_ctx(c, &cfg);
}
END_TEST

// The mean loss of one pass (with_grad: a training pass, gradients cleared first).
static double pass_loss(struct lm_ctx *c, int with_grad)
{
    struct moe_stats st;
    struct moe_err err;
    ck_assert_int_eq(moe_stats_init(&st, 0, 0, &err), 0);
    moe_params_zero_grad(&c->m.params);
    ck_assert_int_eq(moe_model_run(&c->m, &c->b, with_grad, &st, &err), 0);
    double loss = st.loss / (double)st.n;
    moe_stats_release(&st);
    return loss;
}

// Dropout acts in training passes only: an evaluation pass of a model with dropout equals, bit
// for bit, the same weights without it; a training pass differs, is the same again at the same
// step (the mask is a function of seed, step, layer and position) and differs at another step.
// The dense and the sparse dropout configs (grad_cfgs 6 and 7) against their dropout-free twins.
START_TEST(test_dropout_modes)
{
    struct moe_config cfg;
    struct lm_ctx *c = open_ctx(6 + _i, 93, &cfg);
    char *plain = strdup(grad_cfgs[6 + _i]);
    char *at = strstr(plain, ",\"dropout\":{");
    ck_assert_ptr_nonnull(at);
    char *end = strchr(at, '}');
    memmove(at, end + 1, strlen(end + 1) + 1); // the same config without the dropout object
    struct moe_config cfg0 = load_cfg(plain);
    struct lm_ctx *c0 = calloc(1, sizeof *c0);
    build(c0, &cfg0);
    make_batch(c0, 93);
    ck_assert_uint_eq(c0->m.params.numel, c->m.params.numel);
    memcpy(c0->m.params.data, c->m.params.data, c->m.params.numel * sizeof(float));
    double e = pass_loss(c, 0), e0 = pass_loss(c0, 0);
    ck_assert_mem_eq(&e, &e0, sizeof e);
    double t = pass_loss(c, 1), t0 = pass_loss(c0, 1), t_again = pass_loss(c, 1);
    ck_assert_mem_eq(&t0, &e0, sizeof t0); // no dropout: training and evaluation passes agree here
    ck_assert(t != t0);
    ck_assert_mem_eq(&t, &t_again, sizeof t);
    c->b.step = 4;
    ck_assert(pass_loss(c, 1) != t);
    ck_assert_double_eq(pass_loss(c, 0), e);
    moe_model_release(&c0->m);
    free(c0);
    free(plain);
    moe_config_release(&cfg0);
    close_ctx(c, &cfg);
}
END_TEST

// Expert choice in a causal LM (moe.ec_eval, docs/routing.md). For every window w, input
// position j >= 1 and replacement id, an evaluation pass's logits are compared with the
// unchanged batch's: with the training rule (full) some change at positions < j of some
// window (the experts pick over the whole pass, later tokens included); with prefix,
// position and topk none ever does, while positions >= j do change. A training pass
// routes as full whatever ec_eval says.
static const char ec_cfg_fmt[] =
    "{\"model\":{\"type\":\"transformer\",\"n_ctx\":5,\"n_embd\":8,\"n_head\":2,\"n_layer\":2,\"moe_every\":1,"
    "\"n_ff\":4,\"n_expert\":3,\"n_expert_used\":1,\"ffn_activation\":\"relu\"},"
    "\"moe\":{\"router\":\"expert-choice\",\"ec_factor\":1,\"ec_eval\":\"%s\"}}";

static void ec_logits(struct lm_ctx *c, float *out, int train)
{
    struct moe_batch_kd kd;
    memset(&kd, 0, sizeof kd);
    kd.logits_out = out;
    c->b.kd = &kd;
    struct moe_err err;
    if (train) { // a training pass hands back no logits: the routing itself is compared
        ck_assert_int_eq(moe_model_run(&c->m, &c->b, 1, NULL, &err), 0);
        struct moe_layer *l = c->m.ops->moe_layer_at(&c->m, 0);
        for (size_t i = 0; i < l->T * l->S; i++)
            out[i] = (float)l->route.sel[i];
    } else {
        ck_assert_int_eq(moe_model_run(&c->m, &c->b, 0, NULL, &err), 0);
    }
    c->b.kd = NULL;
}

START_TEST(test_ec_causal)
{
    static const char *const modes[] = { "full", "prefix", "position", "topk" };
    char json[sizeof ec_cfg_fmt + 16];
    snprintf(json, sizeof json, ec_cfg_fmt, modes[_i]);
    struct moe_config cfg = load_cfg(json);
    struct lm_ctx *c = calloc(1, sizeof *c);
    ck_assert_ptr_nonnull(c);
    build(c, &cfg);
    make_batch(c, 94);
    size_t n = (size_t)B * C * V;
    float *ref = malloc(n * sizeof *ref), *out = malloc(n * sizeof *out);
    ck_assert(ref && out);
    ec_logits(c, ref, 0);
    size_t earlier = 0, later = 0;
    for (size_t w = 0; w < B; w++)
        for (size_t j = 1; j < C; j++) {
            int32_t *tok = &c->tok[w * (C + 1) + j], orig = *tok;
            for (int32_t v = 0; v < V; v++) {
                if (v == orig)
                    continue;
                *tok = v;
                ec_logits(c, out, 0);
                for (size_t w2 = 0; w2 < B; w2++)
                    for (size_t s = 0; s < C; s++) {
                        size_t at = (w2 * C + s) * V;
                        int differs = memcmp(ref + at, out + at, V * sizeof *out) != 0;
                        earlier += differs && s < j;
                        later += differs && s >= j;
                    }
            }
            *tok = orig;
        }
    if (_i == 0)
        ck_assert_msg(earlier > 0, "full: no earlier output ever changed (the test cannot see the leak)");
    else
        ck_assert_msg(earlier == 0, "%s: %zu outputs changed before the changed token", modes[_i], earlier);
    ck_assert_msg(later > 0, "%s: no output after the changed token changed", modes[_i]);
    // training passes route over the whole batch whatever ec_eval says
    struct moe_config cfg0 = load_cfg("{\"model\":{\"type\":\"transformer\",\"n_ctx\":5,\"n_embd\":8,"
                                                      "\"n_head\":2,\"n_layer\":2,\"moe_every\":1,\"n_ff\":4,\"n_expert\":3,"
                                                      "\"n_expert_used\":1,\"ffn_activation\":\"relu\"},\"moe\":{\"router\":"
                                                      "\"expert-choice\",\"ec_factor\":1}}");
    struct lm_ctx *c0 = calloc(1, sizeof *c0);
    ck_assert_ptr_nonnull(c0);
    build(c0, &cfg0);
    make_batch(c0, 94);
    ck_assert_uint_eq(c0->m.params.numel, c->m.params.numel);
    memcpy(c0->m.params.data, c->m.params.data, c->m.params.numel * sizeof(float));
    size_t ns = (size_t)B * C * 3;
    ec_logits(c, ref, 1);
    ec_logits(c0, out, 1);
    ck_assert_mem_eq(ref, out, ns * sizeof *out);
    moe_model_release(&c0->m);
    free(c0);
    moe_config_release(&cfg0);
    free(ref);
    free(out);
    moe_model_release(&c->m);
    free(c);
    moe_config_release(&cfg);
}
END_TEST

// Bad input reaching the model: ids outside the vocabulary, a language outside
// [0, G), no token windows at all, heads that do not divide the width.
START_TEST(test_refusals)
{
    struct moe_config cfg = load_cfg(grad_cfgs[0]);
    struct lm_ctx *c = calloc(1, sizeof *c);
    build(c, &cfg);
    make_batch(c, 92);
    struct moe_err err;
    c->tok[7] = V;
    ck_assert_int_eq(moe_model_run(&c->m, &c->b, 0, NULL, &err), MOE_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "outside the vocabulary"));
    c->tok[7] = 0;
    c->lang[1] = G;
    ck_assert_int_eq(moe_model_run(&c->m, &c->b, 0, NULL, &err), MOE_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "language"));
    c->lang[1] = 0;
    c->b.tok = NULL;
    ck_assert_int_eq(moe_model_run(&c->m, &c->b, 0, NULL, &err), MOE_EINVAL);
    moe_model_release(&c->m);
    moe_config_release(&cfg);

    cfg = load_cfg("{\"model\":{\"type\":\"transformer\",\"n_embd\":10,\"n_head\":4}}");
    ck_assert_int_eq(moe_model_create(&c->m, &cfg, NULL, MOE_TASK_LM, 1, V, 2, &err), MOE_ECONFIG);
    ck_assert_ptr_nonnull(strstr(err.msg, "model.n_head"));
    moe_config_release(&cfg);
    // a transformer needs text, and text needs a transformer
    cfg = load_cfg("{\"model\":{\"type\":\"transformer\"}}");
    ck_assert_int_eq(moe_model_create(&c->m, &cfg, NULL, MOE_TASK_CLASSIFICATION, 3, 2, 2, &err), MOE_ECONFIG);
    moe_config_release(&cfg);
    cfg = load_cfg("{\"model\":{\"type\":\"mlp-moe\"}}");
    ck_assert_int_eq(moe_model_create(&c->m, &cfg, NULL, MOE_TASK_LM, 1, V, 2, &err), MOE_ECONFIG);
    ck_assert_ptr_nonnull(strstr(err.msg, "transformer"));
    moe_config_release(&cfg);
    free(c);
}
END_TEST

int main(void)
{
    if (moe_test_init_blas(1))
        return 1;
    Suite *s = suite_create("transformer");
    TCase *tc = tcase_create("model");
    tcase_set_timeout(tc, 300);
    tcase_add_loop_test(tc, test_grad, 0, (int)(sizeof grad_cfgs / sizeof *grad_cfgs));
    tcase_add_test(tc, test_hash_by_token);
    tcase_add_test(tc, test_stats);
    tcase_add_test(tc, test_refusals);
    tcase_add_loop_test(tc, test_dropout_modes, 0, 2);
    tcase_add_loop_test(tc, test_ec_causal, 0, 4);
    suite_add_tcase(s, tc);
    return moe_test_run(s);
}
