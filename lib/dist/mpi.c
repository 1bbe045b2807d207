// mpi.c: the MPI half of dist.h, compiled only when meson found an MPI C
// library (-Dmpi). Asks for versions only; never initialises MPI.
// reference: MPI 3.1 standard, sec. 8.1.1 (MPI_Get_version and
// MPI_Get_library_version may be called before MPI_Init).
#include "dist/dist.h"

#include <mpi.h>
#include <stdio.h>
#include <string.h>

void moe_dist_mpi_probe(struct moe_dist_info *info)
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
