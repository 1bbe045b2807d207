// registry.c: whether this build has MPI (see dist.h). The only file that tests
// MOE_HAVE_MPI.
#include "dist/dist.h"

#include <stdio.h>
#include <string.h>

const struct moe_dist_ops *moe_dist_mpi_ops(void)
{
#if MOE_HAVE_MPI
    return &moe_dist_mpi;
#else
    return NULL;
#endif
}

void moe_dist_probe(struct moe_dist_info *info)
{
    memset(info, 0, sizeof *info);
    const struct moe_dist_ops *ops = moe_dist_mpi_ops();
    if (ops) {
        info->built = 1;
        ops->probe(info);
        return;
    }
    snprintf(info->reason, sizeof info->reason,
             "this build has no MPI (meson setup -Dmpi=enabled, with an MPI C library such as Debian's libopenmpi-dev)");
}
