#!/usr/bin/env python3
"""Every matrix product of one SmolLM2-135M step (30 layers of fused QKV 960x576, output
576x576, fused gate/up 3072x576, down 576x1536, and the 49152x576 LM head; random weights of the
same shapes), timed for 1..16 rows in each weight form libtorch offers on CPU:

    .venv/bin/python scripts/matmul_forms.py [--threads 2] [--rows 1,2,4,8,16]

- f32 `F.linear` (MKL; the weight transposed on the fly), f32 `x @ W^T` with `W^T` stored
  contiguous, f32 oneDNN with the weight prepacked;
- bf16 `F.linear` (oneDNN, the weight reordered on every call), bf16 oneDNN with the weight
  prepacked once (`mkldnn._reorder_linear_weight`);
- int8 weights, bf16 activations (`_weight_int8pack_mm`); int8 weights and dynamically quantised
  int8 activations (fbgemm's `quantized::linear_dynamic`).

Prints ms for the whole set of products per row count: the floor of a decode step in that form,
and what a block of that many tokens costs in products alone.
"""

import argparse
import time
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

warnings.filterwarnings("ignore")
SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)] * 30 + [(49152, 576)]


def timed(fns, rows, reps=5):
    xs = {k: torch.randn(rows, k) for k in (576, 1536)}
    for _ in range(2):
        for f, i in fns:
            f(xs[i])
    t0 = time.perf_counter()
    for _ in range(reps):
        for f, i in fns:
            f(xs[i])
    return (time.perf_counter() - t0) / reps * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", default="1,2,4,8,16")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = [int(r) for r in args.rows.split(",")]
    ws = [torch.randn(o, i) * 0.02 for o, i in SHAPES]
    weight_mb = sum(w.numel() for w in ws) / 1e6
    forms = []

    def add(name, bytes_per, make):
        fns = make()
        forms.append((name, weight_mb * bytes_per, [timed(fns, r) for r in rows]))
        print(f"measured {name}", flush=True)

    pw = lambda w, x: torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
    add("f32 F.linear", 4, lambda: [(lambda x, w=w: F.linear(x, w), w.size(1)) for w in ws])
    add("f32 x @ W^T stored", 4, lambda: [(lambda x, w=w.t().contiguous(): torch.mm(x, w), w.size(1)) for w in ws])
    add("f32 oneDNN prepacked", 4, lambda: [(lambda x, p=torch.ops.mkldnn._reorder_linear_weight(w, 1): pw(p, x), w.size(1)) for w in ws])
    wb = [w.bfloat16() for w in ws]
    add("bf16 F.linear", 2, lambda: [(lambda x, w=w: F.linear(x.bfloat16(), w), w.size(1)) for w in wb])
    add("bf16 oneDNN prepacked", 2, lambda: [(lambda x, p=torch.ops.mkldnn._reorder_linear_weight(w, 1): pw(p, x.bfloat16()), w.size(1)) for w in wb])

    def int8():
        out = []
        for w in ws:
            s = w.abs().amax(1) / 127
            q = torch.round(w / s[:, None]).clamp(-127, 127).to(torch.int8)
            out.append((lambda x, q=q, s=s.bfloat16(): torch._weight_int8pack_mm(x.bfloat16(), q, s), w.size(1)))
        return out
    add("int8 weights, bf16 activations", 1, int8)

    def dynamic():
        from torch.ao.quantization import per_channel_dynamic_qconfig
        out = []
        for w in ws:
            lin = nn.Linear(w.size(1), w.size(0), bias=False)
            lin.weight.data = w
            lin.qconfig = per_channel_dynamic_qconfig
            q = torch.ao.nn.quantized.dynamic.Linear.from_float(lin)
            out.append((lambda x, q=q: q(x), w.size(1)))
        return out
    add("int8 weights, dynamic int8 activations (fbgemm)", 1, dynamic)
    flags = open("/proc/cpuinfo").read().split()
    cpu = " ".join(f for f in ("avx512_bf16", "avx2") if f in flags)
    print(f"\nCPU flags: {cpu}; {args.threads} threads; {weight_mb:.0f} M weights; ms for all products of one step\n")
    print("| form | weight MB | " + " | ".join(f"{r} row{'s' if r > 1 else ''}" for r in rows) + " | GB/s at 1 row |")
    print("|---|---|" + "---|" * len(rows) + "---|")
    for name, mb, ms in forms:
        print(f"| {name} | {mb:.0f} | " + " | ".join(f"{t:.1f}" for t in ms) + f" | {mb / ms[0]:.1f} |")


if __name__ == "__main__":
    main()
