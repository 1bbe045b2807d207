// mpi.c: the MPI half of dist.h, compiled only when meson found an MPI C
// library (-Dmpi). MPI_COMM_WORLD with MPI_ERRORS_RETURN: a failed call comes
// back as MOE_EDIST naming the call (MPI's default handler would abort the job
// without a word from moe).
// reference: MPI 3.1 standard, sec. 8.1.1 (MPI_Get_version and
// MPI_Get_library_version may be called before MPI_Init), sec. 8.3 (error
// handlers), sec. 12.4 (MPI_THREAD_FUNNELED: only the main thread calls MPI;
// OpenMP threads never do).
#include "dist/dist.h"

#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void probe(struct moe_dist_info *info)
{
    char v[MPI_MAX_LIBRARY_VERSION_STRING];
    int len = 0;
    if (MPI_Get_library_version(v, &len) != MPI_SUCCESS)
        snprintf(v, sizeof v, "unknown MPI library");
    v[len >= 0 && len < (int)sizeof v ? len : (int)sizeof v - 1] = '\0';
    // the name and version: up to the first comma or line end (Open MPI follows
    // them with its package, ident and repository revision)
    size_t n = strcspn(v, ",\r\n");
    if (n >= sizeof info->library)
        n = sizeof info->library - 1;
    memcpy(info->library, v, n);
    info->library[n] = '\0';
    if (MPI_Get_version(&info->mpi_version, &info->mpi_subversion) != MPI_SUCCESS)
        info->mpi_version = info->mpi_subversion = 0;
}

// A failed call as one line: the call and MPI's own words for the error.
static int fail(struct moe_err *err, const char *call, int code)
{
    char s[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(code, s, &len) != MPI_SUCCESS || len <= 0)
        snprintf(s, sizeof s, "error %d", code);
    s[len > 0 && len < (int)sizeof s ? len : (int)sizeof s - 1] = '\0';
    for (char *p = s; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    return moe_error(err, MOE_EDIST, "%s failed: %s", call, s);
}

static int init(struct moe_dist *d, struct moe_err *err)
{
    int done = 0, rc, provided = 0;
    MPI_Initialized(&done);
    if (!done && (rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided)) != MPI_SUCCESS)
        return fail(err, "MPI_Init_thread", rc);
    if ((rc = MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN)) != MPI_SUCCESS)
        return fail(err, "MPI_Comm_set_errhandler", rc);
    if ((rc = MPI_Comm_rank(MPI_COMM_WORLD, &d->rank)) != MPI_SUCCESS)
        return fail(err, "MPI_Comm_rank", rc);
    if ((rc = MPI_Comm_size(MPI_COMM_WORLD, &d->size)) != MPI_SUCCESS)
        return fail(err, "MPI_Comm_size", rc);
    return 0;
}

static void finalize(void)
{
    int done = 0;
    MPI_Finalized(&done);
    if (!done)
        MPI_Finalize();
}

static int allgather(const void *send, size_t bytes, void *recv, struct moe_err *err)
{
    if (bytes > INT_MAX)
        return moe_error(err, MOE_EDIST, "MPI_Allgather: %zu bytes is more than one message carries", bytes);
    int rc = MPI_Allgather(send, (int)bytes, MPI_BYTE, recv, (int)bytes, MPI_BYTE, MPI_COMM_WORLD);
    return rc == MPI_SUCCESS ? 0 : fail(err, "MPI_Allgather", rc);
}

// Counts and displacements as MPI's ints (refused when they do not fit).
static int to_ints(int size, const size_t *n, int *cnt, int *disp, const char *call, struct moe_err *err)
{
    size_t off = 0;
    for (int q = 0; q < size; q++) {
        if (n[q] > INT_MAX || off > INT_MAX)
            return moe_error(err, MOE_EDIST, "%s: %zu numbers is more than one message carries", call, off + n[q]);
        cnt[q] = (int)n[q];
        disp[q] = (int)off;
        off += n[q];
    }
    return 0;
}

static int alltoallv(int size, const void *send, const size_t *send_n, void *recv, const size_t *recv_n, int i32,
                     struct moe_err *err)
{
    MPI_Datatype type = i32 ? MPI_INT32_T : MPI_FLOAT;
    int *v = malloc(4 * (size_t)size * sizeof *v);
    if (!v)
        return moe_error(err, MOE_ENOMEM, "out of memory for MPI_Alltoallv counts");
    int rc = to_ints(size, send_n, v, v + size, "MPI_Alltoallv", err);
    if (!rc)
        rc = to_ints(size, recv_n, v + 2 * size, v + 3 * size, "MPI_Alltoallv", err);
    if (!rc && (rc = MPI_Alltoallv(send, v, v + size, type, recv, v + 2 * size, v + 3 * size, type,
                                   MPI_COMM_WORLD)) != MPI_SUCCESS)
        rc = fail(err, "MPI_Alltoallv", rc);
    free(v);
    return rc;
}

static int allgatherv(int rank, int size, const float *send, const size_t *n, float *recv, struct moe_err *err)
{
    int *v = malloc(2 * (size_t)size * sizeof *v);
    if (!v)
        return moe_error(err, MOE_ENOMEM, "out of memory for MPI_Allgatherv counts");
    int rc = to_ints(size, n, v, v + size, "MPI_Allgatherv", err);
    if (!rc && (rc = MPI_Allgatherv(send, v[rank], MPI_FLOAT, recv, v, v + size, MPI_FLOAT, MPI_COMM_WORLD)) !=
                   MPI_SUCCESS)
        rc = fail(err, "MPI_Allgatherv", rc);
    free(v);
    return rc;
}

static int gatherv(int rank, int size, const float *send, const size_t *n, float *recv, struct moe_err *err)
{
    int *v = malloc(2 * (size_t)size * sizeof *v);
    if (!v)
        return moe_error(err, MOE_ENOMEM, "out of memory for MPI_Gatherv counts");
    int rc = to_ints(size, n, v, v + size, "MPI_Gatherv", err);
    if (!rc && (rc = MPI_Gatherv(send, v[rank], MPI_FLOAT, recv, v, v + size, MPI_FLOAT, 0, MPI_COMM_WORLD)) !=
                   MPI_SUCCESS)
        rc = fail(err, "MPI_Gatherv", rc);
    free(v);
    return rc;
}

static int max(long long v, long long *ret, struct moe_err *err)
{
    int rc = MPI_Allreduce(&v, ret, 1, MPI_LONG_LONG, MPI_MAX, MPI_COMM_WORLD);
    return rc == MPI_SUCCESS ? 0 : fail(err, "MPI_Allreduce", rc);
}

const struct moe_dist_ops moe_dist_mpi = {
    .probe = probe, .init = init, .finalize = finalize, .allgather = allgather,
    .alltoallv = alltoallv, .allgatherv = allgatherv, .gatherv = gatherv, .max = max,
};
