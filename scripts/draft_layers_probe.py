"""Does SmolLM2's feature draft guess better when it also reads the base's lower layers?

EAGLE-3 feeds its draft a fusion of a low, a middle and a high layer's states instead of the
final one alone. This probe measures that on the crate's own draft, before any of it is built
into the library: it teacher-forces SmolLM2 (transformers, float32) over answer shards written
by `examples/draft_answers.rs`, keeps the final state, the greedy token and the chosen lower
layers' states after every position, then fine-tunes two copies of a shipped draft the same way
the crate's trainer does (three unrolled draft steps on the draft's own predictions, feature
regression, the 8,192-token shortlist, the same batches in the same order):

- `final`: the draft as it is, reading the final state alone (the control);
- `layers`: the same draft plus one zero-initialised linear map from the lower layers' states
  (each RMS-normalised) added to the final state wherever the draft reads a true state, so the
  two start as the same function.

Both are then measured as `train_draft`'s `heldout_chat_answer_agreement` is: top-1 agreement
with the base's greedy token per draft step, over chains that start at a held-out prompt's last
token or later.

    python scripts/draft_layers_probe.py features --shards 'target/draft-data/train-answers-*' \
        --out target/probe/train.pt
    python scripts/draft_layers_probe.py train --variant layers --train target/probe/train.pt \
        --heldout target/probe/heldout.pt --steps 600 --report target/probe/layers.json
"""

import argparse
import glob
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

LAYERS = (2, 15, 27)  # residual stream after these layers (SmolLM2-135M has 30)


def rms(x):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


@torch.no_grad()
def features(args):
    from hf_reference import load_reference

    _, model, _ = load_reference(args.model)
    paths = sorted(glob.glob(args.shards))
    if not paths:
        sys.exit(f"draft_layers_probe: no shards match {args.shards}")
    seqs, lens = [], []
    for p in paths:
        d = load_file(p)
        off = d["offsets"].tolist()
        pl = d["prompt_lens"].tolist()
        for i in range(len(off) - 1):
            seqs.append(d["tokens"][off[i]:off[i + 1]])
            lens.append(pl[i])
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    final = [None] * len(seqs)
    extra = [None] * len(seqs)
    argmax = [None] * len(seqs)
    t0 = time.time()
    done = 0
    for b in range(0, len(order), args.batch):
        idx = order[b:b + args.batch]
        n = max(len(seqs[i]) for i in idx)
        ids = torch.zeros(len(idx), n, dtype=torch.long)
        mask = torch.zeros(len(idx), n, dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, :len(seqs[i])] = seqs[i]
            mask[r, :len(seqs[i])] = 1
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        hs = out.hidden_states
        for r, i in enumerate(idx):
            m = len(seqs[i])
            final[i] = hs[-1][r, :m].to(torch.float16)
            extra[i] = torch.cat([rms(hs[k][r, :m]) for k in LAYERS], -1).to(torch.float16)
            argmax[i] = out.logits[r, :m].argmax(-1)
        done += sum(len(seqs[i]) for i in idx)
        print(f"features: {done} positions, {done / (time.time() - t0):.0f}/s", file=sys.stderr)
    offsets = [0]
    for s in seqs:
        offsets.append(offsets[-1] + len(s))
    # How often the float32 argmax parts from the shard's (bf16-decoded) next answer token.
    mism = sum(int((a[:-1] != s[1:])[l:].sum()) for a, s, l in zip(argmax, seqs, lens))
    total = sum(max(len(s) - 1 - l, 0) for s, l in zip(seqs, lens))
    print(f"features: {len(seqs)} sequences, {offsets[-1]} positions; float32 argmax differs "
          f"from the decoded answer at {mism} of {total} answer positions", file=sys.stderr)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    torch.save({"tokens": torch.cat(seqs), "final": torch.cat(final), "extra": torch.cat(extra),
                "argmax": torch.cat(argmax), "offsets": offsets, "prompt_lens": lens}, args.out)


class Draft(torch.nn.Module):
    """The crate's one-layer feature draft (src/feature/model.rs), optionally with the lower
    layers' map."""

    def __init__(self, weights, n_heads, extra_width):
        super().__init__()
        w = {k: v.float() for k, v in weights.items()}
        self.d = w["fuse.bias"].shape[0]
        self.h = n_heads

        def linear(name):
            out, inp = w[name + ".weight"].shape
            lin = torch.nn.Linear(inp, out)
            lin.weight.data.copy_(w[name + ".weight"])
            lin.bias.data.copy_(w[name + ".bias"])
            return lin

        def norm(name):
            ln = torch.nn.LayerNorm(self.d, eps=1e-5)
            ln.weight.data.copy_(w[name + ".weight"])
            ln.bias.data.copy_(w[name + ".bias"])
            return ln

        self.fuse, self.qkv, self.proj = linear("fuse"), linear("qkv"), linear("proj")
        self.fc1, self.fc2 = linear("fc1"), linear("fc2")
        self.ln1, self.ln2 = norm("ln1"), norm("ln2")
        self.extra = None
        if extra_width:
            self.extra = torch.nn.Linear(extra_width, self.d, bias=False)
            torch.nn.init.zeros_(self.extra.weight)

    def true_input(self, final, extra):
        if self.extra is None:
            return final
        return final + self.extra(extra)


def shift(x, n, dim=1):
    """`x` moved `n` places later along `dim`, zeros in front."""
    if n == 0:
        return x
    pad = torch.zeros_like(x.narrow(dim, 0, n))
    return torch.cat([pad, x.narrow(dim, 0, x.shape[dim] - n)], dim)


def unrolled(draft, true_in, emb_next, valid, unroll):
    """The draft's outputs for every unrolled pass over whole sequences `[B, T, D]` (padded past
    `valid`), as the crate's trainer computes them: pass d reads pass d-1's prediction one place
    back, and attends over true keys up to its chain's start plus one key per later pass."""
    b, t, d = true_in.shape
    hd = d // draft.h
    scale = 1.0 / math.sqrt(hd)
    pos = torch.arange(t)
    outs, keys = [], []
    for dd in range(1, unroll + 1):
        if not outs:
            inp = true_in
        else:
            inp = shift(outs[-1], 1)
            inp = torch.where((pos == 0).view(1, t, 1), true_in, inp)
        x = draft.fuse(torch.cat([inp, emb_next], -1))
        qkv = draft.qkv(draft.ln1(x)).view(b, t, 3, draft.h, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        keys.append((k, v))
        k1, v1 = keys[0]
        reach = pos.view(1, t) <= (pos - (dd - 1)).view(t, 1)  # [T(query), T(key)]
        mask1 = reach.view(1, 1, t, t) & valid.view(b, 1, 1, t)
        scores = [(q @ k1.transpose(-2, -1) * scale).masked_fill(~mask1, float("-inf"))]
        vals = []
        for i in range(1, dd):
            back = dd - 1 - i
            ks, vs = shift(keys[i][0], back, 2), shift(keys[i][1], back, 2)
            ok = (pos >= back).view(1, 1, t, 1)
            scores.append(((q * ks).sum(-1, keepdim=True) * scale).masked_fill(~ok, float("-inf")))
            vals.append(vs)
        wts = torch.cat(scores, -1).softmax(-1)
        att = wts[..., :t] @ v1
        for j, vs in enumerate(vals):
            att = att + wts[..., t + j:t + j + 1] * vs
        y = att.transpose(1, 2).reshape(b, t, d)
        x = x + draft.proj(y)
        x = x + draft.fc2(F.gelu(draft.fc1(draft.ln2(x))))
        outs.append(x)
    return outs


class Data:
    def __init__(self, path):
        d = torch.load(path)
        self.tokens, self.final, self.extra = d["tokens"], d["final"], d["extra"]
        self.argmax, self.offsets, self.prompt_lens = d["argmax"], d["offsets"], d["prompt_lens"]

    def __len__(self):
        return len(self.prompt_lens)

    def batch(self, seqs, emb, columns):
        """Padded tensors of sequences `seqs`: true states, lower layers, the next token's
        embedding, target shortlist columns (-100: none), validity, where chains may start."""
        n = max(self.offsets[i + 1] - self.offsets[i] for i in seqs)
        b = len(seqs)
        d, e = self.final.shape[1], self.extra.shape[1]
        final = torch.zeros(b, n, d)
        target_state = torch.zeros(b, n, d)
        extra = torch.zeros(b, n, e)
        emb_next = torch.zeros(b, n, d)
        target = torch.full((b, n), -100, dtype=torch.long)
        valid = torch.zeros(b, n, dtype=torch.bool)
        start = torch.zeros(b, dtype=torch.long)
        for r, i in enumerate(seqs):
            a, z = self.offsets[i], self.offsets[i + 1]
            m = z - a
            final[r, :m] = self.final[a:z].float()
            extra[r, :m] = self.extra[a:z].float()
            valid[r, :m] = True
            # Position t reads token t+1's embedding and predicts the state and greedy token
            # after it (argmax[t+1]); the last position has nothing after it.
            emb_next[r, :m - 1] = emb[self.tokens[a + 1:z]]
            target_state[r, :m - 1] = self.final[a + 1:z].float()
            target[r, :m - 1] = columns[self.argmax[a + 1:z]]
            start[r] = self.prompt_lens[i] - 1
        return final, extra, emb_next, target_state, target, valid, start


def loss_and_hits(draft, short_emb, batch, unroll, reg_weight, answers_only=False):
    final, extra, emb_next, target_state, target, valid, start = batch
    b, t, _ = final.shape
    outs = unrolled(draft, draft.true_input(final, extra), emb_next, valid, unroll)
    pos = torch.arange(t).view(1, t)
    total = 0.0
    hits = []
    for dd, out in enumerate(outs, 1):
        chain = pos - (dd - 1)  # where this pass's chain starts
        ok = (chain >= 0) & (target != -100)
        if answers_only:
            ok = ok & (chain >= start.view(b, 1))
        logits = out @ short_emb.T
        tgt = target.masked_fill(~ok, -100)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=-100)
        okf = ok.unsqueeze(-1).float()
        reg = (F.smooth_l1_loss(out, target_state, reduction="none", beta=1.0) * okf).sum() / (
            okf.sum().clamp(min=1) * out.shape[-1])
        total = total + ce + reg_weight * reg
        correct = ((logits.argmax(-1) == tgt) & ok).sum().item()
        hits.append((correct, ok.sum().item()))
    return total / len(outs), hits


def evaluate(draft, short_emb, data, emb, columns, unroll, batch=16):
    hits = [[0, 0] for _ in range(unroll)]
    with torch.no_grad():
        for s in range(0, len(data), batch):
            _, h = loss_and_hits(draft, short_emb, data.batch(range(s, min(s + batch, len(data))),
                                                           emb, columns), unroll, 1.0, True)
            for j, (c, n) in enumerate(h):
                hits[j][0] += c
                hits[j][1] += n
    return [round(c / max(n, 1), 4) for c, n in hits]


def train(args):
    torch.manual_seed(args.seed)
    from hf_reference import load_reference

    _, model, _ = load_reference(args.model)
    emb = model.get_input_embeddings().weight.detach().float().clone()
    del model
    cfg = json.load(open(os.path.join(args.init, "draft.json")))
    shortlist = load_file(os.path.join(args.init, "shortlist.safetensors"))["shortlist"]
    columns = torch.full((emb.shape[0],), -100, dtype=torch.long)
    columns[shortlist] = torch.arange(len(shortlist))
    short_emb = emb[shortlist]
    tr = Data(args.train)
    heldout = {os.path.basename(h): Data(h) for h in args.heldout.split(",")}
    extra_width = tr.extra.shape[1] if args.variant == "layers" else 0
    draft = Draft(load_file(os.path.join(args.init, "draft.safetensors")), cfg["n_heads"], extra_width)
    report = {"variant": args.variant, "layers": list(LAYERS), "steps": args.steps,
              "train_sequences": len(tr), "train_positions": tr.offsets[-1],
              "heldout_sequences": {k: len(v) for k, v in heldout.items()}}

    def measure(when):
        report["heldout_" + when] = {k: evaluate(draft, short_emb, v, emb, columns, args.unroll)
                                     for k, v in heldout.items()}
        print(f"{args.variant}: held-out answer agreement {when} {report['heldout_' + when]}",
              file=sys.stderr)

    measure("before")
    decay, no_decay = [], []
    for n, p in draft.named_parameters():
        (no_decay if p.dim() < 2 else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.time()
    run = [[0, 0] for _ in range(args.unroll)]
    for step in range(args.steps):
        warm = min(1.0, (step + 1) / args.warmup)
        cos = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for g in opt.param_groups:
            g["lr"] = args.lr * warm * cos
        seqs = torch.randint(len(tr), (args.batch,), generator=gen).tolist()
        loss, hits = loss_and_hits(draft, short_emb, tr.batch(seqs, emb, columns), args.unroll,
                                   args.reg_weight)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(draft.parameters(), 1.0)
        opt.step()
        for j, (c, n) in enumerate(hits):
            run[j][0] += c
            run[j][1] += n
        if (step + 1) % 25 == 0:
            agree = [round(c / max(n, 1), 3) for c, n in run]
            print(f"{args.variant}: step {step + 1}, loss {loss.item():.3f}, training agreement "
                  f"{agree}, {(time.time() - t0) / (step + 1):.2f} s/step", file=sys.stderr)
            run = [[0, 0] for _ in range(args.unroll)]
    report["train_seconds"] = round(time.time() - t0)
    measure("after")
    if args.save:
        save(draft, args, cfg)
    os.makedirs(os.path.dirname(args.report) or ".", exist_ok=True)
    with open(args.report, "w") as f:
        json.dump(report, f, indent=1)


def save(draft, args, cfg):
    """Writes the trained draft in the crate's form (`FeatureDraft::load` reads it), so that
    `decode --backend native --proposer eagle:DIR` measures it; the lower layers' map as the
    draft's `taps` (the crate counts layers from 0: transformers' hidden state k is the
    residual after layer k - 1)."""
    import shutil
    from safetensors.torch import save_file

    os.makedirs(args.save, exist_ok=True)
    out = {}
    for name in ("fuse", "qkv", "proj", "fc1", "fc2", "ln1", "ln2"):
        mod = getattr(draft, name)
        out[name + ".weight"] = mod.weight.detach().to(torch.bfloat16).contiguous()
        out[name + ".bias"] = mod.bias.detach().to(torch.bfloat16).contiguous()
    cfg = dict(cfg)
    if draft.extra is not None:
        out["taps.weight"] = draft.extra.weight.detach().to(torch.bfloat16).contiguous()
        out["taps.bias"] = torch.zeros(draft.d, dtype=torch.bfloat16)
        cfg["taps"] = [k - 1 for k in LAYERS]
    save_file(out, os.path.join(args.save, "draft.safetensors"))
    with open(os.path.join(args.save, "draft.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    shutil.copy(os.path.join(args.init, "shortlist.safetensors"), args.save)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("features")
    f.add_argument("--model", default="models/smollm2")
    f.add_argument("--shards", required=True)
    f.add_argument("--out", required=True)
    f.add_argument("--batch", type=int, default=16)
    t = sub.add_parser("train")
    t.add_argument("--model", default="models/smollm2")
    t.add_argument("--init", default="assets/drafts/smollm2")
    t.add_argument("--variant", choices=["final", "layers"], required=True)
    t.add_argument("--train", required=True)
    t.add_argument("--heldout", required=True, help="feature files, comma-separated")
    t.add_argument("--steps", type=int, default=600)
    t.add_argument("--batch", type=int, default=8)
    t.add_argument("--unroll", type=int, default=3)
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--warmup", type=int, default=30)
    t.add_argument("--reg-weight", type=float, default=1.0)
    t.add_argument("--seed", type=int, default=7)
    t.add_argument("--report", required=True)
    t.add_argument("--save", help="write the trained draft here, in the crate's form")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("PROBE_THREADS", "2")))
    (features if args.cmd == "features" else train)(args)


if __name__ == "__main__":
    main()
