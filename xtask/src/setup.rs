//! `cargo xtask setup`: installs what building and testing jitgate needs, each
//! piece only when it is missing, then runs the preflight checks.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process,
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

use crate::{
    command::{self, cmd},
    preflight, workspace,
};

/// Debian packages providing the tools the tests and the demo run.
const DEBIAN_PACKAGES: &[&str] = &[
    "iproute2",       // ip netns / link / addr / route: the namespace lab
    "iputils-ping",   // ping over IPv4 and IPv6
    "netcat-openbsd", // nc: ad-hoc TCP and UDP clients
    "nftables",       // nft: comparison rules in benchmarks
    "iperf3",         // throughput through the gate
    "bpftool",        // kernel feature probe, map and program inspection
    "prometheus",     // promtool: checks the metrics exposition
    "tcpdump",        // packet captures when a test fails
    "systemd",        // systemd-analyze: checks the shipped unit file
    "ethtool",        // veth offload settings
    "faketime",       // libfaketime: moves the agent's wall clock in a clock test
];

/// bpf-linker release that builds against the LLVM 22 of the nightly toolchain.
const BPF_LINKER_VERSION: &str = "0.13.0";
const BPF_LINKER_LLVM_FEATURE: &str = "llvm-22";
/// The nightly's LLVM library, as the start of its file name in the sysroot's lib/.
const NIGHTLY_LLVM_LIB: &str = "libLLVM.so.22";
/// Directory under CARGO_HOME used as bpf-linker's LLVM_PREFIX; its lib/ is also
/// bpf-linker's rpath, so it must stay in place after the build.
const LLVM_PREFIX_DIR: &str = "jitgate-llvm";

pub fn setup() -> Result<()> {
    let started = Instant::now();
    command::step("setup: checking the machine and installing what is missing");
    preflight::require_root()?;
    workspace::put_cargo_bin_on_path()?;
    require_nightly()?;
    rust_src()?;
    bpf_linker()?;
    debian_packages()?;
    preflight::check_kernel()?;
    preflight::mount_bpffs()?;
    command::step(format!(
        "setup: ready ({:.1}s)",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

fn require_nightly() -> Result<()> {
    let toolchains = command::output(&mut cmd("rustup", ["toolchain", "list"]))
        .context("listing rustup toolchains (is rustup installed?)")?;
    if !toolchains.lines().any(|line| line.starts_with("nightly")) {
        bail!(
            "the Rust nightly toolchain is not installed, and RUSTUP_AUTO_INSTALL=0 keeps rustup \
             from fetching it: install it with `rustup toolchain install nightly --profile minimal \
             --component rust-src` (it must ship LLVM 22, which bpf-linker {BPF_LINKER_VERSION} \
             links against), then run this command again"
        );
    }
    Ok(())
}

/// The eBPF crate is built with `-Z build-std=core`, which needs the core sources.
fn rust_src() -> Result<()> {
    let installed = command::output(&mut cmd(
        "rustup",
        ["component", "list", "--toolchain", "nightly", "--installed"],
    ))?;
    if installed
        .lines()
        .any(|line| line.trim() == "rust-src" || line.starts_with("rust-src-"))
    {
        return Ok(());
    }
    command::step("installing the nightly rust-src component");
    command::run(&mut cmd(
        "rustup",
        ["component", "add", "rust-src", "--toolchain", "nightly"],
    ))
}

fn bpf_linker() -> Result<()> {
    let prefix = workspace::cargo_home()?.join(LLVM_PREFIX_DIR);
    // Recreated on every run: an installed bpf-linker loads LLVM through them.
    link_nightly_llvm(&prefix)?;
    if bpf_linker_version().is_some_and(|v| v.contains(BPF_LINKER_VERSION)) {
        return Ok(());
    }
    command::step(format!(
        "building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM 22 (takes a few minutes)"
    ));
    let mut install = workspace::cargo();
    install
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args([
            "--no-default-features",
            "--features",
            BPF_LINKER_LLVM_FEATURE,
        ])
        .env("LLVM_PREFIX", &prefix);
    command::run(&mut install)?;
    match bpf_linker_version() {
        Some(v) if v.contains(BPF_LINKER_VERSION) => Ok(()),
        Some(v) => bail!(
            "bpf-linker on PATH reports `{v}`, not {BPF_LINKER_VERSION}: remove the other one"
        ),
        None => bail!("bpf-linker was installed but `bpf-linker --version` does not run"),
    }
}

/// `bpf-linker --version`, or `None` when it is missing or does not run.
fn bpf_linker_version() -> Option<String> {
    command::output(&mut cmd("bpf-linker", ["--version"]))
        .ok()
        .map(|v| v.trim().to_owned())
}

/// Makes `<prefix>/lib` hold `libLLVM.so` and the library's own versioned name, both
/// pointing at the nightly toolchain's libLLVM.so.22*.
fn link_nightly_llvm(prefix: &Path) -> Result<()> {
    let sysroot = command::output(&mut cmd(
        "rustup",
        ["run", "nightly", "rustc", "--print", "sysroot"],
    ))
    .context("asking the nightly rustc for its sysroot")?;
    let nightly_lib = Path::new(sysroot.trim()).join("lib");
    let library = find_llvm_library(&nightly_lib)?;
    let name = library
        .file_name()
        .context("library path has no file name")?;

    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    replace_symlink(&library, &lib.join("libLLVM.so"))?;
    replace_symlink(&library, &lib.join(name))
}

fn find_llvm_library(nightly_lib: &Path) -> Result<PathBuf> {
    let entries =
        fs::read_dir(nightly_lib).with_context(|| format!("listing {}", nightly_lib.display()))?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", nightly_lib.display()))?;
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if is_file
            && entry
                .file_name()
                .to_string_lossy()
                .starts_with(NIGHTLY_LLVM_LIB)
        {
            found.push(entry.path());
        }
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "the nightly toolchain has no {NIGHTLY_LLVM_LIB}* in {}: bpf-linker \
             {BPF_LINKER_VERSION} needs a nightly built with LLVM 22 (`rustc +nightly -vV` \
             shows its LLVM version)",
            nightly_lib.display()
        ),
        many => bail!(
            "more than one {NIGHTLY_LLVM_LIB}* in {}: {many:?}",
            nightly_lib.display()
        ),
    }
}

/// Points `link` at `target`, replacing whatever is there with one atomic rename.
fn replace_symlink(target: &Path, link: &Path) -> Result<()> {
    if fs::read_link(link).is_ok_and(|current| current == target) {
        return Ok(());
    }
    let tmp = link.with_extension(format!("tmp{}", process::id()));
    let _ = fs::remove_file(&tmp);
    symlink(target, &tmp).with_context(|| format!("creating symlink {}", tmp.display()))?;
    fs::rename(&tmp, link).with_context(|| format!("replacing {}", link.display()))
}

fn debian_packages() -> Result<()> {
    let missing = missing_packages()?;
    if missing.is_empty() {
        return Ok(());
    }
    command::step(format!("installing Debian packages: {}", missing.join(" ")));
    let apt = |args: &[&str]| {
        let mut apt = cmd("apt-get", args);
        apt.env("DEBIAN_FRONTEND", "noninteractive");
        command::run(&mut apt)
    };
    apt(&["update"])?;
    let mut install = vec!["install", "-y", "--no-install-recommends"];
    install.extend(missing.iter().map(String::as_str));
    apt(&install)?;
    let still = missing_packages()?;
    if !still.is_empty() {
        bail!("apt-get finished but these packages are still not installed: {still:?}");
    }
    Ok(())
}

fn missing_packages() -> Result<Vec<String>> {
    // dpkg-query exits non-zero when a package is unknown, but still prints the
    // others, so its status is not an error here.
    let out = cmd("dpkg-query", ["-W", "-f=${Package} ${Status}\\n"])
        .args(DEBIAN_PACKAGES)
        .stdin(process::Stdio::null())
        .stderr(process::Stdio::null())
        .output()
        .context("running dpkg-query (is this Debian?)")?;
    let listing = String::from_utf8_lossy(&out.stdout);
    let installed: Vec<&str> = listing
        .lines()
        .filter(|line| line.ends_with(" install ok installed"))
        .filter_map(|line| line.split_whitespace().next())
        .map(|name| name.split(':').next().unwrap_or(name))
        .collect();
    Ok(DEBIAN_PACKAGES
        .iter()
        .filter(|pkg| !installed.contains(pkg))
        .map(|pkg| pkg.to_string())
        .collect())
}
