"""Gemma 1/2/3 (text): norms that scale by `1 + weight` in float32, embeddings scaled by
sqrt(hidden size), GELU (tanh) gates, `query_pre_attn_scalar`; Gemma 2/3 add norms on the
attention's and the MLP's outputs and sliding-window layers interleaved with global ones; Gemma 2
soft-caps attention scores and logits; Gemma 3 adds query/key norms and a separate rotary table
for its local layers."""

import torch

from export_decoder import DecoderSpec, LayerSpec

from . import common


def describe(hf_model):
    cfg = hf_model.config
    inner = hf_model.model
    if getattr(cfg, "use_bidirectional_attention", False):
        raise ValueError("bidirectional attention (an embedding model) is not a causal LM")
    types = getattr(cfg, "layer_types", None)
    local_type = "sliding_attention" if types and "sliding_attention" in types else None
    ropes = {"global": common.rope(inner.rotary_emb, "full_attention" if local_type else None)}
    if local_type and hasattr(inner.rotary_emb, f"{local_type}_inv_freq"):
        ropes["local"] = common.rope(inner.rotary_emb, local_type)
    layers = []
    for i, (layer, window) in enumerate(zip(inner.layers, common.windows(cfg))):
        a, m = layer.self_attn, layer.mlp
        four_norms = hasattr(layer, "pre_feedforward_layernorm")  # Gemma 2/3
        q_norm = getattr(a, "q_norm", None)
        k_norm = getattr(a, "k_norm", None)
        layers.append(LayerSpec(
            qkv=torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).detach(),
            qkv_bias=common.cat_bias(a.q_proj, a.k_proj, a.v_proj),
            o=a.o_proj.weight.detach(), o_bias=common.bias(a.o_proj),
            gate_up=torch.cat([m.gate_proj.weight, m.up_proj.weight]).detach(),
            down=m.down_proj.weight.detach(),
            attn_norm=common.norm(layer.input_layernorm, gemma=True),
            mlp_norm=common.norm(layer.pre_feedforward_layernorm if four_norms
                                 else layer.post_attention_layernorm, gemma=True),
            attn_out_norm=common.norm(layer.post_attention_layernorm, gemma=True) if four_norms else None,
            mlp_out_norm=common.norm(layer.post_feedforward_layernorm, gemma=True) if four_norms else None,
            q_norm=None if q_norm is None else common.norm(q_norm, gemma=True),
            k_norm=None if k_norm is None else common.norm(k_norm, gemma=True),
            window=window,
            rope="local" if (window is not None and "local" in ropes) else "global",
        ))
    act = getattr(cfg, "hidden_activation", None) or cfg.hidden_act
    if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
        raise ValueError(f"activation {act!r} is not supported (gelu_pytorch_tanh is)")
    hd = common.head_dim(cfg)
    scalar = getattr(cfg, "query_pre_attn_scalar", None) or hd
    return DecoderSpec(
        layers=layers, embed=inner.embed_tokens.weight.detach(), norm=common.norm(inner.norm, gemma=True),
        lm_head=hf_model.lm_head.weight.detach(), tied=common.tied(hf_model), ropes=ropes,
        heads=cfg.num_attention_heads, kv_heads=cfg.num_key_value_heads, head_dim=hd,
        intermediate=cfg.intermediate_size, attn_scale=float(scalar) ** -0.5, activation="gelu_tanh",
        embed_scale=float(cfg.hidden_size) ** 0.5,
        attn_softcap=getattr(cfg, "attn_logit_softcapping", None),
        final_softcap=getattr(cfg, "final_logit_softcapping", None),
    )
