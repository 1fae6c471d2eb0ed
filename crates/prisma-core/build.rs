//! Compiles the C++ shims the core needs (cpp/inference_mode.cpp, cpp/onednn_linear.cpp,
//! cpp/fp32_precision.cpp) against the headers of the libtorch that torch-sys found. Where libtorch
//! lives is not recorded here: the core reads it at run time (device.rs, libtorch_lib_dir), so a
//! built addon is not tied to the builder's paths.
fn main() {
    println!("cargo:rerun-if-changed=cpp/inference_mode.cpp");
    println!("cargo:rerun-if-changed=cpp/onednn_linear.cpp");
    println!("cargo:rerun-if-changed=cpp/fp32_precision.cpp");
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
        .file("cpp/fp32_precision.cpp")
        .compile("prisma_native");
}
