// device.h: the CUDA row of the backend table (backend/backend.h), from
// lib/cuda/device.cu: versions, device count and one device's properties,
// asked of the CUDA runtime. Declared with C linkage; only
// lib/backend/registry.c calls it, and only in a build with MOE_HAVE_CUDA.
// Not here: kernels, memory or streams.
#ifndef MOE_CUDA_DEVICE_H
#define MOE_CUDA_DEVICE_H

#include "backend/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

// The probe of the "cuda" row (struct moe_backend's probe): cudaRuntimeGetVersion,
// cudaDriverGetVersion, cudaGetDeviceCount and, for 0 <= device < count,
// cudaGetDeviceProperties. Leaves no CUDA error pending.
int moe_cuda_probe(int device, struct moe_backend_info *info);

#ifdef __cplusplus
}
#endif

#endif
