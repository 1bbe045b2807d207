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
    size_t numel;
    size_t offset; // in floats, into data and grad
};

struct moe_params {
    struct moe_tensor *t;
    size_t n, cap;
    size_t numel; // total floats
    float *data;  // (numel) parameters, NULL until moe_params_alloc
    float *grad;  // (numel) gradients, same layout
};

void moe_params_init(struct moe_params *p);
// Declare a tensor. Returns its index (>= 0) or a negative MOE_E* code
// (duplicate name, bad shape, or registry already allocated).
int moe_params_add(struct moe_params *p, const char *name, int ndim, const size_t *shape,
                   struct moe_err *err);
// Shape literal for moe_params_add: moe_params_add(p, "w", MOE_SHAPE(E, O, D), err).
#define MOE_SHAPE(...) \
    (int)(sizeof((size_t[]){ __VA_ARGS__ }) / sizeof(size_t)), (const size_t[]){ __VA_ARGS__ }
// Allocate data and grad (zero-filled, 64-byte aligned) once every tensor is declared.
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
// Number of parameters (sum of tensor sizes, without the alignment padding inside numel).
size_t moe_params_count(const struct moe_params *p);
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

#endif
