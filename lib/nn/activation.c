// activation.c: elementwise activations, forward and backward.
#include <math.h>
#include <string.h>

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
        for (size_t i = 0; i < n; i++)
            dx[i] += y[i] > 0.0f ? dy[i] : 0.0f;
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

// reference: Hendrycks & Gimpel 2016, "Gaussian Error Linear Units", tanh approximation
// (the form GPT-2 and BERT use).
#define GELU_C 0.7978845608028654f // sqrt(2/pi)
#define GELU_A 0.044715f

void moe_gelu_forward(float *y, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        y[i] = 0.5f * v * (1.0f + tanhf(GELU_C * (v + GELU_A * v * v * v)));
    }
}

void moe_gelu_backward(float *dx, const float *dy, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        float th = tanhf(GELU_C * (v + GELU_A * v * v * v));
        float dth = (1.0f - th * th) * GELU_C * (1.0f + 3.0f * GELU_A * v * v);
        dx[i] += dy[i] * (0.5f * (1.0f + th) + 0.5f * v * dth);
    }
}

void moe_silu_forward(float *y, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        y[i] = x[i] / (1.0f + expf(-x[i]));
}

void moe_silu_backward(float *dx, const float *dy, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float s = 1.0f / (1.0f + expf(-x[i]));
        dx[i] += dy[i] * s * (1.0f + x[i] * (1.0f - s));
    }
}
