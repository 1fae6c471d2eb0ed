//! napi setup, plus an rpath to libtorch so `require('prisma.node')` works without LD_LIBRARY_PATH.
fn main() {
    napi_build::setup();
    println!("cargo:rerun-if-env-changed=PRISMA_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let dir = std::env::var("PRISMA_LIBTORCH_LIB").ok().or_else(|| std::env::var("LIBTORCH").ok().map(|l| format!("{l}/lib")));
    if let Some(dir) = dir {
        println!("cargo:rustc-link-arg-cdylib=-Wl,-rpath,{dir}");
    }
}
