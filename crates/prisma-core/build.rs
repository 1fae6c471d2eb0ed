//! Records where libtorch's shared libraries live, so the core can find libtorch_cuda at run time
//! (see device.rs) and the binding can embed an rpath. `scripts/setup.mjs` sets PRISMA_LIBTORCH_LIB;
//! a user's own LIBTORCH is the fallback. Also compiles the C++ shims the core needs
//! (cpp/inference_mode.cpp, cpp/onednn_linear.cpp) against the headers of the libtorch that torch-sys found.
fn main() {
    println!("cargo:rerun-if-env-changed=PRISMA_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=cpp/inference_mode.cpp");
    println!("cargo:rerun-if-changed=cpp/onednn_linear.cpp");
    let dir = std::env::var("PRISMA_LIBTORCH_LIB").ok().or_else(|| std::env::var("LIBTORCH").ok().map(|l| format!("{l}/lib")));
    if let Some(dir) = dir {
        println!("cargo:rustc-env=PRISMA_LIBTORCH_LIB={dir}");
    }
    // torch-sys (links = "tch") passes on the library folder it linked; the headers sit beside it in
    // both layouts it accepts (a libtorch download, or the torch package of a Python install).
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys did not report where libtorch is");
    let include = std::path::Path::new(&lib).join("../include");
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .std("c++17")
        .include(&include)
        .file("cpp/inference_mode.cpp")
        .file("cpp/onednn_linear.cpp")
        .compile("prisma_native");
}
