//! [`Bf16Inputs`]: what the native decoder multiplies bfloat16 weights with.

use std::fmt;

use super::{pairs, tiles};
use crate::dtype::DType;
use crate::error::{Error, Result};

/// What the native decoder multiplies bfloat16 weights ([`DType::Bf16`]) with.
///
/// With float32 inputs (the default) each weight is widened to float32 as it is read and
/// multiplied in float32. With bfloat16 inputs the inputs of each product are rounded to
/// bfloat16 once and the CPU's bfloat16 dot products (`vdpbf16ps`, AVX-512 BF16) multiply two
/// pairs per float32 lane. Measured on a 2-core Intel Xeon with AVX-512 BF16
/// (docs/benchmarks.md, "bf16 dot products"): a one-token step about 1.2x faster, a verify
/// block of 4-6 rows slower, so blockwise decoding keeps the default. Either way every row of a
/// block is computed as a one-token step computes it, so blockwise decoding returns this model's
/// greedy output; the two choices' greedy outputs differ from each other where rounding the
/// inputs moves a near-tie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Bf16Inputs {
    /// float32, on every CPU.
    #[default]
    F32,
    /// bfloat16, by the CPU's dot products (refused on a CPU without AVX-512 BF16, and with
    /// weights that are not bf16).
    Bf16,
    /// bfloat16, by the CPU's AMX tiles (refused on a CPU or system without AMX-BF16 tiles,
    /// and with weights that are not bf16).
    Tiles,
}

/// How the native decoder packs and multiplies bf16 weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Packing {
    /// Widened to float32 (and every other dtype's own form).
    Widened,
    /// bfloat16 dot products.
    Pairs,
    /// AMX tiles.
    Tiles,
}

impl Bf16Inputs {
    /// Parses `f32`, `bf16` or `tiles`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Bf16Inputs::F32),
            "bf16" => Ok(Bf16Inputs::Bf16),
            "tiles" => Ok(Bf16Inputs::Tiles),
            other => Err(Error::config(
                "bf16_inputs",
                format!("is `{other}`; expected f32, bf16 or tiles"),
            )),
        }
    }

    /// Whether this CPU has bfloat16 dot products (AVX-512 BF16 with AVX-512F and VL).
    pub fn available() -> bool {
        pairs::available()
    }

    /// Whether this machine can compute this choice: always for `F32`, with AVX-512 BF16 for
    /// `Bf16`, with AMX-BF16 tiles granted by the operating system (Linux) for `Tiles`.
    pub fn is_supported(self) -> bool {
        match self {
            Bf16Inputs::F32 => true,
            Bf16Inputs::Bf16 => pairs::available(),
            Bf16Inputs::Tiles => tiles::available(),
        }
    }

    /// How products with weights in `dtype` are computed under this choice; an error for a
    /// bfloat16 choice with weights that are not bfloat16 and on a machine without the
    /// instructions.
    pub(crate) fn packing(self, dtype: DType) -> Result<Packing> {
        match (self, dtype) {
            (Bf16Inputs::F32, _) => Ok(Packing::Widened),
            (Bf16Inputs::Bf16, DType::Bf16) if self.is_supported() => Ok(Packing::Pairs),
            (Bf16Inputs::Tiles, DType::Bf16) if self.is_supported() => Ok(Packing::Tiles),
            (Bf16Inputs::Bf16, DType::Bf16) => Err(Error::config(
                "bf16_inputs",
                "is bf16, but this CPU has no bfloat16 dot products (AVX-512 BF16); use f32",
            )),
            (Bf16Inputs::Tiles, DType::Bf16) => Err(Error::config(
                "bf16_inputs",
                "is tiles, but this machine has no AMX bfloat16 tiles (amx_bf16, granted by \
                 Linux); use bf16 or f32",
            )),
            (choice, other) => Err(Error::config(
                "bf16_inputs",
                format!("is {choice}, which applies to bf16 weights only (the dtype is {other})"),
            )),
        }
    }
}

impl fmt::Display for Bf16Inputs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Bf16Inputs::F32 => "f32",
            Bf16Inputs::Bf16 => "bf16",
            Bf16Inputs::Tiles => "tiles",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_and_conflicts_are_refused() {
        for c in [Bf16Inputs::F32, Bf16Inputs::Bf16, Bf16Inputs::Tiles] {
            assert_eq!(Bf16Inputs::parse(&c.to_string()).unwrap(), c);
        }
        let e = Bf16Inputs::parse("fp16").unwrap_err().to_string();
        assert!(
            e.contains("fp16") && e.contains("f32, bf16 or tiles"),
            "{e}"
        );
        // The default leaves every form as it is; bf16 inputs need bf16 weights.
        for d in [DType::F32, DType::Bf16, DType::Int8] {
            assert_eq!(Bf16Inputs::F32.packing(d).unwrap(), Packing::Widened);
        }
        for c in [Bf16Inputs::Bf16, Bf16Inputs::Tiles] {
            for d in [DType::F32, DType::Int8] {
                let e = c.packing(d).unwrap_err().to_string();
                assert!(
                    e.contains("bf16 weights only") && e.contains(&c.to_string()),
                    "{e}"
                );
            }
        }
        match Bf16Inputs::Bf16.packing(DType::Bf16) {
            Ok(p) => assert!(p == Packing::Pairs && Bf16Inputs::available()),
            Err(e) => {
                assert!(!Bf16Inputs::available());
                assert!(e.to_string().contains("AVX-512 BF16"), "{e}");
            }
        }
        match Bf16Inputs::Tiles.packing(DType::Bf16) {
            Ok(p) => assert!(p == Packing::Tiles && Bf16Inputs::Tiles.is_supported()),
            Err(e) => {
                assert!(!Bf16Inputs::Tiles.is_supported());
                assert!(e.to_string().contains("AMX"), "{e}");
            }
        }
    }
}
