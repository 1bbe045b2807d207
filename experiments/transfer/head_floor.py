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

This script finds that maximum for each byte asked for, by projected gradient ascent (the gradient of
log softmax_b is U_b - sum_j p_j U_j) with an adaptive step: a step of length t along the gradient's
direction, kept if it raises log p_b (t then grows by half), else halved, until t is below 1e-10 of the
radius. The direction alone is used because the gradient vanishes as p_b nears 1, where fixed steps
stall. It starts from U_b's direction and from RESTARTS random directions and keeps the largest value
(on the runs of 2026-12-07 all starts agreed to 4 decimals). tests/test_head_floor.py checks it against
a closed form and against sampling. It prints a CSV row per byte:

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

ITERS = 5000     # at most, per start
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

    def probs(x):  # and log p, exactly where p is near 1
        z = [sum(Ui[j] * x[j] for j in range(D)) + ci for Ui, ci in zip(U, c)]
        m = max(z)
        e = [math.exp(v - m) for v in z]
        s = sum(e)
        return [v / s for v in e], [v - m - math.log(s) for v in z]

    def ascend(b, x):
        p, lp = probs(x)
        t = radius / 2
        for _ in range(ITERS):
            grad = [U[b][j] - sum(p[i] * U[i][j] for i in range(V)) for j in range(D)]
            n = math.sqrt(sum(v * v for v in grad))
            if n == 0 or t < 1e-10 * radius:
                break
            y = project([x[j] + t * grad[j] / n for j in range(D)])
            q, lq = probs(y)
            if lq[b] > lp[b]:
                x, p, lp, t = y, q, lq, t * 1.5
            else:
                t /= 2
        return p, lp

    rng = random.Random(1)
    print('byte,best_log2_prob,runner_up,runner_up_prob')
    for b in targets:
        starts = [[v * 10 for v in U[b]]] + [[rng.gauss(0, 1) for _ in range(D)] for _ in range(RESTARTS)]
        p, lp = max((ascend(b, project(x)) for x in starts), key=lambda r: r[1][b])
        other = max((i for i in range(V) if i != b), key=lambda i: p[i])
        print(f'{b},{lp[b] / math.log(2):.6f},{other},{p[other]:.6f}')


if __name__ == '__main__':
    main()
