//! Build script: the CUDA kernels in `cuda/` are embedded into the library at compile time;
//! rebuild whenever one changes.

fn main() {
    println!("cargo:rerun-if-changed=cuda");
    println!("cargo:rerun-if-changed=build.rs");
}
