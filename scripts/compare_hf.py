#!/usr/bin/env python3
"""Greedy decoding speed of this crate next to transformers' `generate`, on the same exported
weights, prompts and dtype, measured in one run (sequentially, never in parallel).

    .venv/bin/python scripts/compare_hf.py [--model-dir models/smollm2] [--prompts FILE]
        [--max-new-tokens N] [--dtypes f32,bf16]

transformers loads the GGUF the export names in its metadata.json, with the export's chat
template and EOS ids.

Prints a markdown table: ms per generated token (wall time of the whole decode, prompt pass
included, divided by the new tokens), and whether the two produced the same tokens.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_reference import load_reference  # noqa: E402

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", default="models/smollm2")
    ap.add_argument("--plain", action="store_true", help="plain prompts (for pretrained models), "
                    "not wrapped in the chat template")
    ap.add_argument("--prompts", default="examples/prompts/chat24.txt")
    ap.add_argument("--count", type=int, default=5, help="first N prompts")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--dtypes", default="f32,bf16")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count())
    prompts = [l.strip() for l in open(args.prompts) if l.strip()][: args.count]
    tok, base, meta = load_reference(args.model_dir)
    eos_ids = meta["eos_token_ids"]
    eos = tok.eos_token_id
    print("| dtype | prompts | new tokens | transformers generate (ms/token) | blockwise GreedyDecoder (ms/token) | crate / transformers | same tokens |")
    print("|---|---|---|---|---|---|---|")
    for d in [x.strip() for x in args.dtypes.split(",") if x.strip()]:
        model = base.to(DTYPES[d])
        hf_tokens, hf_time, hf_out = 0, 0.0, []
        for p in prompts:
            text = p if args.plain else tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            ids = tok(text, return_tensors="pt", add_special_tokens=args.plain).input_ids
            with torch.no_grad():
                model.generate(ids[:, :4], max_new_tokens=2, do_sample=False, pad_token_id=eos)  # warm-up
                t0 = time.perf_counter()
                out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.max_new_tokens,
                                     do_sample=False, num_beams=1, pad_token_id=eos, eos_token_id=eos_ids)
                hf_time += time.perf_counter() - t0
            new = out[0, ids.size(1):].tolist()
            hf_tokens += len(new)
            hf_out.append(new)
        cmd = ["target/release/examples/decode", "--model", args.model_dir, "--backend", "torchscript", "--dtype", d] + ([] if args.plain else ["--chat"]) + [
               "--proposer", "none", "--k", "1", "--max-new-tokens", str(args.max_new_tokens),
               "--compare-greedy", "--json", "--prompt-file"]
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
            f.write("\n".join(prompts) + "\n")
            f.flush()
            lines = subprocess.run(cmd + [f.name], check=True, capture_output=True, text=True).stdout.splitlines()
        rows = [json.loads(l) for l in lines][: len(prompts)]
        crate_tokens = sum(len(r["greedy"]["tokens"]) for r in rows)
        crate_time = sum(r["greedy"]["wall_s"] for r in rows)
        same = sum(r["greedy"]["tokens"] == h for r, h in zip(rows, hf_out))
        hf_ms = hf_time / hf_tokens * 1e3
        crate_ms = crate_time / crate_tokens * 1e3
        print(f"| {d} | {len(prompts)} | {crate_tokens} | {hf_ms:.1f} | {crate_ms:.1f} | {crate_ms / hf_ms:.2f} | {same}/{len(prompts)} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
