#!/usr/bin/env python3
"""The export's checks for every architecture family, on small randomly initialised transformers
models (a config built here per family: no downloads), each exported like a real checkpoint by
scripts/export_hf.py into `--out/<family>` with oracles from transformers' own greedy `generate`.

Every family is exported in f32 and bf16 (cached, masked and uncached forms) and must pass the
same checks as a real model: f32 within 2e-3 with identical argmaxes over one pass, blocks of
5/2/1 and masked rows (two rows of different lengths, a row after a rejected block), bf16 no
further from float32 than the eager bf16 model, and, with sliding windows (6-7 positions here),
the same past the window. Weights are drawn so that every norm and bias matters (transformers
initialises norms to one and biases to zero, which would hide a misplaced norm or a lost bias).
An architecture outside scripts/families/ (GPT-2) is exported in the uncached form only.

    scripts/check_families.py --out target/families [--only gemma3_text,qwen2]
"""

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import export_hf  # noqa: E402

SMALL = dict(vocab_size=160, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
             initializer_range=0.1, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def configs():
    """family name -> (config class, extra settings). Each exercises what its family adds."""
    from transformers import (Gemma2Config, Gemma3TextConfig, GemmaConfig, GPT2Config, LlamaConfig,
                              MistralConfig, Phi3Config, Qwen2Config, Qwen3Config)

    return {
        # Llama 3.2's rotary scaling ("llama3"), untied head.
        "llama": (LlamaConfig, dict(tie_word_embeddings=False, rope_parameters=dict(
            rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
            high_freq_factor=4.0, original_max_position_embeddings=64))),
        # A sliding window on every layer.
        "mistral": (MistralConfig, dict(sliding_window=6, tie_word_embeddings=False)),
        # Query/key/value bias; sliding windows from layer 2 on (max_window_layers).
        "qwen2": (Qwen2Config, dict(use_sliding_window=True, sliding_window=6, max_window_layers=2,
                                    tie_word_embeddings=True)),
        # Query/key norms, head_dim larger than hidden / heads.
        "qwen3": (Qwen3Config, dict(head_dim=32, tie_word_embeddings=True)),
        # (1 + weight) norms, scaled embeddings, GELU, multi-query attention.
        "gemma": (GemmaConfig, dict(head_dim=16, num_key_value_heads=1,
                                    hidden_activation="gelu_pytorch_tanh")),
        # Four norms per layer, alternating sliding windows, score and logit soft-capping.
        "gemma2": (Gemma2Config, dict(head_dim=16, sliding_window=6, query_pre_attn_scalar=24,
                                      attn_logit_softcapping=5.0, final_logit_softcapping=3.0,
                                      layer_types=["sliding_attention", "full_attention"] * 2)),
        # Query/key norms, local layers with their own rotary base, head_dim 32.
        "gemma3_text": (Gemma3TextConfig, dict(
            head_dim=32, sliding_window=6, query_pre_attn_scalar=32,
            layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
            rope_parameters={"full_attention": dict(rope_type="linear", factor=2.0, rope_theta=1e6),
                             "sliding_attention": dict(rope_type="default", rope_theta=1e4)})),
        # Fused projections, partial rotary embeddings, a sliding window.
        "phi3": (Phi3Config, dict(sliding_window=7, rope_parameters=dict(
            rope_type="default", rope_theta=10000.0, partial_rotary_factor=0.5))),
        # Outside the families: the uncached form only.
        "gpt2": (GPT2Config, dict(n_embd=64, n_layer=2, n_head=4, n_positions=256, vocab_size=160,
                                  bos_token_id=1, eos_token_id=2)),
    }


def random_model(cls, extra, seed):
    from transformers import AutoModelForCausalLM

    settings = dict(SMALL)
    if cls.model_type == "gpt2":
        settings = {}
    settings.update(extra)
    cfg = cls(**settings)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:  # norm weights and biases: away from their neutral values
                p.add_(torch.randn_like(p) * 0.1)
    return model


def word_tokenizer(out, vocab_size):
    """A word-level `tokenizer.json` (`t0 t1 ...`, one word per id) so that an export of random
    weights loads like a real one (ModelBundle, the decode example)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.save(os.path.join(out, "tokenizer.json"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", help="comma-separated family names")
    ap.add_argument("--dtypes", default="f32,bf16")
    args = ap.parse_args()
    table = configs()
    names = args.only.split(",") if args.only else list(table)
    for name in names:
        if name not in table:
            sys.exit(f"check_families: unknown family {name!r} (known: {', '.join(table)})")
    g = torch.Generator().manual_seed(1)
    check_ids = torch.randint(3, 160, (1, 24), generator=g)
    prompts = [(f"random prompt {i}", False, torch.randint(3, 160, (1, n), generator=g))
               for i, n in enumerate([3, 8, 12])]
    for i, name in enumerate(names):
        t0 = time.time()
        cls, extra = table[name]
        model = random_model(cls, extra, seed=100 + i)
        export_hf.log(f"=== {name}: {model.config.model_type}, random weights")
        out = os.path.join(args.out, name)
        dtypes = [d for d in args.dtypes.split(",") if d]
        export_hf.export_model(model, None, {"random": name, "seed": 100 + i}, out, dtypes, max_context=64,
                               uncached=True, oracle_tokens=16, check_ids=check_ids, prompts=prompts)
        word_tokenizer(out, model.config.vocab_size)
        export_hf.log(f"=== {name} passed in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
