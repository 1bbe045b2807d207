// run_dir.c (cmd): claiming a run directory (see run_dir.h).
#include "run_dir.h"

#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

// Every file a run of any command writes in its directory: what makes a
// directory "hold a run", what --force removes, and the names whose
// temporaries are cleaned. Nothing else in a directory is ever removed.
static const char *const ours[] = { "config.json", "metrics.csv", "experts.csv", "languages.csv", "vocab.txt",
                                    "model.safetensors", "checkpoint.safetensors", "summary.json",
                                    "importance.csv", "moebert.json", "adapters.safetensors", "merged.safetensors",
                                    "curves.csv", "table.csv", "sweep.json" };
#define N_OURS (sizeof ours / sizeof *ours)

// Whether dir/name exists as something other than a directory (a directory
// there is not a file of a run; the run refuses it when it would write there).
static int present(const char *dir, const char *name)
{
    char path[8192];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return lstat(path, &st) == 0 && !S_ISDIR(st.st_mode);
}

// The PID in the lock file, read while another process holds it; 0 if it has
// not written it yet (it writes it right after locking: wait a little).
static long holder_pid(int fd)
{
    for (int tries = 0; tries < 50; tries++) {
        char buf[32] = "";
        ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
        if (n > 0) {
            buf[n] = '\0';
            char *end;
            long pid = strtol(buf, &end, 10);
            if (pid > 0 && (*end == '\n' || *end == '\0'))
                return pid;
        }
        struct timespec ts = { 0, 10 * 1000 * 1000 };
        nanosleep(&ts, NULL);
    }
    return 0;
}

// Another process holds the lock: say which, and close fd.
static int busy(const char *cmd, const char *dir, const char *path, int fd)
{
    long pid = holder_pid(fd);
    close(fd);
    if (pid)
        return cli_error(cmd, 1, "'%s' is in use by another moe process (PID %ld holds %s); wait for it to end or use another directory",
                         dir, pid, path);
    return cli_error(cmd, 1, "'%s' is in use by another moe process (it holds %s); wait for it to end or use another directory",
                     dir, path);
}

static int take_lock(const char *cmd, const char *dir, struct run_dir *d)
{
    char path[8192];
    snprintf(path, sizeof path, "%s/%s", dir, RUN_DIR_LOCK);
    // O_NONBLOCK: a FIFO in its place must not block; O_NOFOLLOW: a link is not ours to follow
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0644);
    if (fd < 0)
        return cli_error(cmd, 1, "cannot create the lock file '%s': %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return cli_error(cmd, 1, "cannot lock '%s': the lock file '%s' is not a regular file", dir, path);
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        if (e != EWOULDBLOCK) {
            close(fd);
            return cli_error(cmd, 1, "cannot lock '%s': %s", path, strerror(e));
        }
        return busy(cmd, dir, path, fd);
    }
    char pid[32];
    int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)n, 0) != n) {
        int e = errno;
        close(fd);
        return cli_error(cmd, 1, "cannot write '%s': %s", path, strerror(e));
    }
    d->fd = fd;
    d->held = 1;
    return 0;
}

// "<one of ours>.tmp.<pid>" with pid a process that no longer exists: a
// temporary file a killed run left. The lock is held, so no moe process is
// writing this directory; a live PID is still left alone.
static int stale_tmp(const char *base)
{
    for (size_t k = 0; k < N_OURS; k++) {
        size_t len = strlen(ours[k]);
        if (strncmp(base, ours[k], len) != 0 || strncmp(base + len, ".tmp.", 5) != 0)
            continue;
        const char *digits = base + len + 5;
        char *end;
        errno = 0;
        long pid = strtol(digits, &end, 10);
        if (!*digits || *end || errno || pid <= 0)
            return 0;
        return pid != (long)getpid() && kill((pid_t)pid, 0) != 0 && errno == ESRCH;
    }
    return 0;
}

static void remove_stale(const char *dir)
{
    char pattern[8192];
    snprintf(pattern, sizeof pattern, "%s/*.tmp.*", dir);
    glob_t g;
    if (glob(pattern, GLOB_NOSORT, NULL, &g) != 0)
        return;
    for (size_t i = 0; i < g.gl_pathc; i++) {
        const char *slash = strrchr(g.gl_pathv[i], '/');
        if (stale_tmp(slash ? slash + 1 : g.gl_pathv[i]))
            remove(g.gl_pathv[i]);
    }
    globfree(&g);
}

// compare-loss's records of finished runs, DIR/parts/SYSTEM-seedN.json: removed
// with the sweep by --force (the directory too, once empty). 0 or -1 (errno set).
static int remove_parts(const char *dir)
{
    char pattern[8192];
    snprintf(pattern, sizeof pattern, "%s/parts/*-seed*.json", dir);
    glob_t g;
    int rc = 0;
    if (glob(pattern, GLOB_NOSORT, NULL, &g) == 0) {
        for (size_t i = 0; i < g.gl_pathc && rc == 0; i++)
            rc = remove(g.gl_pathv[i]);
        globfree(&g);
    }
    snprintf(pattern, sizeof pattern, "%s/parts", dir);
    rmdir(pattern); // left in place when it holds anything else
    return rc;
}

// A new run: refuse a directory holding a run, or with force clear it. A
// sweep (how SWEEP, DIR/sweep.json present) continues without force.
static int check_new(const char *cmd, const struct cli_common *c, const char *dir, enum run_dir_how how)
{
    if (how == RUN_DIR_SWEEP && !c->force && present(dir, "sweep.json"))
        return 0;
    char names[1024] = "";
    size_t n = 0, at = 0;
    for (size_t k = 0; k < N_OURS; k++) {
        if (!present(dir, ours[k]))
            continue;
        if (at < sizeof names)
            at += (size_t)snprintf(names + at, sizeof names - at, "%s%s", n ? ", " : "", ours[k]);
        n++;
    }
    if (!n)
        return 0;
    if (!c->force) {
        if (present(dir, "checkpoint.safetensors") && !present(dir, "model.safetensors"))
            return cli_error(cmd, 2, "'%s' holds an interrupted run (checkpoint.safetensors, no model.safetensors): continue it with 'moe train --resume %s', or clear it with --force",
                             dir, dir);
        return cli_error(cmd, 2, "'%s' holds another run (%s); use another --out, or --force to clear it", dir, names);
    }
    for (size_t k = 0; k < N_OURS; k++) {
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", dir, ours[k]);
        if (present(dir, ours[k]) && remove(path) != 0)
            return cli_error(cmd, 1, "--force: cannot remove '%s': %s", path, strerror(errno));
    }
    if (remove_parts(dir) != 0)
        return cli_error(cmd, 1, "--force: cannot remove '%s/parts/': %s", dir, strerror(errno));
    cli_log(c, "moe %s: --force: removed the previous run's files from %s/ (%s); files that are not moe's are left alone",
            cmd, dir, names);
    return 0;
}

int run_dir_check(const char *cmd, const struct cli_common *c, const char *dir, enum run_dir_how how)
{
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return 0; // a new directory (or one mkdir will refuse later)
    char path[8192];
    snprintf(path, sizeof path, "%s/%s", dir, RUN_DIR_LOCK);
    int fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd >= 0) {
        if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && flock(fd, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK)
            return busy(cmd, dir, path, fd);
        close(fd); // free: let go at once, run_dir_claim takes it for good
    }
    return c->force ? 0 : check_new(cmd, c, dir, how);
}

int run_dir_claim(const char *cmd, const struct cli_common *c, const char *dir, enum run_dir_how how, struct run_dir *d)
{
    struct moe_err err = { 0 };
    memset(d, 0, sizeof *d);
    d->fd = -1;
    if (how == RUN_DIR_RESUME) {
        struct stat st;
        if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
            return 0; // nothing to lock: reading its checkpoint says what is wrong
    } else if (cli_mkdir_p(dir, &err)) {
        return cli_fail(cmd, &err);
    }
    int rc = take_lock(cmd, dir, d);
    if (rc)
        return rc;
    remove_stale(dir);
    if (how != RUN_DIR_RESUME && (rc = check_new(cmd, c, dir, how)))
        run_dir_release(d);
    return rc;
}

void run_dir_discard(const char *dir)
{
    for (size_t k = 0; k < N_OURS; k++) {
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", dir, ours[k]);
        if (present(dir, ours[k]))
            remove(path);
    }
}

void run_dir_release(struct run_dir *d)
{
    if (d->held)
        close(d->fd); // drops the flock
    d->held = 0;
    d->fd = -1;
}
