#!/usr/bin/env python3
"""The matrix products of one feature-draft step, by library: MKL (`F.linear` on plain weights,
what the draft used before), oneDNN through `mkldnn_linear` on weights converted once (what the
crate's `OneDnnLinear` calls), oneDNN with weights reordered for 16 rows (`torch.ops.mkldnn`,
what f32 exports use), bf16, and int8 through FBGEMM (`torch.fbgemm_linear_int8_weight_fp32_activation`
on weights quantised and packed once: what the crate's `Int8Linear` calls, csrc/int8_linear.cpp).

    .venv/bin/python scripts/draft_products.py [assets/drafts/smollm2] [--shortlist 8192]

The draft's own weights (draft.safetensors) and a random shortlist projection of its size; 1 and
4 rows (a chain step, a tree level of 4 nodes). "cold": a 600 MB buffer is written between calls,
as a base model call evicts the draft's weights between draft steps; "hot": back to back.
"""

import argparse
import os
import time
import warnings

import torch
from safetensors.torch import load_file

NAMES = ["fuse", "qkv", "proj", "fc1", "fc2"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", nargs="?", default="assets/drafts/smollm2")
    ap.add_argument("--shortlist", type=int, default=8192)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")  # ATen marks the fbgemm_* functions deprecated
    torch.set_grad_enabled(False)
    torch.set_num_threads(2)
    w = {k: v.float() for k, v in load_file(os.path.join(args.dir, "draft.safetensors")).items()}
    d = w["fuse.weight"].shape[0]
    shortlist = torch.randn(args.shortlist, d)
    big = torch.randn(150_000_000)

    def bench(f, n, cold):
        f()
        total = 0.0
        for _ in range(n):
            if cold:
                big.add_(1.0)
            t = time.perf_counter()
            f()
            total += time.perf_counter() - t
        return total / n * 1e3

    for rows in (1, 4):
        plain = [(torch.randn(1, rows, w[n + ".weight"].shape[1]), w[n + ".weight"], w[n + ".bias"])
                 for n in NAMES] + [(torch.randn(1, rows, d), shortlist, None)]
        packed = [(x, torch.ops.mkldnn._reorder_linear_weight(W, 16), b) for x, W, b in plain]
        converted = [(x, W.to_mkldnn(), b) for x, W, b in plain]
        bf16 = [(x.bfloat16(), W.bfloat16(), None if b is None else b.bfloat16())
                for x, W, b in plain]
        int8 = []
        for x, W, b in plain:
            q, offsets, scale, zero = torch.fbgemm_linear_quantize_weight(W)
            bias = torch.zeros(W.shape[0]) if b is None else b
            int8.append((x, q, torch.fbgemm_pack_quantized_matrix(q), offsets, scale, zero, bias))
        forms = {
            "MKL": lambda: [torch.nn.functional.linear(x, W, b) for x, W, b in plain],
            "oneDNN mkldnn_linear": lambda: [
                torch._C._nn.mkldnn_linear(x.to_mkldnn(), W, b).to_dense() for x, W, b in converted],
            "oneDNN reordered": lambda: [torch.ops.mkldnn._linear_pointwise(x, P, b, "none", [], "")
                                      for x, P, b in packed],
            "bf16": lambda: [torch.nn.functional.linear(x, W, b) for x, W, b in bf16],
            "int8 FBGEMM": lambda: [torch.fbgemm_linear_int8_weight_fp32_activation(*a) for a in int8],
        }
        for cold in (True, False):
            cells = ", ".join(f"{k} {bench(f, 30 if cold else 200, cold):.2f}" for k, f in forms.items())
            print(f"{rows} row(s), {'cold' if cold else 'hot '}: {cells} ms")


if __name__ == "__main__":
    main()
