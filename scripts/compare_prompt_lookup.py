#!/usr/bin/env python3
"""N-gram proposals (prompt lookup) of this crate next to transformers' prompt lookup decoding
(`generate(prompt_lookup_num_tokens=...)`), each against its own greedy decoding, on the same
exported weights (`--model-dir`, SmolLM2 by default), prompts, chat template and dtype, measured in one run (sequentially).

    make build && .venv/bin/python scripts/compare_prompt_lookup.py \\
        [--prompts examples/prompts/lookup.txt] [--dtypes bf16,f32] [--max-new-tokens 64] \\
        [--repeats 3] [--k 8] [--lookup-tokens 10]

For every prompt and dtype it times (median of --repeats runs; every run is a whole decode, prompt
pass included): transformers greedy, transformers prompt lookup, the crate's greedy decoder, the
crate's n-gram proposer at a fixed block size, and the same with `--adaptive`. Prints a markdown
table of speedups over greedy and whether each output equals its greedy output.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_reference import load_reference  # noqa: E402

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}
DECODE = "target/release/examples/decode"


def hf_runs(model, tok, prompts, args):
    """Per prompt: (greedy tokens, greedy seconds, lookup tokens, lookup seconds), medians."""
    eos = tok.eos_token_id
    rows = []
    for p in prompts:
        text = p if args.plain else tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        ids = tok(text, return_tensors="pt", add_special_tokens=args.plain).input_ids
        common = dict(attention_mask=torch.ones_like(ids), max_new_tokens=args.max_new_tokens,
                      do_sample=False, num_beams=1, pad_token_id=eos, eos_token_id=args.eos_ids)
        result = {}
        for name, extra in (("greedy", {}), ("lookup", {"prompt_lookup_num_tokens": args.lookup_tokens})):
            times = []
            for _ in range(args.repeats):
                with torch.no_grad():
                    t0 = time.perf_counter()
                    out = model.generate(ids, **common, **extra)
                    times.append(time.perf_counter() - t0)
            result[name] = (out[0, ids.size(1):].tolist(), statistics.median(times))
        rows.append(result)
    return rows


def crate_runs(dtype, prompts, args, extra):
    """Per prompt: the `decode` example's JSON (blockwise next to greedy), medians of wall times."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
        # The first prompt once more, first, as a warm-up whose row is dropped.
        f.write("\n".join(x.replace("\n", "\\n") for x in [prompts[0]] + prompts * args.repeats) + "\n")
        f.flush()
        cmd = [DECODE, "--model", args.model_dir, "--backend", "torchscript", "--dtype", dtype] + ([] if args.plain else ["--chat"]) + ["--json",
               "--compare-greedy", "--max-new-tokens", str(args.max_new_tokens), "--prompt-file", f.name] + extra
        lines = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()
    rows = [json.loads(l) for l in lines][1:]
    out = []
    for i in range(len(prompts)):
        reps = rows[i :: len(prompts)]
        r = reps[0]
        r["greedy"]["wall_s"] = statistics.median(x["greedy"]["wall_s"] for x in reps)
        r["stats"]["wall_s"] = statistics.median(x["stats"]["wall_s"] for x in reps)
        out.append(r)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", default="models/smollm2")
    ap.add_argument("--plain", action="store_true", help="plain prompts (for pretrained models), "
                    "not wrapped in the chat template")
    ap.add_argument("--prompts", default="examples/prompts/lookup.txt")
    ap.add_argument("--dtypes", default="bf16,f32")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--k", type=int, default=8, help="the crate's block size")
    ap.add_argument("--lookup-tokens", type=int, default=10, help="transformers' prompt_lookup_num_tokens")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count())
    prompts = [l.strip().replace("\\n", "\n") for l in open(args.prompts) if l.strip()]
    tok, base, meta = load_reference(args.model_dir)
    args.eos_ids = meta["eos_token_ids"]
    print(f"{args.max_new_tokens} new tokens, {'plain prompts' if args.plain else 'chat template'}, median of {args.repeats} runs; "
          f"transformers prompt_lookup_num_tokens={args.lookup_tokens}; crate ngram:1:3 at k={args.k}; "
          f"{torch.get_num_threads()} threads\n")
    print("| dtype | prompt | transformers greedy ms/token | transformers lookup: speedup | same | crate greedy ms/token | crate ngram: speedup | mean accepted | same | crate ngram --adaptive: speedup | mean accepted | same |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for d in [x.strip() for x in args.dtypes.split(",") if x.strip()]:
        model = base.to(DTYPES[d])
        with torch.no_grad():
            warm = tok("Hello", return_tensors="pt").input_ids
            model.generate(warm, max_new_tokens=4, do_sample=False, pad_token_id=tok.eos_token_id)
        hf = hf_runs(model, tok, prompts, args)
        ngram = crate_runs(d, prompts, args, ["--proposer", "ngram", "--k", str(args.k)])
        adaptive = crate_runs(d, prompts, args, ["--proposer", "ngram", "--k", str(args.k), "--adaptive"])
        for p, h, a, b in zip(prompts, hf, ngram, adaptive):
            label = p.split("\n")[0][:48]
            hf_speed = h["greedy"][1] / h["lookup"][1]
            hf_same = "yes" if h["greedy"][0] == h["lookup"][0] else "no"

            def cells(r):
                speed = r["greedy"]["wall_s"] / r["stats"]["wall_s"]
                return f"{speed:.2f}x | {r['stats']['mean_accepted']:.2f} | {'yes' if r['identical'] else 'no'}"

            hf_ms = h["greedy"][1] / max(len(h["greedy"][0]), 1) * 1e3
            crate_ms = a["greedy"]["wall_s"] / max(len(a["greedy"]["tokens"]), 1) * 1e3
            print(f"| {d} | {label} | {hf_ms:.1f} | {hf_speed:.2f}x | {hf_same} | {crate_ms:.1f} | {cells(a)} | {cells(b)} |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
