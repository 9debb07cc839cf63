//! Builds jit-ebpf-bench, the baseline XDP programs the benchmark compares the
//! gate with, the way jit-agent's build.rs builds the gate itself.

use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let out_dir = std::env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?;
    let object = std::path::Path::new(&out_dir).join("jit-ebpf-bench");
    // As in jit-agent: AYA_BUILD_SKIP leaves an empty object, and jit-bench
    // then reports the baselines as missing instead of failing to build.
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    if std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        std::fs::write(&object, []).context("writing the placeholder baseline object")?;
        return Ok(());
    }
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let root_dir = std::path::Path::new(&manifest_dir).join("../jit-ebpf-bench");
    let root_dir = root_dir
        .to_str()
        .ok_or_else(|| anyhow!("jit-ebpf-bench path is not UTF-8"))?;
    // The baseline includes the gate's parser source: rebuild when it changes.
    println!("cargo:rerun-if-changed=../jit-ebpf/src/parse.rs");
    aya_build::build_ebpf(
        [Package {
            name: "jit-ebpf-bench",
            root_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
    .context("building the baseline eBPF programs (is bpf-linker on PATH? run `cargo xtask setup`)")
}
