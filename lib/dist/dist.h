// dist.h: scale-out over MPI (data parallelism across processes), and what
// this build and machine have for it.
//
// A run over N processes (mpirun -np N moe train --data-parallel N) holds one
// struct moe_dist: the rank of this process and N, and the few collectives the
// trainer needs, each named in its error message when it fails. Without MPI in
// the build, moe_dist_init fails with one line saying how to get it.
//
// lib/dist/registry.c is the only file that tests MOE_HAVE_MPI; lib/dist/mpi.c,
// compiled only with MPI, is the only one that includes <mpi.h>; dist.c is the
// rest, the same in every build. moe_dist_probe never calls MPI_Init: asking
// for the library's version is allowed before it (MPI 3.1, sec. 8.1.1).
#ifndef MOE_DIST_H
#define MOE_DIST_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"

#define MOE_DIST_LIBRARY_MAX 160

struct moe_dist_info {
    int built;                         // 1: this build links an MPI library
    char library[MOE_DIST_LIBRARY_MAX]; // its version string up to the first comma, e.g. "Open MPI v4.1.4"
    int mpi_version, mpi_subversion;   // the MPI standard it implements, e.g. 3, 1
    char reason[MOE_DIST_LIBRARY_MAX]; // built == 0: why, and how to build with MPI
};

// What this build has. Never fails.
void moe_dist_probe(struct moe_dist_info *info);

// ---- a run over MPI processes
struct moe_dist {
    int rank, size;
    const struct moe_dist_ops *ops;
};

// Start MPI (once per process) and check that it was started with n processes:
// opt names the option that asked for them in the messages. MOE_EINVAL when the
// build has no MPI or the process count differs from n; MOE_EDIST when MPI fails.
int moe_dist_init(struct moe_dist *d, int n, const char *opt, struct moe_err *err);
// End MPI (collective: every rank calls it once, after its last collective).
void moe_dist_finalize(struct moe_dist *d);

// Every rank's bytes bytes of send, in rank order, into recv (size x bytes).
int moe_dist_allgather(struct moe_dist *d, const void *send, size_t bytes, void *recv, struct moe_err *err);
// Floats to and from every rank: send_n[q] floats to rank q, from send in rank
// order; recv_n[q] floats from rank q, into recv in rank order.
int moe_dist_alltoallv(struct moe_dist *d, const float *send, const size_t *send_n, float *recv,
                       const size_t *recv_n, struct moe_err *err);
// The same for 32-bit integers.
int moe_dist_alltoallv_i32(struct moe_dist *d, const int32_t *send, const size_t *send_n, int32_t *recv,
                           const size_t *recv_n, struct moe_err *err);
// Every rank's n[rank] floats of send, in rank order, into recv (sum of n).
int moe_dist_allgatherv(struct moe_dist *d, const float *send, const size_t *n, float *recv, struct moe_err *err);
// The same into rank 0's recv only (MPI_Gatherv; recv unused elsewhere).
int moe_dist_gatherv(struct moe_dist *d, const float *send, const size_t *n, float *recv, struct moe_err *err);
// x (n floats) = the sum over ranks of every rank's x, added in rank order
// (slices summed by their owner rank, then gathered: MPI_Alltoallv then
// MPI_Allgatherv), so every rank gets the same bits. bytes (may be NULL) +=
// what this rank sends to the others.
int moe_dist_sum(struct moe_dist *d, float *x, size_t n, double *bytes, struct moe_err *err);
// The largest of every rank's v.
int moe_dist_max(struct moe_dist *d, long long v, long long *ret, struct moe_err *err);

// A process of the job that dies leaves the others waiting inside a collective
// until the runtime kills them (Open MPI: SIGTERM, then SIGKILL 1 s later).
// moe_dist_stop_signal, async-signal-safe, is for the handler of SIGINT and
// SIGTERM: when such a signal finds this process waiting inside a collective,
// and 0.4 s later it still waits there while a process of the job on this
// machine has ended, the lowest-numbered living process prints one line
// ("moe train: process R of N (pid P) ended (killed or crashed) while process
// Q waited for it in MPI_Alltoallv" and the note) and the waiting processes
// exit 1. A stop signal to every living process (a scheduler's) changes
// nothing: the collective completes and the run stops after its step as usual.
// moe_dist_set_stop_note sets the line's command ("moe CMD: ") and end (e.g.
// how to continue the run).
void moe_dist_stop_signal(void);
void moe_dist_set_stop_note(const char *cmd, const char *note);

// Agreement after a step that may fail on some ranks only (rank 0 writing a
// file, a config checked per process): every rank passes its rc and err, and
// every rank returns the same status: 0 when all passed 0, else the status of
// the lowest failing rank with its message (prefixed "rank R: " when R != 0),
// into err. A failed collective gives MOE_EDIST.
int moe_dist_agree(struct moe_dist *d, int rc, struct moe_err *err);

// ---- the MPI half (lib/dist/mpi.c; only registry.c refers to it)
struct moe_dist_ops {
    void (*probe)(struct moe_dist_info *info);
    int (*init)(struct moe_dist *d, struct moe_err *err);
    void (*finalize)(void);
    int (*allgather)(const void *send, size_t bytes, void *recv, struct moe_err *err);
    int (*alltoallv)(int size, const void *send, const size_t *send_n, void *recv, const size_t *recv_n, int i32,
                     struct moe_err *err);
    int (*allgatherv)(int rank, int size, const float *send, const size_t *n, float *recv, struct moe_err *err);
    int (*gatherv)(int rank, int size, const float *send, const size_t *n, float *recv, struct moe_err *err);
    int (*max)(long long v, long long *ret, struct moe_err *err);
};
// The MPI table, or NULL in a build without MPI (registry.c).
const struct moe_dist_ops *moe_dist_mpi_ops(void);
extern const struct moe_dist_ops moe_dist_mpi;

#endif
