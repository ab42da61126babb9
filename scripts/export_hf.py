#!/usr/bin/env python3
"""Export a Hugging Face causal LM to blockwise's TorchScript calling convention.

Cached form (`model.<dtype>.pt`, the architecture families of scripts/families/: Llama and
SmolLM, Mistral, Qwen 2 and 3, Gemma 1, 2 and 3, Phi 3):

    forward(input_ids      int64 [B, T],
            position_ids   int64 [B, T],      absolute positions of the block
            attention_mask int64 [B, P + T],  1 for every position to attend (P = cached positions)
            k_cache        [L, B, KVH, MAX, Dh],
            v_cache        [L, B, KVH, MAX, Dh])
        -> (logits [B, T, V], hidden [B, T, D])

The module writes the block's keys and values into the caches at positions P..P+T in place, and
attends over cache positions 0..P+T: nothing is copied per call, whatever the past length.

Masked form (`model.<dtype>.masked.pt`, the same families), for batched rows of different lengths
and tree verification:

    forward(input_ids      int64 [B, T],
            position_ids   int64 [B, T],      each token's position in its own sequence
            attention_mask bool  [B, T, S + T], true where a query may attend a cache slot
            k_cache        [L, B, KVH, SLOTS, Dh],
            v_cache        [L, B, KVH, SLOTS, Dh])
        -> (logits [B, T, V], hidden [B, T, D])

It writes the block at cache slots S..S+T (S = mask width - T) and attends exactly what the mask
allows: slots are storage, positions are explicit, so rows can keep different tokens and a
tree's branches can share one call. In models with sliding-window layers, a key's position is its
rank among the slots its query may attend, so the mask must allow each query its whole history,
one slot per earlier position, in slot order (what the crate's decoders do).

Both are TorchScript `script` modules (scripts/export_decoder.py, described per family by
scripts/families/) with two more methods, of which the crate calls one once after loading:
`prepack()` reorders weights for the CPU matrix library where the form needs it (bf16, for
oneDNN) and does nothing otherwise; `prepack_onednn()` also packs f32 weights for oneDNN, whose
f32 products are the faster ones on AMD CPUs (`LoadOptions::f32_matmul`). `metadata.json` says
`"prepack": true` for them and, for f32, `"onednn": true`; the export checks both packings.

Weight forms (`--dtypes`): `f32`, `bf16`, and, opt-in, `int8` (int8 weights with a float scale per
output channel, bfloat16 compute; `metadata.json` says `"compute": "bf16"`). The int8 form is
checked against, and its oracles come from, transformers' eager model holding exactly the
dequantized weights it computes with, so "identical to greedy" is checked against the quantised
model itself.

Uncached form (`model.<dtype>.uncached.pt`, any causal LM, with --uncached; the only form of an
architecture outside scripts/families/):

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
import export_decoder  # noqa: E402
import families  # noqa: E402

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
        if args.gguf_package:
            source["package"] = args.gguf_package
        else:
            source["path"] = os.path.relpath(os.path.join(folder, name))
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


# The checks' text (Genesis 1:1-5, about 100 tokens): long enough that one near-tie argmax flip
# moves the low-precision agreement by about one point, not three.
CHECK_TEXT = ("In the beginning God created the heaven and the earth. And the earth was without "
              "form, and void; and darkness was upon the face of the deep. And the Spirit of God "
              "moved upon the face of the waters. And God said, Let there be light: and there was "
              "light. And God saw the light, that it was good: and God divided the light from the "
              "darkness. And God called the light Day, and the darkness he called Night. And the "
              "evening and the morning were the first day.")


def check_low_precision(name, got, eager, ref32):
    """bf16/f16 round differently in every implementation, so the export is held to the eager
    model's own error: its distance from the float32 logits may be at most twice the eager
    model's (plus 0.1), its argmax agreement with float32 at most 5 points lower, and every
    argmax it flips must be a near-tie in float32: a top-2 gap the eager model's own error could
    cross (at most twice its largest error)."""
    ref = ref32[:, :got.size(1)]  # a shorter row is checked against its prefix

    def err(x):
        return ((x.float() - ref).abs().max().item(),
                (x.argmax(-1) == ref.argmax(-1)).float().mean().item())
    (d_exp, a_exp), (d_eag, a_eag) = err(got), err(eager)
    top2 = ref.topk(2, dim=-1).values
    gaps = (top2[..., 0] - top2[..., 1])[got.argmax(-1) != ref.argmax(-1)]
    widest = gaps.max().item() if gaps.numel() else 0.0
    log(f"check {name}: vs float32: export max diff {d_exp:.3g}, argmax agreement {a_exp:.3f} "
        f"(widest float32 gap it flips {widest:.3g}); eager model {d_eag:.3g}, {a_eag:.3f}")
    if not (d_exp <= 2 * d_eag + 0.1 and a_exp >= a_eag - 0.05 and widest <= 2 * d_eag):
        sys.exit(f"export_hf: FAILED {name}: the export is further from float32 than the eager "
                 f"{name.split()[0]} model allows")


def int8_reference(hf_model, dtype):
    """A copy of the eager transformers model whose linear layers hold exactly the weights the
    int8 export computes with (dequantized), in `dtype`: the int8 form's oracle."""
    import copy

    ref = copy.deepcopy(hf_model).to(torch.float32)
    for mod in ref.modules():
        if isinstance(mod, nn.Linear):
            mod.weight = nn.Parameter(export_decoder.dequantized(mod.weight), requires_grad=False)
    return ref.to(dtype).eval()


def run_masked_with_rejected(module, ids, cfg, dtype, split, junk=3):
    """Feeds `ids` [1, N] through a masked module as the crate's decoders do after a rejection:
    the first `split` tokens, then `junk` tokens that are never attended again (a rejected block),
    then the rest in blocks of 2, each query attending its whole history and only that. Returns
    the logits of the real tokens [1, N, V]."""
    n = ids.size(1)
    slots = n + junk
    k = torch.zeros(cache_shape(cfg, slots), dtype=dtype)
    v = torch.zeros_like(k)
    live = []  # slots holding the real sequence, in order
    used = 0
    outs = []

    def call(block, positions, real):
        nonlocal used
        t = block.size(1)
        mask = torch.zeros(1, t, used + t, dtype=torch.bool)
        for i in range(t):
            mask[0, i, live] = True  # the history
            mask[0, i, used:used + i + 1] = True  # this block up to itself
        logits, _ = module(block, positions.unsqueeze(0), mask, k, v)
        if real:
            live.extend(range(used, used + t))
            outs.append(logits)
        used += t

    call(ids[:, :split], torch.arange(split), True)
    if junk:
        call(torch.flip(ids[:, split:split + junk], [1]), torch.arange(split, split + junk), False)
    p = split
    while p < n:
        c = min(2, n - p)
        call(ids[:, p:p + c], torch.arange(p, p + c), True)
        p += c
    return torch.cat(outs, dim=1)


def longer_than(ids, n):
    """`ids` repeated to at least `n` tokens."""
    reps = -(-n // ids.size(1))
    return ids.repeat(1, reps)[:, :n]


def trace_uncached(model, check_ids):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.jit.trace(Uncached(model).eval(), (check_ids[:, :4],), check_trace=False, strict=False)
    except Exception as e:  # noqa: BLE001 - tracing fails in many ways; the user needs the first line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        sys.exit(f"export_hf: tracing the uncached form of {model.config.model_type!r} failed: "
                 f"{type(e).__name__}: {first}")


def export_dtype(hf_model, cfg, dtype_name, out, max_context, uncached, check_ids, ref32, cached=True):
    """Exports and checks one weight form; `cached=False` exports the uncached form only (an
    architecture outside scripts/families/)."""
    dtype = DTYPES[dtype_name]
    model = hf_model.to(dtype)
    oracle_model = int8_reference(hf_model, dtype) if dtype_name == "int8" else model
    if dtype_name == "int8":
        with torch.no_grad():
            ref32 = int8_reference(hf_model, torch.float32)(input_ids=check_ids, use_cache=False).logits.float()

    def verify(name, got, eager, ref=None):
        if dtype_name == "f32":
            check(name, got, eager, 2e-3)
        else:
            check_low_precision(name, got, eager, ref32 if ref is None else ref)

    def load(path, packing):
        m = torch.jit.load(path)
        getattr(m, packing)()  # what the crate does after loading
        return m

    form = dtype_name if dtype_name in export_decoder.LINEARS else "f32"
    files = {}
    with torch.no_grad():
        eager = oracle_model(input_ids=check_ids, use_cache=False).logits
        n = check_ids.size(1)
        if cached:
            spec = families.describe(model)
            path = os.path.join(out, f"model.{dtype_name}.pt")
            export_decoder.build(spec, form).save(path)
            mpath = os.path.join(out, f"model.{dtype_name}.masked.pt")
            export_decoder.build(spec, form, masked=True).save(mpath)
            files = {"cached": os.path.basename(path), "masked": os.path.basename(mpath), "prepack": True}
            if dtype_name == "int8":
                files["compute"] = "bf16"
            # f32 runs its products through libtorch's BLAS after prepack() or through oneDNN
            # after prepack_onednn() (LoadOptions::f32_matmul): both are checked.
            packings = ["prepack", "prepack_onednn"] if dtype_name == "f32" else ["prepack"]
            for packing in packings:
                check_packed(verify, load(path, packing), load(mpath, packing),
                             "" if packing == "prepack" else " (oneDNN)", dtype_name, check_ids, eager,
                             cfg, dtype, max_context, spec, hf_model, oracle_model)
            if dtype_name == "f32":
                files["onednn"] = True
            log(f"wrote {path} ({os.path.getsize(path) / 2**20:.0f} MiB)")
        if uncached and dtype_name != "int8":
            tu = trace_uncached(model, check_ids)
            upath = os.path.join(out, f"model.{dtype_name}.uncached.pt")
            tu.save(upath)
            verify(f"{dtype_name} uncached", torch.jit.load(upath)(check_ids)[0], eager)
            files["uncached"] = os.path.basename(upath)
            log(f"wrote {upath} ({os.path.getsize(upath) / 2**20:.0f} MiB)")
    return files, oracle_model


def check_packed(verify, reloaded, mreloaded, tag, dtype_name, check_ids, eager, cfg, dtype, max_context,
                 spec, hf_model, oracle_model):
    """The export's checks on one packing of the cached and masked modules: one pass, blocks,
    two rows of different lengths, a rejected block, and past the sliding window."""
    n = check_ids.size(1)
    # One pass, blocks of 5/2/1, one token at a time.
    verify(f"{dtype_name}{tag} cached, one pass", run_cached(reloaded, check_ids, [n], cfg, dtype, max_context), eager)
    chunks = [5, 2, 1] + [1] * (n - 8)
    verify(f"{dtype_name}{tag} cached, blocks of 5, 2, 1, 1, ...", run_cached(reloaded, check_ids, chunks, cfg, dtype, max_context), eager)
    # The masked form: two rows of different lengths in one call, and a row with a
    # rejected block in its slots.
    short = min(n, 9)
    got_long, got_short = run_masked_batch(mreloaded, [check_ids, check_ids[:, :short]], cfg, dtype)
    verify(f"{dtype_name}{tag} masked, row 1 of a batch", got_long, eager)
    verify(f"{dtype_name}{tag} masked, row 2 (shorter, padded)", got_short, eager[:, :short])
    if dtype_name == "int8":
        # Never-attended slots alone change the key length, and with it the bfloat16
        # products' blocking: on SmolLM2 that moves bf16 logits by up to 0.75 and int8's
        # by 1.19 (flipping near-tie argmaxes), which the int8 form's margin to the
        # eager bound does not absorb. The slot logic is the same code in every form;
        # f32 checks it exactly and bf16 against the eager bound.
        log(f"check {dtype_name} masked, after a rejected block: not applicable (see f32, bf16)")
    else:
        verify(f"{dtype_name}{tag} masked, after a rejected block",
               run_masked_with_rejected(mreloaded, check_ids, cfg, dtype, short), eager)
    window = max((l.window or 0) for l in spec.layers)
    if window and window + 16 <= max_context:
        # Past the sliding window: the eager model's logits over the last positions of a
        # sequence longer than the window, fed in one block and then token by token.
        long_ids = longer_than(check_ids, window + 16)
        m = long_ids.size(1)
        keep = slice(window - 8, m)
        want = oracle_model(input_ids=long_ids, use_cache=False).logits[:, keep]
        ref_long = None
        if dtype_name != "f32":
            ref_model = int8_reference(hf_model, torch.float32) if dtype_name == "int8" else hf_model.to(torch.float32)
            ref_long = ref_model(input_ids=long_ids, use_cache=False).logits[:, keep].float()
            del ref_model
            hf_model.to(dtype)  # back (`to` converts in place)
        chunks = fit_chunks([window - 8, 5, 2, 1], m)
        got = run_cached(reloaded, long_ids, chunks, cfg, dtype, max(max_context, m))[:, keep]
        verify(f"{dtype_name}{tag} cached, past the sliding window ({window})", got, want, ref_long)
        got = run_masked_with_rejected(mreloaded, long_ids, cfg, dtype, window - 4)[:, keep]
        verify(f"{dtype_name}{tag} masked, past the sliding window ({window})", got, want, ref_long)


def fit_chunks(chunks, n):
    """`chunks` cut or extended with ones so that they sum to exactly `n`."""
    out, total = [], 0
    for c in chunks:
        c = min(c, n - total)
        if c <= 0:
            break
        out.append(c)
        total += c
    return out + [1] * (n - total)


def oracle_inputs(tok):
    """The oracle prompts as token ids: [(prompt, chat, ids [1, n])]."""
    out = []
    for p in ORACLE_PROMPTS:
        if p["chat"] and not tok.chat_template:
            continue  # no chat template: plain prompts only
        if p["chat"]:
            text = tok.apply_chat_template([{"role": "user", "content": p["text"]}], tokenize=False,
                                           add_generation_prompt=True)
        else:
            text = p["text"]
        # A plain prompt as transformers' tokenizer encodes a whole input (with Gemma's BOS, for
        # example); a chat prompt as apply_chat_template does (the template writes its own).
        out.append((p["text"], p["chat"], tok(text, return_tensors="pt", add_special_tokens=not p["chat"]).input_ids))
    return out


def oracles(model, prompts, max_new_tokens, eos_ids):
    """transformers' own greedy continuations of `prompts` (from `oracle_inputs`)."""
    out = []
    for text, chat, ids in prompts:
        with torch.no_grad():
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, num_beams=1, eos_token_id=eos_ids or None,
                                 pad_token_id=eos_ids[0] if eos_ids else 0)
        out.append({"prompt": text, "chat": chat, "input_ids": ids[0].tolist(),
                    "greedy_ids": gen[0, ids.size(1):].tolist()})
    return out


# Tokens that end an assistant turn in common chat templates: an EOS id when the model's template
# uses them, so that decoding a chat answer stops where transformers' chat pipelines stop.
END_OF_TURN = ("<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|end|>")


def eos_ids(model, tok):
    cfg = model.config
    ids = [tok.eos_token_id if tok is not None else None]
    for src in (cfg.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        ids += [src] if isinstance(src, int) else list(src or [])
    template = tok.chat_template if tok is not None else None
    if template:
        vocab = tok.get_vocab()
        ids += [vocab[t] for t in END_OF_TURN if t in template and t in vocab]
    return sorted({int(i) for i in ids if i is not None})


def export_model(model, tok, source, out, dtypes, max_context=2048, uncached=False, oracle_tokens=32,
                 check_ids=None, prompts=None):
    """Exports `model` (float32, eval) in each of `dtypes` into `out`, checking every form against
    the eager model, and writes metadata.json (and tokenizer.json when `tok` is given). `prompts`
    (from `oracle_inputs`) become the oracles; `check_ids` [1, n] is the checks' sequence."""
    t0 = time.time()
    cfg = model.config
    try:
        native = export_decoder.native_description(families.describe(model))
        cached = True
    except families.Unsupported as e:
        native = None
        if not uncached:
            sys.exit(f"export_hf: {e}; only the uncached form can be exported (pass --uncached)")
        log(f"{e}: exporting the uncached form only")
        cached = False
    os.makedirs(out, exist_ok=True)
    eos = eos_ids(model, tok)
    windows = sorted({w for w in families.common.windows(cfg) if w}) if cached else []
    meta = {
        "format": FORMAT,
        "source": source,
        "architecture": cfg.model_type,
        "num_layers": cfg.num_hidden_layers,
        "num_heads": cfg.num_attention_heads,
        "num_kv_heads": getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads,
        "head_dim": families.common.head_dim(cfg),
        "hidden_size": cfg.hidden_size,
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "sliding_window": windows[0] if windows else None,
        "eos_token_ids": eos,
        "bos_token_id": tok.bos_token_id if tok is not None else None,
        "chat_template": tok.chat_template if tok is not None else None,
        "special_tokens": {"bos_token": tok.bos_token, "eos_token": tok.eos_token} if tok is not None else {},
        "dtypes": {},
        "oracles": {},
    }
    if native is not None and "f32" in dtypes:
        meta["native"] = native  # the crate's native CPU decoder reads the f32 module's weights
    with torch.no_grad():
        ref32 = model(input_ids=check_ids, use_cache=False).logits.float()
    for name in dtypes:
        if name not in DTYPES:
            sys.exit(f"export_hf: unknown dtype {name!r} (use f32, bf16, f16, int8)")
        if name == "int8" and not cached:
            sys.exit("export_hf: the int8 weight form needs the cached form, which this architecture lacks")
        meta["dtypes"][name], oracle_model = export_dtype(model, cfg, name, out, max_context,
                                                          uncached, check_ids, ref32, cached)
        meta["oracles"][name] = oracles(oracle_model, prompts or [], oracle_tokens, eos)
        del oracle_model
    model.to(torch.float32)
    if tok is not None:
        with tempfile.TemporaryDirectory() as tmp:
            tok.save_pretrained(tmp)
            shutil.copy(os.path.join(tmp, "tokenizer.json"), os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "metadata.json"), "w") as f:
        json.dump(meta, f, indent=1)
    log(f"done in {time.time() - t0:.0f} s: {out}")


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
    ap.add_argument("--chat-template", help="a Jinja chat template file, for checkpoints whose files "
                    "carry none (assets/chat_templates/gemma.jinja for the Gemma-3-270M GGUF); "
                    "refused when the checkpoint has its own")
    ap.add_argument("--layers", type=int, help="keep only the first N decoder layers (plus the final "
                    "norm and the LM head): a layer-truncated copy, for use as a self-speculative draft")
    args = ap.parse_args()
    torch.manual_seed(0)
    tok, model, source = load(args)
    cfg = model.config
    if args.chat_template:
        if tok.chat_template:
            sys.exit("export_hf: --chat-template: the checkpoint has a chat template of its own")
        with open(args.chat_template) as f:
            tok.chat_template = f.read()
        source["chat_template"] = os.path.basename(args.chat_template)
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
    check_ids = tok(CHECK_TEXT, return_tensors="pt", add_special_tokens=False).input_ids
    export_model(model, tok, source, args.out, [d.strip() for d in args.dtypes.split(",") if d.strip()],
                 args.max_context, args.uncached, args.oracle_tokens, check_ids, oracle_inputs(tok))


if __name__ == "__main__":
    main()
