// device.cu: the CUDA backend's probe (device.h): what the CUDA runtime says
// about this machine. No context is created and nothing is allocated on a
// device; cudaGetDeviceCount loads the driver (libcuda) on first use.
#include "cuda/device.h"

#include <cuda_runtime.h>
#include <stdio.h>
#include <string.h>

// What the runtime said, as one line: "<call> returned <cudaErrorName>: <text>".
static void cuda_why(char *buf, size_t len, const char *call, cudaError_t e)
{
    snprintf(buf, len, "%s returned %s: %s", call, cudaGetErrorName(e), cudaGetErrorString(e));
}

extern "C" int moe_cuda_probe(int device, struct moe_backend_info *info)
{
    memset(info, 0, sizeof *info);
    info->built = 1;
    info->device = -1;
    int v = 0;
    if (cudaRuntimeGetVersion(&v) == cudaSuccess)
        info->runtime_version = v;
    v = 0;
    // 0, and success, when no driver is installed
    if (cudaDriverGetVersion(&v) == cudaSuccess)
        info->driver_version = v;
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        char why[MOE_BACKEND_REASON_MAX - 64];
        cuda_why(why, sizeof why, "cudaGetDeviceCount", e);
        if (info->driver_version == 0)
            snprintf(info->reason, sizeof info->reason, "no CUDA driver; %s", why);
        else
            snprintf(info->reason, sizeof info->reason, "driver %d.%d, runtime %d.%d; %s",
                     info->driver_version / 1000, info->driver_version % 1000 / 10,
                     info->runtime_version / 1000, info->runtime_version % 1000 / 10, why);
        (void)cudaGetLastError(); // clear it: a later call must not see this error
        return 0;
    }
    info->device_count = n;
    if (n <= 0) {
        info->device_count = 0;
        snprintf(info->reason, sizeof info->reason, "cudaGetDeviceCount found no CUDA device");
        return 0;
    }
    info->available = 1;
    if (device < 0 || device >= n)
        return 0;
    cudaDeviceProp p;
    e = cudaGetDeviceProperties(&p, device);
    if (e != cudaSuccess) {
        char why[MOE_BACKEND_REASON_MAX - 64];
        cuda_why(why, sizeof why, "cudaGetDeviceProperties", e);
        snprintf(info->reason, sizeof info->reason, "device %d: %s", device, why);
        (void)cudaGetLastError();
        return -1;
    }
    info->device = device;
    snprintf(info->dev.name, sizeof info->dev.name, "%s", p.name);
    info->dev.cc_major = p.major;
    info->dev.cc_minor = p.minor;
    info->dev.total_memory = p.totalGlobalMem;
    return 0;
}
