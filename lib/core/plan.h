// plan.h: a model's memory, declared before any of it is allocated.
// A model (and each block it is built of) describes every buffer it will use as
// an entry: a name, a role, a dtype, a shape whose dimensions carry the config
// keys they come from, and where the buffer's address (or, for a parameter, its
// index in the registry) is to be stored. The declaration needs only the typed
// hyperparameters and the batch size, so the same walk serves
//   - the estimate (model/estimate.c): counts, bytes per role, the largest
//     buffer, FLOPs per token, all sums over the entries; and
//   - the constructor: moe_plan_alloc makes one allocation per role, carves the
//     entries out of it in declaration order, and stores each address where the
//     entry says (parameters go to the named-parameter registry, core/params.h,
//     which owns the data and gradient buffers).
// Every size is checked for overflow as it is declared; the first failure is
// kept (later declarations do nothing) and its message names the config keys
// behind the dimensions. A later backend can place the same entries on a device.
// Not here: what the buffers hold, or when they are written.
#ifndef MOE_PLAN_H
#define MOE_PLAN_H

#include <stddef.h>

#include "core/params.h"
#include "core/status.h"

enum moe_role {
    MOE_ROLE_PARAM,    // trainable tensors (the registry mirrors each with a gradient)
    MOE_ROLE_ACT,      // activations the forward pass saves for the backward
    MOE_ROLE_SCRATCH,  // work buffers of one pass: gradients of activations, dispatch plans, targets
    MOE_ROLE_STATE,    // state kept across steps but not trained (bias offsets, hash tables)
    MOE_ROLE_OPTIM,    // the optimizer's moments (train/optim.c)
    MOE_ROLE_N
};
const char *moe_role_name(enum moe_role r);

enum moe_plan_dtype { MOE_DT_F32, MOE_DT_I32, MOE_DT_U32, MOE_DT_U8, MOE_DT_F64, MOE_DT_U64, MOE_DT_SIZE };
size_t moe_dtype_size(enum moe_plan_dtype t);

// One dimension, with the config key (or data property) that sets it. key must
// outlive the plan (string literals).
struct moe_dim {
    size_t v;
    const char *key;
};
// Dimensions as arguments: moe_plan_buf(p, &x, role, dt, MOE_DIMS(dT, dD), "x").
#define MOE_DIMS(...) \
    (int)(sizeof((struct moe_dim[]){ __VA_ARGS__ }) / sizeof(struct moe_dim)), (const struct moe_dim[]){ __VA_ARGS__ }

struct moe_plan_entry {
    char name[MOE_NAME_MAX];
    enum moe_role role;
    enum moe_plan_dtype dtype;
    int ndim;
    size_t shape[MOE_MAX_DIMS];
    const char *key[MOE_MAX_DIMS];
    size_t numel;
    size_t bytes;   // buffers: as allocated (a 64-byte multiple, at least 64); parameters: numel floats
    size_t offset;  // buffers: bytes into the role's block
    void *bind;     // buffers: the pointer variable that receives the address
    int *index;     // parameters: receives the registry index
    int experts;    // parameters: a sparse layer's routed experts (first dimension), which may be sharded
    int grad_set;   // parameters: the backward writes the whole gradient (moe_params_mark_grad_set)
    void *own;      // buffers allocated one by one (sanitizer builds), else NULL
};

struct moe_plan {
    struct moe_plan_entry *e;
    size_t n, cap;
    struct moe_err *err;
    int rc;                      // the first failure, 0 if none
    size_t bytes[MOE_ROLE_N];    // buffers: sum of entry bytes per role; parameters: see count/numel
    size_t count;                // parameters: floats without alignment (moe_params_count)
    size_t numel;                // parameters: floats with each tensor on a 16-float boundary (moe_params.numel)
    double macs;                 // forward multiply-accumulates per token (model/estimate.h convention)
    double inactive;             // parameters a token does not touch (routed experts it does not use)
    size_t largest_bytes;        // the largest entry and the keys that size it, for messages
    char largest[320];
    void *block[MOE_ROLE_N];     // after moe_plan_alloc: one allocation per buffer role (NULL if empty)
};

// err receives the first failure's message (may be NULL).
void moe_plan_init(struct moe_plan *p, struct moe_err *err);
// Declare a trainable tensor (name from fmt); *index gets its registry index at
// moe_plan_alloc. Returns p->rc.
int moe_plan_param(struct moe_plan *p, int *index, int ndim, const struct moe_dim *d, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
// Mark the parameter just declared as a sparse layer's routed experts, its
// first dimension the expert (moe_params_mark_experts). Returns p->rc.
int moe_plan_mark_experts(struct moe_plan *p);
// Mark the parameter just declared as one whose gradient every backward pass
// writes whole (moe_params_mark_grad_set). Returns p->rc.
int moe_plan_mark_grad_set(struct moe_plan *p);
// Declare a buffer; bind is the address of the pointer variable (float **,
// int32_t **, ...) that gets the buffer, zero-filled, at moe_plan_alloc.
// Returns p->rc.
int moe_plan_buf(struct moe_plan *p, void *bind, enum moe_role role, enum moe_plan_dtype dt, int ndim,
                 const struct moe_dim *d, const char *fmt, ...) __attribute__((format(printf, 7, 8)));
// Record a failure found while declaring (a rule between sizes); the first one is kept. Returns p->rc.
int moe_plan_fail(struct moe_plan *p, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
// *ret = prod(d), or a failure naming the keys when it overflows size_t. Returns p->rc.
int moe_plan_product(struct moe_plan *p, size_t *ret, int ndim, const struct moe_dim *d);
// *ret = unit * prod(d) (bytes of elements of unit bytes), the same way.
int moe_plan_size(struct moe_plan *p, size_t *ret, size_t unit, int ndim, const struct moe_dim *d);
// Keep "kind 'name' (keys = values)" as the largest entry if bytes is more
// than the largest so far (the estimate's other buffers: data, statistics).
void moe_plan_note_largest(struct moe_plan *p, size_t bytes, const char *kind, const char *name, int ndim,
                           const struct moe_dim *d);
static inline void moe_plan_macs(struct moe_plan *p, double macs) { p->macs += macs; }
// Bytes of the buffers of every role but parameters.
size_t moe_plan_buffer_bytes(const struct moe_plan *p);

// Add the parameters to params (not yet allocated), in declaration order, and
// store their indices. Returns 0 or the first failure.
int moe_plan_register(struct moe_plan *p, struct moe_params *params);
// Register the parameters in params (which must be empty) and allocate them
// (moe_params_alloc) unless params is NULL (a plan of buffers only), allocate
// one block per buffer role, and bind every entry. Returns 0 or the
// declaration's failure / MOE_ENOMEM.
int moe_plan_alloc(struct moe_plan *p, struct moe_params *params);
// A plan of buffers only, allocated on its own (blocks used outside a model:
// tests, moe bench): a heap plan declared by declare(arg, plan), allocated, in
// *ret (free with moe_plan_free). Returns 0 or the failure.
int moe_plan_standalone(struct moe_plan **ret, int (*declare)(void *arg, struct moe_plan *p), void *arg,
                        struct moe_err *err);
void moe_plan_free(struct moe_plan *p);
// Free the blocks and the entries (not the parameters: moe_params_release).
void moe_plan_release(struct moe_plan *p);

#endif
