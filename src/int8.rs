//! Int8 linear maps for the library's own small networks (the feature-level draft at
//! inference): the weights quantised once (one scale for the whole matrix) and packed for
//! FBGEMM, each call's float32 input quantised on the fly, the product accumulated in int32 and
//! returned in float32. libtorch has these kernels on x86-64 (ATen's `fbgemm_*` functions);
//! tch does not bind them, so csrc/int8_linear.cpp does, compiled by build.rs.
//!
//! Why: a draft step reads its weights once per guessed token, and in float32 SmolLM2's draft
//! (one layer and an 8,192-token shortlist, about 34 MB) comes from memory at every step. At a
//! quarter of the bytes one step's products took 0.53 ms against 2.54 ms through oneDNN in
//! float32, from a cold cache, on a 2-core AMD EPYC (`scripts/draft_products.py`).

use tch::{Kind, Tensor};

use crate::error::{Error, Result};

#[cfg(blockwise_int8)]
mod ffi {
    use std::os::raw::{c_char, c_int};
    use torch_sys::C_tensor;

    extern "C" {
        pub fn blockwise_int8_available() -> c_int;
        pub fn blockwise_int8_pack(
            weight: *const C_tensor,
            q: *mut *mut C_tensor,
            packed: *mut *mut C_tensor,
            col_offsets: *mut *mut C_tensor,
            scale: *mut f64,
            zero_point: *mut i64,
        ) -> *mut c_char;
        pub fn blockwise_int8_linear(
            x: *const C_tensor,
            q: *const C_tensor,
            packed: *const C_tensor,
            col_offsets: *const C_tensor,
            scale: f64,
            zero_point: i64,
            bias: *const C_tensor,
            out: *mut *mut C_tensor,
        ) -> *mut c_char;
        pub fn blockwise_int8_free_message(m: *mut c_char);
    }

    /// Turns a message returned by the shim into an error (and frees it).
    pub fn check(m: *mut c_char) -> Result<(), String> {
        if m.is_null() {
            return Ok(());
        }
        // SAFETY: a non-null return is a NUL-terminated string the shim allocated.
        let text = unsafe { std::ffi::CStr::from_ptr(m) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: freed once, by the shim's own allocator.
        unsafe { blockwise_int8_free_message(m) };
        Err(text)
    }
}

/// Whether int8 products can run here: this build compiled the shim and libtorch has FBGEMM's
/// kernels (x86-64 builds do).
pub fn int8_available() -> bool {
    #[cfg(blockwise_int8)]
    {
        // SAFETY: takes no arguments; reads libtorch's list of quantized engines.
        unsafe { ffi::blockwise_int8_available() == 1 }
    }
    #[cfg(not(blockwise_int8))]
    {
        false
    }
}

/// `x · Wᵀ + b` through int8 weights (see the module's documentation). A copy of the weights
/// at packing time, for inference only; CPU only.
#[derive(Debug)]
pub(crate) struct Int8Linear {
    q: Tensor,
    packed: Tensor,
    col_offsets: Tensor,
    scale: f64,
    zero_point: i64,
    bias: Tensor,
}

impl Int8Linear {
    /// Quantises and packs `weight` (`[out, in]`, float32 on the CPU) and copies `bias`
    /// (`[out]`; zeros when `None`).
    pub(crate) fn new(weight: &Tensor, bias: Option<&Tensor>) -> Result<Self> {
        let _guard = tch::no_grad_guard();
        let size = weight.size();
        if size.len() != 2 || weight.device() != tch::Device::Cpu {
            return Err(Error::config(
                "draft weights",
                format!(
                    "int8 products take a 2-d float32 weight on the CPU, got {size:?} on {:?}",
                    weight.device()
                ),
            ));
        }
        if !int8_available() {
            return Err(Error::config(
                "draft weights",
                "int8 products need libtorch's FBGEMM kernels (x86-64), which this build lacks",
            ));
        }
        let weight = weight.f_detach()?.f_to_kind(Kind::Float)?.f_contiguous()?;
        let bias = match bias {
            Some(b) => b.f_detach()?.f_to_kind(Kind::Float)?.f_contiguous()?,
            None => Tensor::f_zeros([size[0]], (Kind::Float, tch::Device::Cpu))?,
        };
        Self::pack(&weight, bias)
    }

    #[cfg(blockwise_int8)]
    fn pack(weight: &Tensor, bias: Tensor) -> Result<Self> {
        let mut q = std::ptr::null_mut();
        let mut packed = std::ptr::null_mut();
        let mut col_offsets = std::ptr::null_mut();
        let mut scale = 0.0;
        let mut zero_point = 0;
        // SAFETY: `weight` is a live tensor; on success the shim hands over three new tensors,
        // which `Tensor::from_ptr` owns from here on.
        unsafe {
            ffi::check(ffi::blockwise_int8_pack(
                weight.as_ptr(),
                &mut q,
                &mut packed,
                &mut col_offsets,
                &mut scale,
                &mut zero_point,
            ))
            .map_err(|m| Error::Torch(tch::TchError::Torch(m)))?;
            Ok(Int8Linear {
                q: Tensor::from_ptr(q),
                packed: Tensor::from_ptr(packed),
                col_offsets: Tensor::from_ptr(col_offsets),
                scale,
                zero_point,
                bias,
            })
        }
    }

    #[cfg(not(blockwise_int8))]
    fn pack(_weight: &Tensor, _bias: Tensor) -> Result<Self> {
        unreachable!("int8_available() is false without the shim")
    }

    /// `x · Wᵀ + b` for `x` (`[.., in]`, any float kind, computed from float32) as float32
    /// `[.., out]`.
    pub(crate) fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.f_to_kind(Kind::Float)?.f_contiguous()?;
        self.product(&x)
    }

    #[cfg(blockwise_int8)]
    fn product(&self, x: &Tensor) -> Result<Tensor> {
        let mut out = std::ptr::null_mut();
        // SAFETY: every argument is a live tensor of this struct or the caller's; on success
        // the shim hands over one new tensor.
        unsafe {
            ffi::check(ffi::blockwise_int8_linear(
                x.as_ptr(),
                self.q.as_ptr(),
                self.packed.as_ptr(),
                self.col_offsets.as_ptr(),
                self.scale,
                self.zero_point,
                self.bias.as_ptr(),
                &mut out,
            ))
            .map_err(|m| Error::Torch(tch::TchError::Torch(m)))?;
            Ok(Tensor::from_ptr(out))
        }
    }

    #[cfg(not(blockwise_int8))]
    fn product(&self, _x: &Tensor) -> Result<Tensor> {
        unreachable!("an Int8Linear is only made where int8_available()")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_products_are_close_to_float32_ones() {
        if !int8_available() {
            return;
        }
        tch::manual_seed(7);
        let w = Tensor::randn([96, 40], (Kind::Float, tch::Device::Cpu)) * 0.1;
        let b = Tensor::randn([96], (Kind::Float, tch::Device::Cpu));
        let x = Tensor::randn([2, 3, 40], (Kind::Float, tch::Device::Cpu));
        let exact = x.linear(&w, Some(&b));
        let int8 = Int8Linear::new(&w, Some(&b)).unwrap().apply(&x).unwrap();
        assert_eq!(int8.size(), vec![2, 3, 96]);
        let err = f64::try_from((&int8 - &exact).norm()).unwrap()
            / f64::try_from((&exact - &b).norm()).unwrap();
        // Quantisation error only (8 bits of weights and of inputs): a few percent of the
        // product's size; a wrong packing or layout would be of the order of 1.
        assert!(err < 0.05, "relative error {err}");
        assert!(
            err > 0.0,
            "an int8 product equal to float32 to the last bit is suspicious"
        );
        // Without a bias the shim adds zeros.
        let plain = Int8Linear::new(&w, None).unwrap().apply(&x).unwrap();
        let diff = f64::try_from((&plain + &b - &int8).abs().max()).unwrap();
        assert!(diff < 1e-4, "bias handled differently: {diff}");
    }

    #[test]
    fn int8_weights_must_be_a_matrix() {
        if !int8_available() {
            return;
        }
        let w = Tensor::zeros([4, 4, 4], (Kind::Float, tch::Device::Cpu));
        let e = Int8Linear::new(&w, None).unwrap_err().to_string();
        assert!(e.contains("2-d"), "{e}");
    }
}
