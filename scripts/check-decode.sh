#!/usr/bin/env bash
# Runs the `decode` example with --json --compare-greedy over the example prompts and checks, for
# each block size and acceptance setting, that every prompt reports identical output and (on the
# heads path) model_calls == iterations + 1.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/examples/decode
py=.venv/bin/python
fail=0
for k in 1 2 4 8; do
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
    if s["model_calls"] != s["iterations"] + 1:
        print("model_calls != iterations + 1:", r["prompt"], s); bad += 1
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
# Bad input must be a clear error (exit 2), not a crash.
for args in "--k 0" "--k 9" "--accept top-k:0" "--accept bogus" "--max-new-tokens x" "--prompt ''"; do
  set +e
  eval "$bin $args --max-new-tokens 4" >/dev/null 2>&1
  rc=$?
  set -e
  if [ "$rc" != 2 ]; then
    echo "check-decode: \`decode $args\` exited $rc, expected a clean error (2)" >&2
    fail=1
  fi
done
if [ "$fail" = 0 ]; then
  echo "check-decode: 1 passed, 0 failed"
else
  echo "check-decode: 0 passed, 1 failed"
  exit 1
fi
