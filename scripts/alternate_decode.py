#!/usr/bin/env python3
"""Wall-clock comparison of `decode` settings on a machine whose speed drifts: every setting is
run once per round, the settings alternating within each round, and each setting's median
milliseconds per generated token over the rounds is reported with its ratio to the first
setting's (greedy, usually) and whether every output equals the first setting's.

    .venv/bin/python scripts/alternate_decode.py --rounds 3 \\
        --common "--model models/smollm2 --backend native --dtype f32 --chat \\
                  --max-new-tokens 64 --prompt-file /tmp/chat8.txt" \\
        --setting greedy="--proposer none --k 1" --setting k3="--proposer eagle --k 3"

Each run is one `decode --json` process (its model load is not timed: the time is the sum of
the rows' `wall_s`). Prints a markdown table; `--json FILE` also writes every run's figures.
`--reference NAME=OTHER` checks setting NAME's outputs against setting OTHER's instead of the
first's (settings of another model form, whose greedy output is their own). `--binary
NAME=PATH` runs setting NAME with another build of `decode` (a copy of an earlier commit's, say),
so that two builds are timed side by side.
"""

import argparse
import json
import shlex
import statistics
import subprocess
import sys

DECODE = "target/release/examples/decode"


def run(common, setting, binary=DECODE):
    cmd = [binary, *shlex.split(common), *shlex.split(setting), "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    tokens = sum(len(r["tokens"]) for r in rows)
    wall = sum(r["stats"]["wall_s"] for r in rows)
    calls = sum(r["stats"]["model_calls"] for r in rows)
    return {
        "ms_per_token": wall / tokens * 1e3,
        "tokens_per_call": tokens / calls,
        "outputs": [r["tokens"] for r in rows],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--common", required=True, help="decode arguments every setting shares")
    ap.add_argument(
        "--setting", action="append", required=True, help="NAME=ARGS (the first is the baseline)"
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--reference", action="append", default=[],
        help="NAME=OTHER: check NAME's outputs against OTHER's (default: the first setting's)",
    )
    ap.add_argument(
        "--binary", action="append", default=[],
        help="NAME=PATH: run setting NAME with the decode binary PATH (default " + DECODE + ")",
    )
    ap.add_argument("--json", help="write every run's figures here")
    args = ap.parse_args()
    settings = [s.split("=", 1) for s in args.setting]
    if any(len(s) != 2 for s in settings):
        sys.exit("--setting takes NAME=ARGS")
    runs = {name: [] for name, _ in settings}
    refs = dict(r.split("=", 1) for r in args.reference)
    if any(r not in runs or n not in runs for n, r in refs.items()):
        sys.exit("--reference takes NAME=OTHER, both names of settings")
    binaries = dict(b.split("=", 1) for b in args.binary)
    if any(n not in runs for n in binaries):
        sys.exit("--binary takes NAME=PATH, NAME a setting's name")
    for r in range(args.rounds):
        for name, setting in settings:
            runs[name].append(run(args.common, setting, binaries.get(name, DECODE)))
            print(f"round {r + 1}: {name} {runs[name][-1]['ms_per_token']:.2f} ms/token",
                  file=sys.stderr)
    base_name = settings[0][0]
    base = statistics.median(x["ms_per_token"] for x in runs[base_name])
    def reference(name):
        return runs[refs.get(name, base_name)][0]["outputs"]

    print(f"| setting | tokens per call | ms per token (median of {args.rounds}; each round) "
          f"| speedup over {base_name} | identical to {base_name} (or its reference) |")
    print("|---|---|---|---|---|")
    for name, _ in settings:
        ms = [x["ms_per_token"] for x in runs[name]]
        med = statistics.median(ms)
        same = all(x["outputs"] == reference(name) for x in runs[name])
        rounds = ", ".join(f"{m:.1f}" for m in ms)
        print(f"| {name} | {runs[name][0]['tokens_per_call']:.2f} | {med:.1f} ({rounds}) "
              f"| {base / med:.2f}x | {'yes' if same else 'no'} |")
    if args.json:
        figures = {
            name: [
                {
                    "ms_per_token": x["ms_per_token"],
                    "tokens_per_call": x["tokens_per_call"],
                    "identical": x["outputs"] == reference(name),
                }
                for x in rs
            ]
            for name, rs in runs.items()
        }
        with open(args.json, "w") as f:
            json.dump({"common": args.common, "settings": dict(settings), "references": refs,
                       "binaries": binaries, "runs": figures}, f, indent=1)


if __name__ == "__main__":
    main()
