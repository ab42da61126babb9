"""Phi 3 / Phi 4 mini: fused query/key/value and gate/up weights, partial rotary embeddings,
optional sliding window."""

from export_decoder import DecoderSpec, LayerSpec

from . import common


def describe(hf_model):
    cfg = hf_model.config
    inner = hf_model.model
    ropes = {"global": common.rope(inner.rotary_emb)}
    layers = []
    for layer, window in zip(inner.layers, common.windows(cfg)):
        a, m = layer.self_attn, layer.mlp
        layers.append(LayerSpec(
            qkv=a.qkv_proj.weight.detach(), qkv_bias=common.bias(a.qkv_proj),
            o=a.o_proj.weight.detach(), o_bias=common.bias(a.o_proj),
            gate_up=m.gate_up_proj.weight.detach(), gate_up_bias=common.bias(m.gate_up_proj),
            down=m.down_proj.weight.detach(), down_bias=common.bias(m.down_proj),
            attn_norm=common.norm(layer.input_layernorm),
            mlp_norm=common.norm(layer.post_attention_layernorm),
            window=window,
        ))
    if cfg.hidden_act != "silu":
        raise ValueError(f"activation {cfg.hidden_act!r} is not supported (silu is)")
    hd = common.head_dim(cfg)
    return DecoderSpec(
        layers=layers, embed=inner.embed_tokens.weight.detach(), norm=common.norm(inner.norm),
        lm_head=hf_model.lm_head.weight.detach(), lm_head_bias=common.bias(hf_model.lm_head),
        tied=common.tied(hf_model), ropes=ropes, heads=cfg.num_attention_heads,
        kv_heads=cfg.num_key_value_heads, head_dim=hd, intermediate=cfg.intermediate_size,
        attn_scale=hd ** -0.5,
    )
