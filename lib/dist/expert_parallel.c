// expert_parallel.c: the experts of every sparse layer spread over the
// processes of a run (ep.h): the per-layer exchanges of rows, the owner's
// expert FFNs over every source's rows, and the expert gradients handed back
// after a step's rounds. The same in every build (the collectives go through
// dist.h); the math is moe_experts_gather/blocks/combine (moe/experts.h).
#include "dist/ep.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "core/prof.h"
#include "moe/moe_layer.h"

// What every rank tells the others before a layer's exchange; the E + 1 block
// offsets of its plan follow (uint64_t each).
struct ep_head {
    uint64_t active;         // 1: this rank has a micro-batch in the round
    struct moe_dropout drop; // its experts' hidden dropout stream (moe_experts_buf.drop)
};

static float dummy[1]; // a send or receive buffer of no elements

static uint64_t *head_offsets(unsigned char *h) { return (uint64_t *)(void *)(h + sizeof(struct ep_head)); }

int moe_ep_check(size_t n_layers, struct moe_layer *const *layers, const char *model, int n, struct moe_err *err)
{
    if (!n_layers)
        return moe_error(err, MOE_ECONFIG, "expert parallelism needs sparse MoE layers, and model.type '%s' has none; use --data-parallel",
                         model);
    for (size_t i = 0; i < n_layers; i++) {
        int rc = moe_ep_check_experts(layers[i]->c.router.E, n, err);
        if (rc)
            return rc;
    }
    return 0;
}

int moe_ep_check_experts(size_t E, int n, struct moe_err *err)
{
    if (E % (size_t)n)
        return moe_error(err, MOE_ECONFIG, "key 'model.n_expert' (%zu) must be a multiple of the %d processes of --expert-parallel: each process holds n_expert / %d experts of every sparse layer",
                         E, n, n);
    return 0;
}

static size_t grad_floats(const struct moe_layer *l, size_t E_loc)
{
    return E_loc * l->c.F * l->c.D * (l->c.act == MOE_FFN_SWIGLU ? 3 : 2);
}

static int layer_alloc(struct moe_ep_layer *x, struct moe_ep *ep, struct moe_layer *l, struct moe_err *err)
{
    const size_t N = (size_t)ep->dist->size, me = (size_t)ep->dist->rank;
    x->ep = ep;
    x->l = l;
    x->E = l->c.router.E;
    x->E_loc = x->E / N;
    x->lo = me * x->E_loc;
    // at most capacity rows per expert and source (moe_capacity grows with the batch: the largest
    // batch bounds every batch's); dropless plans and expert choice may send every row
    x->N_src = l->N_max;
    if (!moe_router_info(l->c.router.type)->quota && l->c.capacity_factor > 0.0) {
        size_t cap = moe_capacity(l->c.capacity_factor, l->T_max, l->S, x->E);
        if (x->E_loc * cap < x->N_src)
            x->N_src = x->E_loc * cap;
    }
    x->hdr_bytes = sizeof(struct ep_head) + (x->E + 1) * sizeof(uint64_t);
    x->hdr = calloc(1, x->hdr_bytes);
    x->hdr_all = calloc(N, x->hdr_bytes);
    x->send_rows = calloc(N, sizeof *x->send_rows);
    x->recv_rows = calloc(N, sizeof *x->recv_rows);
    x->base = calloc(N + 1, sizeof *x->base);
    x->cnt = calloc(2 * N, sizeof *x->cnt);
    x->idx_send = malloc(2 * l->N_max * sizeof *x->idx_send);
    x->idx_recv = malloc(2 * N * x->N_src * sizeof *x->idx_recv);
    x->offs = calloc(N * (x->E_loc + 1), sizeof *x->offs);
    x->vplan = calloc(N, sizeof *x->vplan);
    x->view = calloc(N, sizeof *x->view);
    x->g_n = grad_floats(l, x->E_loc);
    x->g = malloc(x->g_n * sizeof *x->g);
    if (!x->hdr || !x->hdr_all || !x->send_rows || !x->recv_rows || !x->base || !x->cnt || !x->idx_send ||
        !x->idx_recv || !x->offs || !x->vplan || !x->view || !x->g)
        return moe_error(err, MOE_ENOMEM, "out of memory for the expert exchange of %s", l->prefix);
    return moe_experts_buf_alloc(&x->own, N * x->N_src, l->c.D, l->c.F, l->c.act == MOE_FFN_SWIGLU, err);
}

static void layer_free(struct moe_ep_layer *x)
{
    if (x->l)
        x->l->ep = NULL;
    free(x->hdr);
    free(x->hdr_all);
    free(x->send_rows);
    free(x->recv_rows);
    free(x->base);
    free(x->cnt);
    free(x->idx_send);
    free(x->idx_recv);
    free(x->offs);
    free(x->vplan);
    free(x->view);
    free(x->g);
    moe_experts_buf_release(&x->own);
}

int moe_ep_create(struct moe_ep **out, struct moe_dist *d, struct moe_layer *const *layers, size_t n_layers,
                  size_t per_rank, size_t accum, struct moe_err *err)
{
    *out = NULL;
    struct moe_ep *ep = calloc(1, sizeof *ep);
    if (!ep || !(ep->layers = calloc(n_layers ? n_layers : 1, sizeof *ep->layers))) {
        free(ep);
        return moe_error(err, MOE_ENOMEM, "out of memory for expert parallelism");
    }
    ep->dist = d;
    ep->n_layers = n_layers;
    ep->per_rank = per_rank;
    ep->accum = accum;
    if (!(ep->w = calloc(accum, sizeof *ep->w))) {
        moe_ep_free(ep);
        return moe_error(err, MOE_ENOMEM, "out of memory for expert parallelism");
    }
    for (size_t i = 0; i < n_layers; i++) {
        int rc = layer_alloc(&ep->layers[i], ep, layers[i], err);
        if (rc) {
            moe_ep_free(ep);
            return rc;
        }
    }
    for (size_t i = 0; i < n_layers; i++)
        layers[i]->ep = &ep->layers[i];
    *out = ep;
    return 0;
}

void moe_ep_free(struct moe_ep *ep)
{
    if (!ep)
        return;
    for (size_t i = 0; i < ep->n_layers; i++)
        layer_free(&ep->layers[i]);
    free(ep->layers);
    free(ep->w);
    free(ep);
}

// The collectives of one exchange: the first failure is kept (ep->rc, ep->err)
// and later exchanges of the step are skipped; the trainer checks after the round.
static int gather_heads(struct moe_ep_layer *x)
{
    struct moe_ep *ep = x->ep;
    return ep->rc = moe_dist_allgather(ep->dist, x->hdr, x->hdr_bytes, x->hdr_all, &ep->err);
}

static int swap_floats(struct moe_ep_layer *x, const float *send, const size_t *send_rows, float *recv,
                       const size_t *recv_rows, size_t width)
{
    struct moe_ep *ep = x->ep;
    const size_t N = (size_t)ep->dist->size, me = (size_t)ep->dist->rank;
    for (size_t q = 0; q < N; q++) {
        x->cnt[q] = send_rows[q] * width;
        x->cnt[N + q] = recv_rows[q] * width;
        ep->bytes += q == me ? 0.0 : (double)x->cnt[q] * sizeof(float);
    }
    return ep->rc = moe_dist_alltoallv(ep->dist, send ? send : dummy, x->cnt, recv ? recv : dummy, x->cnt + N,
                                       &ep->err);
}

// Source q's rows of this rank's experts, as a plan and buffers of their own
// (views into x->own): the blocks keep the source's order, so each expert's
// GEMMs see the rows one process would give them.
static void make_views(struct moe_ep_layer *x)
{
    const size_t N = (size_t)x->ep->dist->size, El = x->E_loc, D = x->own.D, F = x->own.F;
    for (size_t q = 0; q < N; q++) {
        const unsigned char *h = x->hdr_all + q * x->hdr_bytes;
        const uint64_t *off = head_offsets((unsigned char *)(uintptr_t)h);
        size_t n = x->recv_rows[q], b = x->base[q];
        size_t *vo = x->offs + q * (El + 1);
        for (size_t e = 0; e <= El; e++)
            vo[e] = (size_t)(off[x->lo + e] - off[x->lo]);
        struct moe_dispatch *v = &x->vplan[q];
        memset(v, 0, sizeof *v);
        v->S = x->l->S;
        v->E = El;
        v->n_rows = n;
        v->offset = vo;
        v->row_tok = x->idx_recv + 2 * b;
        v->row_slot = x->idx_recv + 2 * b + n;
        struct moe_experts_buf *w = &x->view[q];
        const struct moe_experts_buf *o = &x->own;
        memset(w, 0, sizeof *w);
        w->N_max = n;
        w->D = D;
        w->F = F;
        w->xd = o->xd + b * D;
        w->yd = o->yd + b * D;
        w->dyd = o->dyd + b * D;
        w->dxd = o->dxd + b * D;
        w->a = o->a + b * F;
        w->h = o->h + b * F;
        w->da = o->da + b * F;
        w->dh = o->dh + b * F;
        w->b = o->b ? o->b + b * F : NULL;
        w->db = o->db ? o->db + b * F : NULL;
        memcpy(&w->drop, &((const struct ep_head *)(const void *)h)->drop, sizeof w->drop);
    }
}

// This rank's experts' gradient tensors: in a sharded registry (core/params.h)
// the tensor holds them from its start (lo = x->lo), in a whole one at x->lo.
static void grads(const struct moe_ep_layer *x, const struct moe_params *p, float **g1, float **g3, float **g2)
{
    const struct moe_layer *l = x->l;
    size_t at = (x->lo - p->t[l->i_w1].lo) * l->c.F * l->c.D;
    *g1 = moe_params_grad(p, l->i_w1) + at;
    *g3 = l->i_w3 >= 0 ? moe_params_grad(p, l->i_w3) + at : NULL;
    *g2 = moe_params_grad(p, l->i_w2) + at;
}

// Their weights, the same way.
static void weights(const struct moe_ep_layer *x, const struct moe_params *p, const float **w1, const float **w3,
                    const float **w2)
{
    const struct moe_layer *l = x->l;
    size_t at = (x->lo - p->t[l->i_w1].lo) * l->c.F * l->c.D;
    *w1 = moe_params_data(p, l->i_w1) + at;
    *w3 = l->i_w3 >= 0 ? moe_params_data(p, l->i_w3) + at : NULL;
    *w2 = moe_params_data(p, l->i_w2) + at;
}

// Forward steps 1-3 (ep.h) around this rank's FFNs over every source's rows.
// plan and buf NULL: a rank without a micro-batch in this round.
static void forward_exchange(struct moe_ep_layer *x, const struct moe_params *p, const struct moe_dispatch *plan,
                             struct moe_experts_buf *buf)
{
    struct moe_ep *ep = x->ep;
    if (ep->rc)
        return;
    const size_t N = (size_t)ep->dist->size, me = (size_t)ep->dist->rank, El = x->E_loc, D = x->own.D;
    double t0 = moe_prof_clock();
    memset(x->hdr, 0, x->hdr_bytes);
    struct ep_head *h = (struct ep_head *)(void *)x->hdr;
    uint64_t *off = head_offsets(x->hdr);
    if (plan) {
        h->active = 1;
        h->drop = buf->drop;
        for (size_t e = 0; e <= x->E; e++)
            off[e] = plan->offset[e];
    }
    if (gather_heads(x))
        return;
    ep->bytes += (double)(N - 1) * (double)x->hdr_bytes;
    x->base[0] = 0;
    for (size_t q = 0; q < N; q++) {
        const uint64_t *oq = head_offsets(x->hdr_all + q * x->hdr_bytes);
        x->send_rows[q] = plan ? plan->offset[(q + 1) * El] - plan->offset[q * El] : 0;
        x->recv_rows[q] = (size_t)(oq[x->lo + El] - oq[x->lo]);
        x->base[q + 1] = x->base[q] + x->recv_rows[q];
        assert(x->recv_rows[q] <= x->N_src); // the capacity bound (layer_alloc)
    }
    // each owner's rows are one run of the plan (experts in rank order): their
    // tokens, then their slots, the key of the dropout mask
    for (size_t q = 0; plan && q < N; q++) {
        size_t a = plan->offset[q * El], n = x->send_rows[q];
        memcpy(x->idx_send + 2 * a, plan->row_tok + a, n * sizeof *x->idx_send);
        memcpy(x->idx_send + 2 * a + n, plan->row_slot + a, n * sizeof *x->idx_send);
    }
    for (size_t q = 0; q < N; q++) {
        x->cnt[q] = 2 * x->send_rows[q];
        x->cnt[N + q] = 2 * x->recv_rows[q];
        ep->bytes += q == me ? 0.0 : (double)x->cnt[q] * sizeof(int32_t);
    }
    if ((ep->rc = moe_dist_alltoallv_i32(ep->dist, x->idx_send, x->cnt, x->idx_recv, x->cnt + N, &ep->err)) ||
        swap_floats(x, plan ? buf->xd : NULL, x->send_rows, x->own.xd, x->recv_rows, D))
        return;
    ep->seconds += moe_prof_clock() - t0;
    make_views(x);
    const float *w1, *w3, *w2;
    weights(x, p, &w1, &w3, &w2);
    for (size_t q = 0; q < N; q++)
        moe_experts_blocks(&x->view[q], &x->vplan[q], 1, 0, 1.0f, NULL, NULL, NULL, w1, w3, w2, x->l->c.act);
    t0 = moe_prof_clock();
    swap_floats(x, x->own.yd, x->recv_rows, plan ? buf->yd : NULL, x->send_rows, D);
    ep->seconds += moe_prof_clock() - t0;
}

// The backward's two exchanges around this rank's expert backward for every
// source: source q's rows are micro-batch k = round N + q, whose expert
// gradients join the step's sum in k order (ep.h, Exactness).
static void backward_exchange(struct moe_ep_layer *x, const struct moe_params *p, struct moe_experts_buf *buf)
{
    struct moe_ep *ep = x->ep;
    if (ep->rc)
        return;
    const size_t N = (size_t)ep->dist->size, El = x->E_loc, D = x->own.D, FD = x->l->c.F * D;
    double t0 = moe_prof_clock();
    if (swap_floats(x, buf ? buf->dyd : NULL, x->send_rows, x->own.dyd, x->recv_rows, D))
        return;
    ep->seconds += moe_prof_clock() - t0;
    const float *w1, *w3, *w2;
    weights(x, p, &w1, &w3, &w2);
    for (size_t q = 0; q < N; q++) {
        // micro-batch k's gradients written into the tensors (beta 0), then into the running sum
        size_t k = ep->round * N + q;
        if (k >= ep->M)
            continue; // no micro-batch there: no rows
        float *g[3], *acc[3] = { x->g, w3 ? x->g + El * FD : NULL, x->g + (w3 ? 2 : 1) * El * FD };
        grads(x, p, &g[0], &g[1], &g[2]);
        moe_experts_blocks(&x->view[q], &x->vplan[q], 0, 1, 0.0f, g[0], g[1], g[2], w1, w3, w2, x->l->c.act);
        for (int t = 0; ep->M > 1 && t < 3; t++) // one micro-batch: its gradient as it is
            if (g[t])
                moe_fold(acc[t], g[t], g[t], El * FD, ep->w[k], k, k + 1 == ep->M);
    }
    t0 = moe_prof_clock();
    swap_floats(x, x->own.dxd, x->recv_rows, buf ? buf->dxd : NULL, x->send_rows, D);
    ep->seconds += moe_prof_clock() - t0;
}

void moe_ep_forward(struct moe_ep_layer *x, const struct moe_params *p, float *out, const float *in,
                    const float *gate, const struct moe_dispatch *plan, struct moe_experts_buf *buf)
{
    moe_experts_gather(buf, in, plan);
    forward_exchange(x, p, plan, buf);
    moe_experts_combine(out, gate, plan, buf);
}

void moe_ep_backward(struct moe_ep_layer *x, const struct moe_params *p, float *dx, float *dgate, const float *dout,
                     const float *gate, const struct moe_dispatch *plan, struct moe_experts_buf *buf)
{
    moe_experts_combine_backward(dgate, dout, gate, plan, buf);
    backward_exchange(x, p, buf);
    moe_experts_scatter(dx, plan, buf);
}

void moe_ep_eval_forward(struct moe_ep_layer *x, const struct moe_params *p, float *out, const float *in,
                         const float *gate, const struct moe_dispatch *plan, struct moe_experts_buf *buf)
{
    struct moe_ep *ep = x->ep;
    moe_experts_gather(buf, in, plan);
    if (!ep->rc) {
        const size_t N = (size_t)ep->dist->size, El = x->E_loc, D = buf->D, F = buf->F;
        const size_t base = plan->offset[x->lo];
        // this rank's experts' rows as a plan and buffers of their own; the
        // outputs go to dyd (unused without a backward), the gather's source
        for (size_t e = 0; e <= El; e++)
            x->offs[e] = plan->offset[x->lo + e] - base;
        struct moe_dispatch v = { .T = plan->T, .S = plan->S, .E = El, .cap = plan->cap,
                                  .n_rows = x->offs[El], .offset = x->offs,
                                  .row_tok = plan->row_tok + base, .row_slot = plan->row_slot + base };
        struct moe_experts_buf w = *buf;
        w.own = NULL;
        w.N_max = v.n_rows;
        w.xd = buf->xd + base * D;
        w.yd = buf->dyd + base * D;
        w.a = buf->a + base * F;
        w.h = buf->h + base * F;
        w.b = buf->b ? buf->b + base * F : NULL;
        const float *w1, *w3, *w2;
        weights(x, p, &w1, &w3, &w2);
        moe_experts_blocks(&w, &v, 1, 0, 1.0f, NULL, NULL, NULL, w1, w3, w2, x->l->c.act);
        double t0 = moe_prof_clock();
        for (size_t q = 0; q < N; q++)
            x->cnt[q] = (plan->offset[(q + 1) * El] - plan->offset[q * El]) * D;
        ep->rc = moe_dist_allgatherv(ep->dist, w.yd, x->cnt, buf->yd, &ep->err);
        ep->seconds += moe_prof_clock() - t0;
    }
    moe_experts_combine(out, gate, plan, buf);
}

static int result(struct moe_ep *ep, struct moe_err *err)
{
    if (ep->rc && err)
        *err = ep->err;
    return ep->rc;
}

int moe_ep_idle(struct moe_ep *ep, const struct moe_params *p, struct moe_err *err)
{
    for (size_t i = 0; i < ep->n_layers; i++)
        forward_exchange(&ep->layers[i], p, NULL, NULL);
    for (size_t i = ep->n_layers; i-- > 0;)
        backward_exchange(&ep->layers[i], p, NULL);
    return result(ep, err);
}
