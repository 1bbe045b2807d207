// synth.c: built-in synthetic tasks with known structure (see dataset.h), so
// that an expert's specialisation can be checked against the true region.
// Not a benchmark suite: two generators ("regions", "classes"), nothing read
// from disk, and every number a pure function of (seed, stream, index) through
// the counter-based RNG (purpose MOE_RNG_DATA), so equal specs give identical
// bytes on every machine and thread count.
//
// Model:
//   centres c_r (r < n_regions) in n_in dims: each is the best of
//     SYNTH_CANDIDATES candidates 3 * N(0, I) (the one farthest from the
//     centres already placed), so that even in 2-D no two regions coincide;
//   row i: region r ~ uniform, x = c_r + spread * N(0, I);
//   "regions": y = A_r x + b_r + noise * N(0, I), with A_r (n_out x n_in)
//     entries N(0, 1) / sqrt(n_in) and b_r ~ N(0, I);
//   "classes": label = r, n_out = n_regions classes (spec n_out is ignored, as
//     the config schema documents); noise is not used (the cluster width is
//     spread for both kinds).
// group[i] = r and n_group = n_regions for both kinds.
// Centre coordinates have std 3, so the per-dimension std of the difference of
// two centres is about 3 * sqrt(2) = 4.2: spread = 1 gives well-separated
// clusters, spread = 4 heavily overlapping ones.
// Streams (part of the reproducibility contract): 0 centres, 1 maps, 2 biases;
// train rows 16 (region) 17 (x noise) 18 (y noise); test rows 32, 33, 34. The
// train rows therefore do not depend on n_test, nor the test rows on n_train.
#include "io/dataset.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/params.h"
#include "core/rng.h"

#define SYNTH_CANDIDATES 8
#define SYNTH_CENTRE_SCALE 3.0
#define SYNTH_MAX_REGIONS 65536u
#define SYNTH_MAX_DIM 1000000u

enum { STREAM_CENTRES = 0, STREAM_MAPS = 1, STREAM_BIASES = 2, STREAM_TRAIN = 16, STREAM_TEST = 32, STREAM_VALID = 48 };

static int check(const struct moe_synth_spec *s, int *is_classes, struct moe_err *err)
{
    if (!s->kind)
        return moe_error(err, MOE_EINVAL, "synthetic data: kind is not set (\"regions\" or \"classes\")");
    if (strcmp(s->kind, "regions") == 0)
        *is_classes = 0;
    else if (strcmp(s->kind, "classes") == 0)
        *is_classes = 1;
    else
        return moe_error(err, MOE_EINVAL, "synthetic data: unknown kind '%s' (expected \"regions\" or \"classes\")",
                         s->kind);
    if (s->n_train == 0)
        return moe_error(err, MOE_EINVAL, "synthetic data: n_train must be > 0");
    if (s->n_in == 0 || s->n_in > SYNTH_MAX_DIM)
        return moe_error(err, MOE_EINVAL, "synthetic data: n_in must be in 1..%u, got %zu", SYNTH_MAX_DIM, s->n_in);
    if (s->n_regions == 0 || s->n_regions > SYNTH_MAX_REGIONS)
        return moe_error(err, MOE_EINVAL, "synthetic data: n_regions must be in 1..%u, got %zu", SYNTH_MAX_REGIONS,
                         s->n_regions);
    if (!*is_classes && (s->n_out == 0 || s->n_out > SYNTH_MAX_DIM))
        return moe_error(err, MOE_EINVAL, "synthetic data: n_out must be in 1..%u, got %zu", SYNTH_MAX_DIM, s->n_out);
    if (!(s->noise >= 0.0) || !isfinite(s->noise))
        return moe_error(err, MOE_EINVAL, "synthetic data: noise must be finite and >= 0, got %g", s->noise);
    if (!(s->spread >= 0.0) || !isfinite(s->spread))
        return moe_error(err, MOE_EINVAL, "synthetic data: spread must be finite and >= 0, got %g", s->spread);
    size_t big = s->n_train > s->n_test ? s->n_train : s->n_test;
    size_t n_out = *is_classes ? s->n_regions : s->n_out;
    size_t w = s->n_in > n_out ? s->n_in : n_out;
    if (big > SIZE_MAX / 16 / w || s->n_regions * s->n_in > SIZE_MAX / 16 / (w + 1))
        return moe_error(err, MOE_EINVAL, "synthetic data: sizes too large (n_train %zu, n_test %zu, n_in %zu)",
                         s->n_train, s->n_test, s->n_in);
    return 0;
}

// Centres (R, D), maps (R, O, D), biases (R, O), all in double.
static void make_regions(const struct moe_synth_spec *s, size_t n_out, int with_maps, double *centre, double *map,
                         double *bias, double *cand)
{
    size_t R = s->n_regions, D = s->n_in;
    struct moe_rng rc = moe_rng_make(s->seed, MOE_RNG_DATA, STREAM_CENTRES);
    for (size_t r = 0; r < R; r++) {
        double best = -1.0;
        for (size_t k = 0; k < SYNTH_CANDIDATES; k++) {
            uint64_t base = ((uint64_t)r * SYNTH_CANDIDATES + k) * D;
            for (size_t j = 0; j < D; j++)
                cand[j] = SYNTH_CENTRE_SCALE * moe_rng_normal(&rc, base + j);
            double mind = INFINITY;
            for (size_t q = 0; q < r; q++) {
                double d2 = 0;
                for (size_t j = 0; j < D; j++) {
                    double t = cand[j] - centre[q * D + j];
                    d2 += t * t;
                }
                if (d2 < mind)
                    mind = d2;
            }
            if (mind > best) {
                best = mind;
                memcpy(centre + r * D, cand, D * sizeof *cand);
            }
            if (r == 0)
                break; // nothing to be far from: the first candidate
        }
    }
    if (!with_maps)
        return;
    struct moe_rng rm = moe_rng_make(s->seed, MOE_RNG_DATA, STREAM_MAPS);
    struct moe_rng rb = moe_rng_make(s->seed, MOE_RNG_DATA, STREAM_BIASES);
    double scale = 1.0 / sqrt((double)D);
    for (size_t i = 0; i < R * n_out * D; i++)
        map[i] = scale * moe_rng_normal(&rm, i);
    for (size_t i = 0; i < R * n_out; i++)
        bias[i] = moe_rng_normal(&rb, i);
}

static void make_rows(const struct moe_synth_spec *s, int is_classes, uint32_t stream, const double *centre,
                      const double *map, const double *bias, double *xd, struct moe_dataset *d)
{
    size_t D = s->n_in, O = d->n_out;
    struct moe_rng rr = moe_rng_make(s->seed, MOE_RNG_DATA, stream);
    struct moe_rng rx = moe_rng_make(s->seed, MOE_RNG_DATA, stream + 1);
    struct moe_rng ry = moe_rng_make(s->seed, MOE_RNG_DATA, stream + 2);
    for (size_t i = 0; i < d->n; i++) {
        uint32_t r = moe_rng_below(&rr, i, (uint32_t)s->n_regions);
        d->group[i] = (int32_t)r;
        for (size_t j = 0; j < D; j++) {
            float v = (float)(centre[r * D + j] + s->spread * moe_rng_normal(&rx, (uint64_t)i * D + j));
            d->x[i * D + j] = v;
            xd[j] = v; // y is a function of the stored (float) inputs
        }
        if (is_classes) {
            d->label[i] = (int32_t)r;
            continue;
        }
        const double *A = map + (size_t)r * O * D, *b = bias + (size_t)r * O;
        for (size_t o = 0; o < O; o++) {
            double acc = b[o];
            for (size_t j = 0; j < D; j++)
                acc += A[o * D + j] * xd[j];
            acc += s->noise * moe_rng_normal(&ry, (uint64_t)i * O + o);
            d->y[i * O + o] = (float)acc;
        }
    }
}

int moe_synth_make(const struct moe_synth_spec *spec, struct moe_dataset *ret_train,
                   struct moe_dataset *ret_test, struct moe_err *err)
{
    if (spec && spec->n_valid) {
        struct moe_synth_spec s = *spec;
        s.n_valid = 0;
        return moe_synth_make_ex(&s, ret_train, ret_test, NULL, err);
    }
    return moe_synth_make_ex(spec, ret_train, ret_test, NULL, err);
}

int moe_synth_make_ex(const struct moe_synth_spec *spec, struct moe_dataset *ret_train, struct moe_dataset *ret_test,
                      struct moe_dataset *ret_valid, struct moe_err *err)
{
    memset(ret_train, 0, sizeof *ret_train);
    memset(ret_test, 0, sizeof *ret_test);
    if (ret_valid)
        memset(ret_valid, 0, sizeof *ret_valid);
    if (!spec)
        return moe_error(err, MOE_EINVAL, "synthetic data: no spec");
    int is_classes = 0;
    int rc = check(spec, &is_classes, err);
    if (rc)
        return rc;
    size_t R = spec->n_regions, D = spec->n_in;
    size_t O = is_classes ? R : spec->n_out;
    enum moe_task task = is_classes ? MOE_TASK_CLASSIFICATION : MOE_TASK_REGRESSION;

    double *centre = malloc(R * D * sizeof *centre);
    double *cand = malloc(D * sizeof *cand);
    double *xd = malloc(D * sizeof *xd);
    double *map = is_classes ? NULL : malloc(R * O * D * sizeof *map);
    double *bias = is_classes ? NULL : malloc(R * O * sizeof *bias);
    if (!centre || !cand || !xd || (!is_classes && (!map || !bias))) {
        rc = moe_error(err, MOE_ENOMEM, "synthetic data: out of memory");
        goto out;
    }
    make_regions(spec, O, !is_classes, centre, map, bias, cand);

    struct moe_dataset *sets[3] = { ret_train, ret_test, ret_valid };
    size_t counts[3] = { spec->n_train, spec->n_test, spec->n_valid };
    uint32_t streams[3] = { STREAM_TRAIN, STREAM_TEST, STREAM_VALID };
    for (int k = 0; k < (ret_valid && spec->n_valid ? 3 : 2); k++) {
        struct moe_dataset *d = sets[k];
        rc = moe_dataset_alloc(d, task, counts[k], D, O, 1, err);
        if (rc)
            goto out;
        d->n_group = R;
        if (is_classes) {
            d->class_names = calloc(O, sizeof *d->class_names);
            if (!d->class_names) {
                rc = moe_error(err, MOE_ENOMEM, "synthetic data: out of memory");
                goto out;
            }
            for (size_t c = 0; c < O; c++) {
                char buf[24];
                snprintf(buf, sizeof buf, "%zu", c);
                if (!(d->class_names[c] = strdup(buf))) {
                    rc = moe_error(err, MOE_ENOMEM, "synthetic data: out of memory");
                    goto out;
                }
            }
        }
        make_rows(spec, is_classes, streams[k], centre, map, bias, xd, d);
    }
out:
    free(centre);
    free(cand);
    free(xd);
    free(map);
    free(bias);
    if (rc) {
        moe_dataset_release(ret_train);
        moe_dataset_release(ret_test);
        moe_dataset_release(ret_valid);
    }
    return rc;
}
