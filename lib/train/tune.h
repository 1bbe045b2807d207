// tune.h: what a fine-tuning run changes. Two mechanisms, usable together:
//   - partial fine-tuning: a set of the model's tensors is frozen (never
//     updated, byte-identical after training), chosen by globs over tensor names;
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
#include "core/status.h"

// Does name match any of the n comma-free globs (fnmatch(3), '*' crosses dots)?
int moe_tune_match(const char *const *globs, size_t n, const char *name);

// MOE_ECONFIG naming `what` when a glob matches no tensor of p (a typo would
// otherwise silently select nothing).
int moe_tune_check_globs(const struct moe_params *p, const char *const *globs, size_t n, const char *what,
                         struct moe_err *err);

// frozen[i] (p->n entries) = 1 for tensor i not trained: trained are the tensors
// matching a glob of `trainable` (all when n_trainable = 0) and no glob of
// `freeze`. A glob that matches no tensor, or a selection that leaves nothing
// trainable, is MOE_ECONFIG naming `what_t` / `what_f` (the config keys). Returns 0.
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

struct moe_lora {
    struct moe_params p;          // the adapter tensors (A, B per target)
    struct moe_lora_target *t;
    size_t n;
    size_t rank;
    double alpha, scale;          // scale = alpha / rank
    float *tmp;                   // scratch (out, in) for the backward of shared adapters
};

// Adapters of rank r on every matrix (2-d tensor, or 3-d expert tensor) of the
// model whose name matches a glob of `targets` and whose frozen[] entry is 1
// (a matrix that is trained itself gets no adapter); shared = one adapter per
// expert tensor instead of one per expert. Copies the base values W0 from p.
// MOE_ECONFIG when a glob matches no tensor or no matrix is adapted.
int moe_lora_create(struct moe_lora *l, const struct moe_params *p, const uint8_t *frozen,
                    const char *const *targets, size_t n_targets, size_t rank, double alpha, int shared,
                    struct moe_err *err);
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
