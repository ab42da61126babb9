//! Two jobs around libtorch, which torch-sys finds and reports (DEP_TCH_LIBTORCH_LIB):
//! - binaries built from this package (tests, examples, benches) find libtorch at run time
//!   without `LD_LIBRARY_PATH`: we record its folder as an rpath;
//! - csrc/int8_linear.cpp (int8 products for the feature-level draft, kernels libtorch has but
//!   tch does not bind) is compiled against libtorch's headers, and `blockwise_int8` is set
//!   for the Rust side. Without libtorch (the `doc-only` feature) neither happens.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(blockwise_int8)");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-changed=csrc/int8_linear.cpp");
    let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    let target = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target == "linux" || target == "macos" {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    if target == "windows" {
        // The shim is built with the GNU/Clang flags below only.
        return;
    }
    let lib = PathBuf::from(&dir);
    let include = lib.parent().map(|p| p.join("include")).unwrap_or_default();
    if !include.join("ATen").is_dir() {
        println!(
            "cargo:warning=libtorch's headers are not at {}: int8 draft products are off",
            include.display()
        );
        return;
    }
    cc::Build::new()
        .cpp(true)
        .file("csrc/int8_linear.cpp")
        .include(&include)
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={}", cxx11_abi()))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(false)
        .compile("blockwise_int8");
    println!("cargo:rustc-cfg=blockwise_int8");
}

/// The C++ ABI libtorch was built with, found as torch-sys finds it: from the Python
/// installation's torch with `LIBTORCH_USE_PYTORCH`, else `LIBTORCH_CXX11_ABI` (default 1).
fn cxx11_abi() -> String {
    println!("cargo:rerun-if-env-changed=LIBTORCH_USE_PYTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    if std::env::var_os("LIBTORCH_USE_PYTORCH").is_some() {
        let python = if std::env::var_os("VIRTUAL_ENV").is_some() {
            "python"
        } else {
            "python3"
        };
        let out = Command::new(python)
            .args([
                "-c",
                "import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))",
            ])
            .output();
        if let Ok(out) = out {
            let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if s == "0" || s == "1" {
                return s;
            }
        }
    }
    std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned())
}
