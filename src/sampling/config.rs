//! The sampling settings, as serde configuration.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How to draw tokens instead of taking the argmax. In JSON:
/// `{"temperature": 0.7, "top_k": 50, "top_p": 0.9, "seed": 42}` (every field optional).
///
/// The base model's logits are divided by `temperature`, cut to the `top_k` most likely tokens
/// (ties at the cut are kept), then to the smallest set of most likely tokens whose probability
/// reaches `top_p`, and renormalised; the token is drawn from what remains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingConfig {
    /// Softmax temperature, finite and > 0 (1: the model's own distribution). For greedy
    /// decoding leave sampling out of the [`DecodeConfig`](crate::DecodeConfig).
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// Keep only the `top_k` most likely tokens (at least 1).
    #[serde(default)]
    pub top_k: Option<usize>,
    /// Keep only the most likely tokens whose probability reaches `top_p` (in `(0, 1]`).
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Reseed the decoder's generator with this at the start of each decode (reproducible
    /// output). `None`: continue the decoder's own stream.
    #[serde(default)]
    pub seed: Option<u64>,
}

fn default_temperature() -> f64 {
    1.0
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig::new(default_temperature())
    }
}

impl SamplingConfig {
    /// Sampling at `temperature`, no top-k or top-p cut, no per-call seed.
    pub fn new(temperature: f64) -> Self {
        SamplingConfig {
            temperature,
            top_k: None,
            top_p: None,
            seed: None,
        }
    }

    /// The same settings with a top-k cut.
    pub fn with_top_k(mut self, k: usize) -> Self {
        self.top_k = Some(k);
        self
    }

    /// The same settings with a top-p (nucleus) cut.
    pub fn with_top_p(mut self, p: f64) -> Self {
        self.top_p = Some(p);
        self
    }

    /// The same settings, reseeding the decoder's generator with `seed` at each decode.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Checks every field; [`Error::InvalidConfig`] names the first bad one.
    pub fn check(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(Error::config(
                "temperature",
                format!(
                    "must be finite and > 0, got {} (for greedy decoding, do not sample)",
                    self.temperature
                ),
            ));
        }
        if self.top_k == Some(0) {
            return Err(Error::config(
                "top_k",
                "must be at least 1 (1 is greedy decoding)",
            ));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(Error::config(
                    "top_p",
                    format!("must be in (0, 1], got {p}"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_name_their_field() {
        let field = |c: SamplingConfig| match c.check() {
            Err(Error::InvalidConfig { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        };
        assert_eq!(field(SamplingConfig::new(0.0)), "temperature");
        assert_eq!(field(SamplingConfig::new(f64::NAN)), "temperature");
        assert_eq!(field(SamplingConfig::new(1.0).with_top_k(0)), "top_k");
        assert_eq!(field(SamplingConfig::new(1.0).with_top_p(0.0)), "top_p");
        assert_eq!(field(SamplingConfig::new(1.0).with_top_p(1.5)), "top_p");
        assert!(SamplingConfig::new(0.7)
            .with_top_k(5)
            .with_top_p(1.0)
            .check()
            .is_ok());
    }

    #[test]
    fn json_fields_default_and_unknown_ones_are_refused() {
        let c: SamplingConfig = serde_json::from_str(r#"{"top_p": 0.9}"#).unwrap();
        assert_eq!(c, SamplingConfig::new(1.0).with_top_p(0.9));
        assert!(serde_json::from_str::<SamplingConfig>(r#"{"temp": 0.9}"#).is_err());
    }
}
