//! jitgate's benchmarks (issue 4), run by `jit-bench` / `cargo xtask bench`:
//! §1 per-packet cost in the kernel ([`kernel`]), §2 the gate against
//! nftables under a flood ([`nft`], [`flood`]), §3 the control plane
//! ([`control`]), and the report ([`report`], [`plot`]).

pub mod baseline;
pub mod control;
pub mod flood;
pub mod kernel;
pub mod nft;
pub mod plot;
pub mod report;
