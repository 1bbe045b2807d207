// qat.h: quantization-aware training (issue 21): fake quantization of a
// model's weight matrices in the forward pass, the straight-through estimator
// in the backward pass.
//
// While "entered", each target tensor of the registry holds
//     w_q = dequant(quant(w))      (quant.h's formula; scales from the current w)
// and the float weights w wait in a master copy. A forward and backward pass
// then computes the loss of the quantized model and its gradient with respect
// to w_q; "leaving" puts w back, and the optimizer updates w with that
// gradient. Rounding has derivative zero almost everywhere, so the exact
// gradient with respect to w carries no signal; the straight-through estimator
// (Bengio, Leonard & Courville 2013; Jacob et al., CVPR 2018, section 3)
// takes d w_q / d w = 1 instead: dL/dw := dL/dw_q. Scales are max|w| (or the
// range) of a group, so no weight lies outside the grid and no gradient is
// clipped. A model trained this way and then stored with the same scheme by
// `moe compress --quantize int8` evaluates exactly as during training.
#ifndef MOE_QAT_H
#define MOE_QAT_H

#include <stddef.h>
#include <stdint.h>

#include "compress/quant.h"
#include "core/params.h"
#include "core/status.h"

struct moe_qat {
    struct moe_quant_spec spec;
    uint8_t *target;  // (n) 1 = fake-quantized
    size_t n;         // tensors of the registry
    float *master;    // the targets' float weights, one after another, while entered
    size_t n_master;
    int entered;
};

// Fake quantization of p's tensors that globs name (moe_quant_select; none:
// every 2-d or 3-d tensor) by spec. MOE_EINVAL naming the glob, or for a
// sharded registry (core/params.h: one process's experts).
int moe_qat_init(struct moe_qat *q, const struct moe_params *p, struct moe_quant_spec spec,
                 const char *const *globs, size_t n_globs, struct moe_err *err);
// The targets' weights into the master copy, w_q into the registry (nothing
// when entered already). MOE_EINVAL naming the tensor for a weight that does
// not quantize (NaN, infinite): the registry is then as before.
int moe_qat_enter(struct moe_qat *q, struct moe_params *p, struct moe_err *err);
// The master copy back into the registry, byte for byte (nothing unless entered).
void moe_qat_leave(struct moe_qat *q, struct moe_params *p);
// Tensors fake-quantized, and their elements.
size_t moe_qat_count(const struct moe_qat *q);
void moe_qat_release(struct moe_qat *q);

#endif
