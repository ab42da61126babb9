//! Learning-rate schedules: linear warm-up, then constant, cosine or inverse-square-root decay.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What the learning rate does after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Decay {
    /// Stays at the peak.
    Constant,
    /// Half a cosine from the peak down to `min_ratio * peak` at the last step.
    #[default]
    Cosine,
    /// `peak * sqrt(warmup / step)` (the Transformer paper's schedule after its warm-up).
    InverseSqrt,
}

/// A learning-rate schedule: linear warm-up from 0 to `peak` over `warmup_steps`, then `decay`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrSchedule {
    /// The learning rate at the end of warm-up.
    pub peak: f64,
    /// Steps of linear warm-up.
    #[serde(default)]
    pub warmup_steps: usize,
    /// What follows warm-up.
    #[serde(default)]
    pub decay: Decay,
    /// Cosine decay ends at `min_ratio * peak`.
    #[serde(default = "default_min_ratio")]
    pub min_ratio: f64,
}

fn default_min_ratio() -> f64 {
    0.1
}

impl LrSchedule {
    /// Checks the numbers.
    pub fn validate(&self) -> Result<()> {
        if !(self.peak > 0.0 && self.peak.is_finite()) {
            return Err(Error::config(
                "lr peak",
                format!("must be positive, got {}", self.peak),
            ));
        }
        if !(0.0..=1.0).contains(&self.min_ratio) {
            return Err(Error::config(
                "lr min_ratio",
                format!("must be in [0, 1], got {}", self.min_ratio),
            ));
        }
        Ok(())
    }

    /// The learning rate at `step` (0-based) of a run of `total` steps.
    pub fn at(&self, step: usize, total: usize) -> f64 {
        let s = step as f64 + 1.0;
        let w = self.warmup_steps as f64;
        if s <= w {
            return self.peak * s / w;
        }
        match self.decay {
            Decay::Constant => self.peak,
            Decay::InverseSqrt => self.peak * (w.max(1.0) / s).sqrt(),
            Decay::Cosine => {
                let span = (total as f64 - w).max(1.0);
                let progress = ((s - w) / span).clamp(0.0, 1.0);
                let floor = self.min_ratio * self.peak;
                floor + (self.peak - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_up_then_decay() {
        let cosine = LrSchedule {
            peak: 1.0,
            warmup_steps: 10,
            decay: Decay::Cosine,
            min_ratio: 0.1,
        };
        assert!((cosine.at(0, 110) - 0.1).abs() < 1e-12);
        assert!((cosine.at(9, 110) - 1.0).abs() < 1e-12);
        assert!((cosine.at(109, 110) - 0.1).abs() < 1e-9);
        assert!(cosine.at(60, 110) < cosine.at(30, 110));
        let inv = LrSchedule {
            decay: Decay::InverseSqrt,
            ..cosine
        };
        assert!((inv.at(39, 100) - 0.5).abs() < 1e-12);
        let flat = LrSchedule {
            decay: Decay::Constant,
            ..cosine
        };
        assert_eq!(flat.at(99, 100), 1.0);
        assert!(LrSchedule {
            peak: 0.0,
            ..cosine
        }
        .validate()
        .is_err());
        assert!(LrSchedule {
            min_ratio: 2.0,
            ..cosine
        }
        .validate()
        .is_err());
    }
}
