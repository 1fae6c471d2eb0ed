//! napi setup. On Linux the addon carries no rpath: the Node loader (src/setup/load.ts) loads
//! libtorch's libraries by absolute path before the addon, so one prebuilt file works wherever
//! libtorch is. Other systems keep an rpath to the libtorch of the build (source builds only).
fn main() {
    napi_build::setup();
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        return;
    }
    println!("cargo:rerun-if-env-changed=PRISMA_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let dir = std::env::var("PRISMA_LIBTORCH_LIB").ok().or_else(|| std::env::var("LIBTORCH").ok().map(|l| format!("{l}/lib")));
    if let Some(dir) = dir {
        println!("cargo:rustc-link-arg-cdylib=-Wl,-rpath,{dir}");
    }
}
