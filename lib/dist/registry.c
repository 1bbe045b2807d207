// registry.c: whether this build has MPI (see dist.h). The only file that tests
// MOE_HAVE_MPI.
#include "dist/dist.h"

#include <stdio.h>
#include <string.h>

void moe_dist_probe(struct moe_dist_info *info)
{
    memset(info, 0, sizeof *info);
#if MOE_HAVE_MPI
    info->built = 1;
    moe_dist_mpi_probe(info);
#else
    snprintf(info->reason, sizeof info->reason,
             "this build has no MPI (meson setup -Dmpi=enabled, with an MPI C library such as Debian's libopenmpi-dev)");
#endif
}
