#!/usr/bin/env python3
"""The cost of a T-token call of an f32 export in each of its two packings, side by side in one
run: `prepack()` (products through libtorch's BLAS, MKL on x86, weights stored transposed) and
`prepack_onednn()` (products through oneDNN, weights packed once), what
`LoadOptions::f32_matmul` chooses between.

    .venv/bin/python scripts/f32_packings.py models/smollm2/model.f32.pt [--rounds 3]

A block of T random tokens after 128 cached positions (T = 1, 2, 4, 8, 16; 128 is a prompt
pass from position 128), 5 calls per round, rounds alternating the packings; prints the median
ms per call and each block's cost relative to the same packing's one-token call.
"""

import argparse
import statistics
import time

import torch

SIZES = (1, 2, 4, 8, 16, 128)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("module")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    mods = {}
    for packing in ("prepack", "prepack_onednn"):
        m = torch.jit.load(args.module)
        getattr(m, packing)()
        mods[packing] = m
    # The cache's shape from a probe: SmolLM2's 30 layers, 3 key/value heads of 64.
    layers, kv_heads, head_dim, slots = 30, 3, 64, 512
    res = {}
    with torch.no_grad():
        for rnd in range(args.rounds):
            for name, m in mods.items():
                k = torch.zeros(layers, 1, kv_heads, slots, head_dim)
                v = torch.zeros_like(k)
                ids = torch.randint(0, 49152, (1, 128))
                m(ids, torch.arange(128)[None], torch.ones(1, 128, dtype=torch.int64), k, v)
                for t in SIZES:
                    if t == 128 and rnd > 0:
                        continue
                    times = []
                    for _ in range(5 if t < 128 else 2):
                        block = torch.randint(0, 49152, (1, t))
                        t0 = time.perf_counter()
                        m(block, torch.arange(128, 128 + t)[None], torch.ones(1, 128 + t, dtype=torch.int64), k, v)
                        times.append(time.perf_counter() - t0)
                    res.setdefault((name, t), []).append(statistics.median(times) * 1e3)
    print("| packing | " + " | ".join(f"{t} tokens (ms)" for t in SIZES) + " | relative cost 2 / 4 / 8 / 16 |")
    print("|---" * (len(SIZES) + 2) + "|")
    for name in mods:
        ms = {t: statistics.median(res[(name, t)]) for t in SIZES}
        rel = " / ".join(f"{ms[t] / ms[1]:.2f}" for t in (2, 4, 8, 16))
        print(f"| {name}() | " + " | ".join(f"{ms[t]:.1f}" for t in SIZES) + f" | {rel} |")


if __name__ == "__main__":
    main()
