#!/usr/bin/env python3
"""What a batched call of an export's masked form costs, and what allocating its cache costs.

    .venv/bin/python scripts/batch_costs.py [models/smollm2] [--f32-matmul auto|blas|onednn]

Loads model.f32.masked.pt (packed as the crate would: oneDNN on AMD CPUs for `auto`) and times,
medians of a few calls: one-token calls of 1, 4 and 16 rows after 128 cached slots; prompt-shaped
calls of 48 tokens for 1, 4 and 16 rows (a prompt read for every row at once, or a joining prompt
that widens every row's call) and 16 x 8; and allocating a 16-row cache of 256, 1,024 and 2,050
slots zeroed (`torch.zeros`, the first touch of fresh pages) against not zeroed (`torch.empty`).
"""

import argparse
import json
import os
import time

import torch


def median_ms(f, n):
    f()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    ts.sort()
    return ts[len(ts) // 2] * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", nargs="?", default="models/smollm2")
    ap.add_argument("--f32-matmul", choices=["auto", "blas", "onednn"], default="auto")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    torch.set_num_threads(2)
    meta = json.load(open(os.path.join(args.dir, "metadata.json")))
    files = meta["dtypes"]["f32"]
    m = torch.jit.load(os.path.join(args.dir, files["masked"])).eval()
    amd = "AuthenticAMD" in open("/proc/cpuinfo").read()
    onednn = files.get("onednn", False) and (
        args.f32_matmul == "onednn" or (args.f32_matmul == "auto" and amd))
    m.prepack_onednn() if onednn else m.prepack()
    L, H, D = meta["num_layers"], meta["num_kv_heads"], meta["head_dim"]
    print(f"{args.dir} masked f32, {'prepack_onednn()' if onednn else 'prepack()'}, 2 threads")
    for b in (1, 4, 16):
        k, v = torch.zeros(L, b, H, 256, D), torch.zeros(L, b, H, 256, D)
        ids = torch.zeros(b, 1, dtype=torch.long)
        pos = torch.full((b, 1), 128, dtype=torch.long)
        mask = torch.ones(b, 1, 129, dtype=torch.long)
        t = median_ms(lambda: m(ids, pos, mask, k, v), 15)
        print(f"one-token call, {b:2d} rows after 128 slots: {t:7.1f} ms ({t / b:.1f} ms per row)")
    for b, t_len in ((1, 48), (4, 48), (16, 48), (16, 8)):
        k, v = torch.zeros(L, b, H, 256, D), torch.zeros(L, b, H, 256, D)
        ids = torch.zeros(b, t_len, dtype=torch.long)
        pos = torch.arange(t_len).repeat(b, 1)
        mask = torch.tril(torch.ones(t_len, t_len, dtype=torch.long)).repeat(b, 1, 1)
        t = median_ms(lambda: m(ids, pos, mask, k, v), 3)
        print(f"{b:2d} rows x {t_len:2d} tokens from an empty cache: {t:7.1f} ms")
    for slots in (256, 1024, 2050):
        shape = (L, 16, H, slots, D)
        t0 = time.perf_counter()
        k, v = torch.zeros(shape), torch.zeros(shape)
        zeroed = (time.perf_counter() - t0) * 1e3
        del k, v
        t0 = time.perf_counter()
        k, v = torch.empty(shape), torch.empty(shape)
        empty = (time.perf_counter() - t0) * 1e3
        del k, v
        mb = 2 * 4 * L * 16 * H * slots * D / 1e6
        print(f"16-row cache of {slots:4d} slots ({mb:6.0f} MB): zeroed {zeroed:7.1f} ms, "
              f"not zeroed {empty:5.1f} ms")


if __name__ == "__main__":
    main()
