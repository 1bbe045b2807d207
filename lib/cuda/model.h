// model.h: a model's training step resident on a CUDA device (mlp-moe, and
// the Transformer language model: cuda/transformer.c): the parameters in the
// CPU registry's flat layout (core/params.h), their gradients and the
// optimizer's moments in the same layout, the activations, and one device MoE
// layer (cuda/layer.h) per sparse block made in its slices of those buffers.
// A step is the CPU model's forward and backward (model/mlp_moe.c,
// model/transformer.c), the trainer's global gradient norm (its units and
// order) and train/optim.c's update, each through cuda/ops.h and
// cuda/linear.h: the only copies are the batch in, and the loss, the
// auxiliary losses and the gradient norm's sums out (and the training
// statistics' inputs when asked: moe_cuda_model_stats). Weights and moments
// cross to and from the host in the CPU's layout, so a checkpoint written from
// either side is the same file.
//
// What it covers: mlp-moe and transformer, their sparse blocks with the
// routers and experts of the device layer (layer.h: every router, shared
// experts, bias balancing, whose offsets cross with the weights; hash keys
// made on the host from the batch) and their dense blocks
// (model.moe_every > 1: the FFN of moe/experts.c); the Transformer's
// embeddings, causal attention, tied or untied head and language-aware
// routing (moe.lang_router); LayerNorm or RMSNorm, cross-entropy or squared
// error, GD, SGD and AdamW with clipping; dropout (model.dropout.*: the CPU's
// masks); distillation from a teacher on the same device
// (moe_cuda_model_set_teacher). Refused with one line by
// moe_cuda_model_create: other models, and whatever the device layer refuses. For a transformer, T_max and a
// batch's rows are windows of model.n_ctx tokens.
//
// C against ops.h and blas.h only: a CUDA build links it into libmoe, and the
// tests run it on the host through tests/cuda_host.c, where a step must give
// the CPU model's bits (test_cuda_model_host).
#ifndef MOE_CUDA_MODEL_H
#define MOE_CUDA_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"

struct moe_model;
struct moe_model_hp;
struct moe_optim;
struct moe_batch;
struct moe_stats;
struct moe_cuda_model;
struct moe_lora;

// The device model of m (built from hp, weights initialised or loaded) for
// batches of up to T_max rows, with o's optimizer state: m's weights and o's
// moments (o->numel floats each; NULL: zero) copied to the device. o NULL: a
// model for evaluation passes only (a teacher), without gradients or moments.
// Every weight is trained (one optimizer segment, the whole registry) until
// moe_cuda_model_set_train says otherwise.
int moe_cuda_model_create(struct moe_cuda_model **ret, const struct moe_model *m, const struct moe_model_hp *hp,
                          const struct moe_optim *o, size_t T_max, struct moe_err *err);
void moe_cuda_model_free(struct moe_cuda_model *d);
// What create refuses (the model's and its layers' one-line reasons,
// MOE_EINVAL), without allocating anything: 0 when the device can train m.
int moe_cuda_model_check(const struct moe_model *m, const struct moe_model_hp *hp, struct moe_err *err);

// One training step on batch b (its rows x and labels or targets, and its step
// number: the router's random streams): gradients from zero, forward and
// backward, the global gradient norm, then o's update (o->lr as the caller set
// it; o->t advanced). *ret_loss: the batch's summed loss (stats.loss's
// meaning); *ret_aux: the layers' weighted auxiliary losses added in layer
// order; *ret_gnorm: the gradient norm. A non-finite gradient norm is
// MOE_ENUMERIC before any update.
int moe_cuda_model_step(struct moe_cuda_model *d, const struct moe_batch *b, struct moe_optim *o, double *ret_loss,
                        double *ret_aux, double *ret_gnorm, struct moe_err *err);

// The step in two parts, for a caller that checks between them (the
// trainer): moe_cuda_model_grad is the forward and backward (gradients from
// zero; *ret_loss, *ret_aux and *ret_gnorm as above, any of them non-finite
// as they came out); moe_cuda_model_update is o's update from those gradients
// with their norm gnorm (o->lr as the caller set it; o->t advanced).
int moe_cuda_model_grad(struct moe_cuda_model *d, const struct moe_batch *b, double *ret_loss, double *ret_aux,
                        double *ret_gnorm, struct moe_err *err);
int moe_cuda_model_update(struct moe_cuda_model *d, struct moe_optim *o, double gnorm, struct moe_err *err);

// The same parts for gradient accumulation (train.accumulate: the trainer's
// train_micro, accumulate and train_update): moe_cuda_model_backprop is one
// micro-batch's forward and backward (gradients from zero, no norm);
// moe_cuda_model_fold adds micro-batch k's gradients with weight w (its
// share of the step's rows) into the step's sum, kept on the device, and the
// last one (last) leaves the sum in the gradients, as core/params.h moe_fold
// (a step of one micro-batch: nothing to do); moe_cuda_model_gnorm is the
// global gradient norm of the gradients as they are.
int moe_cuda_model_backprop(struct moe_cuda_model *d, const struct moe_batch *b, double *ret_loss, double *ret_aux,
                            struct moe_err *err);
int moe_cuda_model_fold(struct moe_cuda_model *d, size_t k, int last, float w, struct moe_err *err);
int moe_cuda_model_gnorm(struct moe_cuda_model *d, double *ret_gnorm, struct moe_err *err);

// The statistics of the last pass over batch b (moe_cuda_model_grad's) added
// to s as the CPU model's training pass adds them (moe_model_run with stats):
// the loss, the head's predictions against the targets, and every layer's
// routing (s->route[l], labels: the batch's classes, or its groups). What
// crosses from the device: the head's outputs (T, O) and each layer's routing
// (T x (E + 4 S + 1) values and 2 E counts); the sums are the host's, in the
// CPU's order, so the same values give the same bits.
int moe_cuda_model_stats(struct moe_cuda_model *d, const struct moe_batch *b, struct moe_stats *s,
                         struct moe_err *err);

// Evaluation of batch b (moe_model_run without gradients: no noise or
// jitter, the evaluation capacity factor): the forward pass and its
// statistics added to s as moe_cuda_model_stats adds a step's.
int moe_cuda_model_eval(struct moe_cuda_model *d, const struct moe_batch *b, struct moe_stats *s, struct moe_err *err);

// Distillation (train/train.h struct moe_distill) on the device: every
// training pass of d (moe_cuda_model_backprop, _grad, _step) first runs
// teacher, a device model with d's outputs made with o NULL, over the same
// batch in evaluation mode; d's loss then takes the teacher's logits as the
// CPU's head does (model/model.c moe_model_ce_head): (1 - alpha) CE +
// alpha tau^2 KL at temperature tau, or with sym (MoEBERT) CE + alpha
// symmetric KL and, in the backward, alpha times each block output's mean
// squared distance to the teacher's. The loss reported stays d's
// cross-entropy. teacher NULL: none. MOE_EINVAL (one line) when the
// teacher's outputs, losses, batch or (sym) block outputs do not fit d's.
// The teacher stays the caller's; it must outlive d's passes.
int moe_cuda_model_set_teacher(struct moe_cuda_model *d, struct moe_cuda_model *teacher, float alpha, float tau,
                               int sym, struct moe_err *err);

// What the updates change when not every weight is (the trainer's partial
// fine-tuning, train.trainable / train.freeze, and LoRA): the tensors and
// expert slices frozen and frozen_experts leave (train/tune.h's selection;
// NULL: all) and lora's adapters (NULL: none). The optimizer's segments and
// the gradient norm's units are the trainer's (train.h moe_train_segments,
// moe_train_norm_units) over the device's buffers; the moments are the
// segments' floats one after another (o->numel of create), and gradient
// accumulation folds each segment. lora (applied to m's weights as the host
// has it) moves to the device: each backward adds the adapters' gradients
// from the targets' dL/dW (moe_lora_backward's products), each update merges
// them into the targets (moe_lora_apply), and moe_cuda_model_download copies
// their weights (and gradients) back into lora->p; lora must outlive d. Once
// per model; MOE_EINVAL when the segments do not hold the moments' count.
int moe_cuda_model_set_train(struct moe_cuda_model *d, const uint8_t *frozen, uint8_t *const *frozen_experts,
                             struct moe_lora *lora, struct moe_err *err);

// Every sparse layer's evaluation capacity factor (the host model's
// set_eval_capacity), for the evaluation passes that follow.
void moe_cuda_model_set_eval_capacity(struct moe_cuda_model *d, double cf);
// The last pass's routing of every sparse layer into m's layers (their
// route's sel and gate, their plan's slot_row), as if m had run it.
int moe_cuda_model_route_to(const struct moe_cuda_model *d, struct moe_model *m, struct moe_err *err);

// The weights to m's registry (m->params.data), the last step's gradients to
// m->params.grad (NULL-safe: grad may be absent), and the moments to o->m,
// o->v where o has them.
int moe_cuda_model_download(const struct moe_cuda_model *d, struct moe_model *m, struct moe_optim *o,
                            struct moe_err *err);

#endif
