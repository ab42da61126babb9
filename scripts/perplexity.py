#!/usr/bin/env python3
"""Perplexity of an export's weight forms on the same text: what a lower-precision form costs.

    .venv/bin/python scripts/perplexity.py models/smollm2 [--dtypes f32,bf16,int8]
        [--text FILE ...] [--tokens 8192] [--window 512]

Runs each form's cached TorchScript module (prepacked, as the crate runs it) over the text in
non-overlapping windows (one pass per window, an empty cache each time) and prints the mean
next-token negative log-likelihood and the perplexity, with the argmax agreement with the first
form listed. The default text is this repository's docs/guide.md and docs/training.md: prose the
model never saw.
"""

import argparse
import json
import math
import os
import warnings

import torch

warnings.filterwarnings("ignore")
KINDS = {"f32": torch.float32, "bf16": torch.bfloat16, "int8": torch.bfloat16, "f16": torch.float16}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("--dtypes", default="f32,bf16,int8")
    ap.add_argument("--text", nargs="+", default=["docs/guide.md", "docs/training.md"])
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--window", type=int, default=512)
    args = ap.parse_args()
    from tokenizers import Tokenizer

    meta = json.load(open(os.path.join(args.dir, "metadata.json")))
    tok = Tokenizer.from_file(os.path.join(args.dir, "tokenizer.json"))
    text = "\n\n".join(open(p).read() for p in args.text)
    ids = tok.encode(text, add_special_tokens=False).ids[: args.tokens]
    n = len(ids) // args.window * args.window
    windows = torch.tensor(ids[:n]).view(-1, args.window)
    L, KVH, Dh = meta["num_layers"], meta["num_kv_heads"], meta["head_dim"]
    print(f"{n} tokens of {', '.join(args.text)} in windows of {args.window}\n")
    print("| form | mean NLL (nats/token) | perplexity | argmax agreement with the first form |")
    print("|---|---|---|---|")
    first = None
    for name in [d.strip() for d in args.dtypes.split(",") if d.strip()]:
        files = meta["dtypes"][name]
        m = torch.jit.load(os.path.join(args.dir, files["cached"])).eval()
        if files.get("prepack"):
            m.prepack()
        kind = KINDS[name]
        nll, preds = 0.0, []
        with torch.no_grad():
            for w in windows:
                k = torch.zeros(L, 1, KVH, args.window, Dh, dtype=kind)
                v = torch.zeros_like(k)
                logits, _ = m(w[None], torch.arange(args.window)[None], torch.ones(1, args.window, dtype=torch.int64), k, v)
                lp = torch.log_softmax(logits[0, :-1].float(), dim=-1)
                nll -= lp.gather(1, w[1:, None]).sum().item()
                preds.append(logits[0, :-1].argmax(-1))
        count = windows.size(0) * (args.window - 1)
        preds = torch.cat(preds)
        agree = "-" if first is None else f"{(preds == first).float().mean().item():.3f}"
        first = preds if first is None else first
        print(f"| {name} | {nll / count:.4f} | {math.exp(nll / count):.3f} | {agree} |", flush=True)


if __name__ == "__main__":
    main()
