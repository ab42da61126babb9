"""What the family adapters share: rotary tables, sliding windows, norm weights."""

from export_decoder import DecoderSpec, NormSpec, RopeSpec

# Rotary variants whose frequencies depend on the sequence length at run time: the exported
# decoder has fixed tables, so these are refused rather than computed wrongly.
DYNAMIC_ROPE = ("dynamic", "longrope")


def rope(rotary_emb, layer_type=None):
    """The rotary table transformers computes for (a layer type of) the model, recomputed in
    float32 from the config: the module's own buffer is cast with the model (`.to(bfloat16)`
    rounds every frequency), which the export does not copy."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    kind = rotary_emb.rope_type
    if isinstance(kind, dict):
        kind = kind.get(layer_type)
    if kind in DYNAMIC_ROPE:
        raise ValueError(f"rotary embedding type {kind!r} changes with the sequence length; the "
                         "cached forms have fixed tables")
    init = rotary_emb.compute_default_rope_parameters if kind == "default" else ROPE_INIT_FUNCTIONS[kind]
    kwargs = {"layer_type": layer_type} if layer_type is not None and isinstance(rotary_emb.rope_type, dict) else {}
    inv_freq, scaling = init(rotary_emb.config, **kwargs)
    return RopeSpec(inv_freq.detach().float().clone(), float(scaling))


def windows(cfg):
    """Each layer's sliding window (None: global attention), as transformers applies them: per
    `layer_types` where the config has them, otherwise `sliding_window` for every layer."""
    n = cfg.num_hidden_layers
    w = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None)
    if types:
        unknown = set(types) - {"full_attention", "sliding_attention"}
        if unknown:
            raise ValueError(f"layer types {sorted(unknown)} are not supported")
        return [w if t == "sliding_attention" else None for t in types[:n]]
    return [w] * n


def norm(hf_norm, gemma=False):
    """A transformers RMSNorm as a `NormSpec` (Gemma's norms scale by `1 + weight`, in float32)."""
    eps = getattr(hf_norm, "variance_epsilon", None)
    if eps is None:
        eps = hf_norm.eps
    w = hf_norm.weight.detach()
    if gemma:
        return NormSpec(1.0 + w.float(), float(eps), f32_scale=True)
    return NormSpec(w, float(eps))


def bias(linear):
    return None if linear.bias is None else linear.bias.detach()


def cat_bias(*linears):
    """The fused product's bias, when any part has one (the others' are zero)."""
    if all(l.bias is None for l in linears):
        return None
    import torch

    return torch.cat([l.bias.detach() if l.bias is not None
                      else l.weight.new_zeros(l.weight.size(0)) for l in linears])


def head_dim(cfg):
    return int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)


def tied(hf_model):
    return hf_model.lm_head.weight.data_ptr() == hf_model.model.embed_tokens.weight.data_ptr()


def silu_decoder(hf_model, layers, ropes):
    """The `DecoderSpec` of a Llama-shaped model (SiLU gates, `head_dim ** -0.5` scores, one
    final norm, an optionally tied and biased head) around its described `layers`."""
    cfg = hf_model.config
    inner = hf_model.model
    act = getattr(cfg, "hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"activation {act!r} is not supported (silu is)")
    hd = head_dim(cfg)
    return DecoderSpec(
        layers=layers, embed=inner.embed_tokens.weight.detach(), norm=norm(inner.norm),
        lm_head=hf_model.lm_head.weight.detach(), lm_head_bias=bias(hf_model.lm_head),
        tied=tied(hf_model), ropes=ropes, heads=cfg.num_attention_heads,
        kv_heads=cfg.num_key_value_heads, head_dim=hd, intermediate=cfg.intermediate_size,
        attn_scale=hd ** -0.5,
    )
