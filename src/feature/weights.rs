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
/// In JSON `"auto"`, `"f32"`, `"int8"`, `"native-f32"`, `"native-bf16"` or `"native-int8"`
/// (the `weights` of an `eagle` proposer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DraftWeights {
    /// On the CPU: `NativeInt8` where the crate's native kernels are vectorised (x86-64 with
    /// AVX2 and FMA), else `Int8` where libtorch has FBGEMM's kernels, else `F32`. Off the CPU:
    /// `F32`.
    #[default]
    Auto,
    /// Float32 weights through libtorch (oneDNN on AMD CPUs, see
    /// [`F32Matmul`](crate::F32Matmul)); the only form off the CPU.
    F32,
    /// Int8 weights through libtorch's FBGEMM kernels (one scale per matrix) and inputs
    /// quantised per call, accumulated in int32: a quarter of the bytes per draft step. CPU
    /// only.
    Int8,
    /// Float32 weights on the crate's own CPU kernels (`blockwise::native`'s products,
    /// attention and norms, no libtorch operator per step). CPU only.
    NativeF32,
    /// Bfloat16 weights (each widened exactly to float32 as it is used) on the native kernels.
    /// CPU only.
    NativeBf16,
    /// Int8 weights with one float32 scale per output row on the native kernels, float32
    /// inputs. CPU only.
    NativeInt8,
}

impl DraftWeights {
    /// The form to use on `device`: `Auto` resolved; `Int8` refused off the CPU or where
    /// libtorch lacks the kernels, native forms off the CPU ([`Error::InvalidConfig`]).
    pub fn resolve(self, device: Device) -> Result<DraftWeights> {
        let cpu = device == Device::Cpu;
        let int8_here = cpu && int8_available();
        let off_cpu = |form: &str| {
            Error::config(
                "draft weights",
                format!(
                    "{form} runs on the CPU only; this draft runs on {device:?} (use f32 or auto)"
                ),
            )
        };
        match self {
            DraftWeights::Auto if cpu && crate::native::vectorised() => {
                Ok(DraftWeights::NativeInt8)
            }
            DraftWeights::Auto if int8_here => Ok(DraftWeights::Int8),
            DraftWeights::Auto | DraftWeights::F32 => Ok(DraftWeights::F32),
            DraftWeights::Int8 if int8_here => Ok(DraftWeights::Int8),
            DraftWeights::Int8 if !cpu => Err(off_cpu("int8")),
            DraftWeights::Int8 => Err(Error::config(
                "draft weights",
                "int8 needs libtorch's FBGEMM kernels (x86-64 builds), which this one lacks \
                 (use f32, native-int8 or auto)",
            )),
            native if cpu => Ok(native),
            native => Err(off_cpu(&native.to_string())),
        }
    }

    /// Whether the form computes on the crate's native kernels.
    pub fn is_native(self) -> bool {
        matches!(
            self,
            DraftWeights::NativeF32 | DraftWeights::NativeBf16 | DraftWeights::NativeInt8
        )
    }
}

impl fmt::Display for DraftWeights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DraftWeights::Auto => "auto",
            DraftWeights::F32 => "f32",
            DraftWeights::Int8 => "int8",
            DraftWeights::NativeF32 => "native-f32",
            DraftWeights::NativeBf16 => "native-bf16",
            DraftWeights::NativeInt8 => "native-int8",
        })
    }
}

impl FromStr for DraftWeights {
    type Err = Error;

    /// `auto`, `f32`, `int8`, `native-f32`, `native-bf16` or `native-int8`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(DraftWeights::Auto),
            "f32" => Ok(DraftWeights::F32),
            "int8" => Ok(DraftWeights::Int8),
            "native-f32" => Ok(DraftWeights::NativeF32),
            "native-bf16" => Ok(DraftWeights::NativeBf16),
            "native-int8" => Ok(DraftWeights::NativeInt8),
            other => Err(Error::config(
                "draft weights",
                format!(
                    "`{other}` is not one of auto, f32, int8, native-f32, native-bf16, native-int8"
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_parse_print_and_resolve() {
        for w in [
            DraftWeights::Auto,
            DraftWeights::F32,
            DraftWeights::Int8,
            DraftWeights::NativeF32,
            DraftWeights::NativeBf16,
            DraftWeights::NativeInt8,
        ] {
            assert_eq!(w.to_string().parse::<DraftWeights>().unwrap(), w);
            let json = serde_json::to_string(&w).unwrap();
            assert_eq!(json, format!("\"{w}\""));
        }
        let e = "int4".parse::<DraftWeights>().unwrap_err().to_string();
        assert!(
            e.contains("`int4`") && e.contains("auto, f32, int8, native-f32"),
            "{e}"
        );
        assert_eq!(
            DraftWeights::F32.resolve(Device::Cpu).unwrap(),
            DraftWeights::F32
        );
        let auto = DraftWeights::Auto.resolve(Device::Cpu).unwrap();
        if crate::native::vectorised() {
            assert_eq!(auto, DraftWeights::NativeInt8);
        } else {
            assert_eq!(auto == DraftWeights::Int8, int8_available());
        }
        for native in [DraftWeights::NativeF32, DraftWeights::NativeInt8] {
            assert_eq!(native.resolve(Device::Cpu).unwrap(), native);
            let e = native.resolve(Device::Cuda(0)).unwrap_err().to_string();
            assert!(
                e.contains("CPU only") && e.contains(&native.to_string()),
                "{e}"
            );
        }
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
