//! The form a feature-level draft's weights compute in at inference.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::Device;

use crate::error::{Error, Result};
use crate::int8::int8_available;

/// How a feature-level draft's products run while it proposes. The draft only guesses, and
/// exact acceptance decides what is kept, so the output is the same in every form; the forms
/// differ in cost and, slightly, in how often a guess is right.
///
/// In JSON `"auto"`, `"f32"` or `"int8"` (the `weights` of an `eagle` proposer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DraftWeights {
    /// `Int8` on the CPU where libtorch has FBGEMM's kernels (x86-64), `F32` elsewhere.
    #[default]
    Auto,
    /// Float32 weights (through oneDNN on AMD CPUs, see [`F32Matmul`](crate::F32Matmul)).
    F32,
    /// Int8 weights (one scale per matrix) and inputs quantised per call, accumulated in int32:
    /// a quarter of the bytes per draft step. CPU only.
    Int8,
}

impl DraftWeights {
    /// The form to use on `device`: `Auto` resolved; `Int8` refused off the CPU or where
    /// libtorch lacks the kernels ([`Error::InvalidConfig`]).
    pub fn resolve(self, device: Device) -> Result<DraftWeights> {
        let int8_here = device == Device::Cpu && int8_available();
        match self {
            DraftWeights::Auto if int8_here => Ok(DraftWeights::Int8),
            DraftWeights::Auto | DraftWeights::F32 => Ok(DraftWeights::F32),
            DraftWeights::Int8 if int8_here => Ok(DraftWeights::Int8),
            DraftWeights::Int8 => Err(Error::config(
                "draft weights",
                if device != Device::Cpu {
                    format!("int8 runs on the CPU only; this draft runs on {device:?} (use f32 or auto)")
                } else {
                    "int8 needs libtorch's FBGEMM kernels (x86-64 builds), which this one lacks \
                     (use f32 or auto)"
                        .to_string()
                },
            )),
        }
    }
}

impl fmt::Display for DraftWeights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DraftWeights::Auto => "auto",
            DraftWeights::F32 => "f32",
            DraftWeights::Int8 => "int8",
        })
    }
}

impl FromStr for DraftWeights {
    type Err = Error;

    /// `auto`, `f32` or `int8`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(DraftWeights::Auto),
            "f32" => Ok(DraftWeights::F32),
            "int8" => Ok(DraftWeights::Int8),
            other => Err(Error::config(
                "draft weights",
                format!("`{other}` is not one of auto, f32, int8"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_parse_print_and_resolve() {
        for w in [DraftWeights::Auto, DraftWeights::F32, DraftWeights::Int8] {
            assert_eq!(w.to_string().parse::<DraftWeights>().unwrap(), w);
            let json = serde_json::to_string(&w).unwrap();
            assert_eq!(json, format!("\"{w}\""));
        }
        let e = "int4".parse::<DraftWeights>().unwrap_err().to_string();
        assert!(e.contains("`int4`") && e.contains("auto, f32, int8"), "{e}");
        assert_eq!(
            DraftWeights::F32.resolve(Device::Cpu).unwrap(),
            DraftWeights::F32
        );
        let auto = DraftWeights::Auto.resolve(Device::Cpu).unwrap();
        assert_eq!(auto == DraftWeights::Int8, int8_available());
        let e = DraftWeights::Int8
            .resolve(Device::Cuda(0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("CPU only"), "{e}");
        assert_eq!(
            DraftWeights::Auto.resolve(Device::Cuda(0)).unwrap(),
            DraftWeights::F32
        );
    }
}
