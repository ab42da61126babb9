"""Phi 3 / Phi 4 mini: fused query/key/value and gate/up weights, partial rotary embeddings,
optional sliding window."""

from export_decoder import LayerSpec

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
    return common.silu_decoder(hf_model, layers, ropes)
