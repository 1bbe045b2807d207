// tune.h: what a fine-tuning run changes. Two mechanisms, usable together:
//   - partial fine-tuning: a set of the model's tensors, or of the experts of
//     expert tensors, is frozen (never updated, byte-identical after training),
//     chosen by globs over tensor names (struct moe_tune_sel below);
//   - LoRA adapters (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language
//     Models", eq. 3): a frozen matrix W0 (out, in) is used as
//         W = W0 + (alpha / r) * B * A,   A (r, in), B (out, r),
//     A drawn Kaiming-uniform (bound 1/sqrt(in)), B = 0, so the model's output
//     at step 0 is the base model's bit for bit. Expert tensors (E, out, in) get
//     one adapter per expert, A (E, r, in) and B (E, out, r), or one shared by
//     all experts, A (r, in) and B (out, r).
// How adapters are applied: W is materialised into the model's own parameter
// slot before every forward pass (moe_lora_apply), so every model and every
// kernel sees an ordinary matrix; the gradient the model leaves in that slot
// is dL/dW, from which dL/dB = s dW A^T and dL/dA = s B^T dW (moe_lora_backward;
// shared adapters sum over experts). The frozen W0 is kept in the adapter set.
// Adapter tensors are named "<base>.lora_A" and "<base>.lora_B" (the PEFT
// layout, [r, in] and [out, r] per matrix).
#ifndef MOE_TUNE_H
#define MOE_TUNE_H

#include <stddef.h>
#include <stdint.h>

#include "core/params.h"
#include "core/plan.h"
#include "core/status.h"
#include "io/config.h"

// Does name match any of the n comma-free globs (fnmatch(3), '*' crosses dots)?
int moe_tune_match(const char *const *globs, size_t n, const char *name);

// MOE_ECONFIG naming `what` when a glob matches no tensor of p (a typo would
// otherwise silently select nothing).
int moe_tune_check_globs(const struct moe_params *p, const char *const *globs, size_t n, const char *what,
                         struct moe_err *err);

// ---- what a tuning run trains, tensor by tensor and expert by expert ----
// A glob of train.trainable / train.freeze is "PATTERN", "PATTERN@A" or
// "PATTERN@A-B" (decimal expert indices, 0 <= A <= B, inclusive; the last '@'
// starts the range). PATTERN is matched as by moe_tune_match. A plain glob names
// whole tensors; a ranged one names the slices [A..B] of the expert tensors it
// matches. An expert tensor is a 3-d tensor [E, out, in] with a name component
// "experts" (layers.{l}.moe.experts.w1, .w2, .w3; the mixture's experts.w1, ...),
// whose slice [e], expert e's matrix, is out * in contiguous floats. Shared
// experts (.moe.shared.*) and 2-d expert biases are not expert tensors here.
//
// The selection is a per-tensor mask plus, for the tensors trained only in
// part, a per-expert mask:
//   frozen[i] = 1            tensor i is not trained at all;
//   frozen[i] = 0            tensor i is trained: in full when frozen_experts[i]
//                            is NULL, else the slices e with frozen_experts[i][e] = 0.
// A per-expert mask exists only where its flags differ (at least one slice
// trained and one frozen), so code that knows only frozen[] (LoRA: a tensor
// trained even in part gets no adapter) sees a partly trained tensor as trained.
// frozen = NULL (no selection) trains everything.
struct moe_tune_sel {
    size_t n;                 // tensors of the model
    uint8_t *frozen;          // (n) 1: tensor i is not trained
    uint8_t **frozen_experts; // (n) NULL, or for a tensor trained in part its E flags, 1: slice [e] not trained
};

// The expert range of a glob: 0 for a plain glob (*ret_len = strlen(glob)), 1
// for "PATTERN@A[-B]" (*ret_len = the length of PATTERN, *ret_first = A,
// *ret_last = B), MOE_ECONFIG (no message) for a malformed range ("@", "@x",
// "@2-1", "@-1", "@1-").
int moe_tune_glob_range(const char *glob, size_t *ret_len, size_t *ret_first, size_t *ret_last);
// Is tensor t an expert tensor (see above)?
int moe_tune_is_expert_tensor(const struct moe_tensor *t);

// Every tensor of p trained (frozen = 0) or frozen (1), no per-expert masks.
int moe_tune_sel_init(struct moe_tune_sel *s, const struct moe_params *p, int frozen, struct moe_err *err);
// Mark what the globs name (whole tensors, or expert slices for ranged globs)
// as frozen (1) or trained (0); later marks override earlier ones. MOE_ECONFIG
// naming `what` (the config key), the glob and, where one is at fault, the
// tensor: a malformed range, a glob that matches no tensor, a ranged glob that
// matches a tensor other than an expert tensor or names an expert >= its E.
// what = NULL: globs may match nothing and must be plain (built-in lists).
int moe_tune_sel_mark(struct moe_tune_sel *s, const struct moe_params *p, const char *const *globs, size_t n,
                      int frozen, const char *what, struct moe_err *err);
// Is slice e of tensor i (e = 0 for tensors that are not expert tensors) trained?
int moe_tune_sel_trained(const struct moe_tune_sel *s, size_t i, size_t e);
// Parameters trained (all of p when s->frozen is NULL).
size_t moe_tune_sel_count(const struct moe_tune_sel *s, const struct moe_params *p);
void moe_tune_sel_release(struct moe_tune_sel *s);

// The selection of `moe train`: trained are the tensors and expert slices that
// a glob of `trainable` names (everything when n_trainable = 0) and no glob of
// `freeze` names. Errors as moe_tune_sel_mark, and MOE_ECONFIG naming `what_t`
// / `what_f` (the config keys) when nothing is left trainable.
int moe_tune_select_ex(struct moe_tune_sel *ret, const struct moe_params *p, const char *const *trainable,
                       size_t n_trainable, const char *const *freeze, size_t n_freeze, const char *what_t,
                       const char *what_f, struct moe_err *err);
// The same as a per-tensor mask only: frozen[i] (p->n entries) = 1 for tensor
// i not trained at all (a tensor trained in part counts as trained). Returns 0.
int moe_tune_select(const struct moe_params *p, const char *const *trainable, size_t n_trainable,
                    const char *const *freeze, size_t n_freeze, const char *what_t, const char *what_f,
                    uint8_t *frozen, struct moe_err *err);

struct moe_lora_target {
    int base;         // tensor index in the model's registry
    size_t E;         // matrices in the tensor (1 for 2-d tensors)
    size_t out, in;   // each matrix is (out, in)
    int shared;       // one adapter for all E matrices
    int a, b;         // tensor indices of A and B in the adapter registry
    float *w0;        // (E, out, in) the frozen base values
};

// The lora.* keys (tune.c) read into a typed struct; the strings point into the
// config and live as long as it.
struct moe_lora_cfg {
    size_t rank;            // 0 = no adapters
    double alpha;           // W = W0 + (alpha / rank) B A
    const char **targets;   // (n_targets) globs over tensor names
    size_t n_targets;
    int expert_shared;      // lora.expert_mode shared (else per-expert)
    int freeze_router;
};
extern const struct moe_cfg_key moe_lora_keys[];
extern const size_t moe_lora_keys_len;
int moe_lora_cfg_parse(struct moe_lora_cfg *c, const struct moe_config *cfg, struct moe_err *err);
void moe_lora_cfg_release(struct moe_lora_cfg *c);

struct moe_lora {
    struct moe_params p;          // the adapter tensors (A, B per target)
    struct moe_lora_target *t;
    size_t n;
    size_t rank;
    double alpha, scale;          // scale = alpha / rank
    float *tmp;                   // scratch (out, in): s B A of one matrix (moe_lora_apply)
    struct moe_plan plan;         // the buffers besides the adapters: each target's w0, tmp
};

// The names moe_lora_select and `moe train --trainable / --freeze` give the
// train.trainable and train.freeze globs in their messages.
#define MOE_TUNE_WHAT_TRAINABLE "train.trainable (--trainable)"
#define MOE_TUNE_WHAT_FREEZE "train.freeze (--freeze)"

// What a LoRA run trains of the base besides the adapters: nothing but the
// routers ("*.router.*", and "*.lang_emb", which routes by language) unless
// freeze_router, and what `trainable` names (tensors or expert slices);
// `freeze` has the last word. Errors as moe_tune_sel_mark.
int moe_lora_select(struct moe_tune_sel *ret, const struct moe_params *p, int freeze_router,
                    const char *const *trainable, size_t n_trainable, const char *const *freeze, size_t n_freeze,
                    struct moe_err *err);

// Adapters of rank r on every matrix (2-d tensor, or 3-d expert tensor) of the
// model whose name matches a glob of `targets` and whose frozen[] entry is 1
// (a matrix that is trained itself, even in part, gets no adapter); shared = one adapter per
// expert tensor instead of one per expert. Copies the base values W0 from p.
// MOE_ECONFIG when a glob matches no tensor or no matrix is adapted.
// moe_lora_create is moe_lora_plan then moe_lora_alloc.
int moe_lora_create(struct moe_lora *l, const struct moe_params *p, const uint8_t *frozen,
                    const char *const *targets, size_t n_targets, size_t rank, double alpha, int shared,
                    struct moe_err *err);
// The adapters' layout with nothing allocated: l->p registers A and B of every
// target, l->t the targets, l->plan declares each target's W0 and the scratch.
// p need only be registered (names and shapes): the memory estimate lays the
// adapters out over the model's registry before the model exists
// (train/train.h MOE_RUN_LORA). Errors as moe_lora_create; l is released on one.
int moe_lora_plan(struct moe_lora *l, const struct moe_params *p, const uint8_t *frozen,
                  const char *const *targets, size_t n_targets, size_t rank, double alpha, int shared,
                  struct moe_err *err);
// Allocate the layout of moe_lora_plan (the adapters' values and gradients, the
// plan's buffers) and copy W0 from p, whose registry the layout was made over.
// MOE_ENOMEM; the caller releases l either way.
int moe_lora_alloc(struct moe_lora *l, const struct moe_params *p, struct moe_err *err);
// The bytes moe_lora_alloc allocates for the layout l, as the allocators round
// them: the adapters' values and gradients and the plan's buffers (saturates).
size_t moe_lora_bytes(const struct moe_lora *l);
// A LoRA run's tuning (the lora.* keys c, the train.trainable and train.freeze
// globs) over the model's registry p: what it trains of the base (*ret_sel,
// moe_lora_select) and the adapters' layout (*ret_l, moe_lora_plan; allocate
// with moe_lora_alloc). On an error both are left empty (released).
int moe_lora_setup(struct moe_tune_sel *ret_sel, struct moe_lora *ret_l, const struct moe_params *p,
                   const struct moe_lora_cfg *c, const char *const *trainable, size_t n_trainable,
                   const char *const *freeze, size_t n_freeze, struct moe_err *err);
// The floats the optimizer of a run with selection sel and adapters l updates
// (train.h moe_train_segments): the trained tensors and expert slices of p and
// every adapter float as registered (l->p.numel).
size_t moe_lora_trained(const struct moe_tune_sel *sel, const struct moe_params *p, const struct moe_lora *l);
// A ~ U(-1/sqrt(in), 1/sqrt(in)) from (seed, tensor name), B = 0.
void moe_lora_init(struct moe_lora *l, uint64_t seed);
// W = W0 + s B A into the model's slots (an element whose update is exactly 0
// keeps W0's bits, so a zero B reproduces the base model exactly).
void moe_lora_apply(const struct moe_lora *l, struct moe_params *p);
// Put W0 back into the model's slots (for writing the base weights).
void moe_lora_unapply(const struct moe_lora *l, struct moe_params *p);
// Adapter gradients from the model's gradient dL/dW, added into l->p.grad.
void moe_lora_backward(struct moe_lora *l, const struct moe_params *p);
// Adapter parameters (sum of A and B sizes).
size_t moe_lora_count(const struct moe_lora *l);
void moe_lora_release(struct moe_lora *l);

#endif
