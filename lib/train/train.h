// train.h: the run configuration schema, data from config, optimisers and the
// training loop. Every subcommand is a thin driver over these.
#ifndef MOE_TRAIN_H
#define MOE_TRAIN_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "compress/prune.h"
#include "compress/qat.h"
#include "core/status.h"
#include "io/config.h"
#include "io/corpus.h"
#include "io/dataset.h"
#include "io/vocab.h"
#include "model/estimate.h"
#include "model/model.h"
#include "dist/dist.h"
#include "train/tune.h"

// The run configuration's schema (schema.c): every key of every layer.
const struct moe_cfg_key *moe_run_schema(void);
size_t moe_run_schema_len(void);

// ---- data named by the data.* keys ----
// The data.* keys (data.c): their schema rows, and moe_data_cfg_parse, the one
// place that reads them, into struct moe_data_cfg (io/dataset.h). It reads
// data.source's section only, copies the two other keys the data needs
// (train.seed for the synthetic generator and the table's random split,
// model.n_ctx for text windows), and checks what the schema cannot: the
// section's required keys (data.table.path, data.text.path), the table's lists
// (features, one target for classification, the where filters' syntax) and
// ranges ([lo, hi] with lo <= hi for both when split_column is set), and
// data.idx.classes (integers, at most 256). MOE_ECONFIG naming the key; c is
// zeroed on failure. The struct points into cfg and owns the table's lists
// (moe_data_cfg_release).
extern const struct moe_cfg_key moe_data_keys[];
extern const size_t moe_data_keys_len;
int moe_data_cfg_parse(struct moe_data_cfg *c, const struct moe_config *cfg, struct moe_err *err);
void moe_data_cfg_release(struct moe_data_cfg *c);

struct moe_data {
    struct moe_dataset train, test;
    // A validation split held out of the training data (data.synthetic.n_valid,
    // data.idx.valid_fraction, data.table.valid_fraction): n = 0 when there is none.
    // Text data keeps its validation part in `test` (the corpus's last fraction).
    struct moe_dataset valid;
    int standardized;
    struct moe_standardize stats;
    int has_text;             // data.source = text: the splits are windows over corpus
    struct moe_corpus corpus; // vocabulary, token streams and languages (the splits point into it: do not copy)
};
// Load the data c describes; for text data with a given vocabulary (a
// checkpoint's) instead of c's vocabulary file or one built from the training
// text (vocab may be NULL). *ret is zeroed on failure. Reads no key.
int moe_data_load_cfg(struct moe_data *ret, const struct moe_data_cfg *c, const struct moe_vocab *vocab,
                      struct moe_err *err);
// The same from a config: moe_data_cfg_parse, then moe_data_load_cfg.
int moe_data_load(struct moe_data *ret, const struct moe_config *cfg, struct moe_err *err);
int moe_data_load_ex(struct moe_data *ret, const struct moe_config *cfg, const struct moe_vocab *vocab,
                     struct moe_err *err);
// The shape of the data a config names when known without reading files
// (synthetic): moe_data_cfg_parse, then moe_data_shape_cfg (model/estimate.h),
// whose results it returns. 0 as well when the parse fails (only another
// source's section can): the loader, which needs to run anyway, reports it.
int moe_data_shape(const struct moe_config *cfg, enum moe_task *ret_task, size_t *ret_n_in, size_t *ret_n_out,
                   size_t *ret_n_train, size_t *ret_n_test, struct moe_err *err);
void moe_data_release(struct moe_data *d);
// Text data in checkpoints: the vocabulary as tensor "vocab.text" (U8, the
// vocabulary file's bytes, io/vocab.h) and the language names as metadata
// "data.languages" (a JSON array of strings).
#define MOE_VOCAB_TENSOR "vocab.text"
#define MOE_LANGUAGES_META "data.languages"
// The vocabulary stored in a checkpoint: 1 and *ret filled, 0 when the file has none.
int moe_data_vocab_read(const struct moe_st_file *f, struct moe_vocab *ret, struct moe_err *err);
// For text data: the checkpoint's vocabulary and, for a model with language
// embeddings, its languages (when it records them) are the data's (MOE_ESHAPE otherwise: its embeddings would mean other tokens).
int moe_data_check_text_checkpoint(const struct moe_data *d, const struct moe_st_file *f, struct moe_err *err);

// ---- optimisers over the flat parameter buffer ----
enum moe_optim_type { MOE_OPTIM_GD = 0, MOE_OPTIM_SGD = 1, MOE_OPTIM_ADAMW = 2 };
struct moe_optim {
    enum moe_optim_type type;
    double lr, momentum, beta1, beta2, eps, weight_decay, clip;
    size_t numel;
    uint64_t t;     // steps taken
    float *m, *v;   // (numel) momentum / Adam moments
    struct moe_plan *own; // the plan that holds m and v (moe_optim_init)
};
// Learning-rate schedules (optim.schedule; formulas at moe_lr_at in optim.c).
enum moe_lr_schedule { MOE_SCHED_CONSTANT = 0, MOE_SCHED_COSINE, MOE_SCHED_LINEAR, MOE_SCHED_INV_SQRT, MOE_N_SCHED };
// The optim.* keys (optim.c), read once into a typed struct.
struct moe_optim_cfg {
    enum moe_optim_type type;
    double lr, momentum, beta1, beta2, eps, weight_decay, clip;
    size_t batch_size;  // rows per micro-batch, 0 = full batch (gd is always full batch)
    enum moe_lr_schedule schedule;
    double min_lr;                       // the decay's floor
    uint64_t warmup_steps, decay_steps;  // decay_steps 0: the run's length
};
extern const struct moe_cfg_key moe_optim_keys[];
extern const size_t moe_optim_keys_len;
void moe_optim_cfg_parse(struct moe_optim_cfg *c, const struct moe_config *cfg);
// The rules between optim.* keys the schema cannot check (min_lr <= lr,
// inv_sqrt's warmup, decay_steps above warmup_steps); MOE_ECONFIG naming the key.
// moe_run_cfg_parse and moe_train_ex call it.
int moe_optim_cfg_check(const struct moe_optim_cfg *c, struct moe_err *err);
const char *moe_lr_schedule_name(enum moe_lr_schedule s); // optim.schedule's value
// The learning rate of optimizer step `step` (0-based: steps taken before it),
// a pure function of the step index, so a resumed run applies the same rates;
// run_steps is the run's length in optimizer steps (train.epochs x steps per
// epoch), used when optim.decay_steps is 0.
double moe_lr_at(const struct moe_optim_cfg *c, uint64_t run_steps, uint64_t step);
// 1 when the schedule's values depend on the run's length (cosine or linear
// decaying over the whole run): changing train.epochs changes every rate.
int moe_lr_schedule_uses_length(const struct moe_optim_cfg *c);
// The optimizer for numel parameter floats: its settings, and its moments
// (sgd: m; adamw: m and v) declared in p (role MOE_ROLE_OPTIM). Returns p->rc.
int moe_optim_declare(struct moe_optim *o, const struct moe_optim_cfg *c, size_t numel, struct moe_plan *p);
// The same, the moments allocated (zero) on their own; moe_optim_release frees them.
int moe_optim_init(struct moe_optim *o, const struct moe_optim_cfg *c, size_t numel, struct moe_err *err);
// One update of w from g. Returns the gradient's global L2 norm before clipping.
double moe_optim_step(struct moe_optim *o, float *w, float *g);
// The same step with the gradient norm already known (moe_optim_grad_norm).
void moe_optim_step_norm(struct moe_optim *o, float *w, float *g, double norm);
double moe_optim_grad_norm(const float *g, size_t n);
// sum g[i]^2 in double over fixed blocks of n (the same bits for any thread count)
double moe_optim_sum_sq(const float *g, size_t n);
// What a step updates when it is not one flat buffer: n weights w with gradients g.
// The segments' sizes must add up to the optimizer's numel.
struct moe_optim_seg {
    float *w, *g;
    size_t n;
};
void moe_optim_step_segs(struct moe_optim *o, const struct moe_optim_seg *s, size_t n_seg, double norm);
double moe_optim_grad_norm_segs(const struct moe_optim_seg *s, size_t n_seg);
// What a run trains, laid over one copy of the buffers: the registry's
// weights w and gradients g (core/params.h layout) and the adapters' lw, lg
// (ln floats; lw NULL: no LoRA). The trainer lays it over the host's
// buffers, the CUDA device model (cuda/model.h) over its own.
struct moe_train_layout {
    float *w, *g, *lw, *lg;
    size_t ln;
};
// The optimizer's segments of a run that trains what frozen and
// frozen_experts leave (train/tune.h's selection; NULL: everything) and the
// adapters: the whole registry when nothing is frozen and there are no
// adapters; else each trained tensor, or each trained expert slice of a
// tensor trained in part, runs that touch merged (the moments lie one after
// another either way, so this changes no result), then the adapters. Writes
// them to s unless s is NULL; returns their count.
size_t moe_train_segments(const struct moe_params *p, const uint8_t *frozen, uint8_t *const *frozen_experts,
                          const struct moe_train_layout *b, struct moe_optim_seg *s);
// The global gradient norm's units (g and n of each; w NULL), in order: each
// trained tensor in registry order, except that a tensor of routed experts
// (or one trained in part) counts each of its trained experts as a unit;
// then the adapters as one. Each is summed by moe_optim_sum_sq and the sums
// added in double in this order. Writes them to u unless u is NULL; returns
// their count.
size_t moe_train_norm_units(const struct moe_params *p, const uint8_t *frozen, uint8_t *const *frozen_experts,
                            const struct moe_train_layout *b, struct moe_optim_seg *u);
void moe_optim_release(struct moe_optim *o);

// ---- the training loop ----
// The train.* keys (trainer.c) read into a typed struct.
// train.prune.*: iterative structured pruning of FFN units on the schedule of
// moe_prune_schedule (compress/prune.h); sparsity 0: no schedule.
struct moe_prune_cfg {
    double sparsity;
    uint64_t start, steps, every;
    enum moe_neuron_score score;
    int global;
};
enum moe_criterion { MOE_CRIT_NONE = 0, MOE_CRIT_LOSS = 1, MOE_CRIT_MSE = 2, MOE_CRIT_ACCURACY = 3 };
struct moe_train_cfg {
    uint64_t seed, epochs, eval_every, log_every, checkpoint_every;
    int shuffle;
    enum moe_criterion criterion;
    int criterion_valid;       // train.criterion_split = valid: the criterion reads the validation split
    int select_best;           // train.select = best_valid_loss: the run ends with the best validation evaluation's parameters
    double criterion_value, active_threshold;
    size_t max_batch_eval;
    size_t accumulate;  // micro-batches per optimizer step (gradient accumulation), >= 1
    // partial fine-tuning globs (train/tune.h); the strings point into the config
    const char **trainable, **freeze;
    size_t n_trainable, n_freeze;
    struct moe_prune_cfg prune; // train.prune.*
    // train.qat.*: quantization-aware training (qat 0: none); the globs point into the config
    int qat;
    struct moe_quant_spec qat_spec;
    const char **qat_targets;
    size_t n_qat_targets;
};
const char *moe_criterion_name(enum moe_criterion c); // train.criterion's value
extern const struct moe_cfg_key moe_train_keys[];
extern const size_t moe_train_keys_len;
int moe_train_cfg_parse(struct moe_train_cfg *c, const struct moe_config *cfg, struct moe_err *err);
void moe_train_cfg_release(struct moe_train_cfg *c);
// The rules between train.* and optim.* keys (moe_optim_cfg_check, and
// train.accumulate > 1 only with mini-batches); MOE_ECONFIG naming the key.
int moe_train_cfg_check(const struct moe_train_cfg *tc, const struct moe_optim_cfg *oc, struct moe_err *err);
// One evaluation of a split, as written to metrics.csv. NaN = not applicable.
struct moe_eval_row {
    uint64_t step;
    uint64_t epoch;
    const char *split;    // "train", "valid", "test" or "batch"
    size_t n;             // rows evaluated
    double loss;          // mean objective per row
    double mse;           // mean ||prediction - target||^2 per row
    double accuracy;      // classification only
    double gate_entropy;  // mean H(p) in nats, mixtures only
    double active_experts;// experts with mean proportion above the threshold, mixtures only
    double expert_region_mi; // bits, when the data knows its regions
    const double *gate_mean; // (n_expert) mean mixing proportions, or NULL
    size_t n_expert;
    // Sparse routing, means over the sparse layers (NaN without them):
    double aux_loss;         // unweighted auxiliary loss of the layer's convention (token-weighted batch mean)
    double z_loss;           // router z-loss (token-weighted batch mean)
    double load_cv;          // CV of tokens routed per expert (before capacity)
    double importance_cv;    // CV of summed gate weights per expert
    double load_max_mean;    // max / mean tokens routed per expert
    double dropped_fraction; // assignments dropped for capacity / assignments
    double router_entropy;   // mean H(p_t) in nats
    double expert_label_mi;  // bits, I(first-choice expert; class or region)
    const struct moe_route_acc *route; // (n_route) the per-layer statistics behind them
    size_t n_route;
    // Language models (NaN otherwise): loss is nats per predicted token.
    double bits_per_byte;    // nats / ln 2 over the source bytes of the predicted tokens
    double expert_lang_mi;   // bits, I(first-choice expert; language), means over the sparse layers (several languages)
    // expert_label_mi is I(first-choice expert; byte class of the input token) for language models.
    const double *lang_loss; // (n_lang) per-language sums behind them (nats, tokens, bytes)
    const uint64_t *lang_tokens;
    const double *lang_bytes;
    size_t n_lang;
};
// Fill a row's means from accumulated statistics of n rows (split and step untouched).
void moe_eval_row_fill(struct moe_eval_row *r, const struct moe_stats *s, enum moe_task task, double active_threshold);
typedef int (*moe_eval_cb)(void *ctx, const struct moe_eval_row *row, struct moe_err *err);

struct moe_train_result {
    uint64_t steps;
    uint64_t epochs;          // epochs run
    int64_t criterion_epoch;  // first epoch meeting the criterion, -1 if never (or none set)
    struct moe_eval_row final_train, final_test;
    struct moe_eval_row final_valid; // split "valid" with a validation split (data->valid.n > 0), else n = 0
    int select_best;          // train.select = best_valid_loss
    int64_t selected_epoch;   // with select_best: the epoch whose parameters the run ends with (final_* are theirs)
    double final_gate_mean[64]; // first 64 experts' final training mixing proportions
    double wall_seconds;
    double rows_per_second;   // training rows processed per second
    double tokens_per_second; // language models: training tokens (rows x n_ctx) per second
    uint64_t steps_per_epoch; // optimizer steps per epoch (micro-batches / train.accumulate, rounded up)
    uint64_t run_steps;       // train.epochs x steps_per_epoch: the learning-rate schedule's length
    double lr_last;           // the learning rate of the last step taken (NaN before any)
    // Data parallelism (hooks->dist, N > 1; else all 0): this process's steps in this
    // call, the seconds its step exchanges took (dp_step: gathers, all-to-all, waits for
    // the slowest process), the bytes it sent to other processes in them, and its
    // training seconds in this call.
    int dp_processes;
    uint64_t dp_steps;
    double dp_exchange_seconds, dp_bytes_sent, dp_train_seconds;
    // Expert parallelism (hooks->expert_parallel): the same for the expert
    // exchanges (rows to and from the experts' processes, expert gradients back),
    // which dp_exchange_seconds and dp_bytes_sent do not count.
    int ep;
    double ep_exchange_seconds, ep_bytes_sent;
};

// Windows of a language-model split gathered into a batch (trainer.c): n rows
// of n_ctx + 1 tokens with their byte classes, languages and target bytes.
struct moe_lm_batch {
    int32_t *tok, *lang;
    uint8_t *cls;
    uint64_t *bytes;
};
int moe_lm_batch_alloc(struct moe_lm_batch *b, size_t n, size_t n_ctx, struct moe_err *err);
void moe_lm_batch_release(struct moe_lm_batch *b);
// Rows first .. first + n - 1 of d: epoch > 0, that epoch's random training
// windows (io/corpus.h moe_text_random_start); epoch 0, the fixed evaluation windows.
struct moe_batch moe_lm_batch_fill(const struct moe_dataset *d, struct moe_lm_batch *b, uint64_t seed,
                                   uint64_t epoch, size_t first, size_t n);

// Statistics for evaluating or training m on data like d: gate and region
// statistics, routing statistics with the data's labels (classes, regions, or
// for language models byte class x language pairs), per-language sums.
int moe_train_stats_init(struct moe_stats *s, const struct moe_model *m, const struct moe_dataset *d,
                         struct moe_err *err);
// Evaluate a whole split in chunks (language models: its fixed windows). row->split is set from `split`.
int moe_evaluate(struct moe_model *m, const struct moe_dataset *d, const char *split, size_t chunk,
                 double active_threshold, struct moe_stats *scratch, struct moe_eval_row *ret, struct moe_err *err);
// The same with each pass on dev (cuda/model.h: a device model holding m's
// weights, for batches of at least the chunk's rows; NULL: on the CPU): the
// statistics cross from the device and are summed on the host as for m.
struct moe_cuda_model;
int moe_evaluate_on(struct moe_model *m, struct moe_cuda_model *dev, const struct moe_dataset *d, const char *split,
                    size_t chunk, double active_threshold, struct moe_stats *scratch, struct moe_eval_row *ret,
                    struct moe_err *err);

// The gradient of the loss's mean over a whole split (its rows; language
// models: its fixed windows), in chunks of at most `chunk` rows, into g
// (m->params.numel doubles, the registry's layout): each chunk's gradient
// (moe_model_run in training mode: router noise, jitter and dropout as
// configured) weighted by its share of the rows. The registry's gradients are
// zero afterwards.
int moe_split_gradient(struct moe_model *m, const struct moe_dataset *d, size_t chunk, double *g, struct moe_err *err);

// Train m (weights already initialised or loaded) on data per the config; calls cb
// for each metrics row (may be NULL): split "train" and "test" for evaluations
// (evaluation mode), "batch" for training-mode means over recent steps. Fails with
// MOE_ENUMERIC on a non-finite loss or gradient, naming the step and the first tensor affected.
int moe_train(struct moe_model *m, const struct moe_data *data, const struct moe_config *cfg, moe_eval_cb cb,
              void *ctx, struct moe_train_result *ret, struct moe_err *err);

// ---- what a run costs, from its config (schema.c) ----
// What the run does with the model, as the estimate counts it:
//   MOE_RUN_EVAL   evaluation passes only (no optimizer, one set of statistics);
//   MOE_RUN_TRAIN  training every parameter: the optimizer's moments for all of
//                  them and the training loop's buffers;
//   MOE_RUN_LORA   `moe lora`: the lora.* adapters on the frozen base, with the
//                  routers and train.trainable trained, as tune.h
//                  moe_lora_setup lays them out over the model's registry: the
//                  optimizer's moments (and train.accumulate's sum) for what is
//                  trained only, the adapters' values, gradients, W0 and
//                  scratch in bytes_adapters; the base keeps every gradient
//                  (dL/dW of an adapted matrix is where the adapters' come from).
//                  The tuning's config errors (a glob that matches nothing, a
//                  rank above a matrix's side) are the estimate's.
enum moe_run_kind { MOE_RUN_EVAL, MOE_RUN_TRAIN, MOE_RUN_LORA };

// The estimate of model/estimate.h (moe_model_estimate_hp) with the model,
// data, optimiser and training keys parsed once here (moe_model_hp_parse,
// moe_data_cfg_parse, moe_optim_cfg_parse, moe_train_cfg_parse). task, n_in,
// n_out, rows, max_batch: as moe_model_estimate_hp; kind: as above. The model's rules are
// checked first with the loss it is trained with (NULL: loss.type), as
// moe_model_create does (moe_model_check), so --dry-run refuses what a run
// would. Returns the first parse or rule error, else the estimate's. *ret is
// written only on success.
int moe_model_estimate(const struct moe_config *cfg, const char *loss, enum moe_task task, size_t n_in,
                       size_t n_out, size_t n_train_rows, size_t n_test_rows, size_t max_batch,
                       enum moe_run_kind kind, struct moe_model_estimate *ret, struct moe_err *err);

// ---- checkpoints: where a run stands, enough to continue it exactly ----
// A run is a sequence of epochs; epoch 0 is the evaluation before any training.
// Within epoch e >= 1 the rows are visited in the order of permutation(seed, e),
// a batch at a time from next_row. Together with the weights, the model's state
// tensors, the optimizer moments and the batch statistics accumulated since the
// last split=batch row, this position determines the rest of the run: a resumed
// run writes the same metrics rows and ends with the same bytes as one never stopped.
struct moe_train_pos {
    uint64_t steps;          // optimizer steps taken
    uint64_t epoch;          // epoch in progress
    uint64_t next_row;       // first row (in the epoch's order) of the next batch; >= rows: only evaluation is left
    int64_t criterion_epoch; // first epoch meeting train.criterion, -1 if none yet
    uint64_t rows_seen;      // training rows processed so far
    double train_seconds;    // time spent training so far (not part of the exactness promise)
    int finished;            // the run is complete
};

// Statistics as one flat F64 vector (the checkpoint's train.batch_stats; counts
// as doubles, exact below 2^53): pack with out == NULL counts its length.
size_t moe_stats_pack(const struct moe_stats *s, double *out);
void moe_stats_unpack(struct moe_stats *s, const double *in);

// What a checkpoint hook receives: the position and the state outside the model.
struct moe_train_ckpt {
    struct moe_train_pos pos;
    const struct moe_optim *opt;
    const struct moe_stats *batch_stats;
    // train.select = best_valid_loss: the snapshot of the best validation evaluation so far
    // (tensor "train.best": the parameters' flat buffer, then the model's F32 state), its epoch
    // (-1: none yet) and loss; best NULL otherwise (nothing written).
    const float *best;
    size_t best_n;
    int64_t best_epoch;
    double best_loss;
    // A run whose processes hold only their experts (expert parallelism): the
    // moments and the snapshot as written, whole, from fills (io/safetensors.h)
    // instead of opt->m, opt->v and best; NULL otherwise.
    const struct moe_st_ref *whole_m, *whole_v, *whole_best;
};
// With train.select = best_valid_loss: read the snapshot of a checkpoint into ck->best (best_n
// floats, allocated by the caller), ck->best_epoch and ck->best_loss; a checkpoint without one
// (no evaluation yet) leaves best_epoch -1.
int moe_train_best_read(const struct moe_st_file *f, float *best, size_t best_n, int64_t *best_epoch,
                        double *best_loss, struct moe_err *err);

// Where a run stands after a training step (moe_train_hooks.step): what a
// progress display needs, read-only. The steps of a run are at most epochs x
// steps_per_epoch (train.criterion may end it sooner).
struct moe_train_step_info {
    uint64_t step;            // optimizer steps taken, this one included
    uint64_t epoch, epochs;   // the epoch in progress (1-based), train.epochs
    uint64_t steps_per_epoch; // optimizer steps per epoch
    size_t rows;              // training rows in this step (all its micro-batches)
    size_t tokens_per_row;    // language models: n_ctx; 0 otherwise
    double loss_sum;          // the step's training objective summed over loss_n units
    double loss_n;            // rows (language models: predicted tokens)
    double lr;                // the learning rate the step used (optim.schedule)
    int lr_scheduled;         // the rate changes from step to step (a schedule other than constant, or warmup)
};

struct moe_train_hooks {
    moe_eval_cb row;  // metrics rows (may be NULL)
    void *ctx;        // passed to row and checkpoint
    // Called (if set) after every epoch but the last, after the last epoch's
    // training steps (before its evaluation: what extends a finished run),
    // every train.checkpoint_every steps, and when *stop is raised; rows
    // reported before the call are part of the state.
    int (*checkpoint)(void *ctx, const struct moe_train_ckpt *ck, struct moe_err *err);
    // Raised asynchronously (a signal handler): finish the current step, call
    // checkpoint, return MOE_EINTR.
    volatile sig_atomic_t *stop;
    // Continue from this checkpoint (NULL: a new run). The model's weights and
    // state must already be loaded from it (moe_model_load).
    const struct moe_st_file *resume;
    // Partial fine-tuning (train/tune.h, struct moe_tune_sel): frozen[i] = 1 keeps
    // the model's tensor i as it is; NULL trains every tensor. frozen_experts
    // (NULL, or p->n entries each NULL or E flags) keeps, of a tensor with
    // frozen[i] = 0, the expert slices [e] with frozen_experts[i][e] = 1 as they
    // are: the optimizer (moments, weight decay, clipping norm) sees only the
    // trained slices.
    const uint8_t *frozen;
    uint8_t *const *frozen_experts;
    // LoRA adapters trained along with the unfrozen tensors (NULL: none). The
    // trainer applies them before the first forward pass and after every step.
    struct moe_lora *lora;
    // Distillation (NULL: none).
    const struct moe_distill *distill;
    // The model's FFN masks (compress/prune.h; NULL: nothing pruned), the
    // caller's: read from --init or the resumed checkpoint, written with every
    // checkpoint and the model. The trainer zeroes the pruned units' weights
    // at the start, keeps their gradients (so their moments) zero, and with
    // train.prune.sparsity grows the masks on its schedule
    // (moe_prune_schedule), after the step that ends at a pruning step: a
    // checkpoint holds the masks of its step. Needed with train.prune.sparsity.
    struct moe_ffn_masks *prune;
    // Called (if set) after every training step with step_ctx; it must only
    // read: nothing it does changes the run.
    void (*step)(void *step_ctx, const struct moe_train_step_info *s);
    void *step_ctx;
    // Data parallelism over MPI processes (dist/dist.h; NULL or one process:
    // none). Every rank runs the same trainer on the same data and holds the
    // same weights; micro-batch k of a step (train.accumulate = A, a multiple
    // of the N processes) runs on rank k / (A / N), and the step's gradient is
    // the sum moe_train would form in one process, in the same order, so the
    // run's metrics and weights are byte-identical to one process's. Only rank
    // 0 should be given row, checkpoint and step hooks (the files); every
    // rank takes the same decisions (stops, faults, hook failures are agreed).
    struct moe_dist *dist;
    // With dist: the experts of every sparse layer spread over the processes
    // (dist/ep.h: --expert-parallel) instead of held by each. The micro-batches
    // are shared out as above, in rounds; the results are the same bytes.
    int expert_parallel;
    // Training steps on a CUDA device (NULL: on the CPU; moe_train_device_check
    // says what it needs): the weights, gradients, optimizer moments and
    // activations live on the device from the first step on (the device model,
    // lib/cuda/model.h), each step's batch goes in, its loss, gradient norm
    // and training statistics come out; evaluations run there too; the host's
    // weights and moments are brought up to date before each checkpoint and
    // at the end.
    const struct moe_train_device *device;
};
struct moe_train_device {
    int id;                        // CUDA device number
    const struct moe_model_hp *hp; // the model's hyperparameters (what it was built from)
};
// What training on a device needs (checked by moe_train_run too): one
// process; the device model refuses the rest (cuda/model.h). MOE_EINVAL
// naming the option.
int moe_train_device_check(int dist, struct moe_err *err);
// The global gradient norm over the trainer's units with nothing frozen, one
// process: each tensor, or each routed expert of an expert tensor, summed by
// moe_optim_sum_sq, added in registry order (device_check.c).
double moe_params_grad_norm_units(const struct moe_params *p);
// The CPU against a CUDA device over `steps` training steps of m
// (moe train --check-device; device_check.c says how): both from m's weights
// and fresh moments, step s on rows s*bs.. of tr in order (wrapping), the
// rate of step s of a run of run_steps steps (text: the windows of epoch 1
// for m->seed). m ends with the CPU's weights.
// Relative differences: max |device - cpu| over max |cpu| per tensor after the
// last step (NaN: a non-finite value on either side, or no such moment), and
// |device - cpu| / |cpu| for each step's loss and gradient norm.
struct moe_device_diff {
    const char *name; // the tensor's (points into m's registry)
    double w, g, m, v; // weights, gradients, moments m and v
};
struct moe_device_check {
    uint64_t steps;
    size_t n;                        // tensors
    struct moe_device_diff *t;       // (n)
    double *loss_cpu, *loss_dev;     // (steps) summed batch losses
    double *gnorm_cpu, *gnorm_dev;   // (steps)
    double max_rel;                  // the largest relative difference of all of them (NaN: a non-finite value)
    const char *max_what, *max_name; // where: "weights", "loss", ...; the tensor ("" for loss and norm)
};
int moe_train_check_device(struct moe_model *m, const struct moe_model_hp *hp, int device,
                           const struct moe_dataset *tr, const struct moe_optim_cfg *oc, size_t bs, uint64_t steps,
                           uint64_t run_steps, struct moe_device_check *ret, struct moe_err *err);
void moe_device_check_release(struct moe_device_check *c);
// What train.prune, train.qat and a model with pruned FFN units (masks = 1)
// need (checked by moe_train_run too): the CPU (device 0), one process (dist
// 0), no LoRA adapters (lora 0); with train.prune.sparsity an FFN to prune and
// a schedule that ends within the run (its optimizer steps from n_train rows);
// with train.qat targets that name weight matrices. MOE_ECONFIG or MOE_EINVAL
// naming the key.
int moe_train_compress_check(const struct moe_model *m, size_t n_train, const struct moe_train_cfg *tc,
                             const struct moe_optim_cfg *oc, int masks, int device, int dist, int lora,
                             struct moe_err *err);
// What data parallelism over n processes needs (checked by moe_train_run too):
// train.accumulate a multiple of n, no distillation or LoRA (yet), no bias
// balancing (its offsets change after every micro-batch). MOE_ECONFIG or
// MOE_EINVAL naming the key.
int moe_train_dp_check(const struct moe_model *m, size_t accumulate, int n, int distill, int lora,
                       struct moe_err *err);
// What expert parallelism over n processes needs on top (checked by
// moe_train_run too): sparse layers whose n_expert n divides, and every tensor
// trained (no frozen tensors or experts). MOE_ECONFIG or MOE_EINVAL.
int moe_train_ep_check(const struct moe_model *m, int n, int frozen, struct moe_err *err);
// The distill.* keys (distill.c) read into a typed struct; the strings point
// into the config and live as long as it.
struct moe_distill_cfg {
    const char *teacher, *baseline; // checkpoint paths, or NULL
    double temperature, alpha;      // the distillation term: alpha tau^2 KL at temperature tau
    int teacher_init;               // start student tensors from the teacher's namesakes
    int moebert;                    // MoEBERT conversion and objective
    const char *split;              // MoEBERT: "importance" or "random"
    int split_random;
    size_t shared;                  // MoEBERT: neurons every expert keeps
    double weight;                  // MoEBERT: weight of the distillation terms
};
extern const struct moe_cfg_key moe_distill_keys[];
extern const size_t moe_distill_keys_len;
void moe_distill_cfg_parse(struct moe_distill_cfg *c, const struct moe_config *cfg);

// Distillation (moe_train_hooks.distill): every training batch goes through the
// teacher (evaluation mode) first, and the student learns (1 - alpha) CE +
// alpha tau^2 KL(teacher || student) at temperature tau. The teacher must take
// the same inputs and give the same outputs as the model. MoEBERT
// (moe_batch_kd.sym, teacher_hidden): sym = 1 makes the objective CE + alpha
// (symmetric KL + the block outputs' MSE to the teacher's); teacher and model
// must then have block outputs of the same shape.
struct moe_distill {
    struct moe_model *teacher;
    float alpha, tau;
    int sym;
    // what the teacher was built from: a run on a CUDA device (hooks->device)
    // builds the teacher's device model from it (cuda/model.h
    // moe_cuda_model_set_teacher); the CPU does not need it
    const struct moe_model_hp *teacher_hp;
};
int moe_train_ex(struct moe_model *m, const struct moe_data *data, const struct moe_config *cfg,
                 const struct moe_train_hooks *hooks, struct moe_train_result *ret, struct moe_err *err);
// The same with the train.* and optim.* settings already read (moe_run_cfg_parse).
int moe_train_run(struct moe_model *m, const struct moe_data *data, const struct moe_train_cfg *tc,
                  const struct moe_optim_cfg *oc, const struct moe_train_hooks *hooks, struct moe_train_result *ret,
                  struct moe_err *err);

// Write a checkpoint: the model (moe_model_save) plus extra tensors, the
// optimizer moments ("optim.m", "optim.v"), the batch statistics ("train.batch_stats",
// F64) and the position (metadata "train.*"), atomically.
int moe_train_checkpoint_write(const char *path, struct moe_model *m, const struct moe_train_ckpt *ck,
                               const struct moe_st_ref *extra, size_t n_extra, const struct moe_st_meta *meta,
                               size_t n_meta, struct moe_err *err);
// A non-negative integer in a checkpoint's metadata (MOE_EFORMAT when missing or malformed).
int moe_train_meta_count(const struct moe_st_file *f, const char *key, uint64_t *ret, struct moe_err *err);
// Read the position of a checkpoint (MOE_EFORMAT if it is not a training checkpoint).
int moe_train_pos_read(const struct moe_st_file *f, struct moe_train_pos *ret, struct moe_err *err);
// Restore the optimizer moments and step count, and the batch statistics, from a checkpoint.
int moe_train_state_restore(const struct moe_st_file *f, struct moe_optim *o, struct moe_stats *batch_stats,
                            struct moe_err *err);

// ---- the whole run configuration, typed (schema.c) ----
// Every section, read once by moe_run_cfg_parse (each section's own parse
// function, which checks its rules); below it no code reads a key by string.
// Strings point into the config and live as long as it. The model's sparse
// layers' settings (model.moe) are read for the models that have them.
struct moe_run_cfg {
    struct moe_data_cfg data;
    struct moe_model_hp model;
    struct moe_optim_cfg optim;
    struct moe_train_cfg train;
    struct moe_distill_cfg distill;
    struct moe_lora_cfg lora;
};
int moe_run_cfg_parse(struct moe_run_cfg *rc, const struct moe_config *cfg, struct moe_err *err);
void moe_run_cfg_release(struct moe_run_cfg *rc);
// moe_model_estimate from the typed configuration.
int moe_run_estimate(const struct moe_run_cfg *rc, const char *loss, enum moe_task task, size_t n_in, size_t n_out,
                     size_t n_train_rows, size_t n_test_rows, size_t max_batch, enum moe_run_kind kind,
                     struct moe_model_estimate *ret, struct moe_err *err);

#endif
