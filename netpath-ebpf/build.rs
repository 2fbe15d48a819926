use which::which;

/// Rebuild the object when bpf-linker changes (it is the linker, so cargo
/// does not track it by itself).
fn main() {
    let bpf_linker = which("bpf-linker").expect("bpf-linker not found: run `cargo xtask setup`");
    println!("cargo:rerun-if-changed={}", bpf_linker.to_string_lossy());
}
