// cmd_distill.c: `moe distill` trains a student config against a teacher
// checkpoint (Hinton et al. 2015; MoEBERT, Zuo et al. 2022, with --mode
// moebert, train/moebert.h): every training batch goes through the teacher
// first, and the student learns (1 - alpha) CE(labels) + alpha tau^2
// KL(softmax(teacher / tau) || softmax(student / tau)). It is `moe train` with the
// distill.* config keys set from its options, so the run directory, metrics,
// checkpoints and `moe train --resume DIR` are the same.
#include <stdio.h>
#include <string.h>

#include "cli.h"

static const char *const usage =
    "usage: moe distill --teacher CKPT --config STUDENT.json [--temperature T] [--alpha A]\n"
    "                   [--mode kd|sparse-to-dense|moebert] [--baseline CKPT] [--init CKPT]\n"
    "                   [--split importance|random] [--shared S] [--weight W]\n"
    "                   [--set key.path=value]... [--out DIR] [--seed N] [--threads N] [--force]\n"
    "                   [--device cpu|cuda[:N]] [--ignore-memory] [--quiet] [--progress-every SECONDS]\n"
    "                   [--tag KEY=VALUE]... [--dry-run]\n"
    "Knowledge distillation from any teacher checkpoint to the student the config\n"
    "describes (same inputs and outputs: classification or language modelling).\n"
    "The objective is (1 - A) CE + A T^2 KL(teacher || student) at temperature T\n"
    "(defaults: distill.alpha 0.5, distill.temperature 2). Metrics report the\n"
    "student's own cross-entropy. --mode sparse-to-dense also starts every student\n"
    "tensor that has a namesake of the same shape in the teacher (the non-expert\n"
    "weights of an MoE teacher) from the teacher's values. --baseline CKPT (e.g. the\n"
    "student trained alone) adds the test-split quality of teacher, baseline and\n"
    "student and the fraction of the gap recovered, (student - baseline) /\n"
    "(teacher - baseline), to the summary.\n"
    "--mode moebert (MoEBERT) turns a dense teacher into the student MoE of the\n"
    "same type, depth and width: each dense FFN neuron's importance, summed over\n"
    "the training examples, goes to DIR/importance.csv; the neurons, in order of\n"
    "importance (--split random: a seeded random order), are split into the\n"
    "student's experts: the first S (--shared, default 0) go to every expert, the\n"
    "rest are dealt round-robin until each expert holds model.n_ff. The student's\n"
    "other tensors start as the teacher's; the objective is CE + W (block-output\n"
    "MSE to the teacher + symmetric KL of the outputs), W = --weight (default 5).\n"
    "The summary's distill.moebert gives the quality right after conversion.\n"
    "Writes the run directory of `moe train` (--force and the lock: moe help train);\n"
    "an interrupted run continues with `moe train --resume DIR`. --device cuda[:N]: the\n"
    "student's steps and the teacher's passes on the GPU (both mlp-moe or transformer;\n"
    "moe help train). Options map to the config keys distill.teacher,\n"
    ".temperature, .alpha, .teacher_init, .baseline, .moebert, .split, .shared, .weight.\n"
    "Progress, --quiet and --progress-every: as for moe train (moe help train).\n"
    "--dry-run trains nothing and writes nothing: moe train --dry-run's estimate of\n"
    "the student, with the teacher and baseline as the run will hold them (a\n"
    "\"distill\" object: path, model, parameters, memory_bytes each) counted in\n"
    "memory_bytes.total and fits, the figure the run checks before it loads them;\n"
    "with --device cuda, device.teacher_bytes: the teacher's weights and\n"
    "activations beside the student on the GPU (the baseline stays on the CPU).\n";

enum { OPT_TEACHER = OPT_FIRST_CMD, OPT_TEMPERATURE, OPT_ALPHA, OPT_MODE, OPT_INIT, OPT_BASELINE, OPT_SPLIT,
       OPT_SHARED, OPT_WEIGHT, OPT_DRY_RUN };

struct distill_ctx {
    struct cli_train_opts *o;
    struct cli_common *c;
    int has_teacher;
};

static int on_opt(void *ctx_, int opt, const char *arg)
{
    struct distill_ctx *ctx = ctx_;
    switch (opt) {
    case OPT_TEACHER:
        ctx->has_teacher = 1;
        return cli_add_set(ctx->c, "--teacher", "distill.teacher", arg, 0);
    case OPT_TEMPERATURE:
        return cli_add_set(ctx->c, "--temperature", "distill.temperature", arg, 0);
    case OPT_ALPHA:
        return cli_add_set(ctx->c, "--alpha", "distill.alpha", arg, 0);
    case OPT_MODE:
        if (strcmp(arg, "kd") == 0)
            return 0;
        if (strcmp(arg, "sparse-to-dense") == 0)
            return cli_add_set(ctx->c, "--mode sparse-to-dense", "distill.teacher_init", "true", 0);
        if (strcmp(arg, "moebert") == 0)
            return cli_add_set(ctx->c, "--mode moebert", "distill.moebert", "true", 0);
        return cli_error("distill", 2, "option '--mode' expects kd, moebert or sparse-to-dense, got '%s'", arg);
    case OPT_INIT:
        ctx->o->init = arg;
        return 0;
    case OPT_BASELINE:
        return cli_add_set(ctx->c, "--baseline", "distill.baseline", arg, 0);
    case OPT_SPLIT:
        return cli_add_set(ctx->c, "--split", "distill.split", arg, 0);
    case OPT_SHARED:
        return cli_add_set(ctx->c, "--shared", "distill.shared", arg, 0);
    case OPT_WEIGHT:
        return cli_add_set(ctx->c, "--weight", "distill.weight", arg, 0);
    case OPT_DRY_RUN:
        ctx->o->dry_run = 1;
        return 0;
    default:
        return 2;
    }
}

int cmd_distill(int argc, char **argv)
{
    static const struct option opts[] = { CLI_COMMON_OPTIONS, CLI_FORCE_OPTION, CLI_TAG_OPTION,
                                          { "teacher", required_argument, NULL, OPT_TEACHER },
                                          { "temperature", required_argument, NULL, OPT_TEMPERATURE },
                                          { "alpha", required_argument, NULL, OPT_ALPHA },
                                          { "mode", required_argument, NULL, OPT_MODE },
                                          { "init", required_argument, NULL, OPT_INIT },
                                          { "baseline", required_argument, NULL, OPT_BASELINE },
                                          { "split", required_argument, NULL, OPT_SPLIT },
                                          { "shared", required_argument, NULL, OPT_SHARED },
                                          { "weight", required_argument, NULL, OPT_WEIGHT },
                                          { "dry-run", no_argument, NULL, OPT_DRY_RUN },
                                          { 0, 0, 0, 0 } };
    const char *cmd = "distill";
    struct cli_common c;
    struct cli_train_opts o = { 0 };
    cli_common_init(&c);
    struct distill_ctx ctx = { &o, &c, 0 };
    int rc = cli_parse(argc, argv, cmd, opts, &c, on_opt, &ctx);
    if (rc == -1) {
        fputs(usage, stdout);
        rc = 0;
    } else if (!rc) {
        if (!ctx.has_teacher)
            rc = cli_error(cmd, 2, "option '--teacher CKPT' is required (the checkpoint to distil from)");
        else if (!c.config)
            rc = cli_error(cmd, 2, "option '--config FILE' is required (the student)");
        else
            rc = cli_train_run(cmd, &c, &o);
    }
    cli_common_release(&c);
    return rc;
}
