#!/usr/bin/env bash
# The feature-level draft's learning curve: the shipped draft's settings
# (examples/configs/smollm2-draft.json), trained on the first N tokens of the teacher-forced data
# for N = 25k, 100k, 400k (each run resumes from its checkpoint), then measured like the shipped
# draft's first stage (assets/drafts/smollm2/report-base.json): held-out agreement per draft step and mean accepted
# tokens per call on held-out chat prompts. Prints a markdown table. SPLIT=train-answers trains on
# SmolLM2's own answers alone (SIZES=all: all of them).
#
#   make draft-curve    (after make draft-data and make smollm2-eagle)
#   SPLIT=train-answers SIZES=all make draft-curve
set -euo pipefail
cd "$(dirname "$0")/.."
config=examples/configs/smollm2-draft.json
work=target/draft-curve
mkdir -p "$work"
split=${SPLIT:-train}
for n in ${SIZES:-25000 100000 400000}; do
  name=$n
  [ "$split" = train ] || name="$split-$n"
  limit=(--max-train-tokens "$n")
  [ "$n" = all ] && limit=()
  if [ ! -f "$work/$name.json" ]; then
    target/release/examples/train_draft "$config" "${limit[@]}" --split "$split" \
      --out "$work/$name" --checkpoint "$work/$name-checkpoint" --report "$work/$name.json"
  fi
done
.venv/bin/python - "$work" <<'PY'
import glob, json, os, sys
work = sys.argv[1]
rows = [json.load(open(p)) for p in glob.glob(os.path.join(work, "*.json"))]
shipped = "assets/drafts/smollm2/report-base.json"
if os.path.exists(shipped):
    rows.append(json.load(open(shipped)))
rows.sort(key=lambda r: r["train_tokens"])
print("| data | training tokens | sequences | training s | held-out agreement on text, draft steps 1 / 2 / 3 / 4 | on chat answers, every position | on chat answers, answer positions only | mean accepted (k = 5) | identical |")
print("|---|---|---|---|---|---|---|---|---|")
for r in rows:
    agree = " / ".join(f"{a:.2f}" for a in r.get("heldout_agreement") or []) or "-"
    chat = " / ".join(f"{a:.2f}" for a in r.get("heldout_chat_agreement") or []) or "-"
    answers = " / ".join(f"{a:.2f}" for a in r.get("heldout_chat_answer_agreement") or []) or "-"
    weights = ", ".join(f"{k} x{w}" for k, w in (r.get("weights") or {}).items())
    data = r.get("split", "train") + (f" ({weights})" if weights else "")
    print(f"| {data} | {r['train_tokens']:,} | {r['train_sequences']:,} | {r['train_s']:.0f} | "
          f"{agree} | {chat} | {answers} | {r['mean_accepted']:.2f} | {r['identical']}/{r['prompts']} |")
PY
