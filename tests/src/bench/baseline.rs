//! The baseline XDP programs (jit-ebpf-bench), built by build.rs.

use anyhow::{bail, Context as _, Result};
use aya::{programs::Xdp, Ebpf};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/jit-ebpf-bench"));

/// The bare `XDP_DROP` program.
pub const DROP: &str = "bench_drop";
/// The gate's parser with no map lookup.
pub const PARSE: &str = "bench_parse";

/// Both baselines, loaded.
pub struct Baselines {
    ebpf: Ebpf,
}

impl Baselines {
    pub fn load() -> Result<Baselines> {
        if OBJECT.is_empty() {
            bail!("the baseline programs were not built (AYA_BUILD_SKIP was set)");
        }
        let mut ebpf = Ebpf::load(OBJECT).context("loading jit-ebpf-bench")?;
        for name in [DROP, PARSE] {
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
}
