#!/usr/bin/env bash
# Runs the `decode` example with --json --compare-greedy over the example prompts and checks, for
# each block size and acceptance setting, that every prompt reports identical output and (on the
# heads path) model_calls + skipped_calls == iterations + 1 (a last block of just the token the
# previous call chose costs no call).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/examples/decode
py=.venv/bin/python
fail=0
for k in 1 2 4 8 10; do
  for verifier in cached recompute; do
    out=$("$bin" --prompt-file examples/prompts.txt --k "$k" --verifier "$verifier" \
      --max-new-tokens 40 --compare-greedy --json)
    if ! printf '%s\n' "$out" | "$py" -c '
import json, sys
k = int(sys.argv[1]); bad = 0; n = 0
for line in sys.stdin:
    r = json.loads(line); n += 1; s = r["stats"]
    if not r["identical"]:
        print("not identical:", r["prompt"]); bad += 1
    if s["model_calls"] + s["skipped_calls"] != s["iterations"] + 1:
        print("model_calls + skipped_calls != iterations + 1:", r["prompt"], s); bad += 1
    if sum(i * c for i, c in enumerate(s["accepted_hist"])) != len(r["tokens"]):
        print("accepted lengths do not sum to the output:", r["prompt"]); bad += 1
    if max(i for i, c in enumerate(s["accepted_hist"]) if c) > k:
        print("accepted more than k:", r["prompt"]); bad += 1
if n == 0:
    print("no output"); bad += 1
sys.exit(1 if bad else 0)
' "$k"; then
      echo "check-decode: FAILED for k=$k verifier=$verifier" >&2
      fail=1
    fi
  done
done
# The real model, when exported (make test exports it first): identical to greedy with n-gram
# proposals and a draft model, in float32, with and without the chat template.
# `identical LABEL ARGS...`: runs `decode ARGS --compare-greedy --json` and fails the check
# unless every prompt's output is identical to greedy decoding's.
identical() {
  local label=$1; shift
  local out
  out=$("$bin" "$@" --compare-greedy --json)
  if ! printf '%s\n' "$out" | "$py" -c '
import json, sys
rows = [json.loads(l) for l in sys.stdin]
bad = [r["prompt"] for r in rows if not r["identical"]]
print("not identical:", bad) if bad else None
sys.exit(1 if bad or not rows else 0)
'; then
    echo "check-decode: FAILED: $label" >&2
    fail=1
  fi
}
smollm2_identical() {
  local label=$1; shift
  identical "models/smollm2, $label" --model models/smollm2 "$@" --max-new-tokens 24 \
    --prompt "Repeat after me: one two three four five." --prompt "The capital of France is"
}
# The second real model (make gemma3): sliding-window layers, query/key norms, its own chat
# turn format; chat answers end at <end_of_turn>.
if [ -f models/gemma3/metadata.json ]; then
  identical "models/gemma3, ngram, chat" --model models/gemma3 --chat --proposer ngram --k 5 \
    --max-new-tokens 24 --prompt "Repeat after me: one two three four five." \
    --prompt "What is the capital of France?"
  identical "models/gemma3, ngram" --model models/gemma3 --proposer ngram --k 3 \
    --max-new-tokens 24 --prompt "The capital of France is"
fi
# Two trained built-in models sharing the byte tokenizer (make train-pair): the small one drafts
# for the large one.
if [ -f assets/pair/target/config.json ]; then
  for spec in "--k 4" "--k 6 --adaptive"; do
    identical "pair, draft $spec" --model assets/pair/target --proposer draft:assets/pair/draft \
      $spec --prompt-file examples/prompts/kjv.txt --max-new-tokens 48
  done
  identical "pair, chain of ngram and draft" --model assets/pair/target \
    --proposer chain:ngram,draft:assets/pair/draft --k 4 --prompt-file examples/prompts/kjv.txt \
    --max-new-tokens 48
fi
if [ -f models/smollm2/metadata.json ]; then
  smollm2_identical "ngram" --proposer ngram --k 5
  smollm2_identical "ngram, chat" --chat --proposer ngram --k 5
  smollm2_identical "ngram, chat, --adaptive" --chat --proposer ngram --k 8 --adaptive
  smollm2_identical "lookahead:4:2:4, chat, --tree dynamic:16" --chat --proposer lookahead:4:2:4 --k 5 \
    --tree dynamic:16
  # A layer-truncated draft (make smollm2-draft), alone and behind n-gram lookup in a chain,
  # with the cost-aware policy: still identical to greedy.
  if [ -f models/smollm2-draft/metadata.json ]; then
    smollm2_identical "draft" --chat --proposer draft:models/smollm2-draft --k 3
    smollm2_identical "chain of ngram and draft, --adaptive" --chat \
      --proposer chain:ngram,draft:models/smollm2-draft --k 4 --adaptive
    # A draft of another vocabulary is refused cleanly.
    set +e
    "$bin" --model models/smollm2 --proposer draft:embedded --k 3 --max-new-tokens 2 >/dev/null 2>&1
    rc=$?
    set -e
    [ "$rc" = 2 ] || { echo "check-decode: draft:embedded on SmolLM2 exited $rc, expected 2" >&2; fail=1; }
    # SmolLM2's shipped heads are not attached to its layer-truncated export (other hidden states).
    set +e
    "$bin" --model models/smollm2-draft --proposer heads --k 3 --max-new-tokens 2 >/dev/null 2>&1
    rc=$?
    set -e
    [ "$rc" = 2 ] || { echo "check-decode: heads on the truncated draft exited $rc, expected 2" >&2; fail=1; }
  fi
  # The shipped heads (assets/heads/smollm2) attach by default: identical to greedy in f32.
  smollm2_identical "heads (shipped)" --chat --proposer heads --k 5
  # The application examples run, and classification answers the same under every decoder
  # (classify exits non-zero otherwise).
  if ! target/release/examples/classify --limit 4 >/dev/null; then
    echo "check-decode: FAILED: classify --limit 4" >&2; fail=1
  fi
  if ! target/release/examples/generate --max-new-tokens 16 >/dev/null; then
    echo "check-decode: FAILED: generate --max-new-tokens 16" >&2; fail=1
  fi
  # Without heads, the heads proposer is a clear error.
  set +e
  "$bin" --model models/smollm2 --heads none --proposer heads --k 4 --max-new-tokens 2 >/dev/null 2>&1
  rc=$?
  set -e
  [ "$rc" = 2 ] || { echo "check-decode: heads on SmolLM2 exited $rc, expected 2" >&2; fail=1; }
fi
# Sampling. Without proposals, blockwise sampling draws exactly as plain sampling does (one
# uniform per token from the same seeded stream), so the outputs are identical.
identical "sampling, no proposals" --proposer none --k 4 --temperature 0.8 --top-p 0.95 --seed 7 \
  --prompt-file examples/prompts.txt --max-new-tokens 40
# `reproducible LABEL ARGS...`: two runs with the same --seed give the same tokens.
reproducible() {
  local label=$1; shift
  local a b
  a=$("$bin" "$@" --json | "$py" -c 'import json, sys; print([json.loads(l)["tokens"] for l in sys.stdin])')
  b=$("$bin" "$@" --json | "$py" -c 'import json, sys; print([json.loads(l)["tokens"] for l in sys.stdin])')
  if [ "$a" != "$b" ] || [ "$a" = "[]" ]; then
    echo "check-decode: FAILED: $label is not reproducible with a seed" >&2
    fail=1
  fi
}
reproducible "embedded, heads, lossless" --k 8 --temperature 0.8 --seed 7 \
  --prompt-file examples/prompts.txt --max-new-tokens 40
reproducible "embedded, heads, typical" --k 8 --temperature 1.0 --accept typical --seed 7 \
  --prompt-file examples/prompts.txt --max-new-tokens 40
if [ -f models/smollm2/metadata.json ]; then
  reproducible "SmolLM2, shipped heads, lossless" --model models/smollm2 --chat --proposer heads \
    --k 5 --temperature 0.7 --top-p 0.9 --seed 1 --max-new-tokens 16 \
    --prompt "Name three colours of the rainbow."
fi
# Batched rows and candidate trees: every row identical to that prompt decoded greedily alone.
identical "embedded, heads, --batch 3" --prompt-file examples/prompts.txt --k 8 --batch 3 \
  --max-new-tokens 40
identical "embedded, ngram, --batch 2" --prompt-file examples/prompts.txt --proposer ngram --k 4 \
  --batch 2 --max-new-tokens 40
identical "embedded, --tree 3,2,2,1,1,1,1 --batch 2" --prompt-file examples/prompts.txt --k 8 \
  --tree 3,2,2,1,1,1,1 --batch 2 --max-new-tokens 40
# Lookahead decoding: the chain form, with --adaptive, the one-call tree form, batched rows, and
# first in a chain with n-gram lookup.
identical "embedded, lookahead" --prompt-file examples/prompts.txt --proposer lookahead --k 5 \
  --max-new-tokens 40
identical "embedded, lookahead:4:2:4, --adaptive" --prompt-file examples/prompts.txt \
  --proposer lookahead:4:2:4 --k 5 --adaptive --max-new-tokens 40
identical "embedded, lookahead, --tree dynamic:16 --batch 2" --prompt-file examples/prompts.txt \
  --proposer lookahead --k 5 --tree dynamic:16 --batch 2 --max-new-tokens 40
identical "embedded, chain of lookahead and ngram" --prompt-file examples/prompts.txt \
  --proposer chain:lookahead,ngram --k 5 --max-new-tokens 40
if [ -f models/smollm2/metadata.json ]; then
  smollm2_identical "heads, --batch 2" --chat --proposer heads --k 5 --batch 2
  smollm2_identical "heads, --tree 3,2,2,1" --chat --k 5 --tree 3,2,2,1
  # The shipped feature-level draft (assets/drafts/smollm2): chains, a dynamic tree, batched
  # rows, and behind n-gram lookup in a chain; identical to greedy in f32.
  smollm2_identical "eagle, k 6" --chat --proposer eagle --k 6
  smollm2_identical "eagle, float32 draft, k 5" --chat --proposer eagle --draft-weights f32 --k 5
  smollm2_identical "eagle, --tree dynamic:12" --chat --proposer eagle --k 6 --tree dynamic:12
  smollm2_identical "eagle, --batch 2" --chat --proposer eagle --k 5 --batch 2
  smollm2_identical "eagle, --draft-confidence 0.2, k 8" --chat --proposer eagle --k 8 --draft-confidence 0.2
  smollm2_identical "eagle~0.1, --tree dynamic:12" --chat --proposer eagle~0.1 --k 6 --tree dynamic:12
  smollm2_identical "chain of ngram and eagle, --adaptive" --chat --proposer chain:ngram,eagle --k 6 --adaptive
  smollm2_identical "lookup first, then eagle, k 3, native f32 (the setting docs recommend for chat)" --chat \
    --proposer chain:ngram:3:3,eagle --k 3 --backend native
  smollm2_identical "lookup merged into the draft's 5-node tree, k 4, native f32" --chat \
    --proposer chain:ngram:3:3,eagle --k 4 --tree dynamic:5 --backend native
  # What a new user gets: no --proposer, no --backend (auto: lookup then the shipped draft, on
  # the native decoder), and the draft flags reaching auto's draft.
  smollm2_identical "the defaults (auto proposer, auto backend)" --chat
  smollm2_identical "the defaults, 5-node tree 3 wide" --chat --tree dynamic:5 --draft-tree-width 3
  smollm2_identical "the defaults, --batch 2 --speculate-up-to 1 (greedy steps while both rows run)" \
    --chat --batch 2 --speculate-up-to 1
fi
# Bad input must be a clear error (exit 2), not a crash.
for args in "--batch 0" "--batch 2 --temperature 0.7" "--batch 2 --adaptive" "--tree 2,0" \
            "--tree 2,2 --proposer ngram" "--tree 2,2,2,2 --k 4" "--k 0" "--k 11" "--accept top-k:0" "--accept bogus" "--max-new-tokens x" "--prompt ''" \
            "--proposer chain:" "--proposer draft:no/such/dir" "--proposer eagle" "--proposer eagle:no/such/dir" \
            "--proposer eagle:assets/drafts/smollm2" "--tree dynamic:0" "--tree dynamic:x" "--tree dynamic:8 --accept top-k:2" \
            "--heads no/such/dir" "--policy sometimes" \
            "--draft-weights int8 --proposer ngram" "--draft-weights int4" "--proposer eagle@int4" \
            "--proposer eagle@f32 --draft-weights int8" "--proposer eagle@native-int8 --draft-weights f32" \
            "--draft-confidence 0.2 --proposer ngram" "--draft-confidence 1.5 --proposer eagle:assets/drafts/smollm2" \
            "--draft-confidence x" "--proposer eagle:assets/drafts/smollm2~0.1 --draft-confidence 0.2" \
            "--proposer lookahead:0:3:4" "--proposer lookahead:4:1:4" "--proposer lookahead:4:3" \
            "--top-p 0.9" "--temperature 0.7 --accept top-k:2" "--temperature 1 --top-p 1.5" \
            "--temperature -1" "--temperature 1 --accept typical:0:0.3" "--temperature 1 --seed x" \
            "--accept typical" "--adaptive --policy fixed" "--bogus" "--k x" \
            "--verifier sometimes" "--device tpu" "--device cuda:x" "--device cuda:7" \
            "--backend fast" "--tree dynamic:5 --draft-tree-width 3" "--proposer auto --draft-weights f32" \
            "--speculate-up-to 2" "--batch 2 --speculate-up-to x"; do
  set +e
  eval "$bin $args --max-new-tokens 4" >/dev/null 2>&1
  rc=$?
  set -e
  if [ "$rc" != 2 ]; then
    echo "check-decode: \`decode $args\` exited $rc, expected a clean error (2)" >&2
    fail=1
  fi
done
# Help is not an error.
"$bin" --help >/dev/null || { echo "check-decode: decode --help exited $?, expected 0" >&2; fail=1; }
if [ "$fail" = 0 ]; then
  echo "check-decode: 1 passed, 0 failed"
else
  echo "check-decode: 0 passed, 1 failed"
  exit 1
fi
