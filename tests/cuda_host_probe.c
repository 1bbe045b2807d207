// cuda_host_probe.c: the "cuda" row's probe (cuda/device.h) for moe-cuda-host,
// the moe command line built on the host emulation of the CUDA ops
// (tests/cuda_host.c) instead of a GPU, for tests only. It reports one device,
// named as the emulation, with no CUDA runtime or driver (versions 0, printed
// "none"), compute capability 0.0, and the machine's physical memory, so that
// `--device cuda` runs the device code paths of every command (the device
// model, its copies, checkpoints and traces) through the emulated launches,
// where they must give the CPU library's bits.
//
// The environment sets what a test needs of the device (read once, at start):
//   MOE_CUDA_HOST_MEMORY=BYTES     the device's memory, as the probe reports it
//                                  (the dry run's fits; the run's memory check)
//   MOE_CUDA_HOST_FAIL_MALLOC=N    the Nth device allocation fails, as
//                                  cudaMalloc does on a full device
//   MOE_CUDA_HOST_FAIL_OPTIM=N     the Nth optimizer launch faults, as a kernel
//                                  with an illegal address does (sticky)
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "cuda/device.h"

extern long cuda_host_fail_malloc, cuda_host_fail_optim;

static size_t memory_bytes;

// A non-negative integer from the environment, or fallback when unset or not one.
static unsigned long long env_count(const char *name, unsigned long long fallback)
{
    const char *s = getenv(name);
    char *end;
    if (!s || !*s)
        return fallback;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end || *s == '-') {
        fprintf(stderr, "moe-cuda-host: %s expects a non-negative integer, got '%s'\n", name, s);
        exit(2);
    }
    return v;
}

__attribute__((constructor)) static void cuda_host_probe_env(void)
{
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    memory_bytes = env_count("MOE_CUDA_HOST_MEMORY", pages > 0 && page > 0 ? (size_t)pages * (size_t)page : 0);
    cuda_host_fail_malloc = (long)env_count("MOE_CUDA_HOST_FAIL_MALLOC", 0);
    cuda_host_fail_optim = (long)env_count("MOE_CUDA_HOST_FAIL_OPTIM", 0);
}

int moe_cuda_probe(int device, struct moe_backend_info *info)
{
    *info = (struct moe_backend_info){ .built = 1, .available = 1, .device_count = 1, .device = -1 };
    if (device != 0)
        return 0;
    info->device = 0;
    snprintf(info->dev.name, sizeof info->dev.name, "host emulation of the CUDA ops (tests/cuda_host.c)");
    info->dev.total_memory = memory_bytes;
    return 0;
}
