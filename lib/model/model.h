// model.h: models assembled from nn + moe blocks behind one small interface.
// A model owns its parameter registry and its scratch; `run` does the forward
// pass over a batch, accumulates evaluation statistics, and (with_grad) the
// backward pass, adding gradients of the batch-mean loss into params.grad.
// T = rows in a batch, D = n_in, O = n_out (targets or classes), E = n_expert.
#ifndef MOE_MODEL_H
#define MOE_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "core/params.h"
#include "core/plan.h"
#include "core/status.h"
#include "compress/quant.h"
#include "io/config.h"
#include "io/dataset.h"
#include "io/safetensors.h"
#include "moe/moe_layer.h"
#include "nn/nn.h"

struct moe_config;
struct moe_model;
struct moe_route_acc;

// ---- typed hyperparameters (model_config.c)
// The model table's names, in enum order (the model.type key's choices).
enum moe_model_type { MOE_MODEL_MIXTURE = 0, MOE_MODEL_MLP = 1, MOE_MODEL_MLP_MOE = 2, MOE_MODEL_TRANSFORMER = 3 };
#define MOE_MODEL_CHOICES "mixture|mlp|mlp-moe|transformer"

// The model.* and loss.* keys of a run configuration, and the moe.* keys for a
// model with sparse layers, read once from a validated config (io/config.h) by
// moe_model_hp_parse, which also checks the rules between keys. The model
// constructors and the estimate take this struct; none of them reads a key.
struct moe_model_hp {
    enum moe_model_type type;
    const char *loss;            // loss.type as configured ("auto" is resolved by moe_model_create)
    const char *loss_baseline;   // loss.baseline: the objective of the mlp system in compare-loss
    size_t n_expert;             // E: experts of a mixture or of each sparse layer
    size_t n_expert_used;        // K
    size_t n_expert_shared;
    size_t n_embd, n_layer, n_ff, moe_every, n_ctx, n_head;
    size_t n_ff_dense;           // width of dense FFN blocks: model.n_ff_dense, or K * n_ff when that is 0
    int n_ff_dense_auto;         // model.n_ff_dense was 0
    int tie_embeddings;
    int rms;                     // model.norm: rmsnorm (1) or layernorm (0)
    enum moe_ffn_act ffn_act;    // model.ffn_activation
    size_t n_expert_hidden;      // mixture: hidden units per expert, 0 for linear experts
    size_t n_hidden;             // mlp: hidden units
    enum moe_act act;            // mixture, mlp: hidden nonlinearity (model.activation)
    int gate_max;                // mixture: model.predict gate-max (else mean)
    double init_scale;
    // model.dropout.*: inverted dropout at training time (docs/model.md, "Dropout"); 0 = off.
    // attention: attention probabilities (transformer); residual: each sub-layer's output before
    // the residual add (transformer, mlp-moe); ffn: the hidden activation of dense FFNs and experts.
    struct {
        double attention, residual, ffn;
    } dropout;
    struct moe_layer_cfg moe;    // sparse layers (mlp-moe, transformer); zero for the other models
};
extern const struct moe_cfg_key moe_model_keys[]; // model.* and loss.*, for the run schema
extern const size_t moe_model_keys_len;
// Fill *hp from cfg. Errors (MOE_ECONFIG) name the key at fault.
int moe_model_hp_parse(struct moe_model_hp *hp, const struct moe_config *cfg, struct moe_err *err);

// ---- the model table (registry.c): one row per model type
struct moe_model_kind {
    const char *name;
    int sparse;                  // has sparse MoE layers: reads the moe.* keys
    int text;                    // reads text (task MOE_TASK_LM) rather than rows of features
    // The rules a model's settings must meet for a task with n_in inputs and
    // n_out outputs and a resolved loss, checked before anything is sized or
    // allocated (so --dry-run refuses what a run would).
    int (*check)(const struct moe_model_hp *hp, const char *loss, enum moe_task task, size_t n_in, size_t n_out,
                 struct moe_err *err);
    // Set up m (impl, ops, loss name, n_expert, the sparse layers) and declare
    // in pl every parameter and buffer for batches of m->max_batch rows of
    // m->n_in / m->n_out, with the FLOPs per token (after check; needs only
    // hp and those sizes). moe_model_create_hp allocates the plan (core/plan.h);
    // the estimate sums it. Returns pl->rc; m->ops->release undoes it.
    int (*declare)(struct moe_model *m, const struct moe_model_hp *hp, const char *loss, struct moe_plan *pl);
};
const struct moe_model_kind *moe_model_kind(enum moe_model_type t);
int moe_model_type_from_name(const char *name); // -1 when unknown
// The objective: loss when given (compare-loss's override), else loss.type,
// with "auto" resolved by model and task (nll or nll-cat for a mixture; ce for
// classes and text, mse for regression otherwise).
const char *moe_model_loss(const struct moe_model_hp *hp, const char *loss, enum moe_task task);
// The table row's check, and the model/task pairing (text needs the transformer).
int moe_model_check(const struct moe_model_hp *hp, const char *loss, enum moe_task task, size_t n_in, size_t n_out,
                    struct moe_err *err);

struct moe_batch {
    size_t n;
    const float *x;        // (n, D)
    const float *y;        // (n, O) regression targets, or NULL
    const int32_t *label;  // (n) class ids, or NULL
    const int32_t *group;  // (n) ground-truth region ids, or NULL
    uint64_t step;         // training step (the stream of router noise); 0 in evaluation
    // Language models (task MOE_TASK_LM; x, y, label unused):
    const int32_t *tok;    // (n, C + 1) window tokens: inputs 0..C-1, next-token targets 1..C
    const uint8_t *cls;    // (n, C + 1) byte class of each token (io/corpus.h), or NULL
    const int32_t *lang;   // (n) language of each window, or NULL (one language)
    const uint64_t *bytes; // (n) source bytes covered by each window's targets (bits per byte)
    // Distillation (knowledge distillation, MoEBERT): NULL for plain training and evaluation.
    const struct moe_batch_kd *kd;
};

// What a batch carries for distillation (moe_batch.kd): the teacher's outputs the
// student learns from, and the outputs a pass must hand back (the teacher's pass,
// MoEBERT's importance pass). Every pointer may be NULL.
struct moe_batch_kd {
    // The teacher's logits for the same output rows (n rows of O; language models
    // n * C rows of V), cross-entropy heads only. The training objective becomes
    // (1 - alpha) CE + alpha tau^2 KL (nn.h moe_kd_forward_backward); the loss in
    // the statistics stays the cross-entropy.
    const float *teacher;
    float alpha, tau;
    // MoEBERT (Zuo et al. 2022, sec. 3.3; models with hidden_per_row > 0). sym:
    // with teacher the objective is CE + alpha SKL(teacher, student), SKL the
    // symmetric KL at temperature 1 (nn.h moe_symkl_forward_backward), instead of
    // the mix above. teacher_hidden adds alpha sum_l MSE_l, MSE_l = mean over rows
    // and widths of (h_l - teacher h_l)^2 for each block output l = 1..L.
    int sym;
    const float *teacher_hidden; // (L, rows, D) the teacher's block outputs (rows = n, or n * C tokens)
    float *logits_out;     // when non-NULL, the model copies its output logits here (same layout)
    float *hidden_out;     // when non-NULL, the model copies its block outputs here (same layout)
    // When non-NULL, a training pass (with_grad) adds each dense FFN neuron's
    // importance over the batch's examples (windows for language models) into
    // row l of this (L, Fd) table (experts.h moe_ffn_importance_add).
    double *ffn_importance;
};

// Sums over rows; the trainer turns them into means.
struct moe_stats {
    size_t n;
    double loss;           // sum of per-row objective
    double sq_err;         // sum of ||prediction - target||^2 (one-hot targets for classes)
    size_t correct;        // rows whose argmax prediction is the label
    size_t n_expert;       // 0 for models without a gate
    double gate_entropy;   // sum over rows of H(p_t) in nats
    double *gate_sum;      // (E) sum over rows of p_t
    size_t n_group;
    uint64_t *contingency; // (E, G) rows whose largest gate is e and whose group is g
    size_t n_route;        // sparse MoE layers (0 for models without)
    struct moe_route_acc *route; // (n_route) routing statistics per MoE layer
    // Language models: n counts predicted tokens and loss sums nats over them.
    double bytes;          // source bytes of the predicted tokens
    size_t n_lang;         // per-language sums (moe_stats_init_lang), else 0
    double *lang_loss;     // (n_lang) nats
    uint64_t *lang_tokens; // (n_lang)
    double *lang_bytes;    // (n_lang)
    // Language models, per target token id (moe_stats_init_tokens), else n_vocab 0:
    size_t n_vocab;
    uint64_t *tok_count;   // (n_vocab) predicted positions whose target is the id
    uint64_t *tok_correct; // (n_vocab) those whose argmax was the target
    double *tok_loss;      // (n_vocab) their nats
};
int moe_stats_init(struct moe_stats *s, size_t n_expert, size_t n_group, struct moe_err *err);
// Routing statistics for a model with sparse layers (m->n_moe_layers > 0);
// labels are the classes (classification) or the regions (data with groups).
int moe_stats_init_routing(struct moe_stats *s, const struct moe_model *m, size_t n_label, struct moe_err *err);
// Per-language sums for a language model over n_lang languages.
int moe_stats_init_lang(struct moe_stats *s, size_t n_lang, struct moe_err *err);
// Per-target-token sums for a language model over a vocabulary of n_vocab ids
// (moe eval --by-token).
int moe_stats_init_tokens(struct moe_stats *s, size_t n_vocab, struct moe_err *err);
void moe_stats_reset(struct moe_stats *s);
void moe_stats_release(struct moe_stats *s);
// dst += src: the sums of two sets of rows (same model and data), in that order.
void moe_stats_merge(struct moe_stats *dst, const struct moe_stats *src);
// Add rows' predictions (T, O) against targets (T, O) (one-hot for classes) and labels (or NULL).
void moe_stats_add_predictions(struct moe_stats *s, const float *pred, const float *target, const int32_t *label,
                               size_t T, size_t O);
// Add rows' gate probabilities p (T, E) and ground-truth groups (or NULL).
void moe_stats_add_gates(struct moe_stats *s, const float *p, const int32_t *group, size_t T);
// Mutual information (bits) between top-gate expert and group, from the contingency table.
double moe_stats_expert_region_mi(const struct moe_stats *s);
// Experts whose mean gate probability exceeds threshold.
size_t moe_stats_active_experts(const struct moe_stats *s, double threshold);

struct moe_model_ops {
    const char *type;
    int (*run)(struct moe_model *m, const struct moe_batch *b, int with_grad, struct moe_stats *stats,
               struct moe_err *err);
    void (*init_weights)(struct moe_model *m, uint64_t seed);
    void (*release)(struct moe_model *m);
    // Optional. Data-dependent set-up after init_weights (balanced hash tables).
    int (*fit)(struct moe_model *m, const struct moe_dataset *train, struct moe_err *err);
    // Optional. Non-trainable state saved with the checkpoint (bias-balancing
    // offsets, hash tables): writes up to max refs, returns how many there are.
    // The refs' data pointers are the model's own (writable) buffers.
    size_t (*state)(struct moe_model *m, struct moe_st_ref *refs, size_t max);
    // Optional. Sparse layer i (0 <= i < n_moe_layers), after a forward pass:
    // its route and dispatch plan describe the last batch.
    struct moe_layer *(*moe_layer_at)(struct moe_model *m, size_t i);
    // Optional. Override the evaluation capacity factor of every sparse layer.
    void (*set_eval_capacity)(struct moe_model *m, double capacity_factor);
};

struct moe_model {
    const struct moe_model_ops *ops;
    struct moe_params params;
    enum moe_task task;
    size_t n_in, n_out, n_expert; // n_expert = 0 for models without a dense gate (stats.gate_sum)
    size_t n_moe_layers;          // sparse MoE layers (mlp-moe, transformer)
    struct moe_layer **moe_layers;// (n_moe_layers) those layers in order, owned by impl
    size_t n_route_expert, n_route_slots; // E and slots per token of those layers
    uint64_t seed;                // set by init_weights: the seed of router noise
    size_t max_batch;             // largest batch `run` accepts
    size_t hidden_per_row;        // floats of block outputs per batch row (moe_batch.hidden_out); 0 = no such hook
    const char *loss_name;        // the objective in use
    void *impl;
    struct moe_plan plan;         // every buffer but the parameters' (which params owns), as declared
};

// Build the model named by config key model.type for a task with n_in features
// and n_out targets/classes (language models: n_in languages, n_out vocabulary); `loss` overrides loss.type when non-NULL (compare-loss
// runs the baseline with loss.baseline). Weights are not initialised.
int moe_model_create(struct moe_model *ret, const struct moe_config *cfg, const char *loss, enum moe_task task,
                     size_t n_in, size_t n_out, size_t max_batch, struct moe_err *err);
// The same from hyperparameters already read (moe_model_hp_parse).
int moe_model_create_hp(struct moe_model *ret, const struct moe_model_hp *hp, const char *loss, enum moe_task task,
                        size_t n_in, size_t n_out, size_t max_batch, struct moe_err *err);
// The same holding only process `rank`'s share of every sparse layer's routed
// experts when the run is spread over `size` processes (expert parallelism,
// dist/ep.h; core/params.h: shard_size); size 1 is moe_model_create_hp.
int moe_model_create_shard(struct moe_model *ret, const struct moe_model_hp *hp, const char *loss,
                           enum moe_task task, size_t n_in, size_t n_out, size_t max_batch, int rank, int size,
                           struct moe_err *err);
static inline int moe_model_run(struct moe_model *m, const struct moe_batch *b, int with_grad,
                                struct moe_stats *stats, struct moe_err *err)
{
    return m->ops->run(m, b, with_grad, stats, err);
}
static inline void moe_model_init_weights(struct moe_model *m, uint64_t seed)
{
    m->seed = seed;
    m->ops->init_weights(m, seed);
}
static inline int moe_model_fit(struct moe_model *m, const struct moe_dataset *train, struct moe_err *err)
{
    return m->ops->fit ? m->ops->fit(m, train, err) : 0;
}
// For models with a plain output head (the check of mlp and mlp-moe): accept
// loss "ce" (class labels only) or "mse".
int moe_model_head_loss_check(const char *model, const char *loss, enum moe_task task, struct moe_err *err);
// The head's loss over a batch: softmax cross-entropy or squared error of the
// outputs y (T, O) against the labels / targets, gradient of the batch mean
// into dy (T, O) (zeroed first; NULL = no gradient), and, with stats, the
// predictions (softmax probabilities into pred (T, O) for ce) and the loss sum.
void moe_model_head_loss(const struct moe_model *m, int ce, const float *y, float *dy, float *pred,
                         const float *target, const struct moe_batch *b, struct moe_stats *stats);

// The cross-entropy head shared by the models: gradient of the batch mean over
// `rows` output rows into dy (NULL = none) of CE, or with b->teacher of the
// distillation objective; copies y to b->logits_out when set. Returns the CE sum;
// each row's CE and argmax go to row_loss and row_argmax when not NULL (nn.h moe_ce_rows).
double moe_model_ce_head(float *dy, float *row_loss, int32_t *row_argmax, const float *y, const int32_t *label,
                         const struct moe_batch *b, size_t rows, size_t O);

// Checkpoint I/O: parameters plus the model's state tensors. Loading checks
// every state tensor's dtype and shape like a parameter's. A parameter may be
// stored int8-quantized (compress/quant.h): it loads dequantized, exactly
// scale * (q - zero) (docs/checkpoint.md, Quantized tensors).
int moe_model_load(struct moe_model *m, const struct moe_st_file *f, int allow_extra, struct moe_err *err);
// moe_model_save with registry tensor i stored as spec[i] says (p->n entries;
// scheme MOE_QUANT_NONE keeps it F32; spec NULL: moe_model_save's very file).
int moe_model_save_quant(struct moe_model *m, const char *path, const struct moe_quant_spec *spec,
                         const struct moe_st_ref *extra, size_t n_extra, const struct moe_st_meta *meta, size_t n_meta,
                         struct moe_err *err);
int moe_model_save(struct moe_model *m, const char *path, const struct moe_st_ref *extra, size_t n_extra,
                   const struct moe_st_meta *meta, size_t n_meta, struct moe_err *err);
void moe_model_release(struct moe_model *m);
// Start of every `run`: check the batch size, and point *ret_target at what the
// squared-error losses compare against: the regression targets, or one-hot rows
// (T, O) built into `onehot` from the class labels.
int moe_model_batch_targets(const struct moe_model *m, const struct moe_batch *b, float *onehot,
                            const float **ret_target, struct moe_err *err);


// What the config keys behind a model's sizes are called in messages.
#define MOE_KEY_BATCH "batch rows (optim.batch_size, train.max_batch_eval)"
#define MOE_KEY_FEATURES "data features"
#define MOE_KEY_OUTPUTS "data targets/classes"

// Model declarations (one file each; rows of the model table). `loss` is the
// resolved objective (never "auto").
int moe_mixture_declare(struct moe_model *m, const struct moe_model_hp *hp, const char *loss, struct moe_plan *pl);
int moe_mlp_declare(struct moe_model *m, const struct moe_model_hp *hp, const char *loss, struct moe_plan *pl);
int moe_mlp_moe_declare(struct moe_model *m, const struct moe_model_hp *hp, const char *loss, struct moe_plan *pl);
int moe_transformer_declare(struct moe_model *m, const struct moe_model_hp *hp, const char *loss,
                            struct moe_plan *pl);
int moe_mixture_check(const struct moe_model_hp *hp, const char *loss, enum moe_task task, size_t n_in, size_t n_out,
                      struct moe_err *err);
int moe_mlp_check(const struct moe_model_hp *hp, const char *loss, enum moe_task task, size_t n_in, size_t n_out,
                  struct moe_err *err);
int moe_mlp_moe_check(const struct moe_model_hp *hp, const char *loss, enum moe_task task, size_t n_in, size_t n_out,
                      struct moe_err *err);
int moe_transformer_check(const struct moe_model_hp *hp, const char *loss, enum moe_task task, size_t n_in,
                          size_t n_out, struct moe_err *err);
// A transformer's batch of windows, checked (the batch size, token ids in
// the vocabulary, languages in range) as its pass checks them, into per-token
// arrays (T = windows x model.n_ctx): target, the next token; keys (NULL: not
// wanted), hash routing's key, the input token; label, the routing statistics'
// label (byte class x languages + language).
int moe_transformer_batch(const struct moe_model *m, const struct moe_batch *bt, int32_t *target, uint32_t *keys,
                          int32_t *label, struct moe_err *err);
// The statistics a transformer's pass adds for batch bt from its per-token
// cross-entropy and argmax (T each): loss, accuracy, bytes, per-language sums.
void moe_transformer_add_stats(const struct moe_model *m, const struct moe_batch *bt, struct moe_stats *s,
                               const float *row_loss, const int32_t *row_argmax);
// Shared by the models built of pre-norm blocks with sparse layers (mlp-moe, transformer):
// the block norm (RMSNorm, or LayerNorm with bias tensor ib) over rows of width D,
void moe_model_norm_forward(int rms, const struct moe_params *p, float *y, float *mean, float *rstd,
                            const float *x, int ig, int ib, size_t T, size_t D);
void moe_model_norm_backward(int rms, const struct moe_params *p, float *dx, const float *dy, const float *x,
                             const float *mean, const float *rstd, int ig, int ib, size_t T, size_t D);
// the FFN of block l: a sparse layer (moe, named layers.l.moe, settings lc with
// the layer number set) or a dense FFN of width hp->n_ff_dense whose tensor
// indices go to *w[0..2] (w1, w3 (swiglu), w2; -1 when absent) and its saved
// activations to *act[0..2] (a, b (swiglu), hh), for dT tokens;
// The width of dense FFN blocks, named after the keys it comes from.
struct moe_dim moe_model_dense_dim(const struct moe_model_hp *hp);
int moe_model_ffn_declare(struct moe_plan *pl, const struct moe_model_hp *hp, const struct moe_layer_cfg *lc,
                          size_t l, int sparse, struct moe_dim dT, struct moe_layer *moe, int *w[3], float **act[3]);
// and ops over m->moe_layers: state tensors, layer i, evaluation capacity, and
// balanced hash tables from key frequencies freq.
size_t moe_model_layers_state(struct moe_model *m, struct moe_st_ref *refs, size_t max);
struct moe_layer *moe_model_layers_at(struct moe_model *m, size_t i);
void moe_model_layers_set_eval_capacity(struct moe_model *m, double capacity_factor);
void moe_model_layers_fit_hash(struct moe_model *m, const uint64_t *freq);

#endif
