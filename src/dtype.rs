//! Floating-point kinds as a serde-friendly enum.

use serde::{Deserialize, Serialize};
use tch::Kind;

/// The floating-point kind a model computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// 32-bit float.
    #[default]
    F32,
    /// 64-bit float: where near-ties must not flip an argmax (property tests).
    F64,
    /// bfloat16.
    Bf16,
    /// IEEE half precision.
    F16,
    /// A weight form of TorchScript exports, not a compute kind: int8 weights with a scale per
    /// output channel, computing in bfloat16 (`scripts/export_hf.py --dtypes int8`). Its
    /// [`kind`](DType::kind) is bfloat16; models that compute natively (the built-in
    /// transformer) refuse it.
    Int8,
}

impl DType {
    /// The libtorch kind.
    pub fn kind(self) -> Kind {
        match self {
            DType::F32 => Kind::Float,
            DType::F64 => Kind::Double,
            DType::Bf16 => Kind::BFloat16,
            DType::F16 => Kind::Half,
            DType::Int8 => Kind::BFloat16,
        }
    }

    /// The kind for a libtorch kind, when it is a floating-point one this crate computes in.
    pub fn from_kind(kind: Kind) -> Option<DType> {
        match kind {
            Kind::Float => Some(DType::F32),
            Kind::Double => Some(DType::F64),
            Kind::BFloat16 => Some(DType::Bf16),
            Kind::Half => Some(DType::F16),
            _ => None,
        }
    }

    /// Whether softmax and friends should be computed in float32 for accuracy.
    pub fn is_half(self) -> bool {
        matches!(self, DType::Bf16 | DType::F16 | DType::Int8)
    }
}

impl std::str::FromStr for DType {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "f32" | "float32" => Ok(DType::F32),
            "f64" | "float64" => Ok(DType::F64),
            "bf16" | "bfloat16" => Ok(DType::Bf16),
            "f16" | "float16" => Ok(DType::F16),
            "int8" => Ok(DType::Int8),
            other => Err(crate::Error::config(
                "dtype",
                format!("is `{other}`, expected one of f32, f64, bf16, f16, int8"),
            )),
        }
    }
}

impl std::fmt::Display for DType {
    /// The short name [`DType::from_str`](std::str::FromStr) reads: `f32`, `f64`, `bf16`, `f16`,
    /// `int8`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::Bf16 => "bf16",
            DType::F16 => "f16",
            DType::Int8 => "int8",
        })
    }
}
