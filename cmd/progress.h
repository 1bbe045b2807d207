// progress.h (cmd): the progress line of a training run on stderr, fed by the
// trainer's step hook (train/train.h moe_train_hooks.step), which only reads.
//
//   step 120/600 (20%)  epoch 3/15  loss 0.4213  18.2k tok/s  ETA 0:27
//
// loss: the mean training objective over the steps since the previous line
// (language models: nats per token); tok/s for language models (rows x n_ctx),
// rows/s otherwise, and the ETA, both from the wall time from the run's first
// step to its last (evaluations between epochs included). The total is epochs x batches per epoch
// (train.criterion may end a run sooner); without it, neither total nor ETA.
// At a terminal (isatty(2)) the line is redrawn in place ('\r', clear to the
// end of the line) at most 10 times a second from the first step on, and ended
// with a newline before anything else goes to stderr and at the end of the run.
// Otherwise one plain line every --progress-every seconds (default 10), the
// first one that long after the first step, so short runs print none; a run
// that printed a line ends with one for its last step. --quiet prints nothing.
#ifndef MOE_CLI_PROGRESS_H
#define MOE_CLI_PROGRESS_H

#include <stddef.h>
#include <stdint.h>

#include "train/train.h"

#define PROGRESS_EVERY_DEFAULT 10.0 // seconds between lines when stderr is not a terminal

struct cli_common;

struct progress {
    int on, tty, cols;             // not --quiet; stderr is a terminal (of cols columns, 0: unknown)
    double period;                 // seconds between lines (not a terminal)
    char label[96];                // put before the line ("" for none)
    double t_first, t_step, t_last; // the first step, the last step, the last line written
    uint64_t step_first;           // the step count at the first step (a resumed run starts late)
    uint64_t rows;                 // training rows since the first step (not counting it)
    double loss_sum, loss_n;       // since the last line
    struct moe_train_step_info s;  // the last step
    int have_step, lines;          // steps seen; lines written
    uint64_t line_step;            // the step of the last line written
};

// Before training: the options (c->quiet, c->progress_every) and a label
// (NULL or "" for none).
void progress_start(struct progress *p, const struct cli_common *c, const char *label);
// The trainer's step hook (ctx = struct progress).
void progress_step(void *ctx, const struct moe_train_step_info *s);
// After a run that finished: the last step's line (at a terminal always, else
// when the run printed one), ending a line drawn in place.
void progress_finish(struct progress *p);
// End a line drawn in place (terminal) with a newline; cli_error and cli_log
// call it before they print.
void progress_break(void);
// --progress-every's value: a decimal number of seconds > 0. Returns 0, or -1.
int progress_parse_every(const char *arg, double *ret);

#endif
