// embedding.c: token plus learned position embedding of a decoder-only Transformer, forward and backward.
// B = sequences, C = positions, D = n_embd, V = vocabulary size; ld = row stride of the token ids.
// tok (B rows of >= C ids, stride ld); wte, dwte (V, D); wpe, dwpe (C_max >= C, D); out, dout (B, C, D).
// Not here: sinusoidal or rotary positions, embedding dropout, the tied output projection (a linear layer
// over wte). Token ids are validated where they enter the library (id < V is the caller's contract; the
// kernel does not know V and asserts only id >= 0).
// The backward is a scatter-add (two positions with the same token add into the same row of dwte), so it
// runs serially in (b, c, i) order: the sums are bit-identical for any thread count. Kernels never allocate.
#include <assert.h>

#include "nn/nn.h"

// reference: Radford et al. 2018 (GPT), input layer h_0 = U W_e + W_p: a token embedding plus a learned
// position embedding (Vaswani et al. 2017 §3.5 use sinusoids and report learned ones equivalent).
void moe_embedding_forward(float *out, const int32_t *tok, size_t ld, const float *wte, const float *wpe, size_t B,
                           size_t C, size_t D)
{
    assert(ld >= C);
    for (size_t b = 0; b < B; b++) {
        for (size_t c = 0; c < C; c++) {
            int32_t id = tok[b * ld + c];
            assert(id >= 0);
            const float *e = wte + (size_t)id * D, *p = wpe + c * D;
            float *o = out + (b * C + c) * D;
            for (size_t i = 0; i < D; i++)
                o[i] = e[i] + p[i];
        }
    }
}

void moe_embedding_backward(float *dwte, float *dwpe, const float *dout, const int32_t *tok, size_t ld, size_t B,
                            size_t C, size_t D)
{
    assert(ld >= C);
    for (size_t b = 0; b < B; b++) {
        for (size_t c = 0; c < C; c++) {
            int32_t id = tok[b * ld + c];
            assert(id >= 0);
            const float *g = dout + (b * C + c) * D;
            float *de = dwte + (size_t)id * D, *dp = dwpe + c * D;
            for (size_t i = 0; i < D; i++) {
                de[i] += g[i];
                dp[i] += g[i];
            }
        }
    }
}
