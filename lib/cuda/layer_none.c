// layer_none.c: the device layer (cuda/layer.h), the device model
// (cuda/model.h) and ops.h's device memory functions in a build without
// CUDA, so that callers (moe bench, the trainer) link the same way in every
// build. Creating a layer or a model or allocating device memory fails with
// the reason; the rest is never reached without one. `--device cuda` is
// refused before any of this by the --device check (cmd/cli.c), which probes
// the backend table.
#include "cuda/blas.h"
#include "cuda/layer.h"
#include "cuda/model.h"
#include "cuda/ops.h"

#define NONE "this build has no CUDA backend; 'meson setup -Dcuda=enabled BUILDDIR'"

int moe_cuda_layer_create(struct moe_cuda_layer **ret, const struct moe_layer_cfg *c, size_t T_max,
                          struct moe_err *err)
{
    (void)c, (void)T_max;
    *ret = NULL;
    return moe_error(err, MOE_EINVAL, NONE);
}

void moe_cuda_layer_free(struct moe_cuda_layer *l) { (void)l; }

int moe_cuda_layer_check(const struct moe_layer_cfg *c, size_t T_max, struct moe_err *err)
{
    (void)c, (void)T_max;
    return moe_error(err, MOE_EINVAL, NONE);
}

int moe_cuda_use_device(int id, struct moe_err *err)
{
    (void)id;
    return moe_error(err, MOE_EINVAL, NONE);
}

int moe_cuda_layer_set_weights(struct moe_cuda_layer *l, const struct moe_cuda_layer_tensors *host,
                               struct moe_err *err)
{
    (void)l, (void)host;
    return moe_error(err, MOE_EINVAL, NONE);
}

int moe_cuda_layer_set_keys(struct moe_cuda_layer *l, const uint32_t *keys, const int32_t *table, size_t V,
                            size_t T, struct moe_err *err)
{
    (void)l, (void)keys, (void)table, (void)V, (void)T;
    return moe_error(err, MOE_EINVAL, NONE);
}

int moe_cuda_layer_zero_grad(struct moe_cuda_layer *l, struct moe_err *err)
{
    (void)l;
    return moe_error(err, MOE_EINVAL, NONE);
}

int moe_cuda_layer_get_grads(const struct moe_cuda_layer *l, const struct moe_cuda_layer_tensors *host,
                             struct moe_err *err)
{
    (void)l, (void)host;
    return moe_error(err, MOE_EINVAL, NONE);
}

int moe_cuda_layer_forward(struct moe_cuda_layer *l, float *out, const float *x, size_t T, int train, uint64_t seed,
                           uint64_t step, double *ret_loss, struct moe_err *err)
{
    (void)l, (void)out, (void)x, (void)T, (void)train, (void)seed, (void)step, (void)ret_loss;
    return moe_error(err, MOE_EINVAL, NONE);
}

int moe_cuda_layer_backward(struct moe_cuda_layer *l, float *dx, const float *dout, const float *x,
                            struct moe_err *err)
{
    (void)l, (void)dx, (void)dout, (void)x;
    return moe_error(err, MOE_EINVAL, NONE);
}

int moe_cuda_layer_route(const struct moe_cuda_layer *l, int32_t *sel, int32_t *idx, float *gate, size_t *ret_rows,
                         double *ret_aux, double *ret_z, struct moe_err *err)
{
    (void)l, (void)sel, (void)idx, (void)gate, (void)ret_rows, (void)ret_aux, (void)ret_z;
    return moe_error(err, MOE_EINVAL, NONE);
}

size_t moe_cuda_layer_slots(const struct moe_cuda_layer *l)
{
    (void)l;
    return 0;
}

void moe_cuda_layer_timing(struct moe_cuda_layer *l, int on) { (void)l, (void)on; }

int moe_cuda_layer_phases(struct moe_cuda_layer *l, double sec[MOE_PHASE_N], struct moe_err *err)
{
    (void)l, (void)sec;
    return moe_error(err, MOE_EINVAL, NONE);
}

int moe_cuda_layer_reference(struct moe_cuda_layer *l, int backward, double *ret_seconds, double *ret_flops,
                             struct moe_err *err)
{
    (void)l, (void)backward, (void)ret_seconds, (void)ret_flops;
    return moe_error(err, MOE_EINVAL, NONE);
}

double moe_cuda_layer_flops(const struct moe_cuda_layer *l, int backward)
{
    (void)l, (void)backward;
    return 0.0;
}

int moe_cuda_timer_create(struct moe_cuda_timer **ret, struct moe_err *err)
{
    *ret = NULL;
    return moe_error(err, MOE_EINVAL, NONE);
}

void moe_cuda_timer_free(struct moe_cuda_timer *t) { (void)t; }

int moe_cuda_timer_start(struct moe_cuda_timer *t, struct moe_err *err)
{
    (void)t;
    return moe_error(err, MOE_EINVAL, NONE);
}

int moe_cuda_timer_stop(struct moe_cuda_timer *t, double *ret_seconds, struct moe_err *err)
{
    (void)t, (void)ret_seconds;
    return moe_error(err, MOE_EINVAL, NONE);
}

int moe_cuda_layer_memzero(void *p, size_t bytes, struct moe_err *err)
{
    (void)p, (void)bytes;
    return moe_error(err, MOE_EINVAL, NONE);
}

int moe_cuda_malloc(void **ret, size_t bytes, const char *what, struct moe_err *err)
{
    (void)bytes, (void)what;
    *ret = NULL;
    return moe_error(err, MOE_EINVAL, NONE);
}

void moe_cuda_free(void *p) { (void)p; }

int moe_cuda_to_device(void *dst, const void *src, size_t bytes, struct moe_err *err)
{
    (void)dst, (void)src, (void)bytes;
    return moe_error(err, MOE_EINVAL, NONE);
}

int moe_cuda_to_host(void *dst, const void *src, size_t bytes, struct moe_err *err)
{
    (void)dst, (void)src, (void)bytes;
    return moe_error(err, MOE_EINVAL, NONE);
}

void moe_cuda_layer_set_eval_capacity(struct moe_cuda_layer *l, double cf) { (void)l, (void)cf; }

int moe_cuda_layer_route_to(const struct moe_cuda_layer *l, struct moe_route *r, struct moe_dispatch *plan,
                            struct moe_err *err)
{
    (void)l, (void)r, (void)plan;
    return moe_error(err, MOE_EINVAL, NONE);
}

void moe_cuda_model_set_eval_capacity(struct moe_cuda_model *d, double cf) { (void)d, (void)cf; }

int moe_cuda_model_route_to(const struct moe_cuda_model *d, struct moe_model *m, struct moe_err *err)
{
    (void)d, (void)m;
    return moe_error(err, MOE_EINVAL, NONE);
}

int moe_cuda_layer_route_acc(const struct moe_cuda_layer *l, struct moe_route_acc *acc, const int32_t *label,
                             struct moe_route *r, struct moe_dispatch *plan, struct moe_err *err)
{
    (void)l, (void)acc, (void)label, (void)r, (void)plan;
    return moe_error(err, MOE_EINVAL, NONE);
}

// The device model (cuda/model.h): never created without CUDA.
int moe_cuda_model_create(struct moe_cuda_model **ret, const struct moe_model *m, const struct moe_model_hp *hp,
                          const struct moe_optim *o, size_t T_max, struct moe_err *err)
{
    (void)m, (void)hp, (void)o, (void)T_max;
    *ret = NULL;
    return moe_error(err, MOE_EINVAL, NONE);
}

void moe_cuda_model_free(struct moe_cuda_model *d) { (void)d; }

int moe_cuda_model_check(const struct moe_model *m, const struct moe_model_hp *hp, struct moe_err *err)
{
    (void)m, (void)hp;
    return moe_error(err, MOE_EINVAL, NONE);
}

int moe_cuda_model_grad(struct moe_cuda_model *d, const struct moe_batch *b, double *ret_loss, double *ret_aux,
                        double *ret_gnorm, struct moe_err *err)
{
    (void)d, (void)b, (void)ret_loss, (void)ret_aux, (void)ret_gnorm;
    return moe_error(err, MOE_EINVAL, NONE);
}

int moe_cuda_model_backprop(struct moe_cuda_model *d, const struct moe_batch *b, double *ret_loss, double *ret_aux,
                            struct moe_err *err)
{
    (void)d, (void)b, (void)ret_loss, (void)ret_aux;
    return moe_error(err, MOE_EINVAL, NONE);
}

int moe_cuda_model_fold(struct moe_cuda_model *d, size_t k, int last, float w, struct moe_err *err)
{
    (void)d, (void)k, (void)last, (void)w;
    return moe_error(err, MOE_EINVAL, NONE);
}

int moe_cuda_model_gnorm(struct moe_cuda_model *d, double *ret_gnorm, struct moe_err *err)
{
    (void)d, (void)ret_gnorm;
    return moe_error(err, MOE_EINVAL, NONE);
}

int moe_cuda_model_update(struct moe_cuda_model *d, struct moe_optim *o, double gnorm, struct moe_err *err)
{
    (void)d, (void)o, (void)gnorm;
    return moe_error(err, MOE_EINVAL, NONE);
}

int moe_cuda_model_step(struct moe_cuda_model *d, const struct moe_batch *b, struct moe_optim *o, double *ret_loss,
                        double *ret_aux, double *ret_gnorm, struct moe_err *err)
{
    (void)d, (void)b, (void)o, (void)ret_loss, (void)ret_aux, (void)ret_gnorm;
    return moe_error(err, MOE_EINVAL, NONE);
}

int moe_cuda_model_stats(struct moe_cuda_model *d, const struct moe_batch *b, struct moe_stats *s,
                         struct moe_err *err)
{
    (void)d, (void)b, (void)s;
    return moe_error(err, MOE_EINVAL, NONE);
}

int moe_cuda_model_eval(struct moe_cuda_model *d, const struct moe_batch *b, struct moe_stats *s, struct moe_err *err)
{
    (void)d, (void)b, (void)s;
    return moe_error(err, MOE_EINVAL, NONE);
}

int moe_cuda_model_download(const struct moe_cuda_model *d, struct moe_model *m, struct moe_optim *o,
                            struct moe_err *err)
{
    (void)d, (void)m, (void)o;
    return moe_error(err, MOE_EINVAL, NONE);
}

int moe_cuda_model_set_teacher(struct moe_cuda_model *d, struct moe_cuda_model *teacher, float alpha, float tau,
                               int sym, struct moe_err *err)
{
    (void)d, (void)teacher, (void)alpha, (void)tau, (void)sym;
    return moe_error(err, MOE_EINVAL, NONE);
}

int moe_cuda_model_set_train(struct moe_cuda_model *d, const uint8_t *frozen, uint8_t *const *frozen_experts,
                             struct moe_lora *lora, struct moe_err *err)
{
    (void)d, (void)frozen, (void)frozen_experts, (void)lora;
    return moe_error(err, MOE_EINVAL, NONE);
}

const char *moe_cuda_gemm_grouped_path(void) { return "none (no CUDA backend)"; }
