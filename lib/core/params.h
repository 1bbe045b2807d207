// params.h: the named-parameter registry.
// Every trainable tensor of a model is a named slice of one flat float buffer
// (data), mirrored by one flat gradient buffer (grad) with the same layout, so
// zero_grad, clipping and the optimizers are flat loops over numel floats.
// Optimizer state (moments) is owned by the optimizer, in the same layout.
// Not a general tensor library: shapes are metadata for checkpoints and checks.
#ifndef MOE_PARAMS_H
#define MOE_PARAMS_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"

#define MOE_NAME_MAX 96
#define MOE_MAX_DIMS 4

struct moe_tensor {
    char name[MOE_NAME_MAX]; // stable, documented name, e.g. "experts.w" or "layers.0.moe.router.weight"
    int ndim;
    size_t shape[MOE_MAX_DIMS];
    size_t numel;  // floats held here (the whole tensor, or this process's experts of a sharded one)
    size_t offset; // in floats, into data and grad
    int experts;   // the first dimension indexes a sparse layer's routed experts (may be sharded)
    int grad_set;  // every backward pass writes the whole gradient (moe_params_zero_grad leaves it)
    size_t lo;     // sharded: the first expert held here (experts lo .. lo + shape[0] / shard_size - 1), else 0
    size_t full_offset; // the tensor's offset in one process's layout (every expert held)
};

struct moe_params {
    struct moe_tensor *t;
    size_t n, cap;
    size_t numel; // total floats
    float *data;  // (numel) parameters, NULL until moe_params_alloc
    float *grad;  // (numel) gradients, same layout
    // Expert parallelism (dist/ep.h): with shard_size = N > 1, set before
    // moe_params_alloc, each tensor marked `experts` holds only this process's
    // shape[0] / N experts (lo = shard_rank shape[0] / N ...), and numel and the
    // offsets are this process's layout; full_numel and full_offset are the
    // layout of one process holding everything (checkpoints, optimizer moments
    // on disk), which does not depend on N.
    int shard_rank, shard_size;
    size_t full_numel;
    const struct moe_params_whole *whole; // set while a sharded registry is written (below)
};

// Writing a sharded registry as one process's file (io/safetensors.h,
// moe_safetensors_write_params): for a marked tensor i, fill(ctx, i, off, buf,
// n, err) puts floats off .. off + n - 1 of the whole tensor into buf, called
// in order (tensors in registry order, each from its start); crc[i] is the
// CRC-32 of its bytes.
struct moe_params_whole {
    int (*fill)(void *ctx, size_t i, size_t off, float *buf, size_t n, struct moe_err *err);
    void *ctx;
    const uint32_t *crc;
};

void moe_params_init(struct moe_params *p);
// Declare a tensor. Returns its index (>= 0) or a negative MOE_E* code
// (duplicate name, bad shape, or registry already allocated).
int moe_params_add(struct moe_params *p, const char *name, int ndim, const size_t *shape,
                   struct moe_err *err);
// Shape literal for moe_params_add: moe_params_add(p, "w", MOE_SHAPE(E, O, D), err).
#define MOE_SHAPE(...) \
    (int)(sizeof((size_t[]){ __VA_ARGS__ }) / sizeof(size_t)), (const size_t[]){ __VA_ARGS__ }
// Mark tensor idx as a sparse layer's routed experts (first dimension E): it
// is the one kind of tensor expert parallelism splits over processes.
void moe_params_mark_experts(struct moe_params *p, int idx);
// Mark tensor idx as one whose gradient the model's backward pass writes
// whole, every element, every pass (beta 0 GEMMs, zeros where nothing flowed):
// moe_params_zero_grad does not clear it, which saves a pass over memory
// (for routed experts, most of the gradient). A tensor whose backward may
// skip it or add into it must not be marked.
void moe_params_mark_grad_set(struct moe_params *p, int idx);
// Allocate data and grad (zero-filled, 64-byte aligned) once every tensor is
// declared; with shard_size > 1, the marked tensors hold this process's
// experts only (a shape[0] not divisible by shard_size is MOE_ECONFIG).
int moe_params_alloc(struct moe_params *p, struct moe_err *err);
// Index of a tensor by name, or -1.
int moe_params_find(const struct moe_params *p, const char *name);
static inline float *moe_params_data(const struct moe_params *p, int i) { return p->data + p->t[i].offset; }
static inline float *moe_params_grad(const struct moe_params *p, int i) { return p->grad + p->t[i].offset; }
void moe_params_zero_grad(struct moe_params *p);
// Copy into dst every tensor that src has under the same name and shape (a
// teacher's weights into a student); copied (dst->n entries, may be NULL) marks
// which. Returns the number copied.
size_t moe_params_copy_matching(struct moe_params *dst, const struct moe_params *src, uint8_t *copied);
// Number of parameters (sum of tensor sizes, without the alignment padding
// inside numel; every expert counted, sharded or not).
size_t moe_params_count(const struct moe_params *p);
// Floats of tensor t in one process (every expert), and of one expert's slice.
size_t moe_tensor_full_numel(const struct moe_tensor *t);
static inline int moe_params_sharded(const struct moe_params *p) { return p->shard_size > 1; }
// From a buffer in one process's layout (full_numel floats: data, or an
// optimizer moment) to this process's layout (numel floats).
void moe_params_from_full(const struct moe_params *p, const float *full, float *local);
// Format a shape as "[4, 2, 3]" into buf.
void moe_shape_str(int ndim, const size_t *shape, char *buf, size_t len);
void moe_params_release(struct moe_params *p);

// Shared init: tensor idx U(-s, s) with s = scale / sqrt(fan_in) (fan_in = last
// dimension), drawn from the counter-based RNG with stream = hash(name), so a
// tensor's initial values depend only on the seed and its name.
void moe_init_uniform(struct moe_params *p, int idx, uint64_t seed, float scale);

// Aligned allocation helpers (free with moe_free). Return NULL on failure or overflow.
void *moe_alloc(size_t count, size_t size);  // zero-filled
void moe_free(void *p);
// x[0..n) = 0, split over the threads in fixed 64-byte-aligned chunks when n is
// large (clearing gradients and activation gradients is memory-bound).
void moe_zero(float *x, size_t n);

// One term of a gradient sum over micro-batches k = 0 .. M-1 with weights w_k
// (train.accumulate; the same arithmetic wherever the terms are summed: one
// process, a data-parallel slice, an expert's process): k = 0 sets a = w g,
// the next add a += w g, the last (last != 0) writes out = a + w g (out may be
// g). Elementwise, split over threads in a fixed way: the same bits at any
// thread count.
void moe_fold(float *a, const float *g, float *out, size_t n, float w, size_t k, int last);

#endif
