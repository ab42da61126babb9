//! The feature-level draft computed by the crate's own CPU kernels (`crate::native`) instead of
//! libtorch's operators: the same network as [`FeatureDraft`], with its products read from
//! packed weights (float32, bfloat16 or int8 with a scale per output row) and its layer norms,
//! attention and GELU in plain loops.
//!
//! Why: a draft step is small (about 8 MB of int8 weights for SmolLM2's one-layer draft and
//! 8,192-token shortlist), so libtorch's per-operator dispatch (some forty operators a step)
//! costs as much as the products. The guesses may differ from libtorch's by float rounding;
//! exact acceptance keeps the output whatever they are.

use std::sync::{Arc, OnceLock};

use tch::{Kind, Tensor};

use super::model::{FeatureDraft, VocabProjection};
use crate::error::{Error, Result};
use crate::native::{attend, Matrix, Pool};

/// The form of a native draft's weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NativeForm {
    F32,
    Bf16,
    Int8,
}

impl NativeForm {
    fn matrix(self, rows: usize, cols: usize, data: &[f32]) -> Matrix {
        match self {
            NativeForm::F32 => Matrix::f32(rows, cols, data),
            NativeForm::Bf16 => Matrix::bf16_from_f32(rows, cols, data),
            NativeForm::Int8 => Matrix::i8_from_f32(rows, cols, data),
        }
    }
}

/// A linear map with a bias.
struct Affine {
    w: Matrix,
    b: Vec<f32>,
}

/// The threads every native draft of the process computes on: up to four (a draft step reads a
/// few megabytes; more threads only wait on each other). The process's pool of that many
/// ([`Pool::shared`]): the drafts of a batch's rows, and a native base model of as many threads,
/// do not each keep spinning workers of their own.
fn shared_pool() -> Result<&'static Pool> {
    static POOL: OnceLock<std::result::Result<Arc<Pool>, String>> = OnceLock::new();
    let pool = POOL.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        Pool::shared(threads).map_err(|e| e.to_string())
    });
    match pool {
        Ok(p) => Ok(p),
        Err(e) => Err(Error::config(
            "threads",
            format!("could not start the native draft's: {e}"),
        )),
    }
}

impl Affine {
    /// `x` (`[m, cols]`) times the weights, plus the bias: `[m, rows]`.
    fn apply(&self, x: &[f32], m: usize, pool: &Pool) -> Vec<f32> {
        let mut out = vec![0f32; m * self.w.rows];
        self.w.product(x, m, &mut out, pool);
        for row in out.chunks_exact_mut(self.w.rows) {
            for (o, b) in row.iter_mut().zip(&self.b) {
                *o += b;
            }
        }
        out
    }
}

/// A layer norm's gain and bias (epsilon 1e-5, as the draft's).
struct Norm {
    w: Vec<f32>,
    b: Vec<f32>,
}

impl Norm {
    fn apply(&self, x: &[f32]) -> Vec<f32> {
        let n = self.w.len();
        let mut out = vec![0f32; x.len()];
        for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
            let mean = xr.iter().sum::<f32>() / n as f32;
            let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n as f32;
            let r = 1.0 / (var + 1e-5).sqrt();
            for (((o, &v), &g), &b) in or.iter_mut().zip(xr).zip(&self.w).zip(&self.b) {
                *o = (v - mean) * r * g + b;
            }
        }
        out
    }
}

/// One transformer layer's weights.
struct Layer {
    ln1: Norm,
    qkv: Affine,
    proj: Affine,
    ln2: Norm,
    fc1: Affine,
    fc2: Affine,
}

/// The draft's network and vocabulary projection, read-only: shared by the drafts of every
/// sequence ([`NativeDraft::fork`]).
struct Weights {
    d: usize,
    heads: usize,
    dh: usize,
    scale: f32,
    /// Rotary frequencies of one head (`Dh / 2`), empty for a draft without positions.
    rope_inv_freq: Vec<f32>,
    fuse: Affine,
    layers: Vec<Layer>,
    head: Matrix,
}

/// Keys and values of one layer per head, `[positions][head_dim]`, grown as positions are
/// written.
#[derive(Clone, Default)]
struct LayerCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

/// The draft on the native kernels: shared weights and this sequence's cache.
pub(crate) struct NativeDraft {
    w: Arc<Weights>,
    cache: Vec<LayerCache>,
    capacity: usize,
    len: usize,
}

impl std::fmt::Debug for NativeDraft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeDraft")
            .field("layers", &self.w.layers.len())
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// A float32 copy of `t`'s values, row-major, on the host.
pub(super) fn host(t: &Tensor) -> Result<Vec<f32>> {
    Ok(Vec::try_from(
        &t.f_to_device(tch::Device::Cpu)?
            .f_to_kind(Kind::Float)?
            .f_contiguous()?
            .f_flatten(0, -1)?,
    )?)
}

impl NativeDraft {
    /// The draft `draft` scoring with `projection`, its weights in `form`, a cache of up to
    /// `capacity` positions.
    pub(crate) fn new(
        draft: &FeatureDraft,
        projection: &VocabProjection,
        form: NativeForm,
        capacity: usize,
    ) -> Result<Self> {
        let config = draft.config();
        let (d, heads) = (config.d_model as usize, config.n_heads as usize);
        let vars: std::collections::HashMap<String, Tensor> =
            draft.var_store().variables().into_iter().collect();
        let get = |name: String| -> Result<Vec<f32>> {
            let t = vars.get(&name).ok_or_else(|| {
                Error::config("feature draft", format!("has no `{name}` variable"))
            })?;
            host(t)
        };
        let affine = |name: &str, rows: usize, cols: usize| -> Result<Affine> {
            Ok(Affine {
                w: form.matrix(rows, cols, &get(format!("{name}.weight"))?),
                b: get(format!("{name}.bias"))?,
            })
        };
        let norm = |name: &str| -> Result<Norm> {
            Ok(Norm {
                w: get(format!("{name}.weight"))?,
                b: get(format!("{name}.bias"))?,
            })
        };
        let d_ff = config.d_ff as usize;
        let layers = (0..draft.n_layers())
            .map(|i| {
                let p = match i {
                    0 => String::new(),
                    _ => format!("layer{i}."),
                };
                Ok(Layer {
                    ln1: norm(&format!("{p}ln1"))?,
                    qkv: affine(&format!("{p}qkv"), 3 * d, d)?,
                    proj: affine(&format!("{p}proj"), d, d)?,
                    ln2: norm(&format!("{p}ln2"))?,
                    fc1: affine(&format!("{p}fc1"), d_ff, d)?,
                    fc2: affine(&format!("{p}fc2"), d, d_ff)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let weight = projection.weight();
        let rows = weight.size()[0] as usize;
        // Start the threads now: an error here rather than mid-decoding.
        shared_pool()?;
        let cache = vec![
            LayerCache {
                k: vec![Vec::new(); heads],
                v: vec![Vec::new(); heads],
            };
            layers.len()
        ];
        Ok(NativeDraft {
            w: Arc::new(Weights {
                d,
                heads,
                dh: d / heads,
                scale: draft.scale() as f32,
                rope_inv_freq: draft
                    .rope_inv_freq()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|f| f as f32)
                    .collect(),
                fuse: affine("fuse", d, 2 * d)?,
                layers,
                head: form.matrix(rows, d, &host(weight)?),
            }),
            cache,
            capacity,
            len: 0,
        })
    }

    /// A draft for another sequence: the same weights (shared), an empty cache.
    pub(crate) fn fork(&self) -> Self {
        let heads = self.w.heads;
        NativeDraft {
            w: Arc::clone(&self.w),
            cache: vec![
                LayerCache {
                    k: vec![Vec::new(); heads],
                    v: vec![Vec::new(); heads],
                };
                self.w.layers.len()
            ],
            capacity: self.capacity,
            len: 0,
        }
    }

    /// Positions the cache holds at most.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets every cached position from `len` on.
    pub(crate) fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// The fused layer input of `t` rows of hidden states and embeddings (`[t, D]` each).
    pub(crate) fn fuse(&self, hidden: &[f32], embedded: &[f32], t: usize) -> Result<Vec<f32>> {
        let d = self.w.d;
        let mut x = vec![0f32; t * 2 * d];
        for (i, row) in x.chunks_exact_mut(2 * d).enumerate() {
            row[..d].copy_from_slice(&hidden[i * d..(i + 1) * d]);
            row[d..].copy_from_slice(&embedded[i * d..(i + 1) * d]);
        }
        Ok(self.w.fuse.apply(&x, t, shared_pool()?))
    }

    /// The layers over `t` fused inputs `x` (`[t, D]`) written at cache positions
    /// `start..start + t`; row `i` attends the positions `mask` allows (`[t, start + t]`, true
    /// where it may; `None`: every position up to its own). Returns the predicted states.
    pub(crate) fn run(
        &mut self,
        x: &[f32],
        t: usize,
        start: usize,
        mask: Option<&[bool]>,
        positions: &[i64],
    ) -> Result<Vec<f32>> {
        let end = start + t;
        let w = &*self.w;
        if end > self.capacity || x.len() != t * w.d {
            return Err(Error::Contract {
                component: "FeatureDraftProposer",
                problem: format!(
                    "a draft block of {t} rows at {start} (cache of {}, {} values)",
                    self.capacity,
                    x.len()
                ),
            });
        }
        if positions.len() != t {
            return Err(Error::Contract {
                component: "FeatureDraftProposer",
                problem: format!(
                    "{} positions for a draft block of {t} rows",
                    positions.len()
                ),
            });
        }
        if mask.is_some_and(|m| m.len() != t * end) {
            return Err(Error::Contract {
                component: "FeatureDraftProposer",
                problem: format!("a draft mask that is not [{t}, {end}]"),
            });
        }
        let (d, dh) = (w.d, w.dh);
        let pool = shared_pool()?;
        let mut x = x.to_vec();
        let mut scratch = vec![0f32; end];
        for (layer, cache) in w.layers.iter().zip(&mut self.cache) {
            let mut qkv = layer.qkv.apply(&layer.ln1.apply(&x), t, pool);
            if !w.rope_inv_freq.is_empty() {
                let half = dh / 2;
                let (mut cos, mut sin) = (vec![0f32; half], vec![0f32; half]);
                for (i, row) in qkv.chunks_exact_mut(3 * d).enumerate() {
                    // Angles as libtorch's path computes them: f32 position times f32 frequency.
                    for (j, &f) in w.rope_inv_freq.iter().enumerate() {
                        let a = positions[i] as f32 * f;
                        (cos[j], sin[j]) = (a.cos(), a.sin());
                    }
                    for head in row[..2 * d].chunks_exact_mut(dh) {
                        crate::native::rope(head, &cos, &sin);
                    }
                }
            }
            for h in 0..w.heads {
                for c in [&mut cache.k[h], &mut cache.v[h]] {
                    if c.len() < end * dh {
                        c.resize(end * dh, 0.0);
                    }
                }
                for i in 0..t {
                    let row = &qkv[i * 3 * d..(i + 1) * 3 * d];
                    let at = (start + i) * dh;
                    cache.k[h][at..at + dh].copy_from_slice(&row[d + h * dh..d + (h + 1) * dh]);
                    cache.v[h][at..at + dh]
                        .copy_from_slice(&row[2 * d + h * dh..2 * d + (h + 1) * dh]);
                }
            }
            let mut y = vec![0f32; t * d];
            for i in 0..t {
                let allowed = |s: usize| match mask {
                    Some(m) => m[i * end + s],
                    None => s <= start + i,
                };
                for h in 0..w.heads {
                    let q = &qkv[i * 3 * d + h * dh..i * 3 * d + (h + 1) * dh];
                    attend(
                        q,
                        1,
                        &cache.k[h],
                        &cache.v[h],
                        end,
                        dh,
                        w.scale,
                        &mut scratch,
                        allowed,
                        &mut y[i * d + h * dh..i * d + (h + 1) * dh],
                    );
                }
            }
            for (xv, pv) in x.iter_mut().zip(layer.proj.apply(&y, t, pool)) {
                *xv += pv;
            }
            let mut hidden = layer.fc1.apply(&layer.ln2.apply(&x), t, pool);
            for v in &mut hidden {
                *v = 0.5 * *v * (1.0 + libm::erff(*v * std::f32::consts::FRAC_1_SQRT_2));
            }
            for (xv, mv) in x.iter_mut().zip(layer.fc2.apply(&hidden, t, pool)) {
                *xv += mv;
            }
        }
        self.len = end;
        Ok(x)
    }

    /// Logits over the projection's columns for `t` states (`[t, D]`): `[t, columns]`.
    pub(crate) fn logits(&self, states: &[f32], t: usize) -> Result<Vec<f32>> {
        let mut out = vec![0f32; t * self.w.head.rows];
        self.w.head.product(states, t, &mut out, shared_pool()?);
        Ok(out)
    }

    /// Columns of the projection.
    pub(crate) fn columns(&self) -> usize {
        self.w.head.rows
    }
}
