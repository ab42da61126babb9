//! [`NativeLm`]: loading an export's weights and one decoder pass over a block.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{CModule, Device, Kind, Tensor};

use super::inputs::{Bf16Inputs, Packing};
use super::kernels::{exp_shifted, scores, silu_mul, weighted_sums, SendPtr};
use super::matrix::Matrix;
use super::pool::Pool;
use crate::dtype::DType;
use crate::error::{torch_summary, Error, Result};
use crate::model::{check_block, check_input, CausalLm, ModelInfo, ModelOutput};
use crate::torchscript::ExportMetadata;

/// What `metadata.json` says about a plain Llama-shaped model beyond its sizes (the exporter's
/// `native` entry; absent for shapes the native decoder does not compute).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NativeDescription {
    /// Always `llama`: RMS norms before attention and MLP, SiLU-gated MLP, full-width RoPE.
    pub shape: String,
    /// The epsilon of every RMS norm.
    pub rms_norm_eps: f64,
    /// What query · key is multiplied by (`head_dim ** -0.5`).
    pub attn_scale: f64,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: usize,
    /// What RoPE's cos and sin are multiplied by (1 for most models).
    pub rope_scaling: f64,
    /// RoPE's frequencies, `head_dim / 2` of them (rotating halves: Llama's convention).
    pub rope_inv_freq: Vec<f64>,
    /// Whether the LM head is the embedding table.
    pub tied: bool,
}

/// How to load a [`NativeLm`].
#[derive(Debug, Clone, PartialEq)]
pub struct NativeOptions {
    /// Weights in float32 ([`DType::F32`], the default), rounded to bfloat16 ([`DType::Bf16`]),
    /// or quantised to int8 with a float32 scale per output row ([`DType::Int8`], as the
    /// export's int8 form quantises); activations are float32 in every form, except the inputs
    /// of bf16 weights' products under [`Bf16Inputs`].
    pub dtype: DType,
    /// Context to allocate the cache for (default: the model's, at most 2048).
    pub max_context: Option<usize>,
    /// Threads of the products (default: one per core).
    pub threads: Option<usize>,
    /// What bf16 weights are multiplied with (default float32; see [`Bf16Inputs`]). Bfloat16
    /// inputs with other weights are refused.
    pub bf16_inputs: Bf16Inputs,
}

impl Default for NativeOptions {
    fn default() -> Self {
        NativeOptions {
            dtype: DType::F32,
            max_context: None,
            threads: None,
            bf16_inputs: Bf16Inputs::F32,
        }
    }
}

/// One decoder layer's weights.
struct Layer {
    ln1: Vec<f32>,
    ln2: Vec<f32>,
    /// Queries, keys, values: `[(H + 2 KVH) Dh, D]`.
    qkv: Matrix,
    o: Matrix,
    /// Gate, then up: `[2 I, D]`.
    gate_up: Matrix,
    down: Matrix,
}

/// Sizes of the model.
#[derive(Debug, Clone, Copy)]
pub(super) struct Dims {
    pub(super) layers: usize,
    pub(super) heads: usize,
    pub(super) kv_heads: usize,
    pub(super) head_dim: usize,
    pub(super) hidden: usize,
    pub(super) inter: usize,
    pub(super) vocab: usize,
}

/// Everything a pass reads and never writes.
pub(super) struct Weights {
    pub(super) dims: Dims,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    lm_head: Matrix,
    /// The embedding table when it is not the LM head.
    embed: Option<Matrix>,
    eps: f32,
    scale: f32,
    /// RoPE's cos and sin, `[max_context, Dh / 2]` each.
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// The process's pool of `threads` threads (shared with native drafts of that count).
    pool: std::sync::Arc<Pool>,
}

/// Keys and values of `rows` sequences of `slots` slots each, `[L, rows, KVH, slots, Dh]`.
pub(super) struct Cache {
    pub(super) rows: usize,
    pub(super) slots: usize,
    pub(super) k: Vec<f32>,
    pub(super) v: Vec<f32>,
}

impl Cache {
    pub(super) fn new(d: &Dims, rows: usize, slots: usize) -> Self {
        let n = d.layers * rows * d.kv_heads * slots * d.head_dim;
        // Zeroed pages come from the system lazily: a large batch cache costs nothing until
        // its slots are written.
        Cache {
            rows,
            slots,
            k: vec![0.0; n],
            v: vec![0.0; n],
        }
    }

    /// Offset of slot 0 of (layer, row, key/value head).
    pub(super) fn base(&self, d: &Dims, l: usize, b: usize, g: usize) -> usize {
        (((l * self.rows + b) * d.kv_heads + g) * self.slots) * d.head_dim
    }
}

/// Which slots a query may attend.
pub(super) enum Mask<'a> {
    /// Slots `0..=start + t` (one sequence, slot = position).
    Causal,
    /// `[B, T, start + T]`, true where allowed.
    Explicit(&'a [bool]),
}

/// A Llama-shaped export computed by the crate's own kernels. See the [module
/// documentation](super).
pub struct NativeLm {
    pub(super) w: Weights,
    pub(super) info: ModelInfo,
    /// The one-sequence cache of [`CausalLm::forward`].
    cache: Cache,
    len: usize,
    /// The batched slot cache of [`MaskedLm`](crate::MaskedLm) and its slots used.
    pub(super) batch: Option<Cache>,
    pub(super) batch_len: usize,
    dtype: DType,
    /// Layers whose residual states follow the final states in every output
    /// ([`CausalLm::set_feature_taps`]).
    pub(super) taps: Vec<usize>,
}

impl std::fmt::Debug for NativeLm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeLm")
            .field("info", &self.info)
            .field("dtype", &self.dtype)
            .finish_non_exhaustive()
    }
}

fn bad(path: &Path, problem: String) -> Error {
    Error::BadModule {
        path: path.display().to_string(),
        problem,
        source: None,
    }
}

/// A named parameter of the module as row-major float32 `[rows, cols]`, transposed from the
/// module's stored `[cols, rows]` when `transposed`.
fn take(
    params: &[(String, Tensor)],
    path: &Path,
    name: &str,
    shape: [usize; 2],
    transposed: bool,
) -> Result<Vec<f32>> {
    let t = params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, t)| t)
        .ok_or_else(|| bad(path, format!("has no parameter `{name}`")))?;
    let want: Vec<i64> = if transposed {
        vec![shape[1] as i64, shape[0] as i64]
    } else if shape[0] == 1 {
        vec![shape[1] as i64]
    } else {
        vec![shape[0] as i64, shape[1] as i64]
    };
    if t.size() != want || t.kind() != Kind::Float {
        return Err(bad(
            path,
            format!(
                "parameter `{name}` is {:?} {:?}, expected float32 {want:?}",
                t.kind(),
                t.size()
            ),
        ));
    }
    let t = if transposed {
        t.f_tr()?
    } else {
        t.shallow_clone()
    };
    Ok(Vec::<f32>::try_from(&t.f_contiguous()?.f_view([-1])?)?)
}

impl NativeLm {
    /// Loads an export folder written by `scripts/export_hf.py` whose `metadata.json` has a
    /// `native` entry, from its f32 cached module's weights.
    pub fn load(dir: impl AsRef<Path>, options: &NativeOptions) -> Result<Self> {
        let dir = dir.as_ref();
        let meta = ExportMetadata::read(dir)?;
        if !matches!(options.dtype, DType::F32 | DType::Bf16 | DType::Int8) {
            return Err(Error::config(
                "dtype",
                format!(
                    "the native decoder keeps f32, bf16 or int8 weights, not {}",
                    options.dtype
                ),
            ));
        }
        let packing = options.bf16_inputs.packing(options.dtype)?;
        let desc = meta.native.clone().ok_or_else(|| {
            Error::config(
                "backend",
                format!(
                    "{} has no `native` description in metadata.json: the native decoder \
                     computes plain Llama-shaped exports (this is `{}`); re-export with \
                     scripts/export_hf.py, or use the TorchScript backend",
                    dir.display(),
                    meta.architecture
                ),
            )
        })?;
        let file = meta
            .dtypes
            .get("f32")
            .and_then(|f| f.cached.as_ref())
            .ok_or_else(|| {
                Error::config(
                    "backend",
                    format!(
                        "the native decoder reads the f32 cached module's weights, which {} lacks",
                        dir.display()
                    ),
                )
            })?;
        let max_context = meta.context(options.max_context)?;
        let threads = options
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if threads == 0 {
            return Err(Error::config("threads", "must be at least 1"));
        }
        let d = Dims {
            layers: meta.num_layers,
            heads: meta.num_heads,
            kv_heads: meta.num_kv_heads,
            head_dim: meta.head_dim,
            hidden: meta.hidden_size,
            inter: desc.intermediate_size,
            vocab: meta.vocab_size as usize,
        };
        if desc.shape != "llama"
            || d.kv_heads == 0
            || !d.heads.is_multiple_of(d.kv_heads)
            || !d.head_dim.is_multiple_of(2)
            || desc.rope_inv_freq.len() * 2 != d.head_dim
        {
            return Err(Error::config(
                "backend",
                format!(
                    "metadata.json's native entry does not fit the model ({:?} shape, {} heads, \
                     {} key/value heads, head width {}, {} rotary frequencies)",
                    desc.shape,
                    d.heads,
                    d.kv_heads,
                    d.head_dim,
                    desc.rope_inv_freq.len()
                ),
            ));
        }
        let path = dir.join(file);
        let module = CModule::load_on_device(&path, Device::Cpu).map_err(|e| Error::BadModule {
            path: path.display().to_string(),
            problem: format!(
                "libtorch could not load it as TorchScript: {}",
                torch_summary(&e)
            ),
            source: Some(e),
        })?;
        let params = module.named_parameters()?;
        let matrix = |name: &str, rows: usize, cols: usize| -> Result<Matrix> {
            let data = take(&params, &path, name, [rows, cols], true)?;
            Ok(match options.dtype {
                DType::Bf16 if packing == Packing::Pairs => {
                    Matrix::bf16_pairs_from_f32(rows, cols, &data)
                }
                DType::Bf16 if packing == Packing::Tiles => {
                    Matrix::bf16_tiles_from_f32(rows, cols, &data)
                }
                DType::Bf16 => Matrix::bf16_from_f32(rows, cols, &data),
                DType::Int8 => Matrix::i8_from_f32(rows, cols, &data),
                _ => Matrix::f32(rows, cols, &data),
            })
        };
        let vector = |name: &str| take(&params, &path, name, [1, d.hidden], false);
        let (dh, dd) = (d.head_dim, d.hidden);
        let mut layers = Vec::with_capacity(d.layers);
        for i in 0..d.layers {
            let p = |s: &str| format!("layers.{i}.{s}");
            layers.push(Layer {
                ln1: vector(&p("ln1.weight"))?,
                ln2: vector(&p("ln2.weight"))?,
                qkv: matrix(&p("qkv.wt"), (d.heads + 2 * d.kv_heads) * dh, dd)?,
                o: matrix(&p("o.wt"), dd, d.heads * dh)?,
                gate_up: matrix(&p("gate_up.wt"), 2 * d.inter, dd)?,
                down: matrix(&p("down.wt"), dd, d.inter)?,
            });
        }
        let lm_head = matrix("lm_head.wt", d.vocab, dd)?;
        let embed = if desc.tied {
            None
        } else {
            let data = take(&params, &path, "embed.weight", [d.vocab, dd], false)?;
            Some(match options.dtype {
                DType::Bf16 if packing == Packing::Pairs => {
                    Matrix::bf16_pairs_from_f32(d.vocab, dd, &data)
                }
                DType::Bf16 if packing == Packing::Tiles => {
                    Matrix::bf16_tiles_from_f32(d.vocab, dd, &data)
                }
                DType::Bf16 => Matrix::bf16_from_f32(d.vocab, dd, &data),
                DType::Int8 => Matrix::i8_from_f32(d.vocab, dd, &data),
                _ => Matrix::f32(d.vocab, dd, &data),
            })
        };
        let norm = vector("norm.weight")?;
        drop(params);
        drop(module);
        // RoPE as the export computes it: f32 position times f32 frequency, then cos and sin.
        let half = dh / 2;
        let mut cos = Vec::with_capacity(max_context * half);
        let mut sin = Vec::with_capacity(max_context * half);
        let scaling = desc.rope_scaling as f32;
        for p in 0..max_context {
            for &f in &desc.rope_inv_freq {
                let a = p as f32 * f as f32;
                cos.push(a.cos() * scaling);
                sin.push(a.sin() * scaling);
            }
        }
        let pool = Pool::shared(threads)
            .map_err(|e| Error::config("threads", format!("could not start them: {e}")))?;
        let w = Weights {
            dims: d,
            layers,
            norm,
            lm_head,
            embed,
            eps: desc.rms_norm_eps as f32,
            scale: desc.attn_scale as f32,
            cos,
            sin,
            pool,
        };
        let mut info = ModelInfo::new(meta.vocab_size, max_context);
        info.kind = Kind::Float;
        Ok(NativeLm {
            cache: Cache::new(&d, 1, max_context),
            len: 0,
            batch: None,
            batch_len: 0,
            w,
            info,
            dtype: options.dtype,
            taps: Vec::new(),
        })
    }

    /// The weights' form ([`DType::F32`] or [`DType::Bf16`]).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Bytes of weights one step reads.
    pub fn weight_bytes(&self) -> usize {
        let w = &self.w;
        w.layers
            .iter()
            .map(|l| l.qkv.bytes() + l.o.bytes() + l.gate_up.bytes() + l.down.bytes())
            .sum::<usize>()
            + w.lm_head.bytes()
    }
}

/// Logits and hidden states of a pass as tensors `[B, T, V]`, `[B, T, (1 + k) D]` (the final
/// states, then the residual states after each of the `k` layers `taps`): `run` writes the
/// logits straight into the tensor's memory (a block's logits are 200 KB a row for SmolLM2, and
/// a copy of them cost a 16-row verify call about a millisecond).
#[allow(clippy::too_many_arguments)]
pub(super) fn output(
    w: &Weights,
    cache: &mut Cache,
    tokens: &[i64],
    positions: &[i64],
    (b, t): (usize, usize),
    start: usize,
    mask: Mask<'_>,
    taps: &[usize],
) -> Result<ModelOutput> {
    let d = &w.dims;
    let logits = Tensor::f_empty(
        [b as i64, t as i64, d.vocab as i64],
        (Kind::Float, Device::Cpu),
    )?;
    assert!(logits.is_contiguous(), "a fresh tensor is contiguous");
    // SAFETY: a fresh contiguous float32 tensor of `b * t * vocab` elements that nothing else
    // refers to yet; `run` writes every element (float32 has no invalid bit patterns).
    let data =
        unsafe { std::slice::from_raw_parts_mut(logits.data_ptr() as *mut f32, b * t * d.vocab) };
    let hidden = run(w, cache, tokens, positions, b, t, start, mask, taps, data);
    let width = (d.hidden * (1 + taps.len())) as i64;
    Ok(ModelOutput::with_hidden(
        logits,
        tensor(&hidden, [b as i64, t as i64, width])?,
    ))
}

/// A float32 tensor holding `data`, made without libtorch's zero fill (`Tensor::from_slice`
/// fills with zeros first, in parallel above 32k elements, which wakes libtorch's threads).
fn tensor(data: &[f32], shape: [i64; 3]) -> Result<Tensor> {
    let t = Tensor::f_empty(shape, (Kind::Float, Device::Cpu))?;
    assert_eq!(t.numel(), data.len(), "output of the wrong size");
    // SAFETY: a fresh contiguous float32 tensor of `data.len()` elements.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), t.data_ptr() as *mut f32, data.len()) };
    Ok(t)
}

fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let n = weight.len();
    for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let ss: f32 = xr.iter().map(|v| v * v).sum::<f32>() / n as f32;
        let r = 1.0 / (ss + eps).sqrt();
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(weight) {
            *o = g * (v * r);
        }
    }
}

/// Llama's rotation of one head (`x[i], x[i + half]` by the position's angle `i`).
pub(crate) fn rope(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = cos.len();
    for i in 0..half {
        let (a, b) = (x[i], x[i + half]);
        x[i] = a * cos[i] - b * sin[i];
        x[i + half] = b * cos[i] + a * sin[i];
    }
}

/// The `rep` query heads `q` (`[rep, dh]`) that share one key/value head, over the first `n`
/// slots (`keys`, `values`: `[slots, dh]` from slot 0) that `allowed` picks: softmax of the
/// scaled scores, then the weighted sums of values into `out` (`[rep, dh]`). Only the allowed
/// slots are scored and summed, in slot order (by a list of them unless they are the first
/// ones, as a causal row's are), and each head's numbers are independent of the others', so a
/// query gets the same attention whichever block or tree it came in, and a tree row pays
/// nothing for the slots it may not see (a batch's dead slots, its siblings).
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend(
    q: &[f32],
    rep: usize,
    keys: &[f32],
    values: &[f32],
    n: usize,
    dh: usize,
    scale: f32,
    scratch: &mut Vec<f32>,
    allowed: impl Fn(usize) -> bool,
    out: &mut [f32],
) {
    let (c, list) = allowed_slots(n, allowed);
    if c == 0 {
        out[..rep * dh].fill(0.0);
        return;
    }
    let slots = (c, list.as_deref());
    if scratch.len() < rep * c {
        scratch.resize(rep * c, 0.0);
    }
    let scores_buf = &mut scratch[..rep * c];
    let mut r0 = 0;
    while r0 < rep {
        let g = (rep - r0).min(4);
        scores(
            &q[r0 * dh..(r0 + g) * dh],
            g,
            keys,
            slots,
            dh,
            &mut scores_buf[r0 * c..(r0 + g) * c],
        );
        r0 += g;
    }
    for row in scores_buf.chunks_exact_mut(c) {
        softmax_allowed(row, scale, |_| true);
    }
    weighted_sums(scores_buf, rep, values, slots, dh, out);
}

/// The slots `0..n` that `allowed` picks, in order: how many, and their list unless they are
/// the first ones (a causal row's), which need no gathering.
fn allowed_slots(n: usize, allowed: impl Fn(usize) -> bool) -> (usize, Option<Vec<usize>>) {
    let (mut c, mut list) = (0, None::<Vec<usize>>);
    for s in (0..n).filter(|&s| allowed(s)) {
        match &mut list {
            Some(l) => l.push(s),
            None if s != c => list = Some((0..c).chain([s]).collect()),
            None => {}
        }
        c += 1;
    }
    (c, list)
}

/// `row`'s scores scaled, softmax over the slots `allowed` picks, zero elsewhere. The allowed
/// scores are gathered to the front in slot order first, so that each gets the exponential and
/// the place in the sum that a row holding only them (a one-token step's) gives it: the vector
/// kernel's lanes and tail depend on a row's length, and a block's or tree's row also spans
/// slots it may not see.
fn softmax_allowed(row: &mut [f32], scale: f32, allowed: impl Fn(usize) -> bool) {
    let n = row.len();
    let (c, slots) = allowed_slots(n, allowed);
    let mut max = f32::NEG_INFINITY;
    for j in 0..c {
        // Each allowed slot is at or after its gathered place: nothing is overwritten unread.
        let v = row[slots.as_ref().map_or(j, |l| l[j])] * scale;
        max = max.max(v);
        row[j] = v;
    }
    let sum = exp_shifted(&mut row[..c], max);
    for v in &mut row[..c] {
        *v /= sum;
    }
    let Some(slots) = slots else {
        row[c..].fill(0.0);
        return;
    };
    // Back to their slots, last first (each slot is at or after its gathered place).
    for j in (0..c).rev() {
        let v = row[j];
        let to = slots[j];
        let from = if j + 1 < c { slots[j + 1] } else { n };
        row[to + 1..from].fill(0.0);
        row[to] = v;
    }
    row[..slots[0]].fill(0.0);
}

/// One pass of `B` rows of `T` tokens (`tokens`, `positions`: `[B, T]`) written at slots
/// `start..start + T` of `cache`: logits `[B T, V]` into `logits`, and the final hidden states
/// returned, each row followed by the residual states after the layers `taps` (`[B T, (1 + k)
/// D]`).
#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    w: &Weights,
    cache: &mut Cache,
    tokens: &[i64],
    positions: &[i64],
    b: usize,
    t: usize,
    start: usize,
    mask: Mask<'_>,
    taps: &[usize],
    logits: &mut [f32],
) -> Vec<f32> {
    let d = w.dims;
    let (dh, dd, h, kvh) = (d.head_dim, d.hidden, d.heads, d.kv_heads);
    let rep = h / kvh;
    let n = b * t;
    let end = start + t;
    let half = dh / 2;
    let qkv_w = (h + 2 * kvh) * dh;
    let mut x = vec![0f32; n * dd];
    for (i, &tok) in tokens.iter().enumerate() {
        let table = w.embed.as_ref().unwrap_or(&w.lm_head);
        table.row_f32(tok as usize, &mut x[i * dd..(i + 1) * dd]);
    }
    let mut hbuf = vec![0f32; n * dd];
    let mut qkv = vec![0f32; n * qkv_w];
    let mut y = vec![0f32; n * h * dh];
    let mut proj = vec![0f32; n * dd];
    let mut gu = vec![0f32; n * 2 * d.inter];
    let mut act = vec![0f32; n * d.inter];
    let mut tapped = vec![0f32; n * taps.len() * dd];
    for (l, layer) in w.layers.iter().enumerate() {
        rms_norm(&x, &layer.ln1, w.eps, &mut hbuf);
        layer.qkv.product(&hbuf, n, &mut qkv, &w.pool);
        for i in 0..n {
            let p = positions[i] as usize;
            let (c, s) = (
                &w.cos[p * half..(p + 1) * half],
                &w.sin[p * half..(p + 1) * half],
            );
            let row = &mut qkv[i * qkv_w..(i + 1) * qkv_w];
            for head in row[..(h + kvh) * dh].chunks_exact_mut(dh) {
                rope(head, c, s);
            }
            let (bi, ti) = (i / t, i % t);
            for g in 0..kvh {
                let at = cache.base(&d, l, bi, g) + (start + ti) * dh;
                cache.k[at..at + dh].copy_from_slice(&row[(h + g) * dh..(h + g + 1) * dh]);
                cache.v[at..at + dh]
                    .copy_from_slice(&row[(h + kvh + g) * dh..(h + kvh + g + 1) * dh]);
            }
        }
        // Attention, the (row, key/value head) pairs split between the threads: each writes
        // the heads of `y` that share its key/value head, and reads the cache written above.
        let pairs = n * kvh;
        let parts = w.pool.threads();
        let per = pairs.div_ceil(parts);
        let y_ptr = SendPtr(y.as_mut_ptr());
        let (cache_ref, qkv_ref, mask_ref) = (&*cache, &qkv[..], &mask);
        w.pool.run(&|p| {
            let mut scratch = Vec::new();
            for pair in (p * per)..((p + 1) * per).min(pairs) {
                let (i, g) = (pair / kvh, pair % kvh);
                let (bi, ti) = (i / t, i % t);
                let base = cache_ref.base(&d, l, bi, g);
                let q = &qkv_ref[i * qkv_w + g * rep * dh..i * qkv_w + (g + 1) * rep * dh];
                let allowed = |s: usize| match mask_ref {
                    Mask::Causal => s <= start + ti,
                    Mask::Explicit(m) => m[i * end + s],
                };
                // SAFETY: pair (i, g) owns y[i, g * rep * dh..(g + 1) * rep * dh]; `y` outlives
                // the run.
                let out = unsafe {
                    std::slice::from_raw_parts_mut(
                        y_ptr.get().add(i * h * dh + g * rep * dh),
                        rep * dh,
                    )
                };
                attend(
                    q,
                    rep,
                    &cache_ref.k[base..],
                    &cache_ref.v[base..],
                    end,
                    dh,
                    w.scale,
                    &mut scratch,
                    allowed,
                    out,
                );
            }
        });
        layer.o.product(&y, n, &mut proj, &w.pool);
        for (xv, pv) in x.iter_mut().zip(&proj) {
            *xv += pv;
        }
        rms_norm(&x, &layer.ln2, w.eps, &mut hbuf);
        layer.gate_up.product(&hbuf, n, &mut gu, &w.pool);
        for (row, a) in gu
            .chunks_exact(2 * d.inter)
            .zip(act.chunks_exact_mut(d.inter))
        {
            let (gate, up) = row.split_at(d.inter);
            silu_mul(gate, up, a);
        }
        layer.down.product(&act, n, &mut proj, &w.pool);
        for (xv, pv) in x.iter_mut().zip(&proj) {
            *xv += pv;
        }
        for (j, _) in taps.iter().enumerate().filter(|&(_, &tap)| tap == l) {
            for (i, row) in x.chunks_exact(dd).enumerate() {
                tapped[(i * taps.len() + j) * dd..(i * taps.len() + j + 1) * dd]
                    .copy_from_slice(row);
            }
        }
    }
    let mut hidden = vec![0f32; n * dd];
    rms_norm(&x, &w.norm, w.eps, &mut hidden);
    w.lm_head.product(&hidden, n, logits, &w.pool);
    if taps.is_empty() {
        return hidden;
    }
    let wide = dd * (1 + taps.len());
    let mut out = vec![0f32; n * wide];
    for (i, row) in out.chunks_exact_mut(wide).enumerate() {
        row[..dd].copy_from_slice(&hidden[i * dd..(i + 1) * dd]);
        row[dd..].copy_from_slice(&tapped[i * taps.len() * dd..(i + 1) * taps.len() * dd]);
    }
    out
}

impl CausalLm for NativeLm {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn forward(&mut self, tokens: &Tensor, start: usize) -> Result<ModelOutput> {
        let t = check_input(tokens, self.info.vocab_size, "NativeLm::forward")?;
        check_block(start, t, self.len, self.info.max_context)?;
        let ids: Vec<i64> = Vec::try_from(&tokens.f_flatten(0, -1)?.f_to_device(Device::Cpu)?)?;
        let positions: Vec<i64> = (start as i64..(start + t) as i64).collect();
        let out = output(
            &self.w,
            &mut self.cache,
            &ids,
            &positions,
            (1, t),
            start,
            Mask::Causal,
            &self.taps,
        )?;
        self.len = start + t;
        Ok(out)
    }

    fn cached_len(&self) -> usize {
        self.len
    }

    fn truncate(&mut self, len: usize) -> Result<()> {
        self.len = self.len.min(len);
        Ok(())
    }

    fn token_embeddings(&self) -> Option<Tensor> {
        let d = self.w.dims;
        let table = self.w.embed.as_ref().unwrap_or(&self.w.lm_head);
        let mut data = vec![0f32; d.vocab * d.hidden];
        for (r, row) in data.chunks_exact_mut(d.hidden).enumerate() {
            table.row_f32(r, row);
        }
        Tensor::f_from_slice(&data)
            .and_then(|t| t.f_view([d.vocab as i64, d.hidden as i64]))
            .ok()
    }

    fn as_masked(&mut self) -> Option<&mut dyn crate::masked::MaskedLm> {
        Some(self)
    }

    fn set_feature_taps(&mut self, layers: &[usize]) -> Result<()> {
        crate::model::check_feature_taps(layers, self.w.layers.len())?;
        self.taps = layers.to_vec();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::native::kernels::tests::data;

    /// A row's softmax over the slots it may see equals, bit for bit, the softmax of a row that
    /// holds only those slots (a one-token step's): whatever the masked slots around them and the
    /// row's length (the vector kernel's lanes and tail), with zeros where it may not see.
    #[test]
    fn a_masked_row_softmaxes_as_the_row_of_its_allowed_slots() {
        for n in [1, 5, 8, 9, 17, 33, 70] {
            let scores = data(n, n as u32);
            // Allowed: a prefix (a causal block row), every other slot, a prefix plus a few
            // later slots (a tree row), the last slot only.
            let masks: Vec<Box<dyn Fn(usize) -> bool>> = vec![
                Box::new(|s| s <= n / 2),
                Box::new(|s| s % 2 == 0),
                Box::new(|s| s < n / 3 || s % 5 == 4),
                Box::new(|s| s + 1 == n),
            ];
            for allowed in &masks {
                let kept: Vec<usize> = (0..n).filter(|&s| allowed(s)).collect();
                if kept.is_empty() {
                    continue; // a row always sees at least itself
                }
                let mut alone: Vec<f32> = kept.iter().map(|&s| scores[s]).collect();
                softmax_allowed(&mut alone, 0.125, |_| true);
                let mut row = scores.clone();
                softmax_allowed(&mut row, 0.125, allowed);
                for s in 0..n {
                    match kept.iter().position(|&k| k == s) {
                        Some(j) => assert_eq!(row[s].to_bits(), alone[j].to_bits(), "n={n} {s}"),
                        None => assert_eq!(row[s], 0.0, "n={n} slot {s} is masked"),
                    }
                }
                let total: f32 = row.iter().sum();
                assert!((total - 1.0).abs() < 1e-5, "n={n}: {total}");
            }
        }
    }
}
