#!/usr/bin/env python3
"""head_floor.py: how much probability a frozen output layer lets any hidden state give a byte.

For the transfer experiment's byte-level LMs (experiments/common/lm.json: a final LayerNorm, then an
untied head without a bias), the next-byte distribution is

    p = softmax(W (g * xhat + beta)),   xhat = (h - mean(h)) / sqrt(var(h) + eps)

with W (V, D) the head, g and beta the final norm's gain and bias, h the last block's output. xhat has
zero mean and norm sqrt(D var / (var + eps)) < sqrt(D), and any such vector is reached by some h. An
adaptation that keeps W, g and beta frozen (LoRA, moe-only) changes only h, so for every byte b

    log p_b <= max over xhat (zero mean, |xhat| <= sqrt(D)) of log softmax(U xhat + c)_b,
    U = W diag(g) (rows centred, since xhat has zero mean), c = W beta.

This script finds that maximum for each byte asked for, by projected gradient ascent on the concave-
in-the-logits objective (the gradient of log softmax_b is U_b - sum_j p_j U_j), started from U_b's
direction and from RESTARTS random directions (the largest value is kept; on the runs of 2026-12-07 all
starts agreed to 4 decimals), and prints a CSV row per byte:

    byte, best_log2_prob (log2 of the largest probability), runner_up (the byte with the next largest
    probability at that point), runner_up_prob

Usage: python3 head_floor.py CHECKPOINT BYTE [BYTE...]   (bytes as numbers, 0x.. allowed)
Standard library only (reads the safetensors file itself: 8-byte header length, JSON header, data).
"""
import array
import json
import math
import random
import struct
import sys

ITERS = 1500
STEP = 0.5
RESTARTS = 3


def tensors(path, names):
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        header = json.loads(f.read(n))
        out = {}
        for name in names:
            t = header.get(name)
            if t is None or t['dtype'] != 'F32':
                sys.exit(f'head_floor.py: {path}: no F32 tensor {name!r}')
            a, b = t['data_offsets']
            f.seek(8 + n + a)
            v = array.array('f')
            v.frombytes(f.read(b - a))
            if sys.byteorder != 'little':
                v.byteswap()
            out[name] = (list(v), t['shape'])
        return out, json.loads(header.get('__metadata__', {}).get('config', '{}') or '{}')


def main():
    if len(sys.argv) < 3:
        sys.exit('usage: python3 head_floor.py CHECKPOINT BYTE [BYTE...]')
    path = sys.argv[1]
    targets = [int(b, 0) for b in sys.argv[2:]]
    t, cfg = tensors(path, ['head.weight', 'norm.weight', 'norm.bias'])
    norm = cfg.get('model', {}).get('norm', 'layernorm')
    if norm != 'layernorm':
        sys.exit(f'head_floor.py: {path}: model.norm is {norm!r}; this bound is for layernorm')
    W, (V, D) = t['head.weight'][0], t['head.weight'][1]
    g, beta = t['norm.weight'][0], t['norm.bias'][0]
    U, c = [], []
    for i in range(V):
        u = [W[i * D + j] * g[j] for j in range(D)]
        mu = sum(u) / D
        U.append([x - mu for x in u])
        c.append(sum(W[i * D + j] * beta[j] for j in range(D)))
    radius = math.sqrt(D)

    def project(x):  # onto {zero mean, norm <= radius}
        mu = sum(x) / D
        x = [v - mu for v in x]
        n = math.sqrt(sum(v * v for v in x))
        return [v * radius / n for v in x] if n > radius else x

    def probs(x):
        z = [sum(Ui[j] * x[j] for j in range(D)) + ci for Ui, ci in zip(U, c)]
        m = max(z)
        e = [math.exp(v - m) for v in z]
        s = sum(e)
        return [v / s for v in e]

    def ascend(b, x):
        for _ in range(ITERS):
            p = probs(x)
            grad = [U[b][j] - sum(p[i] * U[i][j] for i in range(V)) for j in range(D)]
            x = project([x[j] + STEP * grad[j] for j in range(D)])
        return probs(x)

    rng = random.Random(1)
    print('byte,best_log2_prob,runner_up,runner_up_prob')
    for b in targets:
        starts = [[v * 10 for v in U[b]]] + [[rng.gauss(0, 1) for _ in range(D)] for _ in range(RESTARTS)]
        best = max((ascend(b, project(x)) for x in starts), key=lambda p: p[b])
        other = max((i for i in range(V) if i != b), key=lambda i: best[i])
        print(f'{b},{math.log2(best[b]):.6f},{other},{best[other]:.6f}')


if __name__ == '__main__':
    main()
