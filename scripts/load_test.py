#!/usr/bin/env python3
"""Load test of blockwise-server on loopback: ramps concurrent clients and reports requests/s,
tokens/s, time to first token, latency, errors and the share of answers identical to greedy
decoding, for several server configurations side by side. Bounded: every level sends a fixed
number of requests, every request has a timeout, and the script stops every server it starts.

    .venv/bin/python scripts/load_test.py --model models/smollm2 --levels 1,4,16,64 \
        --json target/load.json

Reference answers come from the library's own greedy decoding (the `decode` example with
`--proposer none --k 1`), so "identical" checks the server against the library, not against
itself. Only the Python standard library is used.
"""

import argparse
import concurrent.futures as futures
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DEFAULT_CONFIGS = (
    "greedy, one at a time|--proposer none --k 1 --max-batch 1;"
    "greedy, batched|--proposer none --k 1 --max-batch 16;"
    "n-gram k=4, batched|--proposer ngram --k 4 --max-batch 16"
)


def cpu_flags():
    text = open("/proc/cpuinfo").read()
    return " ".join(f for f in ("avx2", "avx512_bf16") if f" {f}" in text)


def reference(args, prompts):
    """Greedy answers from the library (one JSON object per prompt)."""
    path = os.path.join(ROOT, "target", "load-prompts.txt")
    with open(path, "w") as f:
        f.write("\n".join(p.replace("\n", "\\n") for p in prompts) + "\n")
    cmd = [os.path.join(ROOT, "target/release/examples/decode"), "--model", args.model,
           "--backend", args.backend, "--dtype", args.dtype, "--chat", "--prompt-file", path, "--proposer", "none",
           "--k", "1", "--max-new-tokens", str(args.max_tokens), "--json"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [json.loads(line)["text"] for line in out.splitlines() if line.strip()]


def start_server(args, extra, port):
    # --backend applies unless the configuration names its own.
    backend = [] if "--backend" in extra.split() else ["--backend", args.backend]
    cmd = [args.server, "--model", args.model, *backend,
           "--dtype", args.dtype, "--addr", f"127.0.0.1:{port}", "--queue", "256",
           "--served-model-name", "m"] + extra.split()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.2)
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {proc.stderr.read()}")
    proc.kill()
    raise SystemExit("the server did not come up within 120 s")


def one_request(port, prompt, max_tokens, timeout):
    """A streamed chat request: (text, ttft_s, total_s, completion_tokens, error)."""
    body = json.dumps({"model": "m", "max_tokens": max_tokens, "stream": True,
                       "messages": [{"role": "user", "content": prompt}]})
    t0 = time.perf_counter()
    ttft = None
    text = []
    tokens = 0
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        c.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
        r = c.getresponse()
        if r.status != 200:
            return None, None, time.perf_counter() - t0, 0, f"HTTP {r.status}: {r.read()[:200]!r}"
        done = False
        while True:
            line = r.readline()
            if not line:
                break
            line = line.decode().strip()
            if not line.startswith("data: "):
                continue
            data = line[len("data: "):]
            if data == "[DONE]":
                done = True
                break
            event = json.loads(data)
            if "error" in event:
                return None, ttft, time.perf_counter() - t0, 0, event["error"]["message"]
            delta = event["choices"][0]["delta"].get("content")
            if delta:
                if ttft is None:
                    ttft = time.perf_counter() - t0
                text.append(delta)
            if "usage" in event:
                tokens = event["usage"]["completion_tokens"]
        if not done:
            return None, ttft, time.perf_counter() - t0, 0, "the stream ended without [DONE]"
    except (OSError, http.client.HTTPException) as e:
        return None, ttft, time.perf_counter() - t0, 0, f"{type(e).__name__}: {e}"
    return "".join(text), ttft, time.perf_counter() - t0, tokens, None


def pct(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def level(port, prompts, want, clients, requests, max_tokens, timeout):
    jobs = [i % len(prompts) for i in range(requests)]
    t0 = time.perf_counter()
    with futures.ThreadPoolExecutor(max_workers=clients) as pool:
        results = list(pool.map(
            lambda i: (i, one_request(port, prompts[i], max_tokens, timeout)), jobs))
    wall = time.perf_counter() - t0
    ok = [(i, r) for i, r in results if r[4] is None]
    errors = [r[4] for _, r in results if r[4] is not None]
    same = sum(1 for i, r in ok if r[0] == want[i])
    tokens = sum(r[3] for _, r in ok)
    ttfts = [r[1] for _, r in ok if r[1] is not None]
    totals = [r[2] for _, r in ok]
    return {
        "clients": clients, "requests": requests, "wall_s": wall,
        "requests_per_s": len(ok) / wall, "tokens_per_s": tokens / wall,
        "ttft_p50_s": pct(ttfts, 0.5), "ttft_p99_s": pct(ttfts, 0.99),
        "latency_p50_s": pct(totals, 0.5), "latency_p99_s": pct(totals, 0.99),
        "errors": len(errors), "error_samples": errors[:3],
        "identical": same, "answered": len(ok),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="models/smollm2")
    ap.add_argument("--server", default=os.path.join(ROOT, "target/release/blockwise-server"),
                    help="the server binary (another build to compare against)")
    ap.add_argument("--dtype", default="f32")
    ap.add_argument("--backend", default="torchscript",
                    help="torchscript (what docs/serving.md's load table ran), native or auto "
                         "(the server's and decode's default), for the server and the reference")
    ap.add_argument("--prompts", default="examples/prompts/chat24.txt")
    ap.add_argument("--levels", default="1,4,16,64")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--requests", type=int, default=0,
                    help="requests per level (default: max(8, clients))")
    ap.add_argument("--configs", default=DEFAULT_CONFIGS,
                    help="'LABEL|SERVER ARGS' entries separated by ';'")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--port", type=int, default=18080)
    ap.add_argument("--json")
    args = ap.parse_args()
    os.chdir(ROOT)
    prompts = [l.rstrip("\n").replace("\\n", "\n") for l in open(args.prompts) if l.strip()]
    want = reference(args, prompts)
    levels = [int(x) for x in args.levels.split(",")]
    report = {"model": args.model, "dtype": args.dtype, "cpu": cpu_flags(),
              "cores": os.cpu_count(), "max_tokens": args.max_tokens, "rows": []}
    for entry in args.configs.split(";"):
        label, extra = entry.split("|")
        proc = start_server(args, extra, args.port)
        try:
            for clients in levels:
                n = args.requests or max(8, clients)
                row = level(args.port, prompts, want, clients, n, args.max_tokens, args.timeout)
                row.update({"config": label, "server_args": extra})
                report["rows"].append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                code = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = "killed after 60 s"
            report.setdefault("shutdown", {})[label] = code
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    print(f"{args.model}, {args.dtype}, {args.max_tokens} new tokens per request, "
          f"{report['cores']} cores, CPU flags: {report['cpu']}")
    print()
    print("| server | clients | requests | requests/s | tokens/s | TTFT p50 / p99 (s) "
          "| latency p50 / p99 (s) | errors | identical to greedy |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in report["rows"]:
        print(f"| {r['config']} (`{r['server_args']}`) | {r['clients']} | {r['requests']} | "
              f"{r['requests_per_s']:.2f} | {r['tokens_per_s']:.1f} | "
              f"{r['ttft_p50_s']:.2f} / {r['ttft_p99_s']:.2f} | "
              f"{r['latency_p50_s']:.2f} / {r['latency_p99_s']:.2f} | {r['errors']} | "
              f"{r['identical']}/{r['answered']} |")
    print()
    print("Server exit codes after SIGINT: " + ", ".join(
        f"{k}: {v}" for k, v in report["shutdown"].items()))


if __name__ == "__main__":
    main()
