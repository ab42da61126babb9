//! Makes the server binary and its tests find libtorch at run time without `LD_LIBRARY_PATH`:
//! torch-sys reports where it linked libtorch (DEP_TCH_LIBTORCH_LIB), and we record that folder
//! as an rpath. (The library's own build script also compiles its C++ int8 shim, which the
//! library's build links; the server needs only the rpath.)

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        let target = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
        if target == "linux" || target == "macos" {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        }
    }
}
