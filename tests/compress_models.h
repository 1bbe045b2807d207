// compress_models.h: the small models test_prune.c and test_qat.c build
// (header-only: static inline helpers and macros, each test includes it once).
// MLP_MOE: block 0 dense (swiglu, n_ff_dense 6), block 1 sparse (3
// experts of 5, top 2, one shared expert); no noise, no capacity limit, no
// auxiliary loss: a deterministic, smooth loss between routing changes. N
// rows of I features, O classes.
// TRANSFORMER: block 0 dense (gelu, 6), block 1 sparse (2 experts of 3,
// switch, one shared). B windows of C + 1 tokens over V ids.
// MIXTURE: the 1991 mixture with mlp experts (3 experts, 4 hidden
// units, tanh): regression, MI inputs, MO targets.
#ifndef MOE_TEST_COMPRESS_MODELS_H
#define MOE_TEST_COMPRESS_MODELS_H

#include <check.h>
#include <string.h>

#include "core/rng.h"
#include "io/config.h"
#include "model/model.h"
#include "moe/moe_layer.h"
#include "train/train.h"

enum { N = 8, I = 5, O = 3, B = 3, C = 4, V = 7, MI = 3, MO = 2 };
#ifndef TM_SEED
#define TM_SEED 20240611 // fill_uniform's seed (a test may define its own first)
#endif
#define MLP_MOE                                                                                                    \
    "{\"model\":{\"type\":\"mlp-moe\",\"n_embd\":4,\"n_layer\":2,\"moe_every\":2,\"n_expert\":3,\"n_expert_used\":2," \
    "\"n_expert_shared\":1,\"n_ff\":5,\"n_ff_dense\":6,\"ffn_activation\":\"swiglu\"},"                             \
    "\"moe\":{\"router\":\"softmax\",\"capacity_factor\":0,\"eval_capacity_factor\":0,\"aux_loss\":\"none\"},"      \
    "\"loss\":{\"type\":\"ce\"}}"
#define TRANSFORMER                                                                                                   \
    "{\"model\":{\"type\":\"transformer\",\"n_ctx\":4,\"n_embd\":4,\"n_head\":2,\"n_layer\":2,\"moe_every\":2,"        \
    "\"n_ff\":3,\"n_ff_dense\":6,\"n_expert\":2,\"n_expert_used\":1,\"n_expert_shared\":1,\"ffn_activation\":\"gelu\"}," \
    "\"moe\":{\"router\":\"switch\",\"capacity_factor\":0,\"eval_capacity_factor\":0,\"aux_loss\":\"none\"}}"
#define MIXTURE                                                                                                     \
    "{\"model\":{\"type\":\"mixture\",\"n_expert\":3,\"expert\":\"mlp\",\"n_expert_hidden\":4,\"activation\":\"tanh\"}," \
    "\"loss\":{\"type\":\"nll\"}}"

static inline void fill_uniform(float *x, size_t n, uint32_t stream, float lo, float hi)
{
    struct moe_rng r = moe_rng_make(TM_SEED, MOE_RNG_DATA, stream);
    moe_rng_fill_uniform(&r, x, n, lo, hi);
}

static inline void make_model(struct moe_model *m, const char *json, enum moe_task task, size_t n_in, size_t n_out,
                              size_t max_batch)
{
    struct moe_config cfg;
    struct moe_err err;
    int rc = moe_config_parse(&cfg, moe_run_schema(), moe_run_schema_len(), json, "test", NULL, 0, &err);
    ck_assert_msg(rc == 0, "config: %s", err.msg);
    rc = moe_model_create(m, &cfg, NULL, task, n_in, n_out, max_batch, &err);
    ck_assert_msg(rc == 0, "create: %s", err.msg);
    moe_config_release(&cfg);
}

// Weights from the seed, then every float U(-0.6, 0.6) (+1 on norm gains):
// away from the zero biases and gate of the start.
static inline void randomize_model(struct moe_model *m, uint32_t stream)
{
    moe_model_init_weights(m, 3);
    fill_uniform(m->params.data, m->params.numel, stream, -0.6f, 0.6f);
    for (size_t i = 0; i < m->params.n; i++)
        if (strstr(m->params.t[i].name, "norm.weight"))
            for (size_t j = 0; j < m->params.t[i].numel; j++)
                m->params.data[m->params.t[i].offset + j] += 1.0f;
}

// The batch-mean loss of m on b from an evaluation pass, and in *sig a
// signature of every sparse layer's routing (selected experts, kept slots), so
// that finite differences can tell a routing change; the models must have no
// auxiliary loss (checked: the gradient is then the data loss's).
static inline double routed_loss(struct moe_model *m, const struct moe_batch *b, unsigned *sig)
{
    struct moe_stats st;
    struct moe_err err;
    ck_assert_int_eq(moe_stats_init(&st, m->n_expert, 0, &err), 0);
    int rc = moe_model_run(m, b, 0, &st, &err);
    ck_assert_msg(rc == 0, "run: %s", err.msg);
    double f = st.loss / (double)st.n;
    moe_stats_release(&st);
    unsigned s = 0;
    for (size_t i = 0; i < m->n_moe_layers; i++) {
        struct moe_layer *l = m->ops->moe_layer_at(m, i);
        ck_assert(l->loss == 0.0f);
        for (size_t j = 0; j < l->T * l->S; j++)
            s = s * 31u + (unsigned)(l->route.sel[j] + 1) * 7u + (l->plan.slot_row[j] >= 0);
    }
    *sig = s;
    return f;
}

#endif
