"""The Llama-family decoder in blockwise's cached and masked calling conventions (see
scripts/export_hf.py for the conventions), written for TorchScript's `script` so that a module can
prepack its weights once after loading (`prepack()`, which the crate calls).

The matrix products are pluggable, one class per weight form, chosen by what was measured fastest
on CPU (docs/benchmarks.md, "Where the time of a step goes"):

- `DenseLinear` (f32): the weight stored transposed, `[in, out]` contiguous, multiplied as
  `x @ W`; MKL reads it in order, 10-25% faster than `F.linear` for 1-16 rows;
- `PackedLinear` (bf16): oneDNN's linear with the weight reordered once into oneDNN's blocked
  layout by `prepack()`, instead of on every call (1.4-2x faster than `F.linear` in bf16);
- `Int8Linear` (int8): int8 weights with a scale per output channel, bfloat16 activations
  (`torch._weight_int8pack_mm`): half the bytes of bf16.

Query/key/value and gate/up projections are fused into one product each (a fused product's rows
are the separate ones' rows, so every form's numbers are unchanged by the fusion: per output
channel quantisation keeps that true for int8 too).

The int8 form computes in bfloat16 (its caches, norms and attention are bfloat16).
"""

from typing import List, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F


class DenseLinear(nn.Module):
    """`x @ W^T (+ b)` with `W^T` stored contiguous."""

    bias: Optional[torch.Tensor]

    def __init__(self, weight, bias=None):
        super().__init__()
        self.wt = nn.Parameter(weight.detach().t().contiguous(), requires_grad=False)
        self.bias = None if bias is None else bias.detach().clone()

    def forward(self, x):
        y = torch.matmul(x, self.wt)
        b = self.bias
        if b is not None:
            y = y + b
        return y

    @torch.jit.export
    def prepack(self):
        pass


class PackedLinear(nn.Module):
    """oneDNN's linear; `prepack()` reorders the weight once (the packed weight cannot be saved,
    so the file holds the plain one and the crate prepacks after loading)."""

    bias: Optional[torch.Tensor]
    packed: bool

    def __init__(self, weight, bias=None):
        super().__init__()
        self.w = weight.detach().contiguous().clone()
        self.bias = None if bias is None else bias.detach().clone()
        self.packed = False

    def forward(self, x):
        if x.is_cuda:  # oneDNN is the CPU's library; on a GPU, the plain product
            return F.linear(x, self.w, self.bias)
        return torch.ops.mkldnn._linear_pointwise(
            x, self.w, self.bias, "none", torch.jit.annotate(List[Optional[Union[int, float, complex]]], []), "")

    @torch.jit.export
    def prepack(self):
        if not self.packed and not self.w.is_cuda:
            self.w = torch.ops.mkldnn._reorder_linear_weight(self.w, 1)
            self.packed = True


def quantize_int8(weight):
    """Symmetric per-output-channel int8: `weight ~= q * scale[:, None]`, |q| <= 127."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


class Int8Linear(nn.Module):
    """Weight-only int8: int8 weights with one bfloat16 scale per output channel, bfloat16
    activations, libtorch's `_weight_int8pack_mm` (x @ q^T, scaled per channel, accumulated in
    float32). Half the bytes of bf16 per step. (Dynamic int8 activations, fbgemm's
    `quantized::linear_dynamic`, were measured too: faster still, but SmolLM2's activation
    outliers make its argmax agree with float32 on under half the positions.)"""

    bias: Optional[torch.Tensor]

    def __init__(self, weight, bias=None):
        super().__init__()
        q, scale = quantize_int8(weight)
        self.q = q
        self.scale = scale.to(torch.bfloat16)
        self.bias = None if bias is None else bias.detach().to(torch.bfloat16).clone()

    def forward(self, x):
        shape = x.shape
        if x.is_cuda:  # the CPU kernel's equivalent: dequantize, then the plain product
            y = F.linear(x.reshape(-1, shape[-1]), self.q.to(x.dtype) * self.scale[:, None].to(x.dtype))
        else:
            y = torch._weight_int8pack_mm(x.reshape(-1, shape[-1]), self.q, self.scale)
        b = self.bias
        if b is not None:
            y = y + b
        return y.view(shape[:-1] + [y.size(-1)])

    @torch.jit.export
    def prepack(self):
        pass


def dequantized(weight):
    """The weight an int8 export computes with, as bfloat16-castable float32 (for oracles)."""
    q, scale = quantize_int8(weight)
    return q.float() * scale.to(torch.bfloat16).float()[:, None]


LINEARS = {"f32": DenseLinear, "bf16": PackedLinear, "int8": Int8Linear}


class Embed(nn.Module):
    """Token embeddings from a `[V, D]` table."""

    def __init__(self, weight):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)

    def forward(self, ids):
        return F.embedding(ids, self.weight)


class ColumnsEmbed(nn.Module):
    """Token embeddings read from a tied `DenseLinear` head's `[D, V]` weight (its columns), so
    the table is stored once."""

    def __init__(self, head: DenseLinear):
        super().__init__()
        self.wt = head.wt

    def forward(self, ids):
        b, t = ids.size(0), ids.size(1)
        return self.wt.index_select(1, ids.reshape(-1)).t().reshape(b, t, self.wt.size(0))


def rotate_half(x):
    h = x.size(-1) // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class RmsNorm(nn.Module):
    """Llama's RMSNorm: computed in float32, scaled in the model's dtype."""

    def __init__(self, hf):
        super().__init__()
        self.weight = nn.Parameter(hf.weight.detach().clone(), requires_grad=False)
        self.eps = float(hf.variance_epsilon)

    def forward(self, x):
        if x.dtype == torch.float32:
            return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class Layer(nn.Module):
    def __init__(self, hf, cfg, linear):
        super().__init__()
        a, m = hf.self_attn, hf.mlp
        self.ln1 = RmsNorm(hf.input_layernorm)
        self.ln2 = RmsNorm(hf.post_attention_layernorm)

        def w(lin):
            return lin.weight.detach()

        def b(lin):
            return None if lin.bias is None else lin.bias.detach()

        qkv_bias = None
        if a.q_proj.bias is not None:
            qkv_bias = torch.cat([b(a.q_proj), b(a.k_proj), b(a.v_proj)])
        self.qkv = linear(torch.cat([w(a.q_proj), w(a.k_proj), w(a.v_proj)]), qkv_bias)
        self.o = linear(w(a.o_proj), b(a.o_proj))
        self.gate_up = linear(torch.cat([w(m.gate_proj), w(m.up_proj)]), None)
        self.down = linear(w(m.down_proj), None)
        self.heads = int(cfg.num_attention_heads)
        self.kv_heads = int(cfg.num_key_value_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
        self.inter = int(cfg.intermediate_size)
        self.scale = float(self.head_dim ** -0.5)

    def forward(self, x, cos, sin, bias, k_buf, v_buf, start: int, end: int):
        """`bias` is the attention mask as an additive bias (0 or -inf), `[B, 1, rep * T, end]`
        with the query heads that share a key/value head stacked along the query axis."""
        b, t, d = x.size(0), x.size(1), x.size(2)
        nqk = self.heads + self.kv_heads
        qkv = self.qkv(self.ln1(x)).view(b, t, nqk + self.kv_heads, self.head_dim).transpose(1, 2)
        qk = qkv[:, :nqk]
        qk = qk * cos + rotate_half(qk) * sin  # RoPE on queries and keys in one pass
        # Write this block into the preallocated caches (in place), then read positions 0..end.
        k_buf[:, :, start:end] = qk[:, self.heads:]
        v_buf[:, :, start:end] = qkv[:, nqk:]
        # Grouped-query attention without repeating keys and values (no copy of the past): the
        # query heads that share a key/value head are stacked along the query axis; the cache
        # is read through views. Explicit matmuls rather than scaled_dot_product_attention: its
        # CPU kernels take different paths for one-token and multi-token blocks, which in bf16
        # made blockwise output diverge from greedy on 13 of 24 chat prompts instead of 3
        # (docs/benchmarks.md).
        rep = self.heads // self.kv_heads
        qg = qk[:, :self.heads].reshape(b, self.kv_heads, rep * t, self.head_dim)
        scores = torch.matmul(qg, k_buf[:, :, :end].transpose(-1, -2)) * self.scale + bias
        if scores.dtype == torch.float32:
            probs = torch.softmax(scores, dim=-1)
        else:
            probs = torch.softmax(scores.float(), dim=-1).to(scores.dtype)
        y = torch.matmul(probs, v_buf[:, :, :end]).view(b, self.heads, t, self.head_dim)
        x = x + self.o(y.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))
        gu = self.gate_up(self.ln2(x))
        return x + self.down(F.silu(gu[..., :self.inter]) * gu[..., self.inter:])

    @torch.jit.export
    def prepack(self):
        self.qkv.prepack()
        self.o.prepack()
        self.gate_up.prepack()
        self.down.prepack()


class CachedLlama(nn.Module):
    """A Llama-family decoder over preallocated KV caches (the cached calling convention)."""

    def __init__(self, hf_model, form):
        super().__init__()
        cfg = hf_model.config
        inner = hf_model.model
        linear = LINEARS[form]
        self.layers = nn.ModuleList(Layer(l, cfg, linear) for l in inner.layers)
        self.norm = RmsNorm(inner.norm)
        head = hf_model.lm_head
        tied = head.weight.data_ptr() == inner.embed_tokens.weight.data_ptr()
        self.lm_head = linear(head.weight.detach(), None if head.bias is None else head.bias.detach())
        if form == "f32" and tied:
            self.embed = ColumnsEmbed(self.lm_head)
        else:
            self.embed = Embed(inner.embed_tokens.weight.detach().to(torch.bfloat16 if form == "int8" else head.weight.dtype))
        head_dim = self.layers[0].head_dim
        self.heads = int(cfg.num_attention_heads)
        self.kv_heads = int(cfg.num_key_value_heads)
        theta = float(getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"])
        inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        self.register_buffer("inv_freq", inv, persistent=False)

    def rotary(self, position_ids, dtype: torch.dtype):
        """RoPE's cos and sin for the given positions, [B, 1, T, Dh]."""
        freqs = position_ids.to(torch.float32)[:, :, None] * self.inv_freq.float()[None, None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]

    def forward(self, input_ids, position_ids, attention_mask, k_cache, v_cache):
        t = input_ids.size(1)
        end = attention_mask.size(1)
        start = end - t
        x = self.embed(input_ids)
        cos, sin = self.rotary(position_ids, x.dtype)
        key_pos = torch.ones_like(attention_mask).cumsum(-1) - 1  # [B, end]
        causal = key_pos[:, None, :] <= position_ids[:, :, None]  # [B, T, end]
        mask = (causal & (attention_mask[:, None, :] > 0))[:, None]  # [B, 1, T, end]
        return self.run(x, cos, sin, mask, k_cache, v_cache, start, end)

    def run(self, x, cos, sin, mask, k_cache, v_cache, start: int, end: int):
        """The layers, the final norm and the vocabulary projection: (logits, hidden). `mask` is
        `[B, 1, T, end]`, true where a query may attend a key."""
        b, t = x.size(0), x.size(1)
        rep = self.heads // self.kv_heads
        m = mask.expand(b, rep, t, end).reshape(b, 1, rep * t, end)
        bias = torch.zeros(m.shape, dtype=x.dtype, device=x.device).masked_fill(~m, float("-inf"))
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, bias, k_cache[i], v_cache[i], start, end)
        hidden = self.norm(x)
        return self.lm_head(hidden), hidden

    @torch.jit.export
    def prepack(self):
        """Reorders weights once for the CPU matrix library (a no-op for forms that need none).
        Call it once after loading, before the first forward."""
        for layer in self.layers:
            layer.prepack()
        self.lm_head.prepack()


class MaskedLlama(CachedLlama):
    """The masked calling convention: positions and the attention mask come from the caller."""

    def forward(self, input_ids, position_ids, attention_mask, k_cache, v_cache):
        t = input_ids.size(1)
        end = attention_mask.size(2)
        start = end - t
        x = self.embed(input_ids)
        cos, sin = self.rotary(position_ids, x.dtype)
        mask = attention_mask.to(torch.bool)[:, None]  # [B, 1, T, end]
        return self.run(x, cos, sin, mask, k_cache, v_cache, start, end)


def build(hf_model, form, masked=False):
    """The scripted module of `form` (`f32`, `bf16` or `int8`) over `hf_model`'s weights, which
    must be in the form's compute dtype (bfloat16 for int8)."""
    cls = MaskedLlama if masked else CachedLlama
    return torch.jit.script(cls(hf_model, form).eval())
