// fuzz_util.h: helpers shared by the libFuzzer harnesses in tests/fuzz/.
// What it is: a way to hand fuzzed bytes to readers that take a path (an
// in-memory file per slot, no disk traffic, nothing left behind after a
// crash), a scratch directory for writers, and the checks every harness makes
// on a library result (status code and one-line message contract).
// What it is not: part of the library or of the normal build; only
// scripts/fuzz.sh compiles it, with clang -fsanitize=fuzzer.
// Header-only on purpose: adding a harness is one file, fuzz_<name>.c.
#ifndef MOE_FUZZ_UTIL_H
#define MOE_FUZZ_UTIL_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/status.h"

#define FUZZ_SLOTS 4

// A broken invariant is a finding: print it and abort, so libFuzzer saves
// the input as a crash reproducer.
#define FUZZ_CHECK(cond, ...)                                                  \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "fuzz check failed at %s:%d: %s: ", __FILE__,      \
                    __LINE__, #cond);                                          \
            fprintf(stderr, __VA_ARGS__);                                      \
            fputc('\n', stderr);                                               \
            abort();                                                           \
        }                                                                      \
    } while (0)

// The bytes as a readable file: one memfd per slot, created on first use and
// rewritten on every call. The path (/proc/self/fd/N) opens a fresh file
// description, so fopen/gzopen read it from offset 0.
static inline const char *fuzz_file(int slot, const void *data, size_t n)
{
    static int fd[FUZZ_SLOTS] = {-1, -1, -1, -1};
    static char path[FUZZ_SLOTS][64];
    if (slot < 0 || slot >= FUZZ_SLOTS)
        abort();
    if (fd[slot] < 0) {
        char name[32];
        snprintf(name, sizeof name, "moe-fuzz-%d", slot);
        fd[slot] = memfd_create(name, 0);
        if (fd[slot] < 0) {
            perror("memfd_create");
            abort();
        }
        snprintf(path[slot], sizeof path[slot], "/proc/self/fd/%d", fd[slot]);
    }
    if (ftruncate(fd[slot], 0) != 0) {
        perror("ftruncate");
        abort();
    }
    const unsigned char *p = data;
    size_t off = 0;
    while (off < n) {
        ssize_t w = pwrite(fd[slot], p + off, n - off, (off_t)off);
        if (w <= 0) {
            perror("pwrite");
            abort();
        }
        off += (size_t)w;
    }
    return path[slot];
}

// A directory for files the harness writes (checkpoint round trips):
// $MOE_FUZZ_TMP (scripts/fuzz.sh points it at its scratch folder), else /tmp.
static inline const char *fuzz_tmpdir(void)
{
    const char *d = getenv("MOE_FUZZ_TMP");
    return d && *d ? d : "/tmp";
}

// The contract of every failing library call: a negative MOE_E* code and a
// non-empty message on one line (no control bytes), so `moe CMD: message`
// stays one line on stderr whatever the file held.
// With MOE_FUZZ_VERBOSE set, every message is printed too (for curating seeds:
// `MOE_FUZZ_VERBOSE=1 build-fuzz/fuzz_NAME FILE`).
static inline void fuzz_check_err(int rc, const struct moe_err *err)
{
    static int verbose = -1;
    if (verbose < 0)
        verbose = getenv("MOE_FUZZ_VERBOSE") != NULL;
    if (verbose)
        fprintf(stderr, "fuzz: status %d: %s\n", rc, err->msg);
    FUZZ_CHECK(rc <= MOE_EINVAL && rc >= MOE_ENUMERIC, "unexpected status %d", rc);
    FUZZ_CHECK(err->code == rc, "err.code %d but returned %d", err->code, rc);
    FUZZ_CHECK(err->msg[0] != '\0', "empty message for status %d", rc);
    for (const unsigned char *p = (const unsigned char *)err->msg; *p; p++)
        FUZZ_CHECK(*p >= 0x20 && *p != 0x7f, "control byte 0x%02x in message: %s", *p, err->msg);
}

// Split data at the first NUL: *head gets a NUL-terminated copy of the bytes
// before it (malloc'd), *rest/*rest_n what follows (NULL/0 when no NUL).
static inline char *fuzz_split_nul(const uint8_t *data, size_t n, const uint8_t **rest, size_t *rest_n)
{
    const uint8_t *nul = memchr(data, 0, n);
    size_t hn = nul ? (size_t)(nul - data) : n;
    char *head = malloc(hn + 1);
    if (!head)
        abort();
    memcpy(head, data, hn);
    head[hn] = '\0';
    *rest = nul ? nul + 1 : NULL;
    *rest_n = nul ? n - hn - 1 : 0;
    return head;
}

#endif
