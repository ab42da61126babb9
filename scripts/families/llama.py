"""Llama and its close relatives: Llama 2/3 (and SmolLM), Mistral (sliding window), Qwen 2
(query/key/value bias, optional sliding window), Qwen 3 (query/key norms)."""

import torch

from export_decoder import LayerSpec

from . import common


def describe(hf_model):
    cfg = hf_model.config
    inner = hf_model.model
    ropes = {"global": common.rope(inner.rotary_emb)}
    layers = []
    for layer, window in zip(inner.layers, common.windows(cfg)):
        a, m = layer.self_attn, layer.mlp
        q_norm = getattr(a, "q_norm", None)
        k_norm = getattr(a, "k_norm", None)
        layers.append(LayerSpec(
            qkv=torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).detach(),
            qkv_bias=common.cat_bias(a.q_proj, a.k_proj, a.v_proj),
            o=a.o_proj.weight.detach(), o_bias=common.bias(a.o_proj),
            gate_up=torch.cat([m.gate_proj.weight, m.up_proj.weight]).detach(),
            gate_up_bias=common.cat_bias(m.gate_proj, m.up_proj),
            down=m.down_proj.weight.detach(), down_bias=common.bias(m.down_proj),
            attn_norm=common.norm(layer.input_layernorm),
            mlp_norm=common.norm(layer.post_attention_layernorm),
            q_norm=None if q_norm is None else common.norm(q_norm),
            k_norm=None if k_norm is None else common.norm(k_norm),
            window=window,
        ))
    return common.silu_decoder(hf_model, layers, ropes)
