//! Checks that this machine can run the gate at all: root, BPF, XDP, network
//! namespaces with veth pairs, and a mounted bpffs.

use std::{fs, path::Path, process};

use anyhow::{bail, Context as _, Result};

use crate::command::{self, cmd};

const BPFFS: &str = "/sys/fs/bpf";

/// Fails unless xtask runs with euid 0.
pub fn require_root() -> Result<()> {
    let euid = nix::unistd::geteuid();
    if !euid.is_root() {
        bail!(
            "must run as root (effective uid is {euid}): jitgate installs packages, loads XDP \
             programs and creates network namespaces; run this command as root"
        );
    }
    Ok(())
}

/// Checks the kernel for the BPF syscall, XDP programs and ring buffers (asking the
/// kernel itself through `bpftool feature probe`, which loads a probe of each type),
/// and for network namespaces with veth pairs.
pub fn check_kernel() -> Result<()> {
    let json = command::output(&mut cmd("bpftool", ["-j", "feature", "probe", "kernel"]))
        .context("probing kernel BPF features with bpftool")?;
    let probe: serde_json::Value =
        serde_json::from_str(&json).context("parsing `bpftool feature probe` output")?;
    let has = |section: &str, key: &str| probe[section][key].as_bool() == Some(true);
    if !has("syscall_config", "have_bpf_syscall") {
        bail!(
            "this kernel has no usable bpf() syscall: jitgate needs a kernel built with \
             CONFIG_BPF_SYSCALL=y, and root with CAP_BPF (not a locked-down container)"
        );
    }
    if !has("program_types", "have_xdp_prog_type") {
        bail!("this kernel cannot load XDP programs: jitgate needs XDP (CONFIG_BPF_SYSCALL=y, CONFIG_NET=y)");
    }
    if !has("map_types", "have_ringbuf_map_type") {
        bail!("this kernel has no BPF ring buffer (needs Linux 5.8 or newer): jitgate reports denied attempts through one");
    }
    check_netns()
}

/// Creates and deletes a probe namespace holding a veth pair.
fn check_netns() -> Result<()> {
    let ns = format!("jgprobe{}", process::id());
    command::output(&mut cmd("ip", ["netns", "add", &ns])).context(
        "creating a network namespace failed: jitgate's tests and demo need CONFIG_NET_NS=y \
         and iproute2",
    )?;
    let veth = command::output(&mut cmd(
        "ip",
        [
            "-n", &ns, "link", "add", "probe0", "type", "veth", "peer", "name", "probe1",
        ],
    ));
    let delete = command::output(&mut cmd("ip", ["netns", "delete", &ns]));
    veth.context("creating a veth pair failed: jitgate's tests and demo need CONFIG_VETH")?;
    delete.with_context(|| format!("deleting the probe namespace {ns}"))?;
    Ok(())
}

/// Mounts bpffs on /sys/fs/bpf unless it is already there; the agent pins under it.
pub fn mount_bpffs() -> Result<()> {
    if bpffs_mounted()? {
        return Ok(());
    }
    command::step(format!("mounting bpffs on {BPFFS}"));
    command::run(&mut cmd("mount", ["-t", "bpf", "bpf", BPFFS]))
        .context("mounting bpffs: the kernel needs CONFIG_BPF_SYSCALL=y")?;
    if !bpffs_mounted()? {
        bail!("`mount -t bpf bpf {BPFFS}` succeeded but no bpf filesystem is mounted there");
    }
    Ok(())
}

fn bpffs_mounted() -> Result<bool> {
    let mounts = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    Ok(mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let (_source, target, fstype) = (fields.next(), fields.next(), fields.next());
        target.map(Path::new) == Some(Path::new(BPFFS)) && fstype == Some("bpf")
    }))
}
