use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let out_dir = std::env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?;
    let object = std::path::Path::new(&out_dir).join("jit-ebpf");
    // AYA_BUILD_SKIP lets pure-logic work (policy, store) build without
    // bpf-linker. The agent then refuses to load the empty object with a clear
    // error, so a skipped build can never be mistaken for a working gate.
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    if std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        std::fs::write(&object, []).context("writing the placeholder eBPF object")?;
        return Ok(());
    }
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let root_dir = std::path::Path::new(&manifest_dir).join("../jit-ebpf");
    let root_dir = root_dir
        .to_str()
        .ok_or_else(|| anyhow!("jit-ebpf path is not UTF-8"))?;
    aya_build::build_ebpf(
        [Package {
            name: "jit-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
    .context("building the eBPF program (is bpf-linker on PATH? run `cargo xtask setup`)")
}
