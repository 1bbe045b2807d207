// dist.h: scale-out over MPI (expert and data parallelism across processes),
// and what this build and machine have for it.
//
// What it is for today: saying whether this build has MPI and which library
// (`moe --version`), and refusing --expert-parallel / --data-parallel with one
// line where it does not. lib/dist/registry.c is the only file that tests
// MOE_HAVE_MPI; lib/dist/mpi.c, compiled only with MPI, is the only one that
// includes <mpi.h>.
//
// What it is not (yet): the parallel training itself (ranks, all-to-all of
// tokens, gradient all-reduce); README, Build options, says what runs today.
// Nothing here calls MPI_Init: asking for the library's version is allowed
// before it (MPI 3.1, sec. 8.1.1), so the probe is safe in any process.
#ifndef MOE_DIST_H
#define MOE_DIST_H

#define MOE_DIST_LIBRARY_MAX 160

struct moe_dist_info {
    int built;                         // 1: this build links an MPI library
    char library[MOE_DIST_LIBRARY_MAX]; // its version string up to the first comma, e.g. "Open MPI v4.1.4"
    int mpi_version, mpi_subversion;   // the MPI standard it implements, e.g. 3, 1
    char reason[MOE_DIST_LIBRARY_MAX]; // built == 0: why, and how to build with MPI
};

// What this build has. Never fails.
void moe_dist_probe(struct moe_dist_info *info);

// lib/dist/mpi.c's half of the probe (defined only in an MPI build; only
// registry.c calls it).
void moe_dist_mpi_probe(struct moe_dist_info *info);

#endif
