// dist.c: the collectives of a run over MPI processes (dist.h), through the
// table of lib/dist/mpi.c; the same in every build.
#include "dist/dist.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int moe_dist_init(struct moe_dist *d, int n, const char *opt, struct moe_err *err)
{
    memset(d, 0, sizeof *d);
    const struct moe_dist_ops *ops = moe_dist_mpi_ops();
    if (!ops) {
        struct moe_dist_info info;
        moe_dist_probe(&info);
        return moe_error(err, MOE_EINVAL, "option '%s' cannot be used: %s", opt, info.reason);
    }
    d->ops = ops;
    int rc = ops->init(d, err);
    if (rc)
        return rc;
    if (d->size != n)
        return moe_error(err, MOE_EINVAL, "option '%s %d' needs %d processes, but this one was started as one of %d (start it with: mpirun -np %d moe ... %s %d)",
                         opt, n, n, d->size, n, opt, n);
    return 0;
}

void moe_dist_finalize(struct moe_dist *d)
{
    if (d->ops)
        d->ops->finalize();
    d->ops = NULL;
}

int moe_dist_allgather(struct moe_dist *d, const void *send, size_t bytes, void *recv, struct moe_err *err)
{
    return d->ops->allgather(send, bytes, recv, err);
}

int moe_dist_alltoallv(struct moe_dist *d, const float *send, const size_t *send_n, float *recv,
                       const size_t *recv_n, struct moe_err *err)
{
    return d->ops->alltoallv(d->size, send, send_n, recv, recv_n, 0, err);
}

int moe_dist_alltoallv_i32(struct moe_dist *d, const int32_t *send, const size_t *send_n, int32_t *recv,
                           const size_t *recv_n, struct moe_err *err)
{
    return d->ops->alltoallv(d->size, send, send_n, recv, recv_n, 1, err);
}

int moe_dist_allgatherv(struct moe_dist *d, const float *send, const size_t *n, float *recv, struct moe_err *err)
{
    return d->ops->allgatherv(d->rank, d->size, send, n, recv, err);
}

int moe_dist_max(struct moe_dist *d, long long v, long long *ret, struct moe_err *err)
{
    return d->ops->max(v, ret, err);
}

int moe_dist_sum(struct moe_dist *d, float *x, size_t n, double *bytes, struct moe_err *err)
{
    const size_t N = (size_t)d->size, me = (size_t)d->rank;
    size_t *cnt = malloc(3 * N * sizeof *cnt);
    float *recv = malloc((n / N + 1) * N * sizeof *recv), *part = malloc((n / N + 1) * sizeof *part);
    if (!cnt || !recv || !part) {
        free(cnt), free(recv), free(part);
        return moe_error(err, MOE_ENOMEM, "out of memory for a sum of %zu floats over %zu processes", n, N);
    }
    // slice q = [n q / N, n (q + 1) / N) to rank q; every rank's slice `me` back, in rank order
    for (size_t q = 0; q < N; q++) {
        cnt[q] = n * (q + 1) / N - n * q / N;
        cnt[N + q] = n * (me + 1) / N - n * me / N;
    }
    int rc = moe_dist_alltoallv(d, x, cnt, recv, cnt + N, err);
    const size_t len = cnt[N];
    for (size_t i = 0; !rc && i < len; i++) { // in rank order: the same bits on every rank, for any thread count
        float s = recv[i];
        for (size_t q = 1; q < N; q++)
            s += recv[q * len + i];
        part[i] = s;
    }
    if (!rc)
        rc = moe_dist_allgatherv(d, part, cnt, x, err);
    if (bytes)
        *bytes += (double)(n - len + len * (N - 1)) * sizeof(float);
    free(cnt), free(recv), free(part);
    return rc;
}

// What each rank contributes to an agreement.
struct vote {
    int rc;
    char msg[MOE_ERR_MSG_MAX];
};

int moe_dist_agree(struct moe_dist *d, int rc, struct moe_err *err)
{
    struct vote mine = { .rc = rc };
    if (rc && err)
        snprintf(mine.msg, sizeof mine.msg, "%s", err->msg);
    struct vote *all = calloc((size_t)d->size, sizeof *all);
    if (!all)
        return moe_error(err, MOE_ENOMEM, "out of memory for an agreement of %d processes", d->size);
    struct moe_err cerr = { 0 };
    int crc = moe_dist_allgather(d, &mine, sizeof mine, all, &cerr);
    int ret = 0;
    if (crc) {
        ret = moe_error(err, crc, "%s", cerr.msg);
    } else {
        for (int q = 0; q < d->size && !ret; q++) {
            if (!all[q].rc)
                continue;
            all[q].msg[sizeof all[q].msg - 1] = '\0';
            ret = q == 0 ? moe_error(err, all[q].rc, "%s", all[q].msg)
                                         : moe_error(err, all[q].rc, "rank %d: %s", q, all[q].msg);
        }
    }
    free(all);
    return ret;
}
