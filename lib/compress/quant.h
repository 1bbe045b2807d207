// quant.h: int8 quantization of weight matrices and its checkpoint storage
// (docs/checkpoint.md, "Quantized tensors (int8)"); the first piece of model
// compression (issue 21).
//
// A weight tensor of F32 values w, 2-d (out, in) or 3-d expert tensors
// (E, out, in), becomes int8 values q in groups that share a scale: one group
// per tensor, or one per output channel (a row of the last dimension: out
// groups of a 2-d tensor, E x out of a 3-d one). Dequantization is, exactly,
//
//     w' = scale * (float)(q - zero)
//
// one float multiplication of the group's scale by the exact integer
// difference (|q - zero| <= 255, so the conversion is exact), correctly
// rounded: any reader that follows the formula, in C, NumPy or on a GPU,
// gets the same bits, so a quantized model evaluates exactly as the F32
// model holding w'. Schemes (what quantization computes for a group):
//   symmetric:  zero = 0, scale = max|w| / 127 (float division), q = rne(w / scale) in [-127, 127]
//   asymmetric: lo = min(min w, 0), hi = max(max w, 0), scale = (hi - lo) / 255
//               (in double, rounded to float), zero = -128 - rne(lo / scale) in
//               [-128, 127], q = rne(w / scale) + zero in [-128, 127]; widening the
//               range to hold 0 makes 0.0 exact (q = zero gives w' = 0)
// rne: round half to even, written out (not rint), so that the result does
// not depend on the floating-point environment's rounding mode; w / scale is
// taken in double. q is clamped into its range (the scale's rounding can put
// the extreme a hair outside). Then |w - w'| <= scale / 2 up to a few float
// roundings, for every element.
// Degenerate groups: an all-zero group gets scale 1 (and zero 0), so nothing
// divides by zero and the file holds no zero scale; a group whose scale would
// be below FLT_MIN (max|w| < 127 FLT_MIN) gets FLT_MIN, so no scale is zero or
// subnormal. Weights must be finite with |w| <= MOE_QUANT_W_MAX, which keeps
// every scale <= MOE_QUANT_SCALE_MAX and every w' finite.
//
// Storage (safetensors): tensor NAME as I8 with its F32 shape, NAME.q_scale
// (F32; shape [] per tensor, the tensor's shape without its last dimension
// per channel) and, asymmetric only, NAME.q_zero (I32, the scale's shape; I32,
// not I8, so that NumPy's q - zero is computed in int32 instead of wrapping).
// Reading validates every scale (finite, > 0, <= MOE_QUANT_SCALE_MAX) and zero
// point (in [-128, 127]); any int8 q is accepted.
#ifndef MOE_QUANT_H
#define MOE_QUANT_H

#include <float.h>
#include <stddef.h>
#include <stdint.h>

#include "core/params.h"
#include "core/status.h"
#include "io/safetensors.h"

enum moe_quant_scheme { MOE_QUANT_NONE = 0, MOE_QUANT_SYM = 1, MOE_QUANT_ASYM = 2 };
enum moe_quant_gran { MOE_QUANT_PER_TENSOR = 0, MOE_QUANT_PER_CHANNEL = 1 };

// How one tensor is (to be) stored: scheme MOE_QUANT_NONE keeps it F32.
struct moe_quant_spec {
    enum moe_quant_scheme scheme;
    enum moe_quant_gran gran;
};

#define MOE_QUANT_SCALE_SUFFIX ".q_scale"
#define MOE_QUANT_ZERO_SUFFIX ".q_zero"
#define MOE_QUANT_W_MAX (FLT_MAX / 4)       // largest |w| quantized
#define MOE_QUANT_SCALE_MAX (FLT_MAX / 256) // largest scale read: 255 x it stays finite

// The names the options and config keys use: "symmetric" / "asymmetric"
// ("none" for MOE_QUANT_NONE), "channel" / "tensor".
const char *moe_quant_scheme_name(enum moe_quant_scheme s);
const char *moe_quant_gran_name(enum moe_quant_gran g);

// Groups of a tensor of ndim (2 or 3) dimensions: *ret_groups groups of
// *ret_len consecutive elements (per tensor: 1 group of every element; per
// channel: every row of the last dimension). MOE_EINVAL for another ndim or
// granularity.
int moe_quant_groups(int ndim, const size_t *shape, enum moe_quant_gran gran, size_t *ret_groups,
                     size_t *ret_len, struct moe_err *err);

// Quantize n_groups x len floats w (group g: w[g len .. g len + len - 1]) by
// scheme (SYM or ASYM) into q (n_groups x len), scale (n_groups) and, for ASYM,
// zero (n_groups; may be NULL for SYM, else set to 0). MOE_EINVAL, naming the
// element, for a NaN, an infinity or |w| > MOE_QUANT_W_MAX; nothing is then
// promised about the outputs.
int moe_quant_int8(const float *w, size_t n_groups, size_t len, enum moe_quant_scheme scheme, int8_t *q,
                   float *scale, int32_t *zero, struct moe_err *err);

// out = the dequantized int8 quantization of w, a 2-d or 3-d tensor (ndim,
// shape) by spec: the values a reader of it stored quantized gets (out may be
// w). MOE_EINVAL as moe_quant_int8 (nothing promised about out then), MOE_ENOMEM.
int moe_quant_fake(float *out, const float *w, int ndim, const size_t *shape, struct moe_quant_spec spec,
                   struct moe_err *err);

// Which tensors of p globs name for quantization: target[i] = 1 (p->n flags)
// for every 2-d or 3-d tensor whose name matches one of them (fnmatch;
// n_globs = 0: every 2-d or 3-d tensor), 0 for the rest. MOE_EINVAL, naming
// the glob, for one that names no tensor or names only tensors of another rank.
int moe_quant_select(const struct moe_params *p, const char *const *globs, size_t n_globs, uint8_t *target,
                     struct moe_err *err);

// One dequantized value: the formula above.
static inline float moe_dequant_int8_1(int8_t q, float scale, int32_t zero)
{
    return scale * (float)((int32_t)q - zero);
}

// w[j] = scale[g] * (float)(q[j] - zero[g]) for the elements first ..
// first + n - 1 of a tensor whose groups hold len elements each (j counts from
// first: a slice, e.g. one process's experts). zero NULL: every zero point 0.
void moe_dequant_int8(float *w, const int8_t *q, const float *scale, const int32_t *zero, size_t len,
                      size_t first, size_t n);

// Check the storage of e, an I8 tensor of f: 2-d or 3-d, with NAME.q_scale
// (F32, [] or e's shape without its last dimension) whose scales are finite,
// positive and at most MOE_QUANT_SCALE_MAX, and, if present, NAME.q_zero (I32,
// the scale's shape, each in [-128, 127]). Sets *ret (when non-NULL) to the
// scheme and granularity found, and *ret_scale / *ret_zero (when non-NULL) to
// the entries (zero NULL: symmetric). MOE_EFORMAT with one line naming the
// tensor otherwise.
int moe_quant_check(const struct moe_st_file *f, const struct moe_st_entry *e, struct moe_quant_spec *ret,
                    const struct moe_st_entry **ret_scale, const struct moe_st_entry **ret_zero,
                    struct moe_err *err);

// 1 when name is NAME.q_scale or NAME.q_zero of a tensor NAME that f holds as
// I8 and (p non-NULL) p has: a quantized tensor's part, not an extra tensor.
int moe_quant_is_part(const struct moe_st_file *f, const struct moe_params *p, const char *name);

// moe_safetensors_load_params, except that a registry tensor may also be
// stored quantized (I8 with its scale, and zero point): its F32 slot then
// gets the dequantized values (a sharded tensor its experts only), and its
// parts are not extra tensors. Everything is checked before the registry is
// touched.
int moe_quant_load_params(const struct moe_st_file *f, struct moe_params *p, int allow_extra,
                          struct moe_err *err);

// moe_safetensors_write_params, with registry tensor i stored as spec[i] says
// (spec NULL, or every scheme NONE: the very same file). Each quantized tensor
// is followed by its scale and zero point. MOE_EINVAL (naming the tensor) for
// a quantized tensor that is not 2-d or 3-d or does not quantize (above), or
// any quantized tensor of a sharded registry.
int moe_quant_write_params(const char *path, const struct moe_params *p, const struct moe_quant_spec *spec,
                           const struct moe_st_ref *extra, size_t n_extra, const struct moe_st_meta *meta,
                           size_t n_meta, struct moe_err *err);

#endif
