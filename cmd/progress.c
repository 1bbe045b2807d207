// progress.c: the progress line of a training run (progress.h).
#include "progress.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

#define TTY_REDRAW 0.1 // seconds between redraws at a terminal

static int line_open; // a line drawn in place at the terminal, not yet ended

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void progress_break(void)
{
    if (!line_open)
        return;
    line_open = 0;
    fputc('\n', stderr);
    fflush(stderr);
}

int progress_parse_every(const char *arg, double *ret)
{
    // decimal digits with at most one point: no sign, exponent, hex, inf or nan
    size_t len = strlen(arg), digits = strspn(arg, "0123456789.");
    const char *dot = strchr(arg, '.');
    if (!len || digits != len || (dot && strchr(dot + 1, '.')) || strcmp(arg, ".") == 0)
        return -1;
    char *end;
    errno = 0;
    double v = strtod(arg, &end);
    if (errno || *end || !isfinite(v) || v <= 0.0 || v > 1e9)
        return -1;
    *ret = v;
    return 0;
}

void progress_start(struct progress *p, const struct cli_common *c, const char *label)
{
    memset(p, 0, sizeof *p);
    p->on = !c->quiet;
    p->tty = isatty(STDERR_FILENO);
    p->period = c->progress_every > 0 ? c->progress_every : PROGRESS_EVERY_DEFAULT;
    if (label && *label)
        snprintf(p->label, sizeof p->label, "%s: ", label);
    struct winsize ws;
    if (p->tty && ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0)
        p->cols = ws.ws_col;
}

// 18.2k, 3.40M, 950
static void fmt_rate(char *buf, size_t len, double v)
{
    if (v >= 999.5e3)
        snprintf(buf, len, "%.2fM", v / 1e6);
    else if (v >= 999.5)
        snprintf(buf, len, "%.1fk", v / 1e3);
    else
        snprintf(buf, len, "%.0f", v);
}

// 0:27, 12:05, 1:02:03
static void fmt_duration(char *buf, size_t len, double s)
{
    long long t = s < 0 ? 0 : s > 1e9 ? 1000000000LL : (long long)(s + 0.5);
    if (t >= 3600)
        snprintf(buf, len, "%lld:%02lld:%02lld", t / 3600, t / 60 % 60, t % 60);
    else
        snprintf(buf, len, "%lld:%02lld", t / 60, t % 60);
}

// The line for the last step, into buf (without '\r' or newline).
static void format_line(const struct progress *p, char *buf, size_t len)
{
    const struct moe_train_step_info *s = &p->s;
    uint64_t total = s->epochs * s->steps_per_epoch;
    int known = total > 0 && s->step <= total;
    size_t at = (size_t)snprintf(buf, len, "%sstep %llu", p->label, (unsigned long long)s->step);
#define ADD(...) at += at < len ? (size_t)snprintf(buf + at, len - at, __VA_ARGS__) : 0
    if (known)
        ADD("/%llu (%d%%)", (unsigned long long)total, (int)(100.0 * (double)s->step / (double)total));
    ADD("  epoch %llu", (unsigned long long)s->epoch);
    if (s->epochs)
        ADD("/%llu", (unsigned long long)s->epochs);
    ADD("  loss %.4g", p->loss_n > 0 ? p->loss_sum / p->loss_n : NAN);
    if (s->lr_scheduled) // the learning rate of the last step, when a schedule changes it
        ADD("  lr %.3g", s->lr);
    double dt = p->t_step - p->t_first;
    uint64_t done = s->step - p->step_first;
    if (done > 0 && dt > 0) {
        char rate[32], eta[32];
        double units = (double)p->rows * (s->tokens_per_row ? (double)s->tokens_per_row : 1.0);
        fmt_rate(rate, sizeof rate, units / dt);
        ADD("  %s %s/s", rate, s->tokens_per_row ? "tok" : "rows");
        if (known) {
            fmt_duration(eta, sizeof eta, (double)(total - s->step) * dt / (double)done);
            ADD("  ETA %s", eta);
        }
    }
#undef ADD
}

static void draw(struct progress *p, double t)
{
    char buf[320];
    format_line(p, buf, sizeof buf);
    if (p->tty) {
        if (p->cols > 1 && strlen(buf) >= (size_t)p->cols) // a wrapped line cannot be redrawn in place
            buf[p->cols - 1] = '\0';
        fprintf(stderr, "\r%s\033[K", buf);
        line_open = 1;
    } else {
        fprintf(stderr, "%s\n", buf);
    }
    fflush(stderr);
    p->t_last = t;
    p->lines++;
    p->line_step = p->s.step;
    p->loss_sum = p->loss_n = 0.0;
}

void progress_step(void *ctx, const struct moe_train_step_info *s)
{
    struct progress *p = ctx;
    if (!p->on)
        return;
    double t = now();
    if (!p->have_step) {
        p->have_step = 1;
        p->t_first = t;
        p->step_first = s->step;
    } else {
        p->rows += s->rows;
    }
    p->s = *s;
    p->t_step = t;
    p->loss_sum += s->loss_sum;
    p->loss_n += s->loss_n;
    // a terminal: at once, then at most every TTY_REDRAW; else the first line
    // a period after the first step (short runs print none), then every period
    if (p->tty ? !p->lines || t - p->t_last >= TTY_REDRAW
               : t - (p->lines ? p->t_last : p->t_first) >= p->period)
        draw(p, t);
}

void progress_finish(struct progress *p)
{
    if (!p->on)
        return;
    if (p->have_step && (p->tty || p->lines) && p->line_step != p->s.step)
        draw(p, now());
    progress_break();
}
