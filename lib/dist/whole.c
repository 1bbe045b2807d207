// whole.c: files written from a run whose processes hold only their experts
// (expert parallelism, ep.h: moe_ep_write_whole). Each buffer a file holds in
// one process's layout (the weights, an optimizer moment, the selected
// snapshot; core/params.h full_offset) is assembled while the writer reads
// it: the replicated tensors from rank 0's own copy, zeros between tensors,
// the state after the registry (snapshot), and each expert tensor gathered
// whole (MPI_Gatherv; rank order is expert order) into one buffer when the
// writer reaches it. Rank 0 so holds one whole expert tensor at a time, never
// the model. The other ranks take part in the same gathers in the same order;
// if rank 0's writer stops early, it still takes part in the rest. The
// header's CRC-32s come first: each rank's parts' CRCs are gathered and
// combined (moe_crc32_combine).
#include "dist/ep.h"

#include <stdlib.h>
#include <string.h>

enum { B_PARAMS, B_M, B_V, B_BEST, B_N };

struct whole_buf {
    struct moe_dist *d;
    const struct moe_params *p;
    const float *local; // registry layout (numel floats), then n_extra floats (the snapshot's state)
    size_t n_extra;
    float *tmp;         // rank 0: the expert tensor held whole
    size_t *cnt;        // (N) counts of a gather
    size_t next;        // tensors before it are gathered (or not experts)
    size_t hint;        // the tensor the writer read last
};

// Gather every expert tensor from b->next up to tensor upto (rank 0: into tmp).
static int gather_upto(struct whole_buf *b, size_t upto, struct moe_err *err)
{
    const struct moe_params *p = b->p;
    for (; b->next <= upto && b->next < p->n; b->next++) {
        const struct moe_tensor *t = &p->t[b->next];
        if (!t->experts)
            continue;
        for (size_t q = 0; q < (size_t)p->shard_size; q++)
            b->cnt[q] = t->numel;
        int rc = moe_dist_gatherv(b->d, b->local + t->offset, b->cnt, b->tmp, err);
        if (rc)
            return rc;
    }
    return 0;
}

// Floats f .. f + n - 1 of the buffer in one process's layout (rank 0), f increasing.
static int read_whole(struct whole_buf *b, size_t f, float *buf, size_t n, struct moe_err *err)
{
    const struct moe_params *p = b->p;
    while (n) {
        if (f >= p->full_numel) {
            memcpy(buf, b->local + p->numel + (f - p->full_numel), n * sizeof *buf);
            return 0;
        }
        size_t i = b->hint;
        while (p->t[i].full_offset + moe_tensor_full_numel(&p->t[i]) <= f)
            i++;
        b->hint = i;
        const struct moe_tensor *t = &p->t[i];
        size_t k;
        if (f < t->full_offset) { // the alignment gap before tensor i
            k = t->full_offset - f < n ? t->full_offset - f : n;
            memset(buf, 0, k * sizeof *buf);
        } else {
            size_t at = f - t->full_offset, len = moe_tensor_full_numel(t);
            k = len - at < n ? len - at : n;
            if (t->experts) {
                int rc = b->next <= i ? gather_upto(b, i, err) : 0;
                if (rc)
                    return rc;
                memcpy(buf, b->tmp + at, k * sizeof *buf);
            } else {
                memcpy(buf, b->local + t->offset + at, k * sizeof *buf);
            }
        }
        buf += k;
        f += k;
        n -= k;
    }
    return 0;
}

static int fill_flat(void *ctx, size_t off, void *buf, size_t n, struct moe_err *err)
{
    return read_whole(ctx, off / sizeof(float), buf, n / sizeof(float), err);
}

static int fill_tensor(void *ctx, size_t i, size_t off, float *buf, size_t n, struct moe_err *err)
{
    struct whole_buf *b = ctx;
    return read_whole(b, b->p->t[i].full_offset + off, buf, n, err);
}

// Rank 0: the CRC-32 of each buffer's whole expert tensors (crc_t[k n + i])
// and of the buffers in one process's layout (crc_flat[k]).
static int crcs(struct whole_buf *b, uint32_t *crc_t, uint32_t *crc_flat, struct moe_err *err)
{
    const struct moe_params *p = b[0].p;
    const size_t N = (size_t)p->shard_size, n = p->n;
    uint32_t *mine = malloc(B_N * n * sizeof *mine), *all = malloc(N * B_N * n * sizeof *all);
    int rc = !mine || !all ? moe_error(err, MOE_ENOMEM, "out of memory") : 0;
    for (size_t k = 0; !rc && k < B_N; k++)
        for (size_t i = 0; i < n; i++)
            mine[k * n + i] = b[k].local && p->t[i].experts
                                  ? moe_crc32(0, b[k].local + p->t[i].offset, p->t[i].numel * sizeof(float)) : 0;
    if (!rc)
        rc = moe_dist_allgather(b[0].d, mine, B_N * n * sizeof *mine, all, err);
    static const float zeros[16]; // a gap between tensors is under 16 floats
    for (size_t k = 0; !rc && b[0].d->rank == 0 && k < B_N; k++) {
        if (!b[k].local)
            continue;
        uint32_t c = 0;
        size_t end = 0;
        for (size_t i = 0; i < n; i++) {
            const struct moe_tensor *t = &p->t[i];
            c = moe_crc32(c, zeros, (t->full_offset - end) * sizeof(float));
            end = t->full_offset + moe_tensor_full_numel(t);
            if (!t->experts) {
                c = moe_crc32(c, b[k].local + t->offset, t->numel * sizeof(float));
                continue;
            }
            uint32_t ct = all[k * n + i]; // rank 0's part, then the others' in rank order
            for (size_t q = 1; q < N; q++)
                ct = moe_crc32_combine(ct, all[(q * B_N + k) * n + i], t->numel * sizeof(float));
            crc_t[k * n + i] = ct;
            c = moe_crc32_combine(c, ct, moe_tensor_full_numel(t) * sizeof(float));
        }
        crc_flat[k] = moe_crc32(c, b[k].local + p->numel, b[k].n_extra * sizeof(float));
    }
    free(mine);
    free(all);
    return rc;
}

int moe_ep_write_whole(struct moe_dist *d, struct moe_params *p, const struct moe_whole_src *src,
                       moe_whole_write_fn write, void *ctx, struct moe_err *err)
{
    const int root = d->rank == 0;
    const size_t N = (size_t)p->shard_size;
    size_t largest = 1;
    for (size_t i = 0; i < p->n; i++)
        if (p->t[i].experts && moe_tensor_full_numel(&p->t[i]) > largest)
            largest = moe_tensor_full_numel(&p->t[i]);
    struct whole_buf b[B_N] = {
        [B_PARAMS] = { .local = p->data },
        [B_M] = { .local = src ? src->m : NULL },
        [B_V] = { .local = src ? src->v : NULL },
        [B_BEST] = { .local = src ? src->best : NULL, .n_extra = src && src->best ? src->best_extra : 0 },
    };
    float *tmp = root ? moe_alloc(largest, sizeof *tmp) : NULL;
    size_t *cnt = malloc(N * sizeof *cnt);
    uint32_t *crc_t = root ? calloc(B_N * p->n + 1, sizeof *crc_t) : NULL, crc_flat[B_N] = { 0 };
    int rc = (root && (!tmp || !crc_t)) || !cnt
                 ? moe_error(err, MOE_ENOMEM, "out of memory for an expert tensor of %zu floats", largest) : 0;
    if ((rc = moe_dist_agree(d, rc, err)))
        goto out;
    for (int k = 0; k < B_N; k++) {
        b[k].d = d;
        b[k].p = p;
        b[k].tmp = tmp;
        b[k].cnt = cnt;
    }
    if ((rc = crcs(b, crc_t, crc_flat, err)))
        goto out;
    if (root) {
        struct moe_params_whole pw = { .fill = fill_tensor, .ctx = &b[B_PARAMS], .crc = crc_t };
        static const char *const name[B_N] = { NULL, "optim.m", "optim.v", "train.best" };
        struct moe_st_ref ref[B_N];
        const struct moe_st_ref *whole[MOE_WHOLE_N] = { NULL };
        for (int k = B_M; k < B_N; k++) {
            ref[k] = (struct moe_st_ref){ .name = name[k], .dtype = MOE_F32, .ndim = 1,
                                          .shape = { p->full_numel + b[k].n_extra }, .fill = fill_flat,
                                          .ctx = &b[k], .crc = crc_flat[k] };
            whole[k - B_M] = b[k].local ? &ref[k] : NULL;
        }
        p->whole = &pw;
        rc = write(ctx, whole, err);
        p->whole = NULL;
    }
    // the gathers the writer did not reach (all of them on the other ranks), in the same order
    for (int k = 0; k < B_N; k++) {
        int e = b[k].local ? gather_upto(&b[k], p->n, rc ? NULL : err) : 0;
        rc = rc ? rc : e;
    }
out:
    moe_free(tmp);
    free(cnt);
    free(crc_t);
    return rc;
}
