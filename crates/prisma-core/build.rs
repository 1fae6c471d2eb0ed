//! Records where libtorch's shared libraries live, so the core can find libtorch_cuda at run time
//! (see device.rs) and the binding can embed an rpath. `scripts/setup.mjs` sets PRISMA_LIBTORCH_LIB;
//! a user's own LIBTORCH is the fallback.
fn main() {
    println!("cargo:rerun-if-env-changed=PRISMA_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let dir = std::env::var("PRISMA_LIBTORCH_LIB")
        .ok()
        .or_else(|| std::env::var("LIBTORCH").ok().map(|l| format!("{l}/lib")));
    if let Some(dir) = dir {
        println!("cargo:rustc-env=PRISMA_LIBTORCH_LIB={dir}");
    }
}
