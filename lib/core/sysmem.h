// sysmem.h: how many bytes of memory this process can still allocate, so a
// command can refuse a config that will not fit before allocating it.
// Not an allocator and not a guarantee: other processes allocate too; this is
// the figure to compare an estimate (model/estimate.h) against.
//
// Sources, first that applies:
//   1. the environment variable MOE_MEMORY_LIMIT, bytes with an optional binary
//      suffix (K, M, G, T; "KiB"/"KB" and friends accepted): "8589934592",
//      "8G", "1.5GiB". It replaces the measurement (tests, or a user who
//      knows better);
//   2. the smallest of MemAvailable (/proc/meminfo); the headroom of the
//      process's memory cgroup: limit - (usage - inactive file pages), for
//      cgroup v2 (memory.max, memory.current, memory.stat) in the process's
//      cgroup and each ancestor, and for cgroup v1 (memory.limit_in_bytes,
//      memory.usage_in_bytes, total_inactive_file); and the headroom under the
//      process's resource limits (`ulimit -v`, `ulimit -d`): RLIMIT_AS less its
//      address space (VmSize), RLIMIT_DATA less its private writable memory
//      (VmData), from /proc/self/status;
//   3. without /proc/meminfo: sysconf(_SC_AVPHYS_PAGES) * page size.
#ifndef MOE_SYSMEM_H
#define MOE_SYSMEM_H

#include <stddef.h>

#include "core/status.h"

#define MOE_MEMORY_LIMIT_ENV "MOE_MEMORY_LIMIT"

struct moe_sysmem {
    size_t available;   // bytes
    const char *source; // "MOE_MEMORY_LIMIT", "MemAvailable", "sysconf", "cgroup", "RLIMIT_AS" or "RLIMIT_DATA"
};

// Fill *ret. MOE_EINVAL when MOE_MEMORY_LIMIT is set but malformed (the message
// names it); MOE_EIO when no source answers.
int moe_sysmem_available(struct moe_sysmem *ret, struct moe_err *err);

// Parse a byte count as MOE_MEMORY_LIMIT takes it. 0 on success, -1 when malformed
// or too large for size_t.
int moe_bytes_parse(const char *s, size_t *ret);

// The value of `key` ("MemAvailable") in /proc/meminfo text, in bytes, or -1 (as
// size_t: SIZE_MAX) when absent.
size_t moe_meminfo_bytes(const char *text, const char *key);

// Headroom of one cgroup directory: 1 and *ret = limit - (usage - inactive
// file pages) (0 when over), or 0 when the directory has no limit (v2 "max",
// v1 near-unlimited) or no readable limit file.
int moe_cgroup_headroom(const char *dir, size_t *ret);

// Headroom under resource limit `resource` (RLIMIT_AS or RLIMIT_DATA): 1 and *ret =
// soft limit - what the process uses of it (VmSize, VmData in `status`, the text of
// /proc/self/status; 0 when over), or 0 when the limit is infinite.
int moe_rlimit_headroom(int resource, const char *status, size_t *ret);

// A byte count for people: "512 B", "41.2 GiB" (binary units, one decimal).
void moe_bytes_str(char *buf, size_t len, double bytes);

#endif
