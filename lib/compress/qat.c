// qat.c: fake quantization for quantization-aware training (qat.h).
// Nothing here prints or exits.
#include "compress/qat.h"

#include <stdlib.h>
#include <string.h>

int moe_qat_init(struct moe_qat *q, const struct moe_params *p, struct moe_quant_spec spec,
                 const char *const *globs, size_t n_globs, struct moe_err *err)
{
    memset(q, 0, sizeof *q);
    if (p->shard_size > 1) // a process's share of the experts: its scales would not be the whole tensor's
        return moe_error(err, MOE_EINVAL, "fake quantization needs every expert of the registry (not one process's share)");
    q->spec = spec;
    q->n = p->n;
    if (!(q->target = malloc(p->n ? p->n : 1)))
        return moe_error(err, MOE_ENOMEM, "out of memory");
    int rc = moe_quant_select(p, globs, n_globs, q->target, err);
    for (size_t i = 0; !rc && i < p->n; i++)
        q->n_master += q->target[i] ? p->t[i].numel : 0;
    if (!rc && !(q->master = malloc((q->n_master ? q->n_master : 1) * sizeof *q->master)))
        rc = moe_error(err, MOE_ENOMEM, "out of memory for the float weights of quantization-aware training (%zu floats)",
                       q->n_master);
    if (rc)
        moe_qat_release(q);
    return rc;
}

int moe_qat_enter(struct moe_qat *q, struct moe_params *p, struct moe_err *err)
{
    if (q->entered)
        return 0;
    float *m = q->master;
    for (size_t i = 0; i < q->n; i++)
        if (q->target[i]) {
            memcpy(m, moe_params_data(p, (int)i), p->t[i].numel * sizeof *m);
            m += p->t[i].numel;
        }
    q->entered = 1;
    m = q->master;
    for (size_t i = 0; i < q->n; i++) {
        if (!q->target[i])
            continue;
        const struct moe_tensor *t = &p->t[i];
        int rc = moe_quant_fake(moe_params_data(p, (int)i), m, t->ndim, t->shape, q->spec, err);
        if (rc) {
            moe_qat_leave(q, p);
            moe_error_prefix(err, "fake quantization of tensor '%s': ", t->name);
            return rc;
        }
        m += t->numel;
    }
    return 0;
}

void moe_qat_leave(struct moe_qat *q, struct moe_params *p)
{
    if (!q->entered)
        return;
    const float *m = q->master;
    for (size_t i = 0; i < q->n; i++)
        if (q->target[i]) {
            memcpy(moe_params_data(p, (int)i), m, p->t[i].numel * sizeof *m);
            m += p->t[i].numel;
        }
    q->entered = 0;
}

size_t moe_qat_count(const struct moe_qat *q)
{
    size_t c = 0;
    for (size_t i = 0; i < q->n; i++)
        c += q->target[i];
    return c;
}

void moe_qat_release(struct moe_qat *q)
{
    if (!q)
        return;
    free(q->target);
    free(q->master);
    memset(q, 0, sizeof *q);
}
