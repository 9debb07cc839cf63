//! The baseline XDP programs (jit-ebpf-bench), built by build.rs.

use anyhow::{bail, Context as _, Result};
use aya::{
    maps::PerCpuArray,
    programs::{xdp::XdpLinkId, Xdp, XdpMode},
    Ebpf,
};

use crate::lab::in_netns;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/jit-ebpf-bench"));

/// The bare `XDP_DROP` program.
pub const DROP: &str = "bench_drop";
/// The gate's parser with no map lookup.
pub const PARSE: &str = "bench_parse";
/// `XDP_DROP` that counts, for floods.
pub const COUNT_DROP: &str = "bench_count_drop";
/// `XDP_PASS`, for throughput with the hook in use.
pub const PASS: &str = "bench_pass";

/// The baselines, loaded.
pub struct Baselines {
    ebpf: Ebpf,
}

impl Baselines {
    pub fn load() -> Result<Baselines> {
        if OBJECT.is_empty() {
            bail!("the baseline programs were not built (AYA_BUILD_SKIP was set)");
        }
        let mut ebpf = Ebpf::load(OBJECT).context("loading jit-ebpf-bench")?;
        for name in [DROP, PARSE, COUNT_DROP, PASS] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .with_context(|| format!("{name} missing from jit-ebpf-bench"))?
                .try_into()
                .with_context(|| format!("{name} is not an XDP program"))?;
            prog.load().with_context(|| format!("loading {name}"))?;
        }
        Ok(Baselines { ebpf })
    }

    pub fn program(&mut self, name: &str) -> &mut Xdp {
        self.ebpf
            .program_mut(name)
            .and_then(|p| p.try_into().ok())
            .expect("checked at load")
    }

    /// Attaches `name` to `iface` in namespace `ns`.
    pub fn attach(
        &mut self,
        name: &str,
        ns: &str,
        iface: &str,
        mode: XdpMode,
    ) -> Result<XdpLinkId> {
        let prog = self.program(name);
        in_netns(ns, || prog.attach(iface, mode))
            .with_context(|| format!("entering {ns}"))?
            .with_context(|| format!("attaching {name} to {iface} in {mode:?} mode"))
    }

    pub fn detach(&mut self, name: &str, ns: &str, link: XdpLinkId) -> Result<()> {
        let prog = self.program(name);
        in_netns(ns, || prog.detach(link))
            .with_context(|| format!("entering {ns}"))?
            .with_context(|| format!("detaching {name}"))
    }

    /// Packets `bench_count_drop` has dropped, over all CPUs.
    pub fn count_drops(&self) -> Result<u64> {
        let map = self
            .ebpf
            .map("BENCH_DROPS")
            .context("BENCH_DROPS missing")?;
        let drops: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).context("opening BENCH_DROPS")?;
        Ok(drops
            .get(&0, 0)
            .context("reading BENCH_DROPS")?
            .iter()
            .sum())
    }
}
