// estimate.h: what a config costs before anything is allocated: parameters,
// active parameters and FLOPs per token, and the bytes of every buffer the
// model, the optimizer and the training loop will allocate. Every product is
// checked for overflow, so an absurd config (sizes whose product overflows, or
// that no machine could hold) is refused here, as a config error, instead of
// being killed by the kernel half-way through allocating.
// It works on typed settings (the model's hyperparameters, the data's
// struct moe_data_cfg, the loop's numbers) and reads no config key: the
// estimate from a config is train/train.h moe_model_estimate, which parses them.
// Not here: how much memory the machine has (core/sysmem.h) and the decision
// to refuse a config that does not fit (cmd/estimate.c).
//
// The model's parameters, buffers and FLOPs, and the optimizer's moments, are
// sums over the plans (core/plan.h) that the model's declare and
// moe_optim_declare make, the same plans the constructors allocate. The other
// figures follow the allocations of the training loop (train/trainer.c,
// model/stats.c, moe/route_stats.c) and of the data readers (io/corpus.c,
// vocab.c, idx.c, table.c);
// tests/test_estimate.c checks the parameter counts against the models actually
// built and the data figures against the data actually loaded, and
// tests/cli/test_memory.sh the total against the peak RSS of real runs. Change
// them together.
#ifndef MOE_ESTIMATE_H
#define MOE_ESTIMATE_H

#include <stddef.h>

#include "core/plan.h"
#include "core/status.h"
#include "io/dataset.h"

// A config needing more than this many bytes in total is absurd on any single
// machine (the largest hold a few tens of TiB): refused as a config error.
#define MOE_ESTIMATE_MAX_BYTES ((size_t)1 << 46) // 64 TiB

// The process itself (bytes_process): measured peak RSS of `moe train` less the
// estimated buffers, on Debian 12 x86-64 (BLIS 0.9 skx, glibc 2.36): 4.7 MiB of
// library code and data as mapped (libblis 1.8, libc 1.4, libm 0.7, moe 0.4,
// libgomp 0.3, ld.so 0.2), 0.3 to 1 MiB of heap and stack for the config, the
// output writers and BLIS's packing of small products; each further thread
// added under 0.1 MiB (its stack and packing scratch). Not counted: products
// wider than BLIS's blocks touch more of its packing pool (17 MB mapped for
// skx), a few MiB at most, which only models of far more than that need.
#define MOE_ESTIMATE_PROCESS_BYTES ((size_t)5 << 20)
#define MOE_ESTIMATE_THREAD_BYTES ((size_t)128 << 10)
// A build that links MPI (lib/dist/, meson -Dmpi) maps libmpi and its
// libraries (Open MPI 4.1.4: open-pal, open-rte, hwloc, libevent, pmix) at
// start-up, MPI_Init or not: the quickstart's peak RSS was 7.81 MiB with CUDA
// and MPI against 6.47 MiB with CUDA alone (1.3 MiB; 3 runs each, 2026-12-03).
#define MOE_ESTIMATE_MPI_BYTES ((size_t)3 << 19) // 1.5 MiB
// A build with the CUDA backend (meson -Dcuda) links libcudart and registers
// its kernels' fat binaries (sm_80, sm_90 and compute_90 PTX of lib/cuda/) at
// start-up, GPU or not: the quickstart's peak RSS was 8.4 MiB with CUDA alone
// (no MPI) against the 5.4 MiB estimated without this term, and 9.4 MiB with
// CUDA and MPI (2026-12-04, after the device MoE layer joined libmoe).
#define MOE_ESTIMATE_CUDA_BYTES ((size_t)3 << 20) // 3 MiB
// Device memory of a run on a CUDA device (moe_estimate_device_bytes): besides
// the plan's buffers, what the CUDA runtime and cuBLAS take on the device (the
// context, the kernels' images, cuBLAS's handle and workspace). An allowance,
// not a measurement: CUDA contexts are documented in the hundreds of MiB, and
// nothing of this has been measured on a GPU by this project yet.
#define MOE_ESTIMATE_CUDA_RESERVE_BYTES ((size_t)512 << 20) // 512 MiB
// What the CUDA backend's model (lib/cuda/model.c, transformer.c) keeps on the
// device beyond the CPU model's plan: a fixed part, the gradient norm's lane
// sums and total (256 x 8 + 1 doubles, 16,392 bytes) and the loss's blocks (256
// doubles), rounded up (a static assertion in lib/cuda/model.c holds it to
// that); and per token of a batch, the per-token loss rows (a double), the
// Transformer's token losses and predictions (4 + 4), its embedding backward's
// ids, rows, sorted ids and order (4 x 4) and its sort's second buffers (8),
// rounded up to 64 bytes. The CPU plan's activations cover the rest (the
// device keeps no buffer the CPU model lacks but these): tests/test_cuda_model.c
// checks the sum against the device's allocations for every configuration it
// trains.
#define MOE_ESTIMATE_CUDA_FIXED_BYTES ((size_t)64 << 10) // 64 KiB
#define MOE_ESTIMATE_CUDA_TOKEN_BYTES ((size_t)64)

struct moe_model_estimate {
    size_t parameters;        // trainable floats: exactly moe_params_count() of the model moe_model_create builds
    // Parameters a token touches: every parameter, less, for each sparse layer,
    // the routed experts it does not use: (E - used) * F * D * (3 for swiglu, else 2),
    // used = K (hash: 1; expert choice: ec_factor, the mean experts per token),
    // at most E. The same figure as summary.json's active_parameters (double:
    // expert choice uses a fractional mean). Dense models: = parameters.
    double active_parameters;
    // FLOPs per token (row), a convention not a measurement:
    //   forward = 2 x the multiply-accumulates of the weight matrices a token
    //   passes through: input projection, routers (and noise weights) over all E
    //   experts, the `used` routed experts and the shared experts of each sparse
    //   layer, dense FFNs, head; for the 1991 mixture the gate and every expert.
    //   Left out: biases, norms, activation functions, softmax and top-k,
    //   dispatch and combine copies, losses, the optimizer update (per step,
    //   not per token), and tokens dropped for capacity (counted as computed).
    //   training (flops_per_token) = 3 x forward: the backward pass costs about
    //   twice the forward (gradients with respect to inputs and to weights).
    double flops_forward_per_token;
    double flops_per_token;
    // Bytes (allocation sizes as the allocators round them):
    size_t bytes_params;      // parameter buffer (each tensor starts on a 64-byte boundary)
    size_t bytes_grads;       // gradient buffer, same layout
    size_t bytes_optimizer;   // training only: sgd 1, adamw 2 moments per trained float, gd none
    // A tuning run's buffers besides the model's (moe_estimate_loop.tuning;
    // moe lora: the adapters' values and gradients, the frozen base values W0 of
    // every adapted matrix, the scratch of s B A); 0 for other runs.
    size_t bytes_adapters;
    // Every buffer the model allocates for batches of max_batch rows: the
    // activations saved for backward (hidden layers, norm statistics, router
    // probabilities, per-expert gathered rows and FFN activations sized for
    // T * slots rows whatever the capacity factor) and the backward scratch.
    // An upper bound for one step: buffers are sized for the largest batch
    // (max(batch, evaluation chunk)) and every slot kept.
    size_t bytes_activations;
    // The CUDA backend's buffers beyond those (MOE_ESTIMATE_CUDA_FIXED_BYTES and
    // MOE_ESTIMATE_CUDA_TOKEN_BYTES per token of the largest batch): counted by
    // moe_estimate_device_bytes only, not in bytes_total.
    size_t bytes_device_extra;
    // The training loop (training only): shuffled batch copy, row permutation,
    // three sets of evaluation/routing statistics (train and test evaluation,
    // batch rows; co-selection is E x E per sparse layer); evaluation only: one set.
    size_t bytes_trainer;
    // The data as loaded, held for the whole run: the train and test splits
    // (features, targets or labels, groups), the standardisation statistics, and
    // for synthetic data the generator's temporaries (centres, per-region maps),
    // which are freed once the data is made but are part of the peak while making
    // it. Text (data.source text): the corpus (io/corpus.c) instead, 13 bytes per
    // token of each split (id, byte class, byte offset), the vocabulary and the
    // evaluation windows; tokens from the files' sizes (stat), counted by one
    // streaming pass over the files for word tokens.
    size_t bytes_data;
    // The data readers' temporaries, freed before the model is built: IDX files
    // as decompressed (sizes from their headers), text files as read and the word
    // counts of a vocabulary being built, a table file and its parsed rows. The
    // peak is the larger of the loading and the training phase, so this is the
    // part of the loading peak that the buffers allocated after it (parameters,
    // gradients, optimizer, activations, trainer) do not cover; often 0.
    size_t bytes_readers;
    // A checkpoint the run reads (io/safetensors.h reads the whole file into one
    // buffer and the model's tensors are copied out of it): the part of its bytes
    // at the peak that the buffers allocated after it is freed do not cover. Set by
    // the command, which knows the file and how long it holds it
    // (cmd/estimate.h cli_run_estimate); 0 here.
    size_t bytes_checkpoint;
    // The process itself, measured (tests/cli/test_memory.sh): code and data of
    // the binary and its libraries (libc, libm, BLIS, libgomp, zlib, cJSON),
    // stacks, the config and the output writers, plus per thread its stack and
    // BLIS packing scratch (threads: moe_blas_get_info, 1 before moe_blas_init).
    size_t bytes_process;
    size_t bytes_total;       // the sum of the above
    // The largest single buffer, for messages: its name and the keys that size it.
    size_t largest_bytes;
    char largest[320];
};

// The training loop as the estimate sees it: the optimiser's and the loop's
// settings (the optim.* and train.* keys, read by train/: struct
// moe_optim_cfg, moe_train_cfg) reduced to what sizes buffers.
struct moe_estimate_loop {
    // Declare the optimizer's state for numel parameter floats in p (role
    // MOE_ROLE_OPTIM): train/optim.c moe_optim_declare with the run's settings
    // (arg). NULL: an optimizer without state.
    int (*declare_optimizer)(const void *arg, size_t numel, struct moe_plan *p);
    const void *optimizer;
    size_t batch_size;   // rows per step; 0 = full batch (optim.batch_size 0, or gd)
    int shuffle;         // train.shuffle: mini-batches are copied in shuffled order
    int select_best;     // train.select = best_valid_loss: a copy of the parameters (and state) is kept
    // A run that trains only part of the model, with buffers of its own (moe
    // lora, train/train.h MOE_RUN_LORA): from the model's parameters as
    // moe_model_create registers them (params: names and shapes, nothing
    // allocated), *ret_numel, the floats the optimizer updates (and
    // train.accumulate sums), and *ret_bytes, what the run allocates besides
    // (bytes_adapters). 0, or an error code with err filled. NULL: the
    // optimizer updates every parameter, and nothing is allocated besides.
    int (*tuning)(const void *arg, const struct moe_params *params, size_t *ret_numel, size_t *ret_bytes,
                  struct moe_err *err);
    const void *tuning_arg;
};

// Estimate the model of hp (moe_model_hp_parse) for a task with n_in features
// and n_out targets/classes, batches of up to max_batch rows (0 counts as 1, as
// in moe_model_create), over n_train_rows / n_test_rows rows of the data that
// data describes (0 if not loaded: no data or reader bytes; otherwise the data
// files it names are looked at: sizes, IDX headers, word counts of text). data
// NULL: nothing known of the data (moe_model_create), so no data bytes and no
// statistics over its groups. loop non-NULL (training): count the optimizer
// moments and the training loop's buffers (else one set of statistics, as
// route-stats keeps). train/train.h moe_model_estimate does the same from a
// config. The model's rules must have been checked (moe_model_check: features,
// targets, loss). Returns 0, or MOE_EINVAL when a product overflows size_t, the dispatch rows exceed 32-bit
// indices, or the total passes MOE_ESTIMATE_MAX_BYTES; the message names the
// config keys involved. *ret is written only on success.
struct moe_model_hp;
int moe_model_estimate_hp(const struct moe_model_hp *hp, const struct moe_data_cfg *data,
                          const struct moe_estimate_loop *loop, enum moe_task task, size_t n_in, size_t n_out,
                          size_t n_train_rows, size_t n_test_rows, size_t max_batch, struct moe_model_estimate *ret,
                          struct moe_err *err);

// The parameters moe_model_create registers for hp (names, shapes, expert
// marks, in its order) into the empty registry *params, nothing allocated:
// what a tuning run's globs (train/tune.h) match before the model exists.
// Errors as moe_model_create's declaration; the caller releases *params
// (moe_params_release) either way.
int moe_model_params_hp(const struct moe_model_hp *hp, enum moe_task task, size_t n_in, size_t n_out,
                        struct moe_params *params, struct moe_err *err);

// The device memory a run of e on a CUDA device needs: the buffers the CUDA
// backend places on the device from the model's plan (parameters, gradients,
// optimizer state, activations; the data, the trainer's statistics and the
// process stay in host memory), a tuning run's adapters, W0 and scratch
// (bytes_adapters: the device keeps its own copies, cuda/model.c), its own few
// beyond them (bytes_device_extra), plus MOE_ESTIMATE_CUDA_RESERVE_BYTES.
// Saturates at SIZE_MAX.
size_t moe_estimate_device_bytes(const struct moe_model_estimate *e);

// The data c describes, when known without reading files (data.source =
// synthetic): task, features, targets/classes and rows, exactly as the loader
// (train/train.h moe_data_load_cfg) will make them. Lets a command estimate
// (and refuse) before generating the data. Returns 1 and fills the
// out-parameters for synthetic data, 0 when the shape depends on files (idx,
// table, text), or MOE_EINVAL when the synthetic splits alone would pass
// MOE_ESTIMATE_MAX_BYTES.
int moe_data_shape_cfg(const struct moe_data_cfg *c, enum moe_task *ret_task, size_t *ret_n_in, size_t *ret_n_out,
                       size_t *ret_n_train, size_t *ret_n_test, struct moe_err *err);

#endif
