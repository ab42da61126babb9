#!/usr/bin/env python3
"""Export a Hugging Face causal LM to blockwise's TorchScript calling convention.

Cached form (`model.<dtype>.pt`, Llama-family architectures: Llama, SmolLM, Mistral without sliding
window):

    forward(input_ids      int64 [B, T],
            position_ids   int64 [B, T],      absolute positions of the block
            attention_mask int64 [B, P + T],  1 for every position to attend (P = cached positions)
            k_cache        [L, B, KVH, MAX, Dh],
            v_cache        [L, B, KVH, MAX, Dh])
        -> (logits [B, T, V], hidden [B, T, D])

The module writes the block's keys and values into the caches at positions P..P+T in place, and
attends over cache positions 0..P+T: nothing is copied per call, whatever the past length.

Masked form (`model.<dtype>.masked.pt`, the same architectures), for batched rows of different
lengths and tree verification:

    forward(input_ids      int64 [B, T],
            position_ids   int64 [B, T],      each token's position in its own sequence
            attention_mask bool  [B, T, S + T], true where a query may attend a cache slot
            k_cache        [L, B, KVH, SLOTS, Dh],
            v_cache        [L, B, KVH, SLOTS, Dh])
        -> (logits [B, T, V], hidden [B, T, D])

It writes the block at cache slots S..S+T (S = mask width - T) and attends exactly what the mask
allows: slots are storage, positions are explicit, so rows can keep different tokens and a
tree's branches can share one call.

Both are TorchScript `script` modules (scripts/export_llama.py) with a second method, `prepack()`,
which the crate calls once after loading: it reorders weights for the CPU matrix library where the
form needs it (bf16), and does nothing otherwise. `metadata.json` says `"prepack": true` for them.

Weight forms (`--dtypes`): `f32`, `bf16`, and, opt-in, `int8` (int8 weights with a float scale per
output channel, bfloat16 compute; `metadata.json` says `"compute": "bf16"`). The int8 form is
checked against, and its oracles come from, transformers' eager model holding exactly the
dequantized weights it computes with, so "identical to greedy" is checked against the quantised
model itself.

Uncached form (`model.<dtype>.uncached.pt`, any causal LM, with --uncached):

    forward(input_ids int64 [B, T]) -> (logits [B, T, V], hidden [B, T, D])

Next to the modules: `tokenizer.json`, and `metadata.json` (layers, heads, vocabulary, EOS ids,
dtypes, chat template, and the greedy continuations of fixed prompts computed by transformers'
own `generate`, as test oracles). Every export is checked against the eager model before it is
written; a mismatch stops the script with an error.
"""

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import export_llama  # noqa: E402

FORMAT = "blockwise-torchscript/1"
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16, "int8": torch.bfloat16}
# int8 is a weight form: int8 weights with a scale per output channel, bfloat16 compute.

# Fixed prompts whose greedy continuations become test oracles. `chat` wraps them in the model's
# chat template as one user message.
ORACLE_PROMPTS = [
    {"text": "The capital of France is", "chat": False},
    {"text": "def fibonacci(n):", "chat": False},
    {"text": "In the beginning God created the heaven and the earth. And the earth was", "chat": False},
    {"text": "What is the capital of France?", "chat": True},
    {"text": "Write a haiku about the sea.", "chat": True},
]


def log(*a):
    print("export_hf:", *a, file=sys.stderr, flush=True)


def find_gguf(package):
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"export_hf: python package {package!r} is not installed")
    folder = list(spec.submodule_search_locations)[0]
    files = sorted(f for f in os.listdir(folder) if f.endswith(".gguf"))
    if not files:
        sys.exit(f"export_hf: no .gguf file in {folder}")
    return folder, files[0]


def load(args):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.gguf_package or args.gguf:
        folder, name = find_gguf(args.gguf_package) if args.gguf_package else os.path.split(os.path.abspath(args.gguf))
        log(f"loading {name} from {folder} (GGUF, dequantised to float32)")
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        source = {"gguf": name}
    else:
        log(f"loading {args.hf_dir}")
        tok = AutoTokenizer.from_pretrained(args.hf_dir)
        model = AutoModelForCausalLM.from_pretrained(args.hf_dir, dtype=torch.float32)
        source = {"hf_dir": os.path.abspath(args.hf_dir)}
    model.eval()
    return tok, model, source


def run_masked_batch(module, rows, cfg, dtype):
    """Two rows of different lengths in one masked call, right-padded: returns each row's
    logits [1, n, V] (the padding is never attended)."""
    n = max(r.size(1) for r in rows)
    ids = torch.zeros(len(rows), n, dtype=torch.int64)
    pos = torch.zeros(len(rows), n, dtype=torch.int64)
    mask = torch.zeros(len(rows), n, n, dtype=torch.bool)
    for b, r in enumerate(rows):
        m = r.size(1)
        ids[b, :m] = r[0]
        pos[b, :m] = torch.arange(m)
        mask[b] = torch.eye(n, dtype=torch.bool)
        mask[b, :m, :m] = torch.tril(torch.ones(m, m, dtype=torch.bool))
    k = torch.zeros(cache_shape(cfg, n + 4, batch=len(rows)), dtype=dtype)
    v = torch.zeros_like(k)
    logits, _ = module(ids, pos, mask, k, v)
    return [logits[b:b + 1, :r.size(1)] for b, r in enumerate(rows)]


class Uncached(nn.Module):
    """Any causal LM: input ids in, logits and final hidden states out."""

    def __init__(self, hf_model):
        super().__init__()
        self.m = hf_model

    def forward(self, input_ids):
        mask = torch.ones_like(input_ids)
        pos = torch.arange(input_ids.size(1)).unsqueeze(0).expand_as(input_ids)
        out = self.m(input_ids=input_ids, attention_mask=mask, position_ids=pos,
                     use_cache=False, output_hidden_states=True, return_dict=True)
        return out.logits, out.hidden_states[-1]


def cache_shape(cfg, max_context, batch=1):
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return (cfg.num_hidden_layers, batch, cfg.num_key_value_heads, max_context, head_dim)


def run_cached(module, ids, chunks, cfg, dtype, max_context):
    """Feeds `ids` [1, N] through a cached module in blocks of the given sizes; returns the
    logits of every position [1, N, V]."""
    k = torch.zeros(cache_shape(cfg, max_context), dtype=dtype)
    v = torch.zeros_like(k)
    outs, p = [], 0
    for c in chunks:
        block = ids[:, p:p + c]
        pos = torch.arange(p, p + c).unsqueeze(0)
        mask = torch.ones(1, p + c, dtype=torch.int64)
        logits, _ = module(block, pos, mask, k, v)
        outs.append(logits)
        p += c
    return torch.cat(outs, dim=1)


def check(name, got, want, tol_abs):
    """float32: the export must match the eager model within `tol_abs`."""
    diff = (got.float() - want.float()).abs().max().item()
    agree = (got.argmax(-1) == want.argmax(-1)).float().mean().item()
    log(f"check {name}: max |logit diff| {diff:.3g} (tolerance {tol_abs}), argmax agreement {agree:.3f}")
    if not (diff <= tol_abs and agree == 1.0):
        sys.exit(f"export_hf: FAILED {name}: the export differs from the eager model "
                 f"(max diff {diff:.3g} > {tol_abs} or argmax agreement {agree:.3f} < 1)")


def check_low_precision(name, got, eager, ref32):
    """bf16/f16 round differently in every implementation, so the export is held to the eager
    model's own error: its distance from the float32 logits may be at most twice the eager
    model's (plus 0.1), and its argmax agreement with float32 at most 5 points lower."""
    ref = ref32[:, :got.size(1)]  # a shorter row is checked against its prefix

    def err(x):
        return ((x.float() - ref).abs().max().item(),
                (x.argmax(-1) == ref.argmax(-1)).float().mean().item())
    (d_exp, a_exp), (d_eag, a_eag) = err(got), err(eager)
    log(f"check {name}: vs float32: export max diff {d_exp:.3g}, argmax agreement {a_exp:.3f}; "
        f"eager model {d_eag:.3g}, {a_eag:.3f}")
    if not (d_exp <= 2 * d_eag + 0.1 and a_exp >= a_eag - 0.05):
        sys.exit(f"export_hf: FAILED {name}: the export is further from float32 than the eager "
                 f"{name.split()[0]} model allows")


def int8_reference(hf_model, dtype):
    """A copy of the eager transformers model whose linear layers hold exactly the weights the
    int8 export computes with (dequantized), in `dtype`: the int8 form's oracle."""
    import copy

    ref = copy.deepcopy(hf_model).to(torch.float32)
    for mod in ref.modules():
        if isinstance(mod, nn.Linear):
            mod.weight = nn.Parameter(export_llama.dequantized(mod.weight), requires_grad=False)
    return ref.to(dtype).eval()


def export_dtype(hf_model, cfg, dtype_name, out, max_context, uncached, check_ids, ref32):
    dtype = DTYPES[dtype_name]
    model = hf_model.to(dtype)
    oracle_model = int8_reference(hf_model, dtype) if dtype_name == "int8" else model
    if dtype_name == "int8":
        with torch.no_grad():
            ref32 = int8_reference(hf_model, torch.float32)(input_ids=check_ids, use_cache=False).logits.float()

    def verify(name, got, eager):
        if dtype_name == "f32":
            check(name, got, eager, 2e-3)
        else:
            check_low_precision(name, got, eager, ref32)

    def load(path):
        m = torch.jit.load(path)
        m.prepack()  # what the crate does after loading
        return m

    form = dtype_name if dtype_name in export_llama.LINEARS else "f32"
    with torch.no_grad():
        eager = oracle_model(input_ids=check_ids, use_cache=False).logits
        path = os.path.join(out, f"model.{dtype_name}.pt")
        export_llama.build(model, form).save(path)
        reloaded = load(path)
        n = check_ids.size(1)
        # One pass, blocks of 5/2/1, one token at a time.
        verify(f"{dtype_name} cached, one pass", run_cached(reloaded, check_ids, [n], cfg, dtype, max_context), eager)
        chunks = [5, 2, 1] + [1] * (n - 8)
        verify(f"{dtype_name} cached, blocks of 5, 2, 1, 1, ...", run_cached(reloaded, check_ids, chunks, cfg, dtype, max_context), eager)
        files = {"cached": os.path.basename(path), "prepack": True}
        if dtype_name == "int8":
            files["compute"] = "bf16"
        # The masked form: two rows of different lengths in one call.
        mpath = os.path.join(out, f"model.{dtype_name}.masked.pt")
        export_llama.build(model, form, masked=True).save(mpath)
        mreloaded = load(mpath)
        short = min(n, 9)
        got_long, got_short = run_masked_batch(mreloaded, [check_ids, check_ids[:, :short]], cfg, dtype)
        verify(f"{dtype_name} masked, row 1 of a batch", got_long, eager)
        verify(f"{dtype_name} masked, row 2 (shorter, padded)", got_short, eager[:, :short])
        files["masked"] = os.path.basename(mpath)
        if uncached and dtype_name != "int8":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tu = torch.jit.trace(Uncached(model).eval(), (check_ids[:, :4],), check_trace=False, strict=False)
            upath = os.path.join(out, f"model.{dtype_name}.uncached.pt")
            tu.save(upath)
            verify(f"{dtype_name} uncached", torch.jit.load(upath)(check_ids)[0], eager)
            files["uncached"] = os.path.basename(upath)
        log(f"wrote {path} ({os.path.getsize(path) / 2**20:.0f} MiB)")
    return files, oracle_model


def oracles(model, tok, max_new_tokens):
    out = []
    for p in ORACLE_PROMPTS:
        if p["chat"] and not tok.chat_template:
            continue  # no chat template: plain prompts only
        if p["chat"]:
            text = tok.apply_chat_template([{"role": "user", "content": p["text"]}], tokenize=False,
                                           add_generation_prompt=True)
        else:
            text = p["text"]
        ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
        with torch.no_grad():
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, num_beams=1, pad_token_id=tok.eos_token_id)
        out.append({"prompt": p["text"], "chat": p["chat"], "input_ids": ids[0].tolist(),
                    "greedy_ids": gen[0, ids.size(1):].tolist()})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--gguf-package", help="a Python package that ships a .gguf file")
    src.add_argument("--gguf", help="a .gguf file")
    src.add_argument("--hf-dir", help="a local Hugging Face model folder")
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtypes", default="f32,bf16", help="comma-separated: f32, bf16, int8 (int8 "
                    "weights with a scale per output channel, bfloat16 compute; opt-in)")
    ap.add_argument("--max-context", type=int, default=2048, help="cache length the checks use")
    ap.add_argument("--uncached", action="store_true", help="also export the uncached form")
    ap.add_argument("--oracle-tokens", type=int, default=32)
    ap.add_argument("--layers", type=int, help="keep only the first N decoder layers (plus the final "
                    "norm and the LM head): a layer-truncated copy, for use as a self-speculative draft")
    args = ap.parse_args()
    t0 = time.time()
    torch.manual_seed(0)
    tok, model, source = load(args)
    cfg = model.config
    if args.layers is not None:
        total = cfg.num_hidden_layers
        if not 1 <= args.layers <= total:
            sys.exit(f"export_hf: --layers must be in 1..={total}, got {args.layers}")
        model.model.layers = model.model.layers[: args.layers]
        cfg.num_hidden_layers = args.layers
        if getattr(cfg, "layer_types", None):
            cfg.layer_types = cfg.layer_types[: args.layers]
        source["truncated"] = {"layers": args.layers, "of": total}
        log(f"truncated to the first {args.layers} of {total} layers")
    if cfg.model_type not in ("llama", "mistral") or getattr(cfg, "attention_bias", False):
        sys.exit(f"export_hf: the cached export supports Llama-family models without attention "
                 f"bias; got {cfg.model_type!r}")
    os.makedirs(args.out, exist_ok=True)
    check_ids = tok("In the beginning God created the heaven and the earth. And the earth was "
                    "without form, and void; and darkness was upon the face of the deep.",
                    return_tensors="pt", add_special_tokens=False).input_ids
    meta = {
        "format": FORMAT,
        "source": source,
        "architecture": cfg.model_type,
        "num_layers": cfg.num_hidden_layers,
        "num_heads": cfg.num_attention_heads,
        "num_kv_heads": cfg.num_key_value_heads,
        "head_dim": getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads,
        "hidden_size": cfg.hidden_size,
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "eos_token_ids": sorted({i for i in ([tok.eos_token_id] + ([cfg.eos_token_id] if isinstance(cfg.eos_token_id, int) else list(cfg.eos_token_id or []))) if i is not None}),
        "bos_token_id": tok.bos_token_id,
        "chat_template": tok.chat_template,
        "special_tokens": {"bos_token": tok.bos_token, "eos_token": tok.eos_token},
        "dtypes": {},
        "oracles": {},
    }
    with torch.no_grad():
        ref32 = model(input_ids=check_ids, use_cache=False).logits.float()
    for name in [d.strip() for d in args.dtypes.split(",") if d.strip()]:
        if name not in DTYPES:
            sys.exit(f"export_hf: unknown dtype {name!r} (use f32, bf16, f16, int8)")
        meta["dtypes"][name], oracle_model = export_dtype(model, cfg, name, args.out, args.max_context,
                                                          args.uncached, check_ids, ref32)
        meta["oracles"][name] = oracles(oracle_model, tok, args.oracle_tokens)
        del oracle_model
    model.to(torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        shutil.copy(os.path.join(tmp, "tokenizer.json"), os.path.join(args.out, "tokenizer.json"))
    with open(os.path.join(args.out, "metadata.json"), "w") as f:
        json.dump(meta, f, indent=1)
    log(f"done in {time.time() - t0:.0f} s: {args.out}")


if __name__ == "__main__":
    main()
