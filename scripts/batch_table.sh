#!/usr/bin/env bash
# Tokens per second against batch size, greedy and blockwise, through `decode --batch N`.
#
#   bash scripts/batch_table.sh [MODEL] [DTYPE] [PROMPTS] [SIZES]
#
# MODEL defaults to models/smollm2 (chat prompts from examples/prompts/chat24.txt in its chat
# template, shipped heads, k = 5); DTYPE to bf16; PROMPTS to 16; SIZES to "1 4 16". Every
# configuration decodes the same prompts, 64 new tokens each; "greedy" is batched greedy decoding
# (k = 1, no proposals), "blockwise" the heads at k = 5. Output is compared token for token with
# the plain GreedyDecoder's, run first. tokens/s = all new tokens over the summed wall time of
# the batches (prompt passes included).
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-models/smollm2}
dtype=${2:-bf16}
n=${3:-16}
sizes=${4:-1 4 16}
bin=target/release/examples/decode
py=.venv/bin/python
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
head -n "$n" examples/prompts/chat24.txt > "$work/prompts.txt"
common=(--model "$model" --backend torchscript --dtype "$dtype" --chat --prompt-file "$work/prompts.txt" --max-new-tokens 64 --json)
"$bin" "${common[@]}" --proposer none --k 1 --compare-greedy > "$work/reference.jsonl"
for b in $sizes; do
  "$bin" "${common[@]}" --proposer none --k 1 --batch "$b" > "$work/greedy-$b.jsonl"
  "$bin" "${common[@]}" --proposer heads --k 5 --batch "$b" > "$work/blockwise-$b.jsonl"
done
"$py" - "$work" "$dtype" "$sizes" <<'PY'
import json, sys
work, dtype, sizes = sys.argv[1], sys.argv[2], [int(s) for s in sys.argv[3].split()]
def rows(name):
    with open(f"{work}/{name}.jsonl") as f:
        return [json.loads(l) for l in f]
ref = rows("reference")
truth = [r["greedy"]["tokens"] for r in ref]
plain_tokens = sum(len(t) for t in truth)
plain_s = sum(r["greedy"]["wall_s"] for r in ref)
plain = plain_tokens / plain_s
print(f"{len(ref)} chat prompts, 64 new tokens each, {dtype}; plain GreedyDecoder: {plain:.1f} tokens/s")
print()
print("| dtype | batch | decoder | new tokens | batched model calls | mean accepted | tokens/s | vs plain greedy | identical |")
print("|---|---|---|---|---|---|---|---|---|")
for b in sizes:
    for name in ("greedy", "blockwise"):
        rs = rows(f"{name}-{b}")
        groups = [rs[i:i + b] for i in range(0, len(rs), b)]
        wall = sum(g[0]["stats"]["wall_s"] for g in groups)
        calls = sum(max(r["stats"]["model_calls"] for r in g) for g in groups)
        tokens = sum(len(r["tokens"]) for r in rs)
        iters = sum(r["stats"]["iterations"] for r in rs)
        same = sum(r["tokens"] == t for r, t in zip(rs, truth))
        label = "greedy (k = 1)" if name == "greedy" else "blockwise, heads, k = 5"
        print(f"| {dtype} | {b} | {label} | {tokens} | {calls} | {tokens / iters:.2f} | "
              f"{tokens / wall:.1f} | {tokens / wall / plain:.2f}x | {same}/{len(rs)} |")
PY
