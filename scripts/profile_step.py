#!/usr/bin/env python3
"""Where one decode step of an exported module spends its time.

Loads a cached TorchScript export (scripts/export_hf.py), fills the cache with PAST positions,
then times one-token calls and profiles them with libtorch's profiler (per operator, self CPU
time), and sets the weight bytes one step must read against the time and against the memory
bandwidth a plain copy reaches on this machine.

Usage: .venv/bin/python scripts/profile_step.py DIR [--dtype f32|bf16|int8] [--past 128]
       [--steps 20] [--threads 2] [--top 15] [--f32-matmul auto|blas|onednn] [--json OUT]

`--f32-matmul` packs an f32 export as the crate would (`LoadOptions::f32_matmul`): `auto` is
oneDNN (`prepack_onednn()`) on AMD CPUs when the export offers it, MKL (`prepack()`) elsewhere.
"""

import argparse
import json
import os
import statistics
import sys
import time
import warnings

import torch

warnings.filterwarnings("ignore")


def copy_bandwidth(threads, mb=256, reps=10):
    """GB/s of a plain tensor copy (bytes read + bytes written), best of `reps`."""
    torch.set_num_threads(threads)
    a = torch.empty(mb * 2**20 // 4, dtype=torch.float32).fill_(1.0)
    b = torch.empty_like(a)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        b.copy_(a)
        best = min(best, time.perf_counter() - t0)
    return 2 * a.numel() * 4 / best / 1e9


def read_bandwidth(threads, mb=256, reps=10):
    """GB/s of a sum over a large tensor (bytes read), best of `reps`."""
    torch.set_num_threads(threads)
    a = torch.ones(mb * 2**20 // 4, dtype=torch.float32)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a.sum()
        best = min(best, time.perf_counter() - t0)
    return a.numel() * 4 / best / 1e9


def weight_bytes(module):
    """Bytes of the weights one step reads: every tensor attribute of every submodule (parameters,
    and the plain tensors scripted modules keep), each storage once, except the token embedding
    table, which a step reads one row of (unless it is also the LM head)."""
    seen, total = set(), 0
    for name, sub in module.named_modules():
        if name.split(".")[-1] == "embed":
            continue
        for attr in ("weight", "wt", "w", "q", "scale", "bias"):
            t = getattr(sub, attr, None)
            if isinstance(t, torch.Tensor) and t.layout == torch.strided and t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("--dtype", default="f32")
    ap.add_argument("--past", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--graph-optimizer", action="store_true",
                    help="leave libtorch's graph-executor optimiser on (the crate turns it off)")
    ap.add_argument("--f32-matmul", choices=["auto", "blas", "onednn"], default="auto")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    # As the crate's adapter runs modules (LoadOptions::graph_optimizer, default off).
    torch._C._set_graph_executor_optimize(args.graph_optimizer)
    meta = json.load(open(os.path.join(args.dir, "metadata.json")))
    files = meta["dtypes"].get(args.dtype)
    if files is None:
        sys.exit(f"profile_step: {args.dtype} was not exported to {args.dir}; have {', '.join(meta['dtypes'])}")
    path = os.path.join(args.dir, files["cached"])
    m = torch.jit.load(path).eval()
    wb = weight_bytes(m)  # before prepack(): packed weights are opaque
    amd = "AuthenticAMD" in open("/proc/cpuinfo").read()
    onednn = args.dtype == "f32" and files.get("onednn", False) and (
        args.f32_matmul == "onednn" or (args.f32_matmul == "auto" and amd))
    if args.f32_matmul == "onednn" and not onednn:
        sys.exit("profile_step: --f32-matmul onednn needs an f32 export with \"onednn\": true")
    if files.get("prepack"):
        # As the crate does after loading.
        m.prepack_onednn() if onednn else m.prepack()
    print(f"packing: {'prepack_onednn()' if onednn else 'prepack()'}")
    kinds = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
    cache_kind = kinds[files.get("compute", args.dtype)]
    L, KVH, Dh = meta["num_layers"], meta["num_kv_heads"], meta["head_dim"]
    ctx = args.past + args.steps + 8
    k = torch.zeros(L, 1, KVH, ctx, Dh, dtype=cache_kind)
    v = torch.zeros_like(k)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        ids = torch.randint(0, meta["vocab_size"], (1, args.past), generator=gen)
        t0 = time.perf_counter()
        m(ids, torch.arange(args.past)[None], torch.ones(1, args.past, dtype=torch.int64), k, v)
        first = [time.perf_counter() - t0]

        def step(p):
            tok = torch.randint(0, meta["vocab_size"], (1, 1), generator=gen)
            m(tok, torch.tensor([[p]]), torch.ones(1, p + 1, dtype=torch.int64), k, v)

        for i in range(3):  # warm-up
            t0 = time.perf_counter()
            step(args.past)
            first.append(time.perf_counter() - t0)
        times = []
        for i in range(args.steps):
            t0 = time.perf_counter()
            step(args.past)
            times.append(time.perf_counter() - t0)
        ms = statistics.median(times) * 1e3
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for i in range(args.steps):
                step(args.past)
    events = prof.key_averages()
    total_self = sum(e.self_cpu_time_total for e in events)
    rows = sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.top]
    bw_copy = copy_bandwidth(args.threads)
    bw_read = read_bandwidth(args.threads)
    torch.set_num_threads(args.threads)
    flags = open("/proc/cpuinfo").read()
    cpu = " ".join(f for f in ("avx512_bf16", "avx512f", "avx2") if f in flags.split())
    print(f"{path}: {args.dtype}, past {args.past}, {args.threads} threads, CPU flags: {cpu}")
    print(f"one-token step: {ms:.2f} ms (median of {args.steps}); graph optimiser "
          f"{'on' if args.graph_optimizer else 'off'}; first calls after loading (prompt of {args.past}, "
          f"then 3 steps): {', '.join(f'{t * 1e3:.0f}' for t in first)} ms")
    print(f"weights read per step: {wb / 1e6:.1f} MB -> {wb / (ms / 1e3) / 1e9:.1f} GB/s")
    print(f"machine: copy {bw_copy:.1f} GB/s (read+write), sum {bw_read:.1f} GB/s (read), {args.threads} threads")
    print(f"\n{'operator':<36} {'self ms/step':>12} {'share':>7} {'calls/step':>10}")
    table = []
    for e in rows:
        per = e.self_cpu_time_total / 1e3 / args.steps
        share = e.self_cpu_time_total / total_self
        calls = e.count / args.steps
        table.append({"op": e.key, "self_ms_per_step": per, "share": share, "calls_per_step": calls})
        print(f"{e.key:<36} {per:>12.2f} {share:>7.1%} {calls:>10.0f}")
    ops_per_step = sum(e.count for e in events) / args.steps
    print(f"\noperators per step: {ops_per_step:.0f}; profiled self time per step {total_self / 1e3 / args.steps:.2f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"path": path, "dtype": args.dtype, "past": args.past, "threads": args.threads,
                       "cpu": cpu, "step_ms": ms, "weight_bytes": wb, "copy_gbs": bw_copy,
                       "read_gbs": bw_read, "first_calls_ms": [t * 1e3 for t in first],
                       "graph_optimizer": args.graph_optimizer, "ops": table, "ops_per_step": ops_per_step}, f, indent=1)


if __name__ == "__main__":
    main()
