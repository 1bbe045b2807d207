// activation.c: elementwise activations, forward and backward.
#include <math.h>
#include <string.h>

#include "core/vmath.h"
#include "nn/nn.h"

static const char *const act_names[] = { "tanh", "relu", "sigmoid", "identity" };

int moe_act_from_name(const char *name)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(name, act_names[i]) == 0)
            return i;
    return -1;
}

const char *moe_act_name(enum moe_act a) { return act_names[a]; }

void moe_act_forward(enum moe_act a, float *y, const float *x, size_t n)
{
    switch (a) {
    case MOE_ACT_TANH:
        for (size_t i = 0; i < n; i++)
            y[i] = tanhf(x[i]);
        break;
    case MOE_ACT_RELU:
        for (size_t i = 0; i < n; i++)
            y[i] = x[i] > 0.0f ? x[i] : 0.0f;
        break;
    case MOE_ACT_SIGMOID:
        for (size_t i = 0; i < n; i++)
            y[i] = 1.0f / (1.0f + expf(-x[i]));
        break;
    case MOE_ACT_IDENTITY:
        if (y != x)
            memcpy(y, x, n * sizeof *y);
        break;
    }
}

void moe_act_backward(enum moe_act a, float *dx, const float *dy, const float *y, size_t n)
{
    switch (a) {
    case MOE_ACT_TANH:
        for (size_t i = 0; i < n; i++)
            dx[i] += dy[i] * (1.0f - y[i] * y[i]);
        break;
    case MOE_ACT_RELU:
        for (size_t i = 0; i < n; i++) {
            const float d = dy[i]; // loaded unconditionally: the select vectorises
            dx[i] += y[i] > 0.0f ? d : 0.0f;
        }
        break;
    case MOE_ACT_SIGMOID:
        for (size_t i = 0; i < n; i++)
            dx[i] += dy[i] * y[i] * (1.0f - y[i]);
        break;
    case MOE_ACT_IDENTITY:
        for (size_t i = 0; i < n; i++)
            dx[i] += dy[i];
        break;
    }
}

// The elementwise kernels below work in chunks of CHUNK values: the
// transcendental part goes through SLEEF (core/vmath.h) on a stack buffer, the
// rest are plain loops. Chunks are independent, so OpenMP splits them over
// threads (static schedule) once n is large enough to pay for waking the
// threads; each value is computed by the same code whatever the thread count.
#define CHUNK 512
#define PAR_MIN (1u << 15) // elements before the loops go parallel

// reference: Hendrycks & Gimpel 2016, "Gaussian Error Linear Units", tanh approximation
// (the form GPT-2 and BERT use).
#define GELU_C 0.7978845608028654f // sqrt(2/pi)
#define GELU_A 0.044715f

// th[i] = tanh(sqrt(2/pi) (x + 0.044715 x^3)) for i < n <= CHUNK
static void gelu_tanh(float *th, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        th[i] = GELU_C * (v + GELU_A * v * v * v);
    }
    moe_vtanhf(th, th, n);
}

void moe_gelu_forward(float *y, const float *x, size_t n)
{
    #pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (size_t c = 0; c < n; c += CHUNK) {
        size_t m = n - c < CHUNK ? n - c : CHUNK;
        float th[CHUNK];
        gelu_tanh(th, x + c, m);
        for (size_t i = 0; i < m; i++)
            y[c + i] = 0.5f * x[c + i] * (1.0f + th[i]);
    }
}

// The tanh is recomputed from x rather than saved: one vector tanh costs less
// than the memory traffic of another (T, F) buffer. dx is written, not added to:
// these loops are memory-bound, and a clear plus a read of dx cost a third more.
void moe_gelu_backward(float *dx, const float *dy, const float *x, size_t n)
{
    #pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (size_t c = 0; c < n; c += CHUNK) {
        size_t m = n - c < CHUNK ? n - c : CHUNK;
        float th[CHUNK];
        gelu_tanh(th, x + c, m);
        for (size_t i = 0; i < m; i++) {
            float v = x[c + i], t = th[i];
            float dth = (1.0f - t * t) * GELU_C * (1.0f + 3.0f * GELU_A * v * v);
            dx[c + i] = dy[c + i] * (0.5f * (1.0f + t) + 0.5f * v * dth);
        }
    }
}

// s[i] = sigmoid(x[i]) = 1 / (1 + exp(-x[i])) for i < n <= CHUNK
static void sigmoid_chunk(float *s, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        s[i] = -x[i];
    moe_vexpf(s, s, n);
    for (size_t i = 0; i < n; i++)
        s[i] = 1.0f / (1.0f + s[i]);
}

void moe_silu_forward(float *y, const float *x, size_t n)
{
    #pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (size_t c = 0; c < n; c += CHUNK) {
        size_t m = n - c < CHUNK ? n - c : CHUNK;
        float s[CHUNK];
        sigmoid_chunk(s, x + c, m);
        for (size_t i = 0; i < m; i++)
            y[c + i] = x[c + i] * s[i];
    }
}

void moe_silu_backward(float *dx, const float *dy, const float *x, size_t n)
{
    #pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (size_t c = 0; c < n; c += CHUNK) {
        size_t m = n - c < CHUNK ? n - c : CHUNK;
        float s[CHUNK];
        sigmoid_chunk(s, x + c, m);
        for (size_t i = 0; i < m; i++)
            dx[c + i] = dy[c + i] * s[i] * (1.0f + x[c + i] * (1.0f - s[i]));
    }
}
