#!/usr/bin/env python3
"""test_head_floor.py: experiments/transfer/head_floor.py against what can be known without it.

  python3 tests/test_head_floor.py /path/to/experiments/transfer/head_floor.py

Writes small safetensors files (head.weight [V, D], norm.weight, norm.bias, the config in the metadata)
and checks head_floor.py's best_log2_prob:
  - two bytes: the maximum has a closed form. With u = g * (w1 - w0) centred and c = (w1 - w0) . beta,
    log p_0 = -log(1 + exp(u . x + c)) over the ball {zero mean, |x| <= sqrt(D)} is largest at
    x = -sqrt(D) u / |u|, so best log p_0 = -log(1 + exp(c - sqrt(D) |u|)); within 1e-4 (log2);
  - six bytes: no point of 20,000 drawn on the sphere (where a softmax probability of a byte whose
    row differs from the others is largest) beats the bound, and the best of them comes within 0.05
    of it (the ascent found the maximum, not a worse point);
  - a model whose norm is rmsnorm is refused (exit status not 0), since the bound assumes layernorm.
Prints TAP lines and exits 1 if a check failed.
"""
import json
import math
import os
import random
import struct
import subprocess
import sys
import tempfile

N = 0
FAILED = 0


def check(name, ok, why=''):
    global N, FAILED
    N += 1
    if ok:
        print(f'ok {N} - {name}')
    else:
        FAILED += 1
        print(f'not ok {N} - {name}\n#   {why}')


def write_st(path, W, g, beta, norm='layernorm'):
    V, D = len(W), len(g)
    tensors = [('head.weight', [V, D], [x for row in W for x in row]), ('norm.weight', [D], g),
               ('norm.bias', [D], beta)]
    header, data, off = {}, b'', 0
    for name, shape, values in tensors:
        raw = struct.pack(f'<{len(values)}f', *values)
        header[name] = {'dtype': 'F32', 'shape': shape, 'data_offsets': [off, off + len(raw)]}
        data += raw
        off += len(raw)
    header['__metadata__'] = {'config': json.dumps({'model': {'norm': norm}})}
    h = json.dumps(header).encode()
    h += b' ' * (-len(h) % 8)
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(h)) + h + data)


def f32(x):
    return struct.unpack('<f', struct.pack('<f', x))[0]


def run(script, path, *byte):
    p = subprocess.run([sys.executable, script, path] + [str(b) for b in byte], capture_output=True, text=True)
    rows = [line.split(',') for line in p.stdout.splitlines()[1:]]
    return p.returncode, {int(r[0]): float(r[1]) for r in rows}, p.stderr


def main():
    if len(sys.argv) != 2:
        sys.exit('usage: python3 test_head_floor.py /path/to/head_floor.py')
    script = sys.argv[1]
    rng = random.Random(7)
    D = 8
    with tempfile.TemporaryDirectory() as tmp:
        # two bytes: the closed form
        W = [[f32(rng.gauss(0, 1)) for _ in range(D)] for _ in range(2)]
        g = [f32(rng.uniform(0.5, 1.5)) for _ in range(D)]
        beta = [f32(rng.gauss(0, 0.3)) for _ in range(D)]
        two = os.path.join(tmp, 'two.safetensors')
        write_st(two, W, g, beta)
        rc, got, err = run(script, two, 0, 1)
        for b in (0, 1):
            o = 1 - b
            u = [g[j] * (W[o][j] - W[b][j]) for j in range(D)]
            mu = sum(u) / D
            u = [x - mu for x in u]
            c = sum((W[o][j] - W[b][j]) * beta[j] for j in range(D))
            want = -math.log1p(math.exp(c - math.sqrt(D) * math.sqrt(sum(x * x for x in u)))) / math.log(2)
            check(f'two bytes: byte {b} at the closed form', rc == 0 and b in got and abs(got[b] - want) < 1e-4,
                  f'rc {rc}, got {got.get(b)}, want {want}; {err.strip()}')
        # six bytes: sampling never beats the bound, and comes close to it
        V = 6
        W = [[f32(rng.gauss(0, 1)) for _ in range(D)] for _ in range(V)]
        six = os.path.join(tmp, 'six.safetensors')
        write_st(six, W, g, beta)
        rc, got, err = run(script, six, 0, 3)
        for b in (0, 3):
            best = -math.inf
            for _ in range(20000):
                x = [rng.gauss(0, 1) for _ in range(D)]
                mu = sum(x) / D
                x = [v - mu for v in x]
                n = math.sqrt(sum(v * v for v in x))
                x = [v * math.sqrt(D) / n for v in x]
                z = [sum(W[i][j] * (g[j] * x[j] + beta[j]) for j in range(D)) for i in range(V)]
                m = max(z)
                lp = (z[b] - m - math.log(sum(math.exp(v - m) for v in z))) / math.log(2)
                best = max(best, lp)
            check(f'six bytes: byte {b}: no sampled point beats the bound, the best comes within 0.05',
                  rc == 0 and b in got and best <= got[b] + 1e-6 and got[b] - best < 0.05,
                  f'rc {rc}, bound {got.get(b)}, best sampled {best}; {err.strip()}')
        rms = os.path.join(tmp, 'rms.safetensors')
        write_st(rms, W, g, beta, norm='rmsnorm')
        rc, got, err = run(script, rms, 0)
        check('an rmsnorm model is refused', rc != 0 and 'layernorm' in err, f'rc {rc}, stderr {err.strip()}')
    print(f'1..{N}')
    sys.exit(1 if FAILED else 0)


if __name__ == '__main__':
    main()
