#!/usr/bin/env python3
"""Every matrix product of one SmolLM2-135M step (shapes as in scripts/matmul_forms.py, random
weights) in f32 through MKL (weights stored transposed) and through oneDNN packed for 1, 4 or 16
rows, and bf16 through oneDNN packed for 1 or 16 rows; 5 rounds alternating the forms, median ms:

    .venv/bin/python scripts/matmul_packings.py
"""
import time, torch, statistics, sys
torch.set_num_threads(2); torch.manual_seed(0)
D, I, L, V = 576, 1536, 30, 49152
shapes = [(960, D), (D, D), (2 * I, D), (D, I)] * L + [(V, D)]
Ws = [torch.randn(o, i) * 0.02 for o, i in shapes]
Wb = [w.bfloat16() for w in Ws]
rows = [1, 2, 4, 8, 16]
pw = lambda x, p: torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [], "")
forms = {}
Wt = [w.t().contiguous() for w in Ws]
forms["f32 mkl stored"] = lambda xs: [torch.mm(xs[w.shape[0]], w) for w in Wt]
for b in (1, 4, 16):
    P = [torch.ops.mkldnn._reorder_linear_weight(w, b) for w in Ws]
    forms[f"f32 dnn@{b}"] = (lambda P: lambda xs: [pw(xs[w.shape[1]], p) for p, w in zip(P, Ws)])(P)
for b in (1, 16):
    P = [torch.ops.mkldnn._reorder_linear_weight(w, b) for w in Wb]
    forms[f"bf16 dnn@{b}"] = (lambda P: lambda xs: [pw(xs[w.shape[1]], p) for p, w in zip(P, Wb)])(P)
res = {}
for rnd in range(5):
    for name, f in forms.items():
        for m in rows:
            dt = torch.bfloat16 if name.startswith("bf16") else torch.float32
            xs = {k: torch.randn(m, k, dtype=dt) for k in (576, 1536)}
            f(xs)
            ts = []
            for _ in range(3):
                t = time.perf_counter(); f(xs); ts.append(time.perf_counter() - t)
            res.setdefault((name, m), []).append(min(ts) * 1e3)
print("form | " + " | ".join(f"{m} rows" for m in rows))
for name in forms:
    print(name, "|", " | ".join(f"{statistics.median(res[(name, m)]):.1f}" for m in rows))
