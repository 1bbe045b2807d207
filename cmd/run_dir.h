// run_dir.h (cmd): taking an output directory for a run (train, distill, lora,
// compare-loss): the lock that keeps a second process out, the temporary files
// a dead process left, and a directory that already holds a run.
#ifndef MOE_CLI_RUN_DIR_H
#define MOE_CLI_RUN_DIR_H

#include "cli.h"

// DIR/moe.lock, held (flock) from the claim until the process ends; it holds
// the holder's PID as text. The file itself stays (removing it would let two
// processes lock two different files).
#define RUN_DIR_LOCK "moe.lock"

struct run_dir {
    int fd;   // the lock file, while held
    int held; // fd is open and locked
};

enum run_dir_how {
    RUN_DIR_NEW,    // a new run: refuse a directory that holds one, unless force (then clear it)
    RUN_DIR_RESUME, // --resume: the directory's run continues (a missing directory takes no lock)
    RUN_DIR_SWEEP,  // compare-loss: as NEW, but a directory holding a sweep (sweep.json) is not refused
                    // (the sweep continues, after its own check of the settings); force clears it too
};

// Claim dir for cmd: create it (a new run), lock it (another process holding
// the lock: exit 1 naming its PID), then remove the temporary files
// ("<name>.tmp.<pid>", io/atomic.h) of the files a run writes whose process
// is gone. A new run in a directory holding any file a run writes is refused
// (exit 2, naming the directory and the files; a checkpoint without a model
// file: an interrupted run, to continue with --resume) unless force, which
// removes those files first and logs it. Files that are not moe's are never
// touched. Returns 0 or the exit code after printing one line.
int run_dir_claim(const char *cmd, const struct cli_common *c, const char *dir, enum run_dir_how how, struct run_dir *d);
// Before a new run loads its data, without writing anything: the same
// refusals as run_dir_claim (a held lock, a directory holding a run without
// force), so they come at once; the claim itself comes once the run is ready
// to write. Returns 0 or the exit code after printing one line.
int run_dir_check(const char *cmd, const struct cli_common *c, const char *dir, enum run_dir_how how);
// A new run that failed before its first step (a full device while its model
// was made, a teacher that would not load): remove the files of a run it
// wrote in dir, which the claim found holding none (or --force cleared), so
// the same command can run again without --force. The lock file stays.
void run_dir_discard(const char *dir);
// Drop the lock (the process's exit drops it too). Accepts a zeroed struct.
void run_dir_release(struct run_dir *d);

#endif
