//! Which CPU library float32 matrix products run in, and weights packed once for inference:
//! the choice an f32 TorchScript export is loaded with ([`F32Matmul`]), and the packed products
//! (oneDNN float32 or FBGEMM int8) of the feature-level draft's inference.

use tch::{Device, Tensor};

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::int8::Int8Linear;

/// The CPU library of an f32 export's matrix products. Both give the export's checked numbers
/// (f32 within 2e-3 of the eager model, identical argmaxes); they differ in speed by CPU: on a
/// 2-core AMD EPYC, oneDNN with weights packed once made SmolLM2's one-token step 24 ms against
/// 36 ms for MKL, and a 16-token block 35 ms against 81 (docs/benchmarks.md, "Block costs"),
/// while on an Intel Xeon MKL's one-row products measured faster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum F32Matmul {
    /// oneDNN on AMD CPUs, libtorch's BLAS elsewhere; on exports without a oneDNN packing, on
    /// other dtypes and on CUDA, what the export does by default.
    #[default]
    Auto,
    /// libtorch's BLAS (MKL on x86), the weights stored transposed (`prepack()`).
    Blas,
    /// oneDNN, the weights packed once after loading (`prepack_onednn()`); f32 on CPU only.
    OneDnn,
}

impl F32Matmul {
    /// Parses `auto`, `blas` or `onednn`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(F32Matmul::Auto),
            "blas" => Ok(F32Matmul::Blas),
            "onednn" => Ok(F32Matmul::OneDnn),
            other => Err(Error::config(
                "f32_matmul",
                format!("is `{other}`; expected auto, blas or onednn"),
            )),
        }
    }

    /// What `Auto` picks on this CPU for an f32 CPU load of an export that offers both:
    /// [`F32Matmul::OneDnn`] on AMD CPUs, [`F32Matmul::Blas`] elsewhere.
    pub fn auto_choice() -> F32Matmul {
        if cpu_is_amd() {
            F32Matmul::OneDnn
        } else {
            F32Matmul::Blas
        }
    }

    /// Whether to call `prepack_onednn()` on an export whose metadata says `onednn` is `offered`.
    pub(crate) fn use_onednn(self, offered: bool, dtype: DType, device: Device) -> Result<bool> {
        let cpu_f32 = dtype == DType::F32 && device == Device::Cpu;
        match self {
            F32Matmul::Auto => Ok(offered && cpu_f32 && Self::auto_choice() == F32Matmul::OneDnn),
            F32Matmul::Blas if cpu_f32 => Ok(false),
            F32Matmul::OneDnn if cpu_f32 && offered => Ok(true),
            F32Matmul::OneDnn if cpu_f32 => Err(Error::config(
                "f32_matmul",
                "is onednn, but this export has no oneDNN packing (metadata.json lacks \"onednn\": \
                 true; export it again with scripts/export_hf.py)",
            )),
            _ => Err(Error::config(
                "f32_matmul",
                format!(
                    "is {self:?}, which chooses the CPU library of float32 products; this load is \
                     {dtype:?} on {device:?} (leave it at auto)"
                ),
            )),
        }
    }
    /// Whether a float32 network of the library's own (the feature-level draft at inference)
    /// runs its products through oneDNN on `device`: `Auto` as for an export, `OneDnn` refused
    /// off the CPU or where this libtorch has no oneDNN.
    pub(crate) fn packs_own_weights(self, device: Device) -> Result<bool> {
        let cpu = device == Device::Cpu && tch::utils::has_mkldnn();
        match self {
            F32Matmul::Auto => Ok(cpu && Self::auto_choice() == F32Matmul::OneDnn),
            F32Matmul::Blas => Ok(false),
            F32Matmul::OneDnn if cpu => Ok(true),
            F32Matmul::OneDnn => {
                Err(Error::config(
                    "f32_matmul",
                    format!(
                    "is OneDnn, which packs float32 weights for the CPU; this runs on {device:?}{}",
                    if tch::utils::has_mkldnn() { "" } else { " (and this libtorch has no oneDNN)" }
                ),
                ))
            }
        }
    }
}

/// Whether this is an AMD x86 CPU (CPUID vendor `AuthenticAMD`).
fn cpu_is_amd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: CPUID leaf 0 exists on every x86_64 CPU.
        #[allow(unused_unsafe)]
        let r = unsafe { std::arch::x86_64::__cpuid(0) };
        let mut vendor = Vec::with_capacity(12);
        for word in [r.ebx, r.edx, r.ecx] {
            vendor.extend_from_slice(&word.to_le_bytes());
        }
        vendor == b"AuthenticAMD"
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A float32 linear map `x · Wᵀ + b` with `W` (`[out, in]`) held in oneDNN's layout, for
/// products of one to a few rows: on a 2-core AMD EPYC a draft step's products took 2.2 ms from
/// a cold cache against 2.9 ms through MKL at one row, 2.6 against 4.8 at four
/// (`scripts/draft_products.py`, docs/feature-draft.md). A copy of the weights: it does not
/// follow later changes to them, so it is made for inference only.
#[derive(Debug)]
pub(crate) struct OneDnnLinear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl OneDnnLinear {
    /// Packs `weight` (`[out, in]`, float32, CPU) and copies `bias` (`[out]`).
    pub(crate) fn new(weight: &Tensor, bias: Option<&Tensor>) -> Result<Self> {
        let _guard = tch::no_grad_guard();
        Ok(OneDnnLinear {
            weight: weight.f_detach()?.f_contiguous()?.f_to_mkldnn(None)?,
            bias: bias
                .map(|b| b.f_detach().and_then(|b| b.f_contiguous()))
                .transpose()?,
        })
    }

    /// `x · Wᵀ + b` for float32 `x` (`[.., in]`), as a plain tensor `[.., out]`.
    pub(crate) fn apply(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_contiguous()?
            .f_to_mkldnn(None)?
            .f_mkldnn_linear(&self.weight, self.bias.as_ref())?
            .f_to_dense(None, false)?)
    }
}

/// How a linear map of the library's own networks computes at inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Packing {
    /// Through its weights as they are (what training needs).
    Plain,
    /// Through a oneDNN-packed float32 copy ([`OneDnnLinear`]).
    OneDnn,
    /// Through an int8 copy ([`Int8Linear`]).
    Int8,
}

/// A packed copy of a linear map's weights.
#[derive(Debug)]
pub(crate) enum PackedLinear {
    OneDnn(OneDnnLinear),
    Int8(Int8Linear),
}

impl PackedLinear {
    /// The packed copy of `weight` and `bias` that `packing` asks for (none for `Plain`).
    pub(crate) fn new(
        packing: Packing,
        weight: &Tensor,
        bias: Option<&Tensor>,
    ) -> Result<Option<Self>> {
        Ok(match packing {
            Packing::Plain => None,
            Packing::OneDnn => Some(PackedLinear::OneDnn(OneDnnLinear::new(weight, bias)?)),
            Packing::Int8 => Some(PackedLinear::Int8(Int8Linear::new(weight, bias)?)),
        })
    }

    /// `x · Wᵀ + b` as float32.
    pub(crate) fn apply(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            PackedLinear::OneDnn(l) => l.apply(x),
            PackedLinear::Int8(l) => l.apply(x),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_draft_packs_only_on_the_cpu() {
        let cuda = Device::Cuda(0);
        assert!(!F32Matmul::Blas.packs_own_weights(Device::Cpu).unwrap());
        assert!(!F32Matmul::Auto.packs_own_weights(cuda).unwrap());
        assert!(!F32Matmul::Blas.packs_own_weights(cuda).unwrap());
        let e = F32Matmul::OneDnn.packs_own_weights(cuda).unwrap_err();
        assert!(matches!(e, Error::InvalidConfig { .. }), "{e}");
        assert!(e.to_string().contains("Cuda(0)"), "{e}");
        assert_eq!(
            F32Matmul::Auto.packs_own_weights(Device::Cpu).unwrap(),
            tch::utils::has_mkldnn() && F32Matmul::auto_choice() == F32Matmul::OneDnn
        );
        assert_eq!(
            F32Matmul::OneDnn.packs_own_weights(Device::Cpu).is_ok(),
            tch::utils::has_mkldnn()
        );
    }

    #[test]
    fn packed_products_equal_plain_ones() {
        if !tch::utils::has_mkldnn() {
            return;
        }
        tch::manual_seed(1);
        let w = Tensor::randn([40, 24], (tch::Kind::Float, Device::Cpu));
        let b = Tensor::randn([40], (tch::Kind::Float, Device::Cpu));
        let p = OneDnnLinear::new(&w, Some(&b)).unwrap();
        for shape in [vec![1, 24], vec![1, 4, 24], vec![2, 3, 24]] {
            let x = Tensor::randn(shape.as_slice(), (tch::Kind::Float, Device::Cpu));
            let want = x.linear(&w, Some(&b));
            let got = p.apply(&x).unwrap();
            assert_eq!(got.size(), want.size());
            let diff = f64::try_from((&got - &want).abs().max()).unwrap();
            assert!(diff < 1e-4, "{shape:?}: {diff}");
        }
        // A transposed (non-contiguous) input is read as what it is.
        let x = Tensor::randn([24, 3], (tch::Kind::Float, Device::Cpu)).tr();
        let diff = f64::try_from((p.apply(&x).unwrap() - x.linear(&w, Some(&b))).abs().max());
        assert!(diff.unwrap() < 1e-4);
    }
}
