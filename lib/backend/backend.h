// backend.h: the table of compute backends ("cpu", "cuda") and what each one
// finds on this machine, asked at run time.
//
// What it is for: saying which backends a build has and whether each can run
// here, on which devices. `moe --version` prints the table and `--device`
// checks against it. Every backend has a row whether or not this build
// compiled it (a row that was not built says so, and how to build it), so no
// caller tests MOE_HAVE_CUDA: lib/backend/registry.c is the only file that does.
//
// What it is not: a way to run anything. No row allocates, copies or launches;
// kernels, device buffers and streams live elsewhere (lib/cuda/). A probe only
// asks for versions, the device count and one device's properties, and never
// fails: what went wrong is its one-line reason. With CUDA it loads the driver
// on first use (cudaGetDeviceCount), which can take a moment on a machine with
// GPUs; nothing calls a probe unless asked to (--version, --device).
//
// This header is included by C and by CUDA C++ (lib/cuda/device.cu), so it
// holds plain C declarations only.
#ifndef MOE_BACKEND_H
#define MOE_BACKEND_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MOE_BACKEND_REASON_MAX 256
#define MOE_DEVICE_NAME_MAX 256

// One device of a backend.
struct moe_device_info {
    char name[MOE_DEVICE_NAME_MAX]; // "NVIDIA H200"; for the CPU its model name from /proc/cpuinfo, or "CPU"
    int cc_major, cc_minor;         // CUDA compute capability (9, 0 for sm_90); 0, 0 for the CPU
    size_t total_memory;            // bytes: the device's global memory; for the CPU, physical memory
};

// What a probe found.
struct moe_backend_info {
    int built;           // 1: compiled into this build
    int available;       // 1: built, and at least one usable device
    char reason[MOE_BACKEND_REASON_MAX]; // one line, no trailing period: why not available ("" when available)
    int runtime_version; // CUDA runtime loaded (cudaRuntimeGetVersion): 1000 * major + 10 * minor, 13000 = 13.0; 0 for the CPU
    int driver_version;  // CUDA driver (cudaDriverGetVersion), same encoding; 0 when there is no driver, and for the CPU
    int device_count;    // usable devices: cudaGetDeviceCount (0 when it failed); 1 for the CPU
    int device;          // the device described in dev, or -1 (none asked, out of range, or not describable)
    struct moe_device_info dev;
};

struct moe_backend {
    const char *name; // what --device takes: "cpu", "cuda" (and "cuda:N" for device N)
    // Fill all of *info. With 0 <= device < info->device_count, also describe that
    // device in info->dev and set info->device = device; otherwise (device < 0 for
    // none) info->device = -1. Returns 0, or -1 when the device asked for exists but
    // could not be described (the runtime's error is then in info->reason).
    int (*probe)(int device, struct moe_backend_info *info);
};

// The table, in a fixed order: "cpu" (the default) first. *n is set to the number of rows.
const struct moe_backend *moe_backends(size_t *n);
// The row called name, or NULL.
const struct moe_backend *moe_backend_find(const char *name);
// Whether the backend called name is compiled into this build (no probe: the
// CUDA runtime is not touched).
int moe_backend_built(const char *name);
// A CUDA version number as text: 13000 -> "13.0", 12040 -> "12.4"; 0 -> "none".
void moe_backend_version_str(int version, char *buf, size_t len);

#ifdef __cplusplus
}
#endif

#endif
