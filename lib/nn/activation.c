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
