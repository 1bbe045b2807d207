// moe_layer.h: one sparse MoE feed-forward layer, assembled from the router,
// dispatch, experts and auxiliary losses: router input (with Switch jitter),
// router logits, routing, capacity, expert FFNs, shared experts, combine, and
// the weighted auxiliary losses with their gradients. Used by the mlp-moe
// model and the Transformer. Not here: normalisation and the residual (the
// model adds the layer's output to its residual stream).
//
// T = tokens, D = n_embd, F = n_ff, E = n_expert, K = n_expert_used,
// S = slots per token, V = hash table size.
//
// Tensors (prefix e.g. "layers.0.moe"), docs/checkpoint.md:
//   router.weight (E, D)          all routers but hash
//   router.noise_weight (E, D)    noisy-topk
//   experts.w1 (E, F, D), experts.w3 (E, F, D) (swiglu), experts.w2 (E, D, F)
//   shared.w1 (Sh, F, D), shared.w3 (Sh, F, D) (swiglu), shared.w2 (Sh, D, F)
// State saved with the checkpoint (not trained by gradient):
//   router.bias (E) F32           bias balancing
//   router.hash_table (V) I32     hash routing
//
// Random draws (counter-based, core/rng.h; docs/model.md), stream = training step:
//   noise:  purpose NOISE,  index layer * 2^40 + t * E + e
//   jitter: purpose JITTER, index layer * 2^40 + t * D + d
//   GShard second expert: purpose DISPATCH, index layer * 2^40 + t
//   expert hidden dropout: purpose DROPOUT, nn.h sites layer * 8 + 3 (routed), + 4 (shared)
#ifndef MOE_MOE_LAYER_H
#define MOE_MOE_LAYER_H

#include <stddef.h>
#include <stdint.h>

#include "core/params.h"
#include "core/status.h"
#include "io/config.h"
#include "moe/aux_loss.h"
#include "moe/dispatch.h"
#include "moe/experts.h"
#include "moe/route_stats.h"
#include "moe/router.h"

struct moe_ep_layer;

struct moe_layer_cfg {
    struct moe_router_cfg router;
    size_t D, F;
    size_t n_shared;                  // always-on experts, each of width F (DeepSeekMoE)
    enum moe_ffn_act act;
    double capacity_factor;           // training; <= 0 = dropless
    double eval_capacity_factor;      // evaluation; <= 0 = dropless
    enum moe_drop_policy drop;
    double jitter;                    // Switch input jitter eps (0 = off), training only
    enum moe_aux_type aux;
    double aux_weight;                // switch / gshard / topk-all coefficient
    double w_importance, w_load;      // shazeer coefficients
    double z_weight;                  // router z-loss coefficient
    double bias_rate;                 // bias balancing rate gamma (router.bias_balance)
    size_t hash_vocab;                // V, hash routing only
    int hash_balanced;                // balanced table (else random)
    double router_init_scale;         // router.weight U(-s, s), s = scale / sqrt(D); noisy-topk starts at 0
    int lang_router;                  // the model adds a language embedding to the router input (transformer)
    uint32_t index;                   // layer number, for random streams (set by the model per layer)
    double ffn_dropout;               // hidden dropout of every expert, training only (model.dropout.ffn; 0 = off)
};

// The moe.* keys of a run configuration (layer_config.c): the rows the run
// schema takes in, for validation and docs/config.md.
extern const struct moe_cfg_key moe_layer_keys[];
extern const size_t moe_layer_keys_len;
// The layer settings from the moe.* keys of a validated config, for sparse
// layers of E experts (K per token, n_shared always on) of width F in a residual
// stream of width D; checked against the router's needs (K, bias balancing,
// smooth load). Balancing and z losses a router cannot take are set to none.
int moe_layer_cfg_parse(struct moe_layer_cfg *c, const struct moe_config *cfg, size_t E, size_t K, size_t n_shared,
                        size_t D, size_t F, enum moe_ffn_act act, struct moe_err *err);

struct moe_layer {
    struct moe_layer_cfg c;
    char prefix[64];
    size_t S, T_max, N_max;
    int i_router, i_noise, i_w1, i_w3, i_w2, i_sw1, i_sw3, i_sw2; // parameter indices, -1 if absent
    float *bias;          // (E) bias-balancing offsets, or NULL
    int32_t *table;       // (V) hash table, or NULL
    char bias_name[MOE_NAME_MAX], table_name[MOE_NAME_MAX];
    // per-batch scratch, sized for T_max
    float *xr, *jit;      // (T, D) router input, jitter factors
    float *dxr;           // (T, D)
    int32_t *hash_expert; // (T)
    struct moe_route route;
    struct moe_dispatch plan, splan;   // routed and shared plans
    struct moe_experts_buf buf, sbuf;
    int32_t *s_idx;       // (T, Sh) shared "routing": slot s -> expert s
    float *s_gate;        // (T, Sh) all ones
    float *dgate, *dz, *du; // (T, S), (T, E), (T, E)
    // Optional additive router input (language-aware routing), set by the
    // caller before forward: the router sees (x + radd), jittered; backward
    // adds the gradient with respect to radd into dradd. Both (T, D) or NULL.
    const float *radd;
    float *dradd;
    // the last batch
    size_t T;
    int train;
    double aux_value, z_value, loss; // unweighted aux, z; weighted sum added to the objective
    struct moe_plan *own; // the buffers of moe_layer_alloc; NULL when they belong to a model's plan
    // Expert parallelism (dist/ep.h), set by the trainer for a run over MPI
    // processes: training passes send the routed rows to the processes that
    // hold their experts. NULL otherwise.
    struct moe_ep_layer *ep;
};

// A model's sparse layer: declare its tensors under prefix (docs/checkpoint.md)
// and every buffer for batches of up to T.v tokens (T.key: the config keys
// behind it) in the model's plan, with its FLOPs and the parameters a token
// does not touch; after moe_plan_alloc, moe_layer_plan_bound fills the
// buffers of fixed content. The plan owns the memory (moe_layer_release frees
// nothing of it).
int moe_layer_plan_declare(struct moe_layer *l, const struct moe_layer_cfg *c, const char *prefix, struct moe_dim T,
                           struct moe_plan *p);
void moe_layer_plan_bound(struct moe_layer *l);
// A layer on its own (tests, moe bench): its tensors in p under prefix (before
// moe_params_alloc), then moe_layer_alloc for its buffers.
int moe_layer_declare(struct moe_layer *l, const struct moe_layer_cfg *c, const char *prefix,
                      struct moe_params *p, struct moe_err *err);
// Allocate scratch and state for batches of up to T_max tokens.
int moe_layer_alloc(struct moe_layer *l, size_t T_max, struct moe_err *err);
// Initial weights (after moe_params_alloc): experts U(-s, s), s = init_scale / sqrt(fan_in);
// router per router_init_scale (zero for noisy-topk); bias 0; random hash table from seed.
void moe_layer_init(struct moe_layer *l, struct moe_params *p, uint64_t seed, float init_scale);
// Build the balanced hash table from key frequencies freq (V) (hash routing with hash_balanced).
void moe_layer_fit_hash(struct moe_layer *l, const uint64_t *freq);
void moe_layer_release(struct moe_layer *l);

// out (T, D) += MoE(x) for x (T, D). keys (T): hash keys in [0, V) (hash routing only).
// train: noise, jitter, GShard's random policy, the training capacity factor,
// and the bias-balancing update (applied after routing). seed, step: random streams.
// acc (may be NULL): routing statistics; label (T) or NULL.
// Returns the weighted auxiliary loss of the batch (also in l->loss).
double moe_layer_forward(struct moe_layer *l, const struct moe_params *p, float *out, const float *x, size_t T,
                         const uint32_t *keys, int train, uint64_t seed, uint64_t step,
                         struct moe_route_acc *acc, const int32_t *label);
// Backward of the last forward, given dout (T, D): dx (T, D) += (through experts
// and router), parameter gradients +=, plus the gradients of the weighted
// auxiliary losses.
void moe_layer_backward(struct moe_layer *l, const struct moe_params *p, float *dx, const float *dout,
                        const float *x);

#endif
