#!/usr/bin/env bash
# Lookahead decoding on SmolLM2 next to n-gram lookup: accepted tokens per call, ms per token and
# speedup, each run against greedy decoding in the same process (`decode --compare-greedy`).
#
#   bash scripts/lookahead_table.sh [DTYPE] [PROMPTS] [RUNS]
#   MODEL=embedded bash scripts/lookahead_table.sh f32 5 "$EMBEDDED_RUNS"
#
# DTYPE defaults to f32; PROMPTS to 8 (the first of examples/prompts/chat24.txt, open-ended
# requests in the chat template; the copy-heavy rows use examples/prompts/lookup.txt; the
# "verse" rows examples/prompts.txt, plain text for the embedded model); 64 new tokens each.
# MODEL defaults to models/smollm2. RUNS: "LABEL|PROMPTSET|K|DECODE ARGS" entries separated by
# ';' (default below: a sweep over the window W and n-gram size N, the tree form, the chain form
# with and without --adaptive, and n-gram). "ms per call" is model time per model call (the
# prompt's call included) against greedy's time per call in the same run: what the wider call
# costs on this CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
dtype=${1:-f32}
n=${2:-8}
runs=${3:-"chat|chat|5|--proposer lookahead:4:3:4 --tree dynamic:16;\
chat|chat|5|--proposer lookahead:4:2:4 --tree dynamic:16;\
chat|chat|5|--proposer lookahead:4:4:4 --tree dynamic:16;\
chat|chat|5|--proposer lookahead:2:3:4 --tree dynamic:16;\
chat|chat|8|--proposer lookahead:7:3:4 --tree dynamic:24;\
chat|chat|5|--proposer lookahead:4:3:4;\
chat|chat|5|--proposer lookahead:4:2:4;\
chat|chat|5|--proposer lookahead:4:2:4 --adaptive;\
chat|chat|5|--proposer ngram;\
chat|chat|5|--proposer ngram --adaptive;\
copy|copy|5|--proposer lookahead:4:3:4 --tree dynamic:16;\
copy|copy|5|--proposer lookahead:4:3:4;\
copy|copy|5|--proposer lookahead:4:3:4 --adaptive;\
copy|copy|5|--proposer ngram"}
model=${MODEL:-models/smollm2}
bin=target/release/examples/decode
py=.venv/bin/python
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
head -n "$n" examples/prompts/chat24.txt > "$work/chat.txt"
cp examples/prompts/lookup.txt "$work/copy.txt"
head -n "$n" examples/prompts.txt > "$work/verse.txt"
i=0
IFS=';' read -ra entries <<< "$runs"
for e in "${entries[@]}"; do
  IFS='|' read -r label set k args <<< "$e"
  chat=--chat
  [ "$set" = chat ] || chat=
  # shellcheck disable=SC2086
  "$bin" --model "$model" --backend torchscript --dtype "$dtype" $chat --prompt-file "$work/$set.txt" \
    --max-new-tokens 64 --k "$k" $args --compare-greedy --json > "$work/$i.jsonl"
  printf '%s|%s|%s\n' "$label" "$k" "$args" > "$work/$i.label"
  i=$((i + 1))
done
"$py" - "$work" "$dtype" "$i" "$model" <<'PY'
import json, sys
work, dtype, count, model = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
cpu = open("/proc/cpuinfo").read()
flags = " ".join(f for f in ("avx2", "avx512_bf16") if f" {f}" in cpu)
print(f"{model}, {dtype}, 64 new tokens per prompt; CPU flags: {flags}")
print()
print("| prompts | k | decode arguments | identical | accepted per call | ms per call (this / greedy) | ms/token (this / greedy) | speedup |")
print("|---|---:|---|:--:|---:|---:|---:|---:|")
for i in range(count):
    label, k, args = open(f"{work}/{i}.label").read().strip().split("|")
    rs = [json.loads(l) for l in open(f"{work}/{i}.jsonl")]
    tokens = sum(len(r["tokens"]) for r in rs)
    iters = sum(r["stats"]["iterations"] for r in rs)
    wall = sum(r["stats"]["wall_s"] for r in rs)
    gwall = sum(r["greedy"]["wall_s"] for r in rs)
    same = sum(bool(r["identical"]) for r in rs)
    call = sum(r["stats"]["model_s"] for r in rs) / sum(r["stats"]["model_calls"] for r in rs)
    gcall = gwall / sum(r["greedy"]["model_calls"] for r in rs)
    print(f"| {label} ({len(rs)}) | {k} | `{args}` | {same}/{len(rs)} | {tokens / iters:.2f} | "
          f"{1e3 * call:.1f} / {1e3 * gcall:.1f} | "
          f"{1e3 * wall / tokens:.1f} / {1e3 * gwall / tokens:.1f} | {gwall / wall:.2f}x |")
PY
