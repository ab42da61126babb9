"""The decoder of blockwise's cached and masked calling conventions (see scripts/export_hf.py for
the conventions), written for TorchScript's `script` so that a module can prepack its weights once
after loading (`prepack()`, which the crate calls).

One scripted decoder serves every architecture family. A family (scripts/families/) describes its
model to it as a `DecoderSpec`: the weights of each layer with query/key/value and gate/up fused,
the norms it has and where (Llama's two per layer, Gemma's four), optional query/key norms, the
activation, a sliding window per layer, the rotary tables per layer type, embedding scaling and
logit soft-capping. The spec is the whole interface between a family and the decoder; a new family
is a new adapter, not a new branch here.

The matrix products are pluggable, one class per weight form, chosen by what was measured fastest
on CPU (docs/benchmarks.md, "Where the time of a step goes"):

- `DenseLinear` (f32): the weight stored transposed, `[in, out]` contiguous, multiplied as
  `x @ W`; MKL reads it in order, 10-25% faster than `F.linear` for 1-16 rows on an Intel
  Xeon. `prepack_onednn()` instead packs it once for oneDNN, whose f32 products on an AMD EPYC
  cost 17-21 ms per step's worth for 1-16 rows against 27-70 for MKL's (the crate picks by CPU:
  `LoadOptions::f32_matmul`);
- `PackedLinear` (bf16): oneDNN's linear with the weight reordered once into oneDNN's blocked
  layout by `prepack()`, instead of on every call (1.4-2x faster than `F.linear` in bf16);
- `Int8Linear` (int8): int8 weights with a scale per output channel, bfloat16 activations
  (`torch._weight_int8pack_mm`): half the bytes of bf16.

Query/key/value and gate/up projections are fused into one product each (a fused product's rows
are the separate ones' rows, so every form's numbers are unchanged by the fusion: per output
channel quantisation keeps that true for int8 too).

The int8 form computes in bfloat16 (its caches, norms and attention are bfloat16).
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.jit import Final


class DenseLinear(nn.Module):
    """`x @ W^T (+ b)` with `W^T` stored contiguous (libtorch's BLAS: MKL on x86), or, after
    `prepack_onednn()`, oneDNN's linear with the weight packed once for it (the faster of the two
    on AMD CPUs, where MKL's small-row products are slow: docs/benchmarks.md)."""

    bias: Optional[torch.Tensor]
    packed: bool

    def __init__(self, weight, bias=None):
        super().__init__()
        self.wt = nn.Parameter(weight.detach().t().contiguous(), requires_grad=False)
        self.bias = None if bias is None else bias.detach().clone()
        self.w = torch.empty(0)
        self.packed = False

    def forward(self, x):
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(
                x, self.w, self.bias, "none", torch.jit.annotate(List[Optional[Union[int, float, complex]]], []), "")
        y = torch.matmul(x, self.wt)
        b = self.bias
        if b is not None:
            y = y + b
        return y

    @torch.jit.export
    def prepack(self):
        pass

    @torch.jit.export
    def prepack_onednn(self):
        """Packs the weight for oneDNN (blocked for up to 16 rows, which measured as fast as a
        one-row packing for one row and faster for blocks) and drops the plain copy; a tied
        embedding that reads the plain weight keeps its own reference to it."""
        if not self.packed and not self.wt.is_cuda:
            self.w = torch.ops.mkldnn._reorder_linear_weight(self.wt.t().contiguous(), 16)
            self.wt = torch.empty(0)
            self.packed = True


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

    @torch.jit.export
    def prepack_onednn(self):
        self.prepack()


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

    @torch.jit.export
    def prepack_onednn(self):
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



# ---------------------------------------------------------------------------------------------
# The interface between an architecture family and the decoder.


@dataclass
class NormSpec:
    """An RMS norm over the last axis: `x / rms(x) * weight`. `f32_scale`: the product with the
    weight is taken in float32 before casting back (Gemma); otherwise the normalised input is cast
    first and multiplied in the model's dtype (Llama)."""

    weight: torch.Tensor
    eps: float
    f32_scale: bool = False


@dataclass
class RopeSpec:
    """Rotary embedding: `inv_freq` (`[rot / 2]`, rotating the first `rot` dims of a head) and the
    factor cos and sin are scaled by."""

    inv_freq: torch.Tensor
    scaling: float = 1.0


@dataclass
class LayerSpec:
    """One decoder layer, weights in the compute dtype, `[out, in]` as in `nn.Linear`."""

    qkv: torch.Tensor  # queries, then keys, then values
    o: torch.Tensor
    gate_up: torch.Tensor  # gate, then up
    down: torch.Tensor
    attn_norm: NormSpec  # before attention
    mlp_norm: NormSpec  # before the MLP
    qkv_bias: Optional[torch.Tensor] = None
    o_bias: Optional[torch.Tensor] = None
    gate_up_bias: Optional[torch.Tensor] = None
    down_bias: Optional[torch.Tensor] = None
    attn_out_norm: Optional[NormSpec] = None  # on the attention's output (Gemma 2/3)
    mlp_out_norm: Optional[NormSpec] = None  # on the MLP's output (Gemma 2/3)
    q_norm: Optional[NormSpec] = None  # per head, before RoPE (Gemma 3, Qwen 3)
    k_norm: Optional[NormSpec] = None
    window: Optional[int] = None  # sliding window: attend keys at positions > p - window
    rope: str = "global"  # a key of DecoderSpec.ropes


@dataclass
class DecoderSpec:
    """A whole decoder-only model, as a family describes it."""

    layers: List[LayerSpec]
    embed: torch.Tensor  # [V, D]
    norm: NormSpec  # the final norm
    lm_head: torch.Tensor  # [V, D]
    ropes: Dict[str, RopeSpec]
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    attn_scale: float  # multiplies query . key
    activation: str = "silu"  # or "gelu_tanh"
    tied: bool = False  # lm_head is the embedding table
    lm_head_bias: Optional[torch.Tensor] = None
    embed_scale: Optional[float] = None  # the embeddings are multiplied by it (Gemma)
    attn_softcap: Optional[float] = None  # scores -> cap * tanh(scores / cap)
    final_softcap: Optional[float] = None  # logits -> cap * tanh(logits / cap)
    extra: Dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# The scripted decoder.


def rotate_half(x):
    h = x.size(-1) // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class RmsNorm(nn.Module):
    """RMSNorm computed in float32; see `NormSpec` for where the weight is applied."""

    f32_scale: Final[bool]

    def __init__(self, spec: NormSpec):
        super().__init__()
        w = spec.weight.detach()
        self.weight = nn.Parameter((w.float() if spec.f32_scale else w).clone(), requires_grad=False)
        self.eps = float(spec.eps)
        self.f32_scale = bool(spec.f32_scale)

    def forward(self, x):
        if x.dtype == torch.float32:
            return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.f32_scale:
            return (h * self.weight).to(x.dtype)
        return self.weight * h.to(x.dtype)


def norm_or_identity(spec: Optional[NormSpec]) -> nn.Module:
    return nn.Identity() if spec is None else RmsNorm(spec)


def head_norms(q: Optional[NormSpec], k: Optional[NormSpec], heads: int, kv_heads: int) -> nn.Module:
    """Query and key norms as one norm over the stacked query and key heads (`[H + KVH, 1, Dh]`
    weights), so both are normalised in one pass."""
    if q is None and k is None:
        return nn.Identity()
    if q is None or k is None or q.eps != k.eps or q.f32_scale != k.f32_scale:
        raise ValueError("query and key norms must come together, with the same epsilon and kind")
    w = torch.cat([q.weight.detach()[None].expand(heads, -1), k.weight.detach()[None].expand(kv_heads, -1)])
    return RmsNorm(NormSpec(w[:, None, :].contiguous(), q.eps, q.f32_scale))


class Layer(nn.Module):
    gelu: Final[bool]
    sliding: Final[bool]
    local_rope: Final[bool]
    partial: Final[bool]
    rot: Final[int]
    has_softcap: Final[bool]
    softcap: Final[float]

    def __init__(self, spec: LayerSpec, model: DecoderSpec, linear, local_rope: bool):
        super().__init__()
        self.ln1 = RmsNorm(spec.attn_norm)
        self.ln2 = RmsNorm(spec.mlp_norm)
        self.post_attn = norm_or_identity(spec.attn_out_norm)
        self.post_mlp = norm_or_identity(spec.mlp_out_norm)
        self.qk_norm = head_norms(spec.q_norm, spec.k_norm, model.heads, model.kv_heads)
        self.qkv = linear(spec.qkv, spec.qkv_bias)
        self.o = linear(spec.o, spec.o_bias)
        self.gate_up = linear(spec.gate_up, spec.gate_up_bias)
        self.down = linear(spec.down, spec.down_bias)
        self.heads = int(model.heads)
        self.kv_heads = int(model.kv_heads)
        self.head_dim = int(model.head_dim)
        self.inter = int(model.intermediate)
        self.scale = float(model.attn_scale)
        self.gelu = model.activation == "gelu_tanh"
        self.sliding = spec.window is not None
        self.local_rope = local_rope
        self.rot = 2 * int(model.ropes[spec.rope].inv_freq.numel())
        self.partial = self.rot < self.head_dim
        self.has_softcap = model.attn_softcap is not None
        self.softcap = float(model.attn_softcap or 0.0)

    def forward(self, x, cos, sin, cos_l, sin_l, bias, bias_l, k_buf, v_buf, start: int, end: int):
        """`bias` (`bias_l` for sliding-window layers) is the attention mask as an additive bias
        (0 or -inf), `[B, 1, rep * T, end]` with the query heads that share a key/value head
        stacked along the query axis; `cos_l`/`sin_l` are the rotary tables of local layers."""
        b, t, d = x.size(0), x.size(1), x.size(2)
        nqk = self.heads + self.kv_heads
        qkv = self.qkv(self.ln1(x)).view(b, t, nqk + self.kv_heads, self.head_dim).transpose(1, 2)
        qk = self.qk_norm(qkv[:, :nqk])
        if self.local_rope:
            cos, sin = cos_l, sin_l
        if self.partial:  # RoPE on the first `rot` dims of each head only
            r = qk[..., :self.rot]
            qk = torch.cat((r * cos + rotate_half(r) * sin, qk[..., self.rot:]), dim=-1)
        else:
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
        scores = torch.matmul(qg, k_buf[:, :, :end].transpose(-1, -2)) * self.scale
        if self.has_softcap:
            scores = torch.tanh(scores / self.softcap) * self.softcap
        if self.sliding:
            scores = scores + bias_l
        else:
            scores = scores + bias
        if scores.dtype == torch.float32:
            probs = torch.softmax(scores, dim=-1)
        else:
            probs = torch.softmax(scores.float(), dim=-1).to(scores.dtype)
        y = torch.matmul(probs, v_buf[:, :, :end]).view(b, self.heads, t, self.head_dim)
        x = x + self.post_attn(self.o(y.transpose(1, 2).reshape(b, t, self.heads * self.head_dim)))
        gu = self.gate_up(self.ln2(x))
        if self.gelu:
            act = F.gelu(gu[..., :self.inter], approximate="tanh")
        else:
            act = F.silu(gu[..., :self.inter])
        return x + self.post_mlp(self.down(act * gu[..., self.inter:]))

    @torch.jit.export
    def prepack(self):
        self.qkv.prepack()
        self.o.prepack()
        self.gate_up.prepack()
        self.down.prepack()

    @torch.jit.export
    def prepack_onednn(self):
        self.qkv.prepack_onednn()
        self.o.prepack_onednn()
        self.gate_up.prepack_onednn()
        self.down.prepack_onednn()


def rope_table(spec: RopeSpec, name: str, module: nn.Module):
    module.register_buffer(name, spec.inv_freq.detach().float().clone(), persistent=False)


class CachedDecoder(nn.Module):
    """A decoder over preallocated KV caches (the cached calling convention)."""

    window: Final[int]
    has_local_rope: Final[bool]
    has_embed_scale: Final[bool]
    has_final_softcap: Final[bool]
    final_softcap: Final[float]

    def __init__(self, spec: DecoderSpec, form: str):
        super().__init__()
        linear = LINEARS[form]
        windows = sorted({l.window for l in spec.layers if l.window is not None})
        if len(windows) > 1:
            raise ValueError(f"layers with different sliding windows ({windows}) are not supported")
        self.window = int(windows[0]) if windows else 0
        local = sorted({l.rope for l in spec.layers} - {"global"})
        if len(local) > 1 or ("global" not in spec.ropes):
            raise ValueError(f"rotary tables must be 'global' and at most one other; got {sorted(spec.ropes)}")
        self.has_local_rope = bool(local)
        self.layers = nn.ModuleList(Layer(l, spec, linear, l.rope != "global") for l in spec.layers)
        self.norm = RmsNorm(spec.norm)
        self.lm_head = linear(spec.lm_head, spec.lm_head_bias)
        compute = torch.bfloat16 if form == "int8" else spec.lm_head.dtype
        if form == "f32" and spec.tied:
            self.embed = ColumnsEmbed(self.lm_head)
        else:
            self.embed = Embed(spec.embed.detach().to(compute))
        self.has_embed_scale = spec.embed_scale is not None
        # The scale in the embeddings' dtype, as the reference models multiply it.
        self.register_buffer("embed_scale", torch.tensor(float(spec.embed_scale or 1.0)).to(compute), persistent=False)
        self.has_final_softcap = spec.final_softcap is not None
        self.final_softcap = float(spec.final_softcap or 0.0)
        self.heads = int(spec.heads)
        self.kv_heads = int(spec.kv_heads)
        g = spec.ropes["global"]
        l = spec.ropes[local[0]] if local else g
        rope_table(g, "inv_freq", self)
        rope_table(l, "inv_freq_l", self)
        self.rope_scaling = float(g.scaling)
        self.rope_scaling_l = float(l.scaling)

    def rotary(self, position_ids, inv_freq, scaling: float, dtype: torch.dtype):
        """RoPE's cos and sin for the given positions, [B, 1, T, rot]."""
        freqs = position_ids.to(torch.float32)[:, :, None] * inv_freq.float()[None, None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        if scaling != 1.0:
            cos, sin = cos * scaling, sin * scaling
        return cos.to(dtype)[:, None], sin.to(dtype)[:, None]

    def embed_tokens(self, input_ids):
        x = self.embed(input_ids)
        if self.has_embed_scale:
            x = x * self.embed_scale
        return x

    def forward(self, input_ids, position_ids, attention_mask, k_cache, v_cache):
        t = input_ids.size(1)
        end = attention_mask.size(1)
        start = end - t
        key_pos = torch.ones_like(attention_mask).cumsum(-1) - 1  # [B, end]: slot = position
        causal = key_pos[:, None, :] <= position_ids[:, :, None]  # [B, T, end]
        mask = causal & (attention_mask[:, None, :] > 0)
        return self.run(input_ids, position_ids, mask, key_pos[:, None, :], k_cache, v_cache, start, end)

    def run(self, input_ids, position_ids, mask, key_pos, k_cache, v_cache, start: int, end: int):
        """The embeddings, layers, final norm and vocabulary projection: (logits, hidden). `mask`
        is `[B, T, end]`, true where a query may attend a key; `key_pos` (`[B, T or 1, end]`) the
        keys' positions, which sliding-window layers compare with the queries'."""
        x = self.embed_tokens(input_ids)
        cos, sin = self.rotary(position_ids, self.inv_freq, self.rope_scaling, x.dtype)
        cos_l, sin_l = cos, sin
        if self.has_local_rope:
            cos_l, sin_l = self.rotary(position_ids, self.inv_freq_l, self.rope_scaling_l, x.dtype)
        bias = self.attention_bias(mask, x.dtype)
        bias_l = bias
        if self.window > 0:
            local = mask & (key_pos > position_ids[:, :, None] - self.window)
            bias_l = self.attention_bias(local, x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, cos_l, sin_l, bias, bias_l, k_cache[i], v_cache[i], start, end)
        hidden = self.norm(x)
        logits = self.lm_head(hidden)
        if self.has_final_softcap:
            logits = torch.tanh(logits / self.final_softcap) * self.final_softcap
        return logits, hidden

    def attention_bias(self, mask, dtype: torch.dtype):
        """`[B, T, end]` bool -> the additive bias `[B, 1, rep * T, end]` (0 or -inf), the query
        heads that share a key/value head stacked along the query axis."""
        b, t, end = mask.size(0), mask.size(1), mask.size(2)
        rep = self.heads // self.kv_heads
        m = mask[:, None].expand(b, rep, t, end).reshape(b, 1, rep * t, end)
        return torch.zeros(m.shape, dtype=dtype, device=mask.device).masked_fill(~m, float("-inf"))

    @torch.jit.export
    def prepack(self):
        """Reorders weights once for the CPU matrix library (a no-op for forms that need none).
        Call it once after loading, before the first forward."""
        for layer in self.layers:
            layer.prepack()
        self.lm_head.prepack()

    @torch.jit.export
    def prepack_onednn(self):
        """`prepack()`, but f32 products go through oneDNN with weights packed for it instead of
        libtorch's BLAS (MKL on x86); bf16 and int8 are as with `prepack()`. The crate calls one
        of the two (`LoadOptions::f32_matmul`)."""
        for layer in self.layers:
            layer.prepack_onednn()
        self.lm_head.prepack_onednn()


class MaskedDecoder(CachedDecoder):
    """The masked calling convention: positions and the attention mask come from the caller.

    Sliding-window layers need the position of every key a query may attend; the slots carry
    none, so a key's position is its rank among the slots the query may attend (0 for the first).
    That is exact when the mask allows each query its whole history, one slot per earlier
    position, in slot order: what the crate's batched and tree decoders do (a rejected slot is
    simply never attended again)."""

    def forward(self, input_ids, position_ids, attention_mask, k_cache, v_cache):
        t = input_ids.size(1)
        end = attention_mask.size(2)
        start = end - t
        mask = attention_mask.to(torch.bool)  # [B, T, end]
        key_pos = mask.to(torch.int64).cumsum(-1) - 1 if self.window > 0 else position_ids[:, :, None]
        return self.run(input_ids, position_ids, mask, key_pos, k_cache, v_cache, start, end)


def native_description(spec: DecoderSpec):
    """What the crate's native CPU decoder (src/native/) needs beyond the f32 module's weights,
    for the plain Llama shape it computes (SiLU gates, full-width RoPE, one final norm, no
    biases, windows, soft-caps, embedding scale or per-head norms): norm epsilon, score scale
    and the rotary frequencies. `None` for any other shape, which the crate then refuses."""
    norms = [spec.norm] + [n for l in spec.layers for n in (l.attn_norm, l.mlp_norm)]
    plain = (
        spec.activation == "silu" and spec.embed_scale is None and spec.attn_softcap is None
        and spec.final_softcap is None and spec.lm_head_bias is None and set(spec.ropes) == {"global"}
        and 2 * spec.ropes["global"].inv_freq.numel() == spec.head_dim
        and len({n.eps for n in norms}) == 1 and not any(n.f32_scale for n in norms)
        and all(l.qkv_bias is None and l.o_bias is None and l.gate_up_bias is None and l.down_bias is None
                and l.attn_out_norm is None and l.mlp_out_norm is None and l.q_norm is None
                and l.k_norm is None and l.window is None for l in spec.layers))
    if not plain:
        return None
    rope = spec.ropes["global"]
    return {
        "shape": "llama",
        "rms_norm_eps": float(spec.norm.eps),
        "attn_scale": float(spec.attn_scale),
        "intermediate_size": int(spec.intermediate),
        "rope_scaling": float(rope.scaling),
        "rope_inv_freq": [float(v) for v in rope.inv_freq.detach().float().tolist()],
        "tied": bool(spec.tied),
    }


def build(spec: DecoderSpec, form: str, masked: bool = False):
    """The scripted module of `form` (`f32`, `bf16` or `int8`) over `spec`'s weights, which must
    be in the form's compute dtype (bfloat16 for int8)."""
    cls = MaskedDecoder if masked else CachedDecoder
    return torch.jit.script(cls(spec, form).eval())
