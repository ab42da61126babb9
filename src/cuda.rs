//! CUDA through libtorch: making its CUDA backend present before a model goes to the GPU.
//!
//! libtorch's CUDA kernels live in `libtorch_cuda.so`, a library nothing in a Rust program
//! calls by name. The linker's default `--as-needed` therefore drops it from binaries built
//! with tch, even when tch found it: CUDA is then "not available" on a machine with a GPU and a
//! CUDA build of libtorch. [`available`] (and every model loader given a CUDA device) first
//! loads `libtorch_cuda.so` from the folder the running `libtorch_cpu.so` came from, so a plain
//! `cargo build` against a CUDA libtorch (`LIBTORCH_USE_PYTORCH=1` with PyTorch's CUDA wheel,
//! or a CUDA libtorch download) uses the GPU without link flags or `LD_PRELOAD`.

use tch::Device;

use crate::{Error, Result};

/// Whether libtorch can run on a CUDA device here, after loading its CUDA backend if the
/// libtorch this program runs with has one (see the module docs).
pub fn available() -> bool {
    load_backend();
    tch::Cuda::is_available()
}

/// The number of CUDA devices libtorch sees (0 without a GPU or a CUDA build of libtorch).
pub fn device_count() -> usize {
    load_backend();
    usize::try_from(tch::Cuda::device_count()).unwrap_or(0)
}

/// Checks that `device` can be used: the CPU always can; `Cuda(i)` needs a CUDA build of
/// libtorch, a GPU, and `i` below the number of devices. The error says which is missing.
pub fn check_device(device: Device) -> Result<()> {
    let Device::Cuda(index) = device else {
        return Ok(());
    };
    let count = device_count();
    if count == 0 {
        let problem = match load_backend() {
            Ok(_) => "is cuda, but libtorch sees no CUDA device (is a GPU and its driver present?)"
                .to_string(),
            Err(why) => format!("is cuda, but {why}"),
        };
        return Err(Error::InvalidConfig {
            field: "device",
            problem,
        });
    }
    if index >= count {
        return Err(Error::InvalidConfig {
            field: "device",
            problem: format!("is cuda:{index}, but libtorch sees {count} CUDA device(s)"),
        });
    }
    Ok(())
}

/// Parses a device the way the command lines write it, `cpu`, `cuda` (device 0) or `cuda:N`,
/// and checks it with [`check_device`].
pub fn parse_device(text: &str) -> Result<Device> {
    let device = match text {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        _ => match text.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(index)) => Device::Cuda(index),
            _ => {
                return Err(Error::InvalidConfig {
                    field: "device",
                    problem: format!("is {text:?}; expected cpu, cuda or cuda:N"),
                })
            }
        },
    };
    check_device(device)?;
    Ok(device)
}

/// The `libtorch_cuda.so` loaded beside libtorch, if there is one.
pub fn backend_path() -> Option<&'static std::path::Path> {
    load_backend().as_deref().ok()
}

#[cfg(target_os = "linux")]
fn load_backend() -> &'static std::result::Result<std::path::PathBuf, String> {
    use std::sync::OnceLock;
    static LOADED: OnceLock<std::result::Result<std::path::PathBuf, String>> = OnceLock::new();
    LOADED.get_or_init(|| {
        let dir = libtorch_dir().ok_or("libtorch_cpu.so is not among the loaded libraries")?;
        let path = dir.join("libtorch_cuda.so");
        if !path.is_file() {
            return Err(format!(
                "the libtorch this program runs with ({}) has no CUDA backend \
                 (libtorch_cuda.so): build against a CUDA libtorch",
                dir.display()
            ));
        }
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| "libtorch's folder has a NUL in its name".to_string())?;
        // SAFETY: `c` is a valid NUL-terminated path; the handle is kept for the life of the
        // process (libtorch's backends register themselves when loaded and are never unloaded).
        let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        if handle.is_null() {
            // SAFETY: dlerror returns NULL or a NUL-terminated message owned by the loader.
            let why = unsafe {
                let e = libc::dlerror();
                if e.is_null() {
                    "unknown error".to_string()
                } else {
                    std::ffi::CStr::from_ptr(e).to_string_lossy().into_owned()
                }
            };
            return Err(format!("loading {} failed: {why}", path.display()));
        }
        Ok(path)
    })
}

#[cfg(not(target_os = "linux"))]
fn load_backend() -> &'static std::result::Result<std::path::PathBuf, String> {
    use std::sync::OnceLock;
    static NOT_LOADED: OnceLock<std::result::Result<std::path::PathBuf, String>> = OnceLock::new();
    // Elsewhere libtorch's CUDA library is linked as tch links it.
    NOT_LOADED.get_or_init(|| Err("libtorch sees no CUDA device".to_string()))
}

/// The folder of the `libtorch_cpu.so` this process has loaded.
#[cfg(target_os = "linux")]
fn libtorch_dir() -> Option<std::path::PathBuf> {
    use std::ffi::CStr;
    use std::os::unix::ffi::OsStrExt;

    unsafe extern "C" fn visit(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: the loader passes a valid `info` for the duration of the call, and `data` is
        // the `Option<PathBuf>` handed to `dl_iterate_phdr` below.
        let (info, found) = unsafe { (&*info, &mut *(data as *mut Option<std::path::PathBuf>)) };
        if info.dlpi_name.is_null() {
            return 0;
        }
        // SAFETY: `dlpi_name` is a NUL-terminated string owned by the loader.
        let name = unsafe { CStr::from_ptr(info.dlpi_name) };
        let path = std::path::Path::new(std::ffi::OsStr::from_bytes(name.to_bytes()));
        if path.file_name().is_some_and(|f| f == "libtorch_cpu.so") {
            *found = path.parent().map(|p| p.to_path_buf());
            return 1;
        }
        0
    }

    let mut found: Option<std::path::PathBuf> = None;
    // SAFETY: `visit` only reads what the loader passes and writes `found`, which outlives the
    // call.
    unsafe {
        libc::dl_iterate_phdr(Some(visit), &mut found as *mut _ as *mut libc::c_void);
    }
    found
}

#[cfg(test)]
mod tests {
    // What loads libtorch's CUDA backend (any check of a CUDA device) is tested in
    // tests/cuda.rs, a test binary of its own: loading it registers kernels with libtorch's
    // dispatcher, which must not happen while other tests' threads run operators.
    use super::*;

    #[test]
    fn the_cpu_is_always_usable() {
        check_device(Device::Cpu).unwrap();
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
    }

    #[test]
    fn libtorch_is_found_among_the_loaded_libraries() {
        // Every test binary links libtorch_cpu.so; the folder found must hold it.
        #[cfg(target_os = "linux")]
        {
            let dir = libtorch_dir().expect("libtorch_cpu.so is loaded");
            assert!(dir.join("libtorch_cpu.so").is_file(), "{}", dir.display());
        }
    }
}
