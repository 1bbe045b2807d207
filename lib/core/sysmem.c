// sysmem.c: bytes of memory this process can still allocate (see sysmem.h).
// reference: Linux Documentation/filesystems/proc.rst (MemAvailable),
// Documentation/admin-guide/cgroup-v2.rst (memory.max, memory.current,
// memory.stat), Documentation/admin-guide/cgroup-v1/memory.rst.
#include "core/sysmem.h"

#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

// cgroup v1 reports "no limit" as the largest page-aligned long (about 2^63);
// anything this large is no limit on a real machine.
#define CGROUP_V1_UNLIMITED ((uint64_t)1 << 62)

// Read a small text file whole into buf (NUL-terminated). 0 or -1.
static int read_text(const char *path, char *buf, size_t len)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, len - 1, f);
    int bad = ferror(f);
    fclose(f);
    if (bad)
        return -1;
    buf[n] = '\0';
    return 0;
}

// A decimal unsigned integer followed only by whitespace. 0 or -1.
static int parse_u64(const char *s, uint64_t *ret)
{
    if (!isdigit((unsigned char)*s))
        return -1;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno)
        return -1;
    while (isspace((unsigned char)*end))
        end++;
    if (*end)
        return -1;
    *ret = v;
    return 0;
}

// The number after `key` at the start of a line ("key value" or "key: value").
static int line_value(const char *text, const char *key, uint64_t *ret)
{
    size_t kl = strlen(key);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, key, kl) != 0 || (p[kl] != ' ' && p[kl] != ':' && p[kl] != '\t'))
            continue;
        const char *v = p + kl + (p[kl] == ':');
        while (*v == ' ' || *v == '\t')
            v++;
        if (!isdigit((unsigned char)*v))
            return -1;
        errno = 0;
        unsigned long long x = strtoull(v, NULL, 10);
        if (errno)
            return -1;
        *ret = x;
        return 0;
    }
    return -1;
}

size_t moe_meminfo_bytes(const char *text, const char *key)
{
    uint64_t kb;
    if (line_value(text, key, &kb) || kb > SIZE_MAX / 1024)
        return SIZE_MAX;
    return (size_t)kb * 1024; // /proc/meminfo counts in kB = 1024 bytes
}

int moe_cgroup_headroom(const char *dir, size_t *ret)
{
    char path[4096], buf[8192];
    uint64_t limit, usage, inactive = 0;
    const char *usage_file, *inactive_key, *inactive_key2;
    snprintf(path, sizeof path, "%s/memory.max", dir);
    if (read_text(path, buf, sizeof buf) == 0) { // cgroup v2
        if (strncmp(buf, "max", 3) == 0 || parse_u64(buf, &limit))
            return 0;
        usage_file = "memory.current";
        inactive_key = inactive_key2 = "inactive_file";
    } else {
        snprintf(path, sizeof path, "%s/memory.limit_in_bytes", dir);
        if (read_text(path, buf, sizeof buf) || parse_u64(buf, &limit) || limit >= CGROUP_V1_UNLIMITED)
            return 0;
        usage_file = "memory.usage_in_bytes";
        inactive_key = "total_inactive_file"; // hierarchical
        inactive_key2 = "inactive_file";
    }
    snprintf(path, sizeof path, "%s/%s", dir, usage_file);
    if (read_text(path, buf, sizeof buf) || parse_u64(buf, &usage))
        usage = 0;
    snprintf(path, sizeof path, "%s/memory.stat", dir);
    if (read_text(path, buf, sizeof buf) == 0 && line_value(buf, inactive_key, &inactive))
        line_value(buf, inactive_key2, &inactive);
    // Inactive file pages are reclaimed before the limit bites (as MemAvailable counts them).
    uint64_t used = usage > inactive ? usage - inactive : 0;
    uint64_t room = limit > used ? limit - used : 0;
    *ret = room > SIZE_MAX ? SIZE_MAX : (size_t)room;
    return 1;
}

// The smallest headroom over dir and its ancestors up to root (limits of
// ancestors apply too). 1 when some level has a limit.
static int headroom_chain(const char *root, const char *rel, size_t *ret)
{
    char dir[4096];
    if (snprintf(dir, sizeof dir, "%s%s", root, rel) >= (int)sizeof dir || access(dir, F_OK) != 0)
        snprintf(dir, sizeof dir, "%s", root); // inside a cgroup namespace the path may not resolve
    size_t best = SIZE_MAX, h;
    int found = 0, len = (int)strlen(root);
    for (;;) {
        if (moe_cgroup_headroom(dir, &h) == 1) {
            found = 1;
            if (h < best)
                best = h;
        }
        char *slash = strrchr(dir, '/');
        if ((int)strlen(dir) <= len || !slash || slash - dir < len)
            break;
        *slash = '\0';
    }
    if (found)
        *ret = best;
    return found;
}

// The process's memory cgroup headroom, v2 or v1. 1 when limited.
static int cgroup_headroom(size_t *ret)
{
    char buf[8192];
    if (read_text("/proc/self/cgroup", buf, sizeof buf))
        return 0;
    size_t best = SIZE_MAX, h;
    int found = 0;
    for (char *save = NULL, *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        // hierarchy-id:controller-list:path
        char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2)
            continue;
        *c1 = *c2 = '\0';
        const char *ctrl = c1 + 1, *rel = c2 + 1;
        if (strcmp(rel, "/") == 0)
            rel = "";
        int hit = 0;
        if (strcmp(line, "0") == 0 && *ctrl == '\0') {
            hit = access("/sys/fs/cgroup/cgroup.controllers", F_OK) == 0
                      ? headroom_chain("/sys/fs/cgroup", rel, &h)
                      : headroom_chain("/sys/fs/cgroup/unified", rel, &h);
        } else {
            char list[256];
            snprintf(list, sizeof list, ",%s,", ctrl);
            if (strstr(list, ",memory,"))
                hit = headroom_chain("/sys/fs/cgroup/memory", rel, &h);
        }
        if (hit) {
            found = 1;
            if (h < best)
                best = h;
        }
    }
    if (found)
        *ret = best;
    return found;
}

int moe_bytes_parse(const char *s, size_t *ret)
{
    const char *p = s;
    if (!isdigit((unsigned char)*p))
        return -1;
    while (isdigit((unsigned char)*p))
        p++;
    int frac = *p == '.';
    if (frac) {
        p++;
        if (!isdigit((unsigned char)*p))
            return -1;
        while (isdigit((unsigned char)*p))
            p++;
    }
    const char *num_end = p;
    unsigned shift = 0;
    switch (toupper((unsigned char)*p)) {
    case 'K': shift = 10; break;
    case 'M': shift = 20; break;
    case 'G': shift = 30; break;
    case 'T': shift = 40; break;
    case 'P': shift = 50; break;
    default: break;
    }
    if (shift) {
        p++;
        if (*p == 'i' || *p == 'I')
            p++;
        if (*p == 'b' || *p == 'B')
            p++;
    } else if (*p == 'b' || *p == 'B') {
        p++;
    }
    if (*p)
        return -1;
    char num[64];
    size_t nl = (size_t)(num_end - s);
    if (nl >= sizeof num)
        return -1;
    memcpy(num, s, nl);
    num[nl] = '\0';
    if (!frac) { // exact for integers
        errno = 0;
        unsigned long long v = strtoull(num, NULL, 10);
        if (errno || v > SIZE_MAX || (shift && v > (SIZE_MAX >> shift)))
            return -1;
        *ret = (size_t)v << shift;
        return 0;
    }
    double v = strtod(num, NULL) * (double)((uint64_t)1 << shift);
    if (!(v < 18446744073709549568.0)) // the largest double below 2^64
        return -1;
    *ret = (size_t)v;
    return 0;
}

int moe_rlimit_headroom(int resource, const char *status, size_t *ret)
{
    struct rlimit rl;
    if (getrlimit(resource, &rl) || rl.rlim_cur == RLIM_INFINITY)
        return 0;
    // RLIMIT_AS caps the whole address space (VmSize), RLIMIT_DATA the private
    // writable memory (VmData, Linux 4.7 on), heap and anonymous mappings alike.
    size_t used = moe_meminfo_bytes(status, resource == RLIMIT_AS ? "VmSize" : "VmData");
    if (used == SIZE_MAX)
        used = 0; // no /proc: the limit alone
    size_t limit = rl.rlim_cur > (rlim_t)SIZE_MAX ? SIZE_MAX : (size_t)rl.rlim_cur;
    *ret = limit > used ? limit - used : 0;
    return 1;
}

int moe_sysmem_available(struct moe_sysmem *ret, struct moe_err *err)
{
    const char *env = getenv(MOE_MEMORY_LIMIT_ENV);
    if (env) {
        size_t v;
        if (moe_bytes_parse(env, &v))
            return moe_error(err, MOE_EINVAL,
                             "environment variable '%s': expected a byte count such as 8589934592 or 8G, got '%s'",
                             MOE_MEMORY_LIMIT_ENV, env);
        ret->available = v;
        ret->source = MOE_MEMORY_LIMIT_ENV;
        return 0;
    }
    char buf[16384];
    size_t avail = SIZE_MAX;
    const char *source = NULL;
    if (read_text("/proc/meminfo", buf, sizeof buf) == 0 &&
        (avail = moe_meminfo_bytes(buf, "MemAvailable")) != SIZE_MAX) {
        source = "MemAvailable";
    } else {
        long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
        if (pages > 0 && page > 0) {
            avail = (size_t)pages > SIZE_MAX / (size_t)page ? SIZE_MAX : (size_t)pages * (size_t)page;
            source = "sysconf";
        }
    }
    size_t cg;
    if (cgroup_headroom(&cg) && (!source || cg < avail)) {
        avail = cg;
        source = "cgroup";
    }
    char status[8192];
    if (read_text("/proc/self/status", status, sizeof status))
        status[0] = '\0';
    static const int res[2] = { RLIMIT_AS, RLIMIT_DATA };
    static const char *const res_name[2] = { "RLIMIT_AS", "RLIMIT_DATA" };
    for (int k = 0; k < 2; k++) {
        size_t h;
        if (moe_rlimit_headroom(res[k], status, &h) && (!source || h < avail)) {
            avail = h;
            source = res_name[k];
        }
    }
    if (!source)
        return moe_error(err, MOE_EIO, "cannot tell the memory available: no /proc/meminfo, sysconf, cgroup or resource limit");
    ret->available = avail;
    ret->source = source;
    return 0;
}

void moe_bytes_str(char *buf, size_t len, double bytes)
{
    static const char *const units[] = { "KiB", "MiB", "GiB", "TiB", "PiB", "EiB" };
    if (bytes < 1024.0) {
        snprintf(buf, len, "%.0f B", bytes);
        return;
    }
    int u = -1;
    while (bytes >= 1024.0 && u < 5) {
        bytes /= 1024.0;
        u++;
    }
    snprintf(buf, len, "%.1f %s", bytes, units[u]);
}
