// registry.c: the backend table (backend.h). The only file that tests
// MOE_HAVE_CUDA (defined by meson.build when the CUDA backend is built): with
// it the "cuda" row probes the CUDA runtime (lib/cuda/device.cu); without it
// the row says the build has none and how to get one.
#include "backend/backend.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#if MOE_HAVE_CUDA
#include "cuda/device.h"
#endif

// The CPU's model name from /proc/cpuinfo ("model name : ..."), or "CPU".
static void cpu_name(char *buf, size_t len)
{
    snprintf(buf, len, "CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10) != 0)
            continue;
        const char *v = strchr(line, ':');
        if (!v)
            break;
        v += 1 + strspn(v + 1, " \t");
        size_t n = strcspn(v, "\r\n");
        if (n > 0)
            snprintf(buf, len, "%.*s", (int)n, v);
        break;
    }
    fclose(f);
}

static int cpu_probe(int device, struct moe_backend_info *info)
{
    memset(info, 0, sizeof *info);
    info->built = 1;
    info->available = 1;
    info->device_count = 1;
    info->device = -1;
    if (device != 0)
        return 0;
    info->device = 0;
    cpu_name(info->dev.name, sizeof info->dev.name);
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    info->dev.total_memory = pages > 0 && page > 0 ? (size_t)pages * (size_t)page : 0;
    return 0;
}

#if !MOE_HAVE_CUDA
static int cuda_not_built(int device, struct moe_backend_info *info)
{
    (void)device;
    memset(info, 0, sizeof *info);
    info->device = -1;
    snprintf(info->reason, sizeof info->reason,
             "this build has no CUDA backend; 'meson setup -Dcuda=enabled BUILDDIR' builds one, given nvcc, cudart and cuBLAS");
    return 0;
}
#endif

static const struct moe_backend backends[] = {
    { "cpu", cpu_probe },
#if MOE_HAVE_CUDA
    { "cuda", moe_cuda_probe },
#else
    { "cuda", cuda_not_built },
#endif
};

const struct moe_backend *moe_backends(size_t *n)
{
    *n = sizeof backends / sizeof backends[0];
    return backends;
}

const struct moe_backend *moe_backend_find(const char *name)
{
    for (size_t i = 0; i < sizeof backends / sizeof backends[0]; i++)
        if (strcmp(backends[i].name, name) == 0)
            return &backends[i];
    return NULL;
}

void moe_backend_version_str(int version, char *buf, size_t len)
{
    if (version <= 0)
        snprintf(buf, len, "none");
    else
        snprintf(buf, len, "%d.%d", version / 1000, version % 1000 / 10);
}

int moe_backend_built(const char *name)
{
    if (strcmp(name, "cpu") == 0)
        return 1;
#if MOE_HAVE_CUDA
    if (strcmp(name, "cuda") == 0)
        return 1;
#endif
    return 0;
}
