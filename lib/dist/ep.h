// ep.h: expert parallelism (mpirun -np N moe train --expert-parallel N): the
// experts of every sparse layer spread over N processes, tokens sent to their
// experts' process and back with MPI_Alltoallv (GShard, Lepikhin et al. 2021,
// sec. 3.2; DeepSpeed-MoE, Rajbhandari et al. 2022).
//
// Who holds what. With E experts per layer and N processes, rank r owns
// experts [r E/N, (r + 1) E/N) of every layer: it runs their FFNs, forward and
// backward, for the rows that every rank routes to them. Everything else (the
// router, the shared experts, attention, norms, embeddings) runs where the
// tokens are. In `moe train` each process also holds only its experts'
// weights, gradients and optimizer moments (moe_model_create_shard,
// core/params.h); the dense parameters are replicated. Evaluation runs every
// rank's experts where they are and gathers their outputs
// (moe_ep_eval_forward); checkpoints and the final model are gathered to rank
// 0 and written in one process's layout (train/trainer.c), so files do not
// depend on N.
//
// Micro-batches. An optimizer step of M micro-batches (train.accumulate = A, a
// multiple of N) is run in rounds j = 0, 1, ...: in round j, rank q runs
// micro-batch k = j N + q (as with --data-parallel), routing and capacity on
// its own rows exactly as one process would. At every sparse layer of the
// forward pass the ranks exchange (moe_ep_forward):
//   1. a header per rank (MPI_Allgather): its dropout stream and the block
//      offsets of its dispatch plan, so every owner knows how many rows come;
//   2. the gathered rows of each owner's experts (MPI_Alltoallv of floats), and
//      their (token, slot) pairs, the key of the hidden-dropout mask (int32);
//   3. the owner's expert outputs back (MPI_Alltoallv), straight into the
//      plan's row buffer, where the combine finds them in the usual order.
// The backward sends the output gradients of the rows to the owners and their
// input gradients back. A rank without a micro-batch in a round (the last,
// short step of an epoch) still serves its experts (moe_ep_idle).
//
// Exactness. An owner runs expert e over the same rows, in the same order,
// with the same shapes as one process runs it, so every row's output and the
// expert's gradient for micro-batch k are the same bits. The owner sums them
// in k order as they come (round by round, source by source), with the
// operations one process's accumulation applies (moe_fold); the dense
// parameters' sum is the --data-parallel exchange (train/trainer.c dp_step:
// fixed order, the same fold). So metrics and checkpoints are the same bytes
// as one process with the same train.accumulate.
#ifndef MOE_EP_H
#define MOE_EP_H

#include <stddef.h>
#include <stdint.h>

#include "core/params.h"
#include "core/status.h"
#include "dist/dist.h"
#include "io/safetensors.h"
#include "moe/dispatch.h"
#include "moe/experts.h"

struct moe_layer;
struct moe_ep;

// One sparse layer's share of the exchange.
struct moe_ep_layer {
    struct moe_ep *ep;
    struct moe_layer *l;
    size_t E, E_loc, lo;        // experts per layer; this rank's: lo .. lo + E_loc - 1
    size_t N_src;               // rows one rank may send to this rank's experts: E_loc x the
                                // training capacity at the layer's largest batch, or every row
                                // of its plan (dropless, expert choice)
    size_t hdr_bytes;
    unsigned char *hdr, *hdr_all;   // this rank's header; every rank's (allgather)
    size_t *send_rows, *recv_rows;  // (N) rows to and from each rank
    size_t *base;                   // (N + 1) first row of each source's rows in `own`
    size_t *cnt;                    // (2 N) scratch counts for the collectives
    int32_t *idx_send, *idx_recv;   // (2 x the layer's N_max), (2 N N_src) tokens and slots of the rows
    size_t *offs;                   // (N, E_loc + 1) each source's block offsets for this rank's experts
    struct moe_dispatch *vplan;     // (N) each source's plan over this rank's experts
    struct moe_experts_buf own;     // every source's rows of this rank's experts, N N_src rows
    struct moe_experts_buf *view;   // (N) the part of `own` for each source
    size_t g_n;                     // gradient floats of this rank's experts: w1 (w3) w2 parts
    float *g;                       // (g_n) the running sum of the step's expert gradients
};

struct moe_ep {
    struct moe_dist *dist;
    size_t n_layers;
    struct moe_ep_layer *layers;
    size_t per_rank, accum;     // micro-batches per rank and per step
    size_t round;               // set by the trainer before each round's pass
    size_t M;                   // micro-batches in this step (<= accum) and their weights in the
    float *w;                   // (accum) gradient sum, set by the caller before the step
    int rc;                     // the first failure of an exchange inside a layer (then err)
    struct moe_err err;
    double seconds, bytes;      // time in the exchanges, bytes sent to other ranks
};

// The check before a run: every sparse layer's E divisible by the number of
// processes (one line naming both), at least one sparse layer.
int moe_ep_check(size_t n_layers, struct moe_layer *const *layers, const char *model, int n, struct moe_err *err);
// The same for one number of experts (before the model is built).
int moe_ep_check_experts(size_t E, int n, struct moe_err *err);
// Set up the exchange of a run over d (d->size processes) for its sparse
// layers; sets each layer's l->ep. moe_ep_free undoes both.
// The owner of an expert sums its gradients over the step's micro-batches as
// they are computed, k = round N + q for source q, in k order with moe_fold
// (core/params.h) and the weights w, into the layer's gradient tensors (which
// hold only this rank's experts, or all of them).
int moe_ep_create(struct moe_ep **out, struct moe_dist *d, struct moe_layer *const *layers, size_t n_layers,
                  size_t per_rank, size_t accum, struct moe_err *err);
void moe_ep_free(struct moe_ep *ep);

// The layer's experts over the exchange (moe_layer.c, training passes): the
// same contract as moe_experts_forward and moe_experts_backward (dx not NULL;
// the weights and activation are the layer's, x->l), the expert gradients kept
// by the owner for micro-batch `round` of each rank.
void moe_ep_forward(struct moe_ep_layer *x, const struct moe_params *p, float *out, const float *in,
                    const float *gate, const struct moe_dispatch *plan, struct moe_experts_buf *buf);
void moe_ep_backward(struct moe_ep_layer *x, const struct moe_params *p, float *dx, float *dgate, const float *dout,
                     const float *gate, const struct moe_dispatch *plan, struct moe_experts_buf *buf);
// Evaluation (no gradient): every rank holds the same rows and the same plan
// (the model and the batch are replicated), so only outputs travel: each rank
// runs its own experts' blocks and one MPI_Allgatherv puts every expert's rows
// in place, in plan order, before the combine. Every rank must call it (the
// evaluation passes run everywhere, in the same order).
void moe_ep_eval_forward(struct moe_ep_layer *x, const struct moe_params *p, float *out, const float *in,
                         const float *gate, const struct moe_dispatch *plan, struct moe_experts_buf *buf);
// A round without a micro-batch on this rank: serve the other ranks' exchanges,
// every layer's forward in order, then every backward in reverse.
int moe_ep_idle(struct moe_ep *ep, const struct moe_params *p, struct moe_err *err);

// ---- files of a run whose processes hold only their experts (whole.c) ----
// What a file holds besides the weights, in the registry's layout on each
// process (NULL: not written): the optimizer moments, the selected snapshot
// (then best_extra floats of state after the registry's).
struct moe_whole_src {
    const float *m, *v, *best;
    size_t best_extra;
};
enum { MOE_WHOLE_M, MOE_WHOLE_V, MOE_WHOLE_BEST, MOE_WHOLE_N };
// Rank 0's writer: p->whole is set (moe_safetensors_write_params writes the
// registry whole), whole[] the refs of the moments and the snapshot as one
// process lays them out (NULL where src has none).
typedef int (*moe_whole_write_fn)(void *ctx, const struct moe_st_ref *const whole[MOE_WHOLE_N], struct moe_err *err);
// Collective: rank 0 calls write(ctx, ...), which may write p and src whole
// into files, every expert tensor's parts sent to it as the writer reaches it
// (one whole tensor at a time in rank 0's memory); the other ranks send
// theirs. Returns rank 0's status on rank 0 (the caller agrees).
int moe_ep_write_whole(struct moe_dist *d, struct moe_params *p, const struct moe_whole_src *src,
                       moe_whole_write_fn write, void *ctx, struct moe_err *err);

#endif
