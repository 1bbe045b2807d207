// cmd_lora.c: `moe lora` fine-tunes low-rank adapters (train/tune.h) on a frozen
// base checkpoint. It is `moe train --init BASE` with the lora.* config keys
// set from its options: the same data, metrics and summary, but the output is
// DIR/adapters.safetensors (the adapters and any base tensor trained in full),
// and with --merge DIR/merged.safetensors (W0 + (alpha/r) B A, a plain model).
// --dry-run prints the run's estimate, adapters counted, and writes nothing.
#include <stdio.h>
#include <string.h>

#include "cli.h"

static const char *const usage =
    "usage: moe lora --base CKPT --config FILE --rank R --targets GLOB[,GLOB...] [--alpha A]\n"
    "                [--expert-mode per-expert|shared] [--freeze-router] [--merge]\n"
    "                [--trainable GLOB] [--freeze GLOB] [--set key.path=value]... [--out DIR]\n"
    "                [--seed N] [--threads N] [--device cpu|cuda[:N]] [--force] [--ignore-memory]\n"
    "                [--quiet] [--progress-every SECONDS] [--tag KEY=VALUE]... [--dry-run]\n"
    "Train rank-R adapters W = W0 + (alpha/R) B A on the matrices of the base model whose\n"
    "tensor names match a glob (fnmatch, '*' crosses dots), everything else frozen but\n"
    "the routers (unless --freeze-router) and what --trainable names. Expert tensors\n"
    "[E, out, in] get one adapter per expert, or with --expert-mode shared one for all.\n"
    "Writes DIR/config.json, metrics.csv, adapters.safetensors, summary.json (with the\n"
    "trainable parameters and their fraction of the total), and with --merge\n"
    "merged.safetensors. The config's model must be the base's. Options map to the\n"
    "config keys lora.rank, lora.alpha, lora.targets, lora.expert_mode,\n"
    "lora.freeze_router, train.trainable and train.freeze.\n"
    "Progress, --quiet, --progress-every, --force (clear a previous run in DIR),\n"
    "--device (the steps and the adapters on a GPU) and --ignore-memory: as for moe\n"
    "train (moe help train).\n"
    "--dry-run trains nothing and writes nothing: it reads the base and prints moe\n"
    "train --dry-run's estimate of this run, the frozen base with gradients but\n"
    "optimizer moments only for what trains (routers, --trainable, adapters), and\n"
    "memory_bytes.adapters (their values and gradients, each adapted matrix's W0,\n"
    "scratch) in memory_bytes.total and fits: the figure the run checks before it\n"
    "allocates; and \"tuning\", the summary's parameter counts (adapted_tensors,\n"
    "adapter_parameters, trainable_parameters, ...) as the run will write them.\n";

enum { OPT_BASE = OPT_FIRST_CMD, OPT_RANK, OPT_ALPHA, OPT_TARGETS, OPT_EXPERT_MODE, OPT_FREEZE_ROUTER, OPT_MERGE,
       OPT_TRAINABLE, OPT_FREEZE, OPT_DRY_RUN };

struct lora_ctx {
    struct cli_train_opts *o;
    struct cli_common *c;
};

static int on_opt(void *ctx_, int opt, const char *arg)
{
    struct lora_ctx *ctx = ctx_;
    long long v;
    switch (opt) {
    case OPT_BASE:
        ctx->o->init = arg;
        return 0;
    case OPT_RANK:
        if (cli_parse_ll(arg, 1, 65536, &v))
            return cli_error("lora", 2, "option '--rank' expects an integer from 1 to 65536, got '%s'", arg);
        return cli_add_set(ctx->c, "--rank", "lora.rank", arg, 0);
    case OPT_ALPHA:
        return cli_add_set(ctx->c, "--alpha", "lora.alpha", arg, 0);
    case OPT_TARGETS:
        return cli_add_set(ctx->c, "--targets", "lora.targets", arg, 1);
    case OPT_EXPERT_MODE:
        if (strcmp(arg, "per-expert") != 0 && strcmp(arg, "shared") != 0)
            return cli_error("lora", 2, "option '--expert-mode' expects per-expert or shared, got '%s'", arg);
        return cli_add_set(ctx->c, "--expert-mode", "lora.expert_mode", arg, 0);
    case OPT_FREEZE_ROUTER:
        return cli_add_set(ctx->c, "--freeze-router", "lora.freeze_router", "true", 0);
    case OPT_MERGE:
        ctx->o->merge = 1;
        return 0;
    case OPT_TRAINABLE:
        return cli_add_set(ctx->c, "--trainable", "train.trainable", arg, 1);
    case OPT_FREEZE:
        return cli_add_set(ctx->c, "--freeze", "train.freeze", arg, 1);
    case OPT_DRY_RUN:
        ctx->o->dry_run = 1;
        return 0;
    default:
        return 2;
    }
}

int cmd_lora(int argc, char **argv)
{
    static const struct option opts[] = { CLI_COMMON_OPTIONS, CLI_FORCE_OPTION, CLI_TAG_OPTION,
                                          { "base", required_argument, NULL, OPT_BASE },
                                          { "rank", required_argument, NULL, OPT_RANK },
                                          { "alpha", required_argument, NULL, OPT_ALPHA },
                                          { "targets", required_argument, NULL, OPT_TARGETS },
                                          { "expert-mode", required_argument, NULL, OPT_EXPERT_MODE },
                                          { "freeze-router", no_argument, NULL, OPT_FREEZE_ROUTER },
                                          { "merge", no_argument, NULL, OPT_MERGE },
                                          { "trainable", required_argument, NULL, OPT_TRAINABLE },
                                          { "freeze", required_argument, NULL, OPT_FREEZE },
                                          { "dry-run", no_argument, NULL, OPT_DRY_RUN },
                                          { 0, 0, 0, 0 } };
    const char *cmd = "lora";
    struct cli_common c;
    struct cli_train_opts o = { .lora = 1 };
    cli_common_init(&c);
    struct lora_ctx ctx = { &o, &c };
    int rc = cli_parse(argc, argv, cmd, opts, &c, on_opt, &ctx);
    if (rc == -1) {
        fputs(usage, stdout);
        rc = 0;
    } else if (!rc) {
        if (!o.init)
            rc = cli_error(cmd, 2, "option '--base CKPT' is required (the checkpoint the adapters tune)");
        else if (!c.config)
            rc = cli_error(cmd, 2, "option '--config FILE' is required (the fine-tuning run: data, optimizer, epochs; its model must be the base)");
        else
            rc = cli_train_run(cmd, &c, &o);
    }
    cli_common_release(&c);
    return rc;
}
