//! AdamW (Loshchilov & Hutter) with decoupled weight decay, gradient-norm clipping, and its
//! state kept as plain tensors (so that it can be saved with a checkpoint).

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::error::{Error, Result};

/// Optimiser settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    /// First-moment decay.
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    /// Second-moment decay.
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    /// Added to the second-moment root.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Decoupled weight decay, applied to matrices only (not to biases, norms or embeddings).
    #[serde(default)]
    pub weight_decay: f64,
    /// Rescale gradients whose global L2 norm exceeds this (`None`: no clipping).
    #[serde(default)]
    pub clip_norm: Option<f64>,
}

fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.95
}
fn default_eps() -> f64 {
    1e-8
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            beta1: default_beta1(),
            beta2: default_beta2(),
            eps: default_eps(),
            weight_decay: 0.0,
            clip_norm: Some(1.0),
        }
    }
}

impl OptimConfig {
    /// Checks the numbers.
    pub fn validate(&self) -> Result<()> {
        for (field, v) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return Err(Error::config(field, format!("must be in [0, 1), got {v}")));
            }
        }
        if !(self.eps > 0.0) {
            return Err(Error::config(
                "eps",
                format!("must be positive, got {}", self.eps),
            ));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(Error::config(
                "weight_decay",
                format!("must be >= 0, got {}", self.weight_decay),
            ));
        }
        if let Some(c) = self.clip_norm {
            if !(c > 0.0 && c.is_finite()) {
                return Err(Error::config(
                    "clip_norm",
                    format!("must be positive, got {c}"),
                ));
            }
        }
        Ok(())
    }
}

struct Param {
    name: String,
    tensor: Tensor,
    m: Tensor,
    v: Tensor,
    decay: bool,
}

/// AdamW over the trainable variables of a [`nn::VarStore`], in name order.
pub struct AdamW {
    config: OptimConfig,
    params: Vec<Param>,
    steps: u64,
}

impl std::fmt::Debug for AdamW {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdamW")
            .field("config", &self.config)
            .field("params", &self.params.len())
            .field("steps", &self.steps)
            .finish()
    }
}

impl AdamW {
    /// An optimiser for every trainable variable of `vs` whose name `select` accepts.
    pub fn new(
        vs: &nn::VarStore,
        config: OptimConfig,
        select: impl Fn(&str) -> bool,
    ) -> Result<Self> {
        config.validate()?;
        let mut vars: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(name, t)| select(name) && t.requires_grad())
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let params = vars
            .into_iter()
            .map(|(name, tensor)| {
                let decay = tensor.dim() >= 2 && !name.ends_with("emb");
                Ok(Param {
                    m: tensor.f_zeros_like()?,
                    v: tensor.f_zeros_like()?,
                    name,
                    tensor,
                    decay,
                })
            })
            .collect::<Result<_>>()?;
        Ok(AdamW {
            config,
            params,
            steps: 0,
        })
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The moment estimates, named `m.<variable>` and `v.<variable>`, for a checkpoint.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.params.len());
        for p in &self.params {
            out.push((format!("m.{}", p.name), p.m.shallow_clone()));
            out.push((format!("v.{}", p.name), p.v.shallow_clone()));
        }
        out
    }

    /// Restores what [`AdamW::state_tensors`] saved, and the step count (bias correction
    /// depends on it). Every variable must be there with its shape.
    pub fn load_state(&mut self, tensors: Vec<(String, Tensor)>, steps: u64) -> Result<()> {
        let map: std::collections::HashMap<String, Tensor> = tensors.into_iter().collect();
        let _guard = tch::no_grad_guard();
        for p in &mut self.params {
            for (prefix, dst) in [("m", &mut p.m), ("v", &mut p.v)] {
                let name = format!("{prefix}.{}", p.name);
                let src = map.get(&name).ok_or_else(|| {
                    Error::config("checkpoint", format!("optimiser state has no `{name}`"))
                })?;
                if src.size() != dst.size() {
                    return Err(Error::config(
                        "checkpoint",
                        format!(
                            "optimiser state `{name}` is {:?}, the variable is {:?}",
                            src.size(),
                            dst.size()
                        ),
                    ));
                }
                dst.f_copy_(src)?;
            }
        }
        self.steps = steps;
        Ok(())
    }

    /// The names of the variables it trains, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.params.iter().map(|p| p.name.as_str())
    }

    /// Clears the gradients.
    pub fn zero_grad(&mut self) -> Result<()> {
        for p in &mut self.params {
            let mut g = p.tensor.grad();
            if g.defined() {
                let _ = g.f_zero_()?;
            }
        }
        Ok(())
    }

    /// The global L2 norm of the gradients; when it exceeds the configured clip norm, the
    /// gradients are scaled down to it. Returns the norm before clipping.
    pub fn clip(&mut self) -> Result<f64> {
        let _guard = tch::no_grad_guard();
        let mut sq = 0.0;
        for p in &self.params {
            let g = p.tensor.grad();
            if g.defined() {
                sq += f64::try_from(g.f_square()?.f_sum(tch::Kind::Double)?)?;
            }
        }
        let norm = sq.sqrt();
        if !norm.is_finite() {
            return Err(Error::config(
                "learning rate",
                format!("gradients became {norm}: training diverged; lower the learning rate"),
            ));
        }
        if let Some(max) = self.config.clip_norm {
            if norm > max {
                let scale = max / (norm + 1e-12);
                for p in &self.params {
                    let mut g = p.tensor.grad();
                    if g.defined() {
                        let _ = g.f_mul_scalar_(scale)?;
                    }
                }
            }
        }
        Ok(norm)
    }

    /// One update at learning rate `lr`.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        let _guard = tch::no_grad_guard();
        self.steps += 1;
        let c = self.config;
        let t = self.steps as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2 = 1.0 - c.beta2.powi(t);
        for p in &mut self.params {
            let g = p.tensor.grad();
            if !g.defined() {
                continue;
            }
            let _ = p.m.f_mul_scalar_(c.beta1)?;
            let _ = p.m.f_add_(&g.f_mul_scalar(1.0 - c.beta1)?)?;
            let _ = p.v.f_mul_scalar_(c.beta2)?;
            let _ = p.v.f_add_(&g.f_square()?.f_mul_scalar(1.0 - c.beta2)?)?;
            if p.decay && c.weight_decay > 0.0 {
                let _ = p.tensor.f_mul_scalar_(1.0 - lr * c.weight_decay)?;
            }
            let denom = p.v.f_div_scalar(bias2)?.f_sqrt()?.f_add_scalar(c.eps)?;
            let update = p.m.f_div_scalar(bias1)?.f_div(&denom)?.f_mul_scalar(lr)?;
            let _ = p.tensor.f_sub_(&update)?;
        }
        Ok(())
    }
}
