"""Architecture families of the export: each module maps a transformers model of its family to
the shared decoder's `DecoderSpec` (scripts/export_decoder.py). `FAMILIES` is what the cached and
masked forms support; any other causal LM has the uncached form only."""

from . import common, gemma, llama, phi3  # noqa: F401 (common: used by export_hf)

# transformers' `config.model_type` -> the adapter that describes it.
FAMILIES = {
    "llama": llama.describe,
    "mistral": llama.describe,
    "qwen2": llama.describe,
    "qwen3": llama.describe,
    "gemma": gemma.describe,
    "gemma2": gemma.describe,
    "gemma3_text": gemma.describe,
    "phi3": phi3.describe,
}


class Unsupported(Exception):
    """The model cannot be described by its family's adapter (one line, for the user)."""


def describe(hf_model):
    """The `DecoderSpec` of `hf_model`, or `Unsupported`."""
    kind = hf_model.config.model_type
    if kind not in FAMILIES:
        raise Unsupported(f"no cached or masked form for architecture {kind!r} (they exist for "
                          f"{', '.join(sorted(FAMILIES))})")
    try:
        return FAMILIES[kind](hf_model)
    except ValueError as e:
        raise Unsupported(f"{kind}: {e}") from None
