//! The two proposal-head architectures. Both map a final hidden state `[N, D]` to one state per
//! head `[N, H, D]`; the model's own vocabulary projection then turns each into logits.
//!
//! * Stern et al. §6: one shared feed-forward layer (hidden `H·d_ff`, output `H·D`) with a
//!   residual from the input to each of the `H` outputs.
//! * Medusa: one ResBlock per head, `h + SiLU(W_h h + b_h)`, computed for all heads as one
//!   `D -> H·D` layer.
//!
//! A fresh head's output layer starts at zero, so every head first repeats the base model's
//! next-token prediction and training moves it from there.

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::error::{Error, Result};
use crate::rng::SeededRng;

/// Which head architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadArch {
    /// Stern et al.: a shared feed-forward layer with residuals.
    #[default]
    Stern,
    /// Medusa: one ResBlock per head.
    Medusa,
}

impl std::fmt::Display for HeadArch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HeadArch::Stern => "stern",
            HeadArch::Medusa => "medusa",
        })
    }
}

impl std::str::FromStr for HeadArch {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "stern" => Ok(HeadArch::Stern),
            "medusa" => Ok(HeadArch::Medusa),
            _ => Err(Error::config(
                "head arch",
                format!("`{s}` is not one of stern, medusa"),
            )),
        }
    }
}

/// Dropout applied to the heads' hidden activations while training, with masks drawn from a
/// generator the trainer owns (so that a resumed run draws the same masks).
#[derive(Debug)]
pub struct Dropout<'a> {
    /// Probability of zeroing an activation, in `[0, 1)`.
    pub p: f64,
    /// Where the masks come from.
    pub rng: &'a mut SeededRng,
}

impl Dropout<'_> {
    fn apply(&mut self, x: &Tensor) -> Result<Tensor> {
        if self.p <= 0.0 {
            return Ok(x.shallow_clone());
        }
        let n = x.numel();
        let keep = 1.0 - self.p;
        let mask: Vec<f32> = (0..n)
            .map(|_| {
                if self.rng.uniform() < keep {
                    (1.0 / keep) as f32
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_slice(&mask)
            .f_view(x.size().as_slice())?
            .f_to_kind(x.kind())?
            .f_to_device(x.device())?;
        Ok(x.f_mul(&mask)?)
    }
}

#[derive(Debug)]
struct Dense {
    weight: Tensor,
    bias: Tensor,
}

impl Dense {
    fn new(path: nn::Path, d_in: i64, d_out: i64) -> Self {
        Dense {
            weight: path.var("weight", &[d_out, d_in], nn::Init::Const(0.0)),
            bias: path.var("bias", &[d_out], nn::Init::Const(0.0)),
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_linear(&self.weight, Some(&self.bias))?)
    }
}

/// Proposal heads of either architecture, living under a path of some variable store.
#[derive(Debug)]
pub struct ProposalHeads {
    arch: HeadArch,
    num_heads: i64,
    d_model: i64,
    /// Stern: the shared hidden layer (absent for Medusa).
    hidden: Option<Dense>,
    /// Stern: `H·d_ff -> H·D`; Medusa: `D -> H·D`.
    out: Dense,
}

impl ProposalHeads {
    /// Heads under `path` (variables `fc1`, `fc2` for Stern, `fc` for Medusa), all zero until
    /// loaded or [`ProposalHeads::init`]ialised. `d_ff` is Stern's hidden width per head.
    pub fn new(
        path: nn::Path,
        arch: HeadArch,
        d_model: i64,
        num_heads: usize,
        d_ff: i64,
    ) -> Result<Self> {
        if num_heads == 0 {
            return Err(Error::config("num_heads", "must be at least 1"));
        }
        if d_model <= 0 || (arch == HeadArch::Stern && d_ff <= 0) {
            return Err(Error::config(
                "heads",
                format!("d_model ({d_model}) and d_ff ({d_ff}) must be positive"),
            ));
        }
        let h = num_heads as i64;
        let (hidden, out) = match arch {
            HeadArch::Stern => (
                Some(Dense::new(&path / "fc1", d_model, h * d_ff)),
                Dense::new(&path / "fc2", h * d_ff, h * d_model),
            ),
            HeadArch::Medusa => (None, Dense::new(&path / "fc", d_model, h * d_model)),
        };
        Ok(ProposalHeads {
            arch,
            num_heads: h,
            d_model,
            hidden,
            out,
        })
    }

    /// The architecture.
    pub fn arch(&self) -> HeadArch {
        self.arch
    }

    /// Number of heads.
    pub fn num_heads(&self) -> usize {
        self.num_heads as usize
    }

    /// Width of the hidden states the heads read.
    pub fn d_model(&self) -> i64 {
        self.d_model
    }

    /// Fresh weights: the hidden layer drawn from `rng` (scaled by `1/sqrt(fan_in)`), the
    /// output layer and biases zero, so each head starts as the base's next-token prediction.
    pub fn init(&self, rng: &mut SeededRng) -> Result<()> {
        let _guard = tch::no_grad_guard();
        if let Some(hidden) = &self.hidden {
            let size = hidden.weight.size();
            let scale = 1.0 / (size[1] as f64).sqrt();
            let values: Vec<f64> = (0..hidden.weight.numel())
                .map(|_| rng.normal() * scale)
                .collect();
            let src = Tensor::from_slice(&values)
                .f_view(size.as_slice())?
                .f_to_kind(hidden.weight.kind())?
                .f_to_device(hidden.weight.device())?;
            hidden.weight.shallow_clone().f_copy_(&src)?;
            let _ = hidden.bias.shallow_clone().f_zero_()?;
        }
        let _ = self.out.weight.shallow_clone().f_zero_()?;
        let _ = self.out.bias.shallow_clone().f_zero_()?;
        Ok(())
    }

    /// Final hidden states `[N, D]` -> head states `[N, H, D]` (before the vocabulary
    /// projection). `dropout` is for training only. The input is converted to the heads' kind.
    pub fn forward(&self, hidden: &Tensor, dropout: Option<&mut Dropout<'_>>) -> Result<Tensor> {
        let kind = self.out.weight.kind();
        let x = if hidden.kind() == kind {
            hidden.shallow_clone()
        } else {
            hidden.f_to_kind(kind)?
        };
        let n = x.size()[0];
        let act = match &self.hidden {
            Some(layer) => layer.forward(&x)?.f_relu()?,
            None => x.shallow_clone(),
        };
        let act = match dropout {
            Some(d) => d.apply(&act)?,
            None => act,
        };
        let mut delta = self.out.forward(&act)?;
        if self.arch == HeadArch::Medusa {
            delta = delta.f_silu()?;
        }
        let delta = delta.f_view([n, self.num_heads, self.d_model])?;
        Ok(delta.f_add(&x.f_unsqueeze(1)?)?)
    }

    /// The floating-point kind of the weights.
    pub fn kind(&self) -> Kind {
        self.out.weight.kind()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_heads_repeat_the_input_and_shapes_hold() {
        for arch in [HeadArch::Stern, HeadArch::Medusa] {
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let heads = ProposalHeads::new(vs.root() / "heads", arch, 8, 3, 4).unwrap();
            heads.init(&mut SeededRng::new(1)).unwrap();
            let x = Tensor::randn([5, 8], (Kind::Float, tch::Device::Cpu));
            let y = heads.forward(&x, None).unwrap();
            assert_eq!(y.size(), vec![5, 3, 8]);
            let diff = f64::try_from((y - x.unsqueeze(1)).abs().max()).unwrap();
            assert_eq!(diff, 0.0, "{arch}");
            let mut rng = SeededRng::new(2);
            let mut d = Dropout {
                p: 0.5,
                rng: &mut rng,
            };
            assert_eq!(
                heads.forward(&x, Some(&mut d)).unwrap().size(),
                vec![5, 3, 8]
            );
        }
        let vs = nn::VarStore::new(tch::Device::Cpu);
        assert!(ProposalHeads::new(vs.root(), HeadArch::Stern, 8, 0, 4).is_err());
        assert!(ProposalHeads::new(vs.root(), HeadArch::Stern, 8, 2, 0).is_err());
        assert_eq!("medusa".parse::<HeadArch>().unwrap(), HeadArch::Medusa);
        assert!("tree".parse::<HeadArch>().is_err());
    }
}
