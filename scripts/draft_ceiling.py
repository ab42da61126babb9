"""Where the feature draft's first guesses fail, against how sure SmolLM2 itself is.

For answers of SmolLM2's own greedy decoding (held-out shards written by
`examples/draft_answers.rs`, and `decode --json` output for chat24's prompts), this
teacher-forces SmolLM2 in transformers float32 and, at every answer position, records the base
model's probability of its own greedy token (its top-1 probability) and whether the shipped
draft's first guess (the draft read the state before and the embedding of the token before the
one it guesses, as in decoding's first draft step) equals that token. It prints, per set:
the share of positions in bands of the base's top-1 probability, the draft's agreement in each
band, and the share of greedy tokens outside the draft's shortlist (guesses it can never make).

    .venv/bin/python scripts/draft_ceiling.py \
        --shards 'target/draft-data/chat-heldout-0*' --shards 'target/draft-data/chat-heldout-wide-*' \
        --decoded /tmp/greedy24.jsonl --prompts examples/prompts/chat24.txt --json target/ceiling.json
"""

import argparse
import glob
import json
import os
import sys

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

BANDS = (0.0, 0.3, 0.5, 0.7, 0.9, 1.0001)


def shard_sequences(pattern):
    seqs = []
    for p in sorted(glob.glob(pattern)):
        d = load_file(p)
        off, pl = d["offsets"].tolist(), d["prompt_lens"].tolist()
        for i in range(len(off) - 1):
            seqs.append((d["tokens"][off[i]:off[i + 1]], pl[i]))
    if not seqs:
        sys.exit(f"draft_ceiling: no shards match {pattern}")
    return seqs


def decoded_sequences(tok, decoded, prompts):
    texts = [l.strip() for l in open(prompts) if l.strip()]
    rows = [json.loads(l) for l in open(decoded) if l.startswith("{")]
    seqs = []
    for row in rows:
        text = tok.apply_chat_template([{"role": "user", "content": row["prompt"]}],
                                       tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False).input_ids
        seqs.append((torch.tensor(ids + row["tokens"]), len(ids)))
    assert len(seqs) == len(texts), "the decoded file should hold every prompt"
    return seqs


@torch.no_grad()
def measure(model, draft, short_emb, shortlist, emb, seqs):
    from draft_layers_probe import unrolled

    listed = torch.zeros(emb.shape[0], dtype=torch.bool)
    listed[shortlist] = True
    p1s, hits, outs = [], [], []
    for ids, plen in seqs:
        out = model(input_ids=ids.view(1, -1), output_hidden_states=True)
        probs = out.logits[0].float().softmax(-1)
        top, arg = probs.max(-1)
        final = out.hidden_states[-1][0].float()
        t = ids.shape[0]
        # Position i reads the state after token i and the embedding of token i + 1, and
        # guesses the base's greedy token after token i + 1 (arg[i + 1]).
        emb_next = torch.zeros(1, t, final.shape[1])
        emb_next[0, :t - 1] = emb[ids[1:]]
        x = unrolled(draft, final.view(1, t, -1), emb_next, torch.ones(1, t, dtype=torch.bool), 1)[0]
        guess = shortlist[(x[0] @ short_emb.T).argmax(-1)]
        # Guesses decoding asks for: chains from the prompt's last token on, whose target is
        # an answer token (the state before the last answer token guesses past the end).
        for i in range(plen - 1, t - 2):
            p1s.append(top[i + 1].item())
            hits.append(bool(guess[i] == arg[i + 1]))
            outs.append(not bool(listed[arg[i + 1]]))
    p1 = torch.tensor(p1s)
    hit = torch.tensor(hits)
    out = torch.tensor(outs)
    bands = []
    for lo, hi in zip(BANDS, BANDS[1:]):
        m = (p1 >= lo) & (p1 < hi)
        bands.append({"band": f"{lo:.1f}-{min(hi, 1.0):.1f}", "share": round(m.float().mean().item(), 4),
                      "agreement": round(hit[m].float().mean().item(), 4) if m.any() else None,
                      "outside_shortlist": round(out[m].float().mean().item(), 4) if m.any() else None})
    return {"positions": len(p1s), "agreement": round(hit.float().mean().item(), 4),
            "mean_top1": round(p1.mean().item(), 4), "outside_shortlist": round(out.float().mean().item(), 4),
            "bands": bands}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="models/smollm2")
    ap.add_argument("--draft", default="assets/drafts/smollm2")
    ap.add_argument("--shards", action="append", default=[])
    ap.add_argument("--decoded", help="decode --json output (answers to --prompts)")
    ap.add_argument("--prompts")
    ap.add_argument("--json", help="write the figures here too")
    ap.add_argument("--shortlist", type=int, help="score only the first N ids of the draft's "
                    "shortlist, or with 0 the whole vocabulary (default: the shortlist as shipped)")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count())
    from draft_layers_probe import Draft
    from hf_reference import load_reference

    tok, model, _ = load_reference(args.model)
    emb = model.get_input_embeddings().weight.float()
    cfg = json.load(open(os.path.join(args.draft, "draft.json")))
    draft = Draft(load_file(os.path.join(args.draft, "draft.safetensors")), cfg["n_heads"], 0).eval()
    shortlist = load_file(os.path.join(args.draft, "shortlist.safetensors"))["shortlist"].long()
    if args.shortlist == 0:
        shortlist = torch.arange(emb.shape[0])
    elif args.shortlist:
        shortlist = shortlist[:args.shortlist]
    short_emb = emb[shortlist]
    sets = [(p, shard_sequences(p)) for p in args.shards]
    if args.decoded:
        sets.append((args.decoded, decoded_sequences(tok, args.decoded, args.prompts)))
    report = {}
    print("| set | answer positions | draft's first guess right | base top-1 probability, mean | "
          + " | ".join(f"p {lo:.1f}-{min(hi, 1.0):.1f}: share, agreement, outside the shortlist"
                       for lo, hi in zip(BANDS, BANDS[1:]))
          + " | greedy token outside the shortlist |")
    print("|---" * (5 + len(BANDS)) + "|")
    for name, seqs in sets:
        r = measure(model, draft, short_emb, shortlist, emb, seqs)
        report[name] = r
        cells = " | ".join("-" if b["agreement"] is None else
                           f"{b['share']:.2f}, {b['agreement']:.2f}, {b['outside_shortlist']:.2f}"
                           for b in r["bands"])
        print(f"| {name} | {r['positions']:,} | {r['agreement']:.3f} | {r['mean_top1']:.3f} | {cells} | "
              f"{r['outside_shortlist']:.3f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
