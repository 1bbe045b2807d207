#!/usr/bin/env python3
"""chevrons.py IN.cu OUT.cc: a .cu file as C++ for the CUDA simulator
(tests/cuda_sim/README.md). Each kernel launch

    name<<<grid, block[, shared[, stream]]>>>(args)

becomes

    moe_sim_launch("name", moe_sim_config(grid, block[, ...]), name,
                   moe_sim_bind(name)(args))

on the same line, so compiler messages keep the .cu file's line numbers
(a #line directive names it). Nothing else changes. A launch this cannot
parse (no kernel name before <<<, no >>>, unbalanced parentheses) stops the
build with its line number."""
import re
import sys


def fail(src, pos, why):
    line = src.count("\n", 0, pos) + 1
    sys.exit(f"{sys.argv[1]}:{line}: chevrons.py: {why}")


def main():
    src = open(sys.argv[1]).read()
    out = []
    i = 0
    while True:
        j = src.find("<<<", i)
        if j < 0:
            out.append(src[i:])
            break
        m = re.search(r"([A-Za-z_][A-Za-z0-9_]*)\s*$", src[i:j])
        if not m:
            fail(src, j, "no kernel name before <<<")
        name = m.group(1)
        k = src.find(">>>", j)
        if k < 0:
            fail(src, j, "<<< without >>>")
        cfg = src[j + 3:k]
        a = k + 3
        while a < len(src) and src[a] in " \t\n":
            a += 1
        if a >= len(src) or src[a] != "(":
            fail(src, k, "no ( after >>>")
        depth, b = 0, a
        while b < len(src):
            if src[b] == "(":
                depth += 1
            elif src[b] == ")":
                depth -= 1
                if depth == 0:
                    break
            b += 1
        if depth:
            fail(src, a, "unbalanced parentheses in the launch's arguments")
        args = src[a + 1:b]
        out.append(src[i:i + m.start()])
        out.append(f'moe_sim_launch("{name}", moe_sim_config({cfg}), {name}, moe_sim_bind({name})({args}))')
        i = b + 1
    text = "".join(out)
    with open(sys.argv[2], "w") as f:
        f.write(f'#line 1 "{sys.argv[1]}"\n' + text)


if __name__ == "__main__":
    main()
