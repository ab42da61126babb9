#!/usr/bin/env python3
"""Makes the TorchScript fixtures of the adapter's tests (tests/torchscript.rs) in OUT:

- tiny-llama/: a tiny random Llama exported by export_hf.py (cached and uncached, f32 and bf16),
  with SmolLM2's tokenizer, so the whole export path runs on every `make test`;
- small modules that break the calling convention in one way each.
"""

import os
import subprocess
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

VOCAB = 64


class Good(nn.Module):
    """The cached convention, minus the cache: logits depend on the current token only."""

    def __init__(self, vocab=VOCAB, kind=torch.float32):
        super().__init__()
        self.emb = nn.Embedding(vocab, 16).to(kind)
        self.out = nn.Linear(16, vocab).to(kind)

    def forward(self, input_ids, position_ids, attention_mask, k_cache, v_cache):
        h = self.emb(input_ids)
        return self.out(h), h


class LastOnly(Good):
    def forward(self, input_ids, position_ids, attention_mask, k_cache, v_cache):
        h = self.emb(input_ids)[:, -1:]
        return self.out(h), h


class WrongVocab(Good):
    def __init__(self):
        super().__init__(vocab=VOCAB + 1)


class ReturnsDict(Good):
    def forward(self, input_ids, position_ids, attention_mask, k_cache, v_cache):
        return {"logits": self.out(self.emb(input_ids))}


class NanLogits(Good):
    def forward(self, input_ids, position_ids, attention_mask, k_cache, v_cache):
        h = self.emb(input_ids)
        return self.out(h) * float("nan"), h


class OneInput(Good):
    def forward(self, input_ids):
        h = self.emb(input_ids)
        return self.out(h), h


class Prepacked(Good):
    """Logits are NaN until `prepack()` has run: proves the adapter calls it once on load."""

    packed: bool

    def __init__(self):
        super().__init__()
        self.packed = False

    def forward(self, input_ids, position_ids, attention_mask, k_cache, v_cache):
        h = self.emb(input_ids)
        out = self.out(h)
        if not self.packed:
            out = out * float("nan")
        return out, h

    @torch.jit.export
    def prepack(self):
        self.packed = True


def save(module, path):
    torch.jit.script(module.eval()).save(path)


def tiny_llama(out):
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok_file = os.path.join(os.path.dirname(__file__), "..", "models", "smollm2", "tokenizer.json")
    tok = PreTrainedTokenizerFast(tokenizer_file=tok_file, eos_token="<|im_end|>", bos_token="<|im_start|>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # larger weights than the default init: confident, varied predictions
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        script = os.path.join(os.path.dirname(__file__), "export_hf.py")
        subprocess.run([sys.executable, script, "--hf-dir", tmp, "--out", os.path.join(out, "tiny-llama"),
                        "--dtypes", "f32,bf16", "--uncached", "--max-context", "256", "--oracle-tokens", "16"],
                       check=True)


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    save(Good(), os.path.join(out, "good.pt"))
    save(Good(kind=torch.float64), os.path.join(out, "float64.pt"))
    save(LastOnly(), os.path.join(out, "last_position_only.pt"))
    save(WrongVocab(), os.path.join(out, "wrong_vocab.pt"))
    save(ReturnsDict(), os.path.join(out, "returns_dict.pt"))
    save(NanLogits(), os.path.join(out, "nan_logits.pt"))
    save(OneInput(), os.path.join(out, "one_input.pt"))
    save(Prepacked(), os.path.join(out, "prepacked.pt"))
    with open(os.path.join(out, "not_torchscript.pt"), "wb") as f:
        f.write(b"this is not a TorchScript archive")
    tiny_llama(out)
    print(f"make_fixtures: wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
