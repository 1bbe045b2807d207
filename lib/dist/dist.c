// dist.c: the collectives of a run over MPI processes (dist.h), through the
// table of lib/dist/mpi.c; the same in every build.
#include "dist/dist.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

// ---------------------------------------------------------------- a process that died
//
// When a process of the job dies, Open MPI's runtime sends SIGTERM to the
// others and SIGKILL one second later (odls_base_sigkill_timeout). The others
// are then waiting for the dead one inside a collective, which never returns,
// so the stop they would make after the step (a checkpoint, exit 143) cannot
// happen, and they would end without a word. So: a stop signal that finds this
// process inside a collective (moe_dist_stop_signal, from the CLI's handler)
// arms a one-shot timer of WATCH_NS; if the same collective is still waiting
// when it fires, and a process of the job on this machine (pids exchanged at
// start-up) has ended, the lowest-numbered living process prints one line
// naming the dead one and the collective, and every waiting process exits 1.
// A stop signal sent to every process by a scheduler finds them all alive and
// changes nothing: the collective completes and the run stops after its step.
// Processes on other machines cannot be checked from here: their death gives
// no line (Open MPI's own message remains).
#define WATCH_NS 400000000L // 0.4 s: under the runtime's 1 s before SIGKILL
#define HOST_MAX 64

struct peer {
    char host[HOST_MAX];
    long pid;
};

static struct {
    int rank, size, timer_ok;
    struct peer *peers;         // (size) every process's host name and pid
    timer_t timer;
    char cmd[32];               // the line's start: "moe train"
    char note[512];             // the line's end: how to continue
    volatile sig_atomic_t in;   // inside a collective
    volatile sig_atomic_t seq;  // collectives entered so far
    volatile sig_atomic_t armed; // seq when the timer was armed
    const char *volatile what;  // the collective waiting
} g_w;

static void w_enter(const char *what)
{
    g_w.what = what;
    g_w.seq = g_w.seq + 1;
    g_w.in = 1;
}

static void w_leave(void) { g_w.in = 0; }

// Has process q (on this machine) ended? Async-signal-safe: kill(2) and a read
// of /proc/PID/stat for a zombie the runtime has not yet reaped.
static int w_dead(int q)
{
    pid_t pid = (pid_t)g_w.peers[q].pid;
    if (kill(pid, 0) == -1 && errno == ESRCH)
        return 1;
    char path[48] = "/proc/", *p = path + 6;
    char digits[24];
    int n = 0;
    for (long v = g_w.peers[q].pid; v > 0 && n < 20; v /= 10)
        digits[n++] = (char)('0' + v % 10);
    while (n > 0)
        *p++ = digits[--n];
    memcpy(p, "/stat", 6);
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return 0;
    char buf[512];
    ssize_t got = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (got <= 0)
        return 0;
    buf[got] = 0;
    const char *r = strrchr(buf, ')'); // the state follows the command name
    return r && r[1] == ' ' && (r[2] == 'Z' || r[2] == 'X');
}

static int w_local(int q) { return strcmp(g_w.peers[q].host, g_w.peers[g_w.rank].host) == 0; }

static void w_put(char *buf, size_t *len, size_t cap, const char *s)
{
    while (*s && *len + 1 < cap)
        buf[(*len)++] = *s++;
}

static void w_put_int(char *buf, size_t *len, size_t cap, long v)
{
    char d[24];
    int n = 0;
    do
        d[n++] = (char)('0' + v % 10);
    while ((v /= 10) > 0 && n < 20);
    while (n > 0 && *len + 1 < cap)
        buf[(*len)++] = d[--n];
}

static void on_watch(int sig)
{
    (void)sig;
    if (!g_w.in || g_w.seq != g_w.armed || !g_w.peers)
        return; // the collective completed: the stop goes on as usual
    int dead = -1;
    for (int q = 0; q < g_w.size && dead < 0; q++)
        if (q != g_w.rank && w_local(q) && w_dead(q))
            dead = q;
    if (dead < 0)
        return; // everyone here is alive: only slow; the runtime decides
    int speak = 1; // the lowest-numbered process still alive speaks
    for (int q = 0; q < g_w.rank; q++)
        if (!(w_local(q) && w_dead(q)))
            speak = 0;
    if (speak) {
        char line[1024];
        size_t n = 0;
        w_put(line, &n, sizeof line, g_w.cmd[0] ? g_w.cmd : "moe");
        w_put(line, &n, sizeof line, ": process ");
        w_put_int(line, &n, sizeof line, dead);
        w_put(line, &n, sizeof line, " of ");
        w_put_int(line, &n, sizeof line, g_w.size);
        w_put(line, &n, sizeof line, " (pid ");
        w_put_int(line, &n, sizeof line, g_w.peers[dead].pid);
        w_put(line, &n, sizeof line, ") ended (killed or crashed) while process ");
        w_put_int(line, &n, sizeof line, g_w.rank);
        w_put(line, &n, sizeof line, " waited for it in ");
        w_put(line, &n, sizeof line, g_w.what ? g_w.what : "a collective");
        w_put(line, &n, sizeof line, g_w.note);
        line[n++] = '\n';
        ssize_t unused = write(2, line, n);
        (void)unused;
    }
    _exit(1);
}

// Exchange host names and pids and set up the timer; failures leave the watch
// off (the run itself does not depend on it).
static void watch_start(struct moe_dist *d)
{
    g_w.rank = d->rank;
    g_w.size = d->size;
    struct peer me;
    memset(&me, 0, sizeof me);
    if (gethostname(me.host, sizeof me.host - 1) != 0)
        return;
    me.pid = (long)getpid();
    struct peer *all = calloc((size_t)d->size, sizeof *all);
    if (!all)
        return;
    struct moe_err err;
    if (d->ops->allgather(&me, sizeof me, all, &err) != 0) {
        free(all);
        return;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_watch;
    sigemptyset(&sa.sa_mask);
    struct sigevent ev;
    memset(&ev, 0, sizeof ev);
    ev.sigev_notify = SIGEV_SIGNAL;
    ev.sigev_signo = SIGALRM;
    if (sigaction(SIGALRM, &sa, NULL) != 0 || timer_create(CLOCK_MONOTONIC, &ev, &g_w.timer) != 0) {
        free(all);
        return;
    }
    g_w.peers = all;
    g_w.timer_ok = 1;
}

void moe_dist_set_stop_note(const char *cmd, const char *note)
{
    snprintf(g_w.cmd, sizeof g_w.cmd, "moe %s", cmd);
    snprintf(g_w.note, sizeof g_w.note, "%s", note ? note : "");
}

void moe_dist_stop_signal(void)
{
    if (!g_w.timer_ok || !g_w.in)
        return;
    g_w.armed = g_w.seq;
    struct itimerspec its;
    memset(&its, 0, sizeof its);
    its.it_value.tv_nsec = WATCH_NS;
    timer_settime(g_w.timer, 0, &its, NULL);
}

int moe_dist_init(struct moe_dist *d, int n, const char *opt, struct moe_err *err)
{
    memset(d, 0, sizeof *d);
    const struct moe_dist_ops *ops = moe_dist_mpi_ops();
    if (!ops) {
        struct moe_dist_info info;
        moe_dist_probe(&info);
        return moe_error(err, MOE_EINVAL, "option '%s' cannot be used: %s", opt, info.reason);
    }
    d->ops = ops;
    int rc = ops->init(d, err);
    if (rc)
        return rc;
    if (d->size > 1 && !g_w.peers)
        watch_start(d);
    if (d->size != n)
        return moe_error(err, MOE_EINVAL, "option '%s %d' needs %d processes, but this one was started as one of %d (start it with: mpirun -np %d moe ... %s %d)",
                         opt, n, n, d->size, n, opt, n);
    return 0;
}

void moe_dist_finalize(struct moe_dist *d)
{
    if (d->ops)
        d->ops->finalize();
    d->ops = NULL;
}

int moe_dist_allgather(struct moe_dist *d, const void *send, size_t bytes, void *recv, struct moe_err *err)
{
    w_enter("MPI_Allgather");
    int rc = d->ops->allgather(send, bytes, recv, err);
    w_leave();
    return rc;
}

int moe_dist_alltoallv(struct moe_dist *d, const float *send, const size_t *send_n, float *recv,
                       const size_t *recv_n, struct moe_err *err)
{
    w_enter("MPI_Alltoallv");
    int rc = d->ops->alltoallv(d->size, send, send_n, recv, recv_n, 0, err);
    w_leave();
    return rc;
}

int moe_dist_alltoallv_i32(struct moe_dist *d, const int32_t *send, const size_t *send_n, int32_t *recv,
                           const size_t *recv_n, struct moe_err *err)
{
    w_enter("MPI_Alltoallv");
    int rc = d->ops->alltoallv(d->size, send, send_n, recv, recv_n, 1, err);
    w_leave();
    return rc;
}

int moe_dist_allgatherv(struct moe_dist *d, const float *send, const size_t *n, float *recv, struct moe_err *err)
{
    w_enter("MPI_Allgatherv");
    int rc = d->ops->allgatherv(d->rank, d->size, send, n, recv, err);
    w_leave();
    return rc;
}

int moe_dist_gatherv(struct moe_dist *d, const float *send, const size_t *n, float *recv, struct moe_err *err)
{
    w_enter("MPI_Gatherv");
    int rc = d->ops->gatherv(d->rank, d->size, send, n, recv, err);
    w_leave();
    return rc;
}

int moe_dist_max(struct moe_dist *d, long long v, long long *ret, struct moe_err *err)
{
    w_enter("MPI_Allreduce");
    int rc = d->ops->max(v, ret, err);
    w_leave();
    return rc;
}

int moe_dist_sum(struct moe_dist *d, float *x, size_t n, double *bytes, struct moe_err *err)
{
    const size_t N = (size_t)d->size, me = (size_t)d->rank;
    size_t *cnt = malloc(3 * N * sizeof *cnt);
    float *recv = malloc((n / N + 1) * N * sizeof *recv), *part = malloc((n / N + 1) * sizeof *part);
    if (!cnt || !recv || !part) {
        free(cnt), free(recv), free(part);
        return moe_error(err, MOE_ENOMEM, "out of memory for a sum of %zu floats over %zu processes", n, N);
    }
    // slice q = [n q / N, n (q + 1) / N) to rank q; every rank's slice `me` back, in rank order
    for (size_t q = 0; q < N; q++) {
        cnt[q] = n * (q + 1) / N - n * q / N;
        cnt[N + q] = n * (me + 1) / N - n * me / N;
    }
    int rc = moe_dist_alltoallv(d, x, cnt, recv, cnt + N, err);
    const size_t len = cnt[N];
    for (size_t i = 0; !rc && i < len; i++) { // in rank order: the same bits on every rank, for any thread count
        float s = recv[i];
        for (size_t q = 1; q < N; q++)
            s += recv[q * len + i];
        part[i] = s;
    }
    if (!rc)
        rc = moe_dist_allgatherv(d, part, cnt, x, err);
    if (bytes)
        *bytes += (double)(n - len + len * (N - 1)) * sizeof(float);
    free(cnt), free(recv), free(part);
    return rc;
}

// What each rank contributes to an agreement.
struct vote {
    int rc;
    char msg[MOE_ERR_MSG_MAX];
};

int moe_dist_agree(struct moe_dist *d, int rc, struct moe_err *err)
{
    struct vote mine = { .rc = rc };
    if (rc && err)
        snprintf(mine.msg, sizeof mine.msg, "%s", err->msg);
    struct vote *all = calloc((size_t)d->size, sizeof *all);
    if (!all)
        return moe_error(err, MOE_ENOMEM, "out of memory for an agreement of %d processes", d->size);
    struct moe_err cerr = { 0 };
    int crc = moe_dist_allgather(d, &mine, sizeof mine, all, &cerr);
    int ret = 0;
    if (crc) {
        ret = moe_error(err, crc, "%s", cerr.msg);
    } else {
        for (int q = 0; q < d->size && !ret; q++) {
            if (!all[q].rc)
                continue;
            all[q].msg[sizeof all[q].msg - 1] = '\0';
            ret = q == 0 ? moe_error(err, all[q].rc, "%s", all[q].msg)
                                         : moe_error(err, all[q].rc, "rank %d: %s", q, all[q].msg);
        }
    }
    free(all);
    return ret;
}
