#!/usr/bin/env python3
"""Draws Table 1 (mean accepted block size against k, one line per regime and acceptance
criterion) as an SVG, from the JSON that `train_embedded` writes. No plotting library needed.

    python3 scripts/plot_table1.py docs/table1.json docs/table1.svg
"""

import json
import sys

COLOURS = {
    "frozen": "#1f77b4",
    "fine-tuned": "#ff7f0e",
    "distilled": "#2ca02c",
    "fine-tuned-distilled": "#d62728",
}


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else "docs/table1.json"
    out = sys.argv[2] if len(sys.argv) > 2 else "docs/table1.svg"
    cells = json.load(open(src))
    ks = sorted({c["k"] for c in cells})
    ymax = max(max(c["mean_accepted"] for c in cells), max(ks))
    w, h, left, right, top, bottom = 640, 420, 60, 190, 30, 50
    pw, ph = w - left - right, h - top - bottom

    def x(k):
        return left + (k - ks[0]) / (ks[-1] - ks[0]) * pw

    def y(v):
        return top + ph - v / ymax * ph

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<text x="{left}" y="18" font-size="14">Mean accepted block size on held-out text '
        f'(embedded model)</text>',
    ]
    for v in range(0, int(ymax) + 1):
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
                     f'stroke="#ddd"/>')
        parts.append(f'<text x="{left - 8}" y="{y(v) + 4:.1f}" text-anchor="end">{v}</text>')
    for k in ks:
        parts.append(f'<text x="{x(k):.1f}" y="{top + ph + 18}" text-anchor="middle">{k}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{h - 10}" text-anchor="middle">block size k</text>')
    parts.append(f'<line x1="{x(ks[0]):.1f}" y1="{y(ks[0]):.1f}" x2="{x(ks[-1]):.1f}" '
                 f'y2="{y(ks[-1]):.1f}" stroke="#999" stroke-dasharray="2,3"/>')
    legend_y = top + 10
    for regime, colour in COLOURS.items():
        for acc, dash in (("exact", ""), ("top-2", ' stroke-dasharray="6,4"')):
            pts = sorted((c["k"], c["mean_accepted"]) for c in cells
                         if c["regime"] == regime and c["acceptance"] == acc)
            if not pts:
                continue
            path = " ".join(f"{x(k):.1f},{y(v):.1f}" for k, v in pts)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" '
                         f'stroke-width="2"{dash}/>')
            for k, v in pts:
                parts.append(f'<circle cx="{x(k):.1f}" cy="{y(v):.1f}" r="3" fill="{colour}"/>')
            lx = left + pw + 15
            parts.append(f'<line x1="{lx}" x2="{lx + 25}" y1="{legend_y}" y2="{legend_y}" '
                         f'stroke="{colour}" stroke-width="2"{dash}/>')
            parts.append(f'<text x="{lx + 32}" y="{legend_y + 4}">{regime}, {acc}</text>')
            legend_y += 18
    parts.append(f'<text x="{left + pw + 15}" y="{legend_y + 10}" fill="#999">dotted: k '
                 f'(every proposal accepted)</text>')
    parts.append("</svg>")
    with open(out, "w") as f:
        f.write("\n".join(parts) + "\n")
    print(f"plot_table1: {len(cells)} cells -> {out}")


if __name__ == "__main__":
    main()
