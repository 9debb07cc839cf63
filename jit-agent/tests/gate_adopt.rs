//! Adopting pinned grant maps: a gate loaded over pins finds every entry a
//! previous gate wrote (read in batches), including forged ones, and
//! reconciles the kernel to the store. Needs root and bpffs.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
};

use jit_agent::gate::{clock, remove_pins, Gate, GateOptions, GrantSpec, RuleSpec};

/// A bpffs pin directory removed when the test ends, also on failure.
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = remove_pins(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn spec(i: u32, slot: u32, expires: u64) -> GrantSpec {
    GrantSpec {
        id: u64::from(i) + 1,
        src: IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i)),
        rules: vec![RuleSpec {
            dst: "10.9.1.1/32".parse().unwrap(),
            proto: jit_common::proto::TCP,
            port_lo: 22,
            port_hi: 22,
        }],
        expires_at_boot_ns: expires,
        slot,
    }
}

#[test]
fn a_reloaded_gate_reads_every_pinned_grant_and_reconciles_them() {
    // More entries than one batch call returns, in a map several times
    // larger, so the read spans many calls and sparse buckets.
    const N: u32 = 10_000;
    let dir = PinDir(PathBuf::from(format!(
        "/sys/fs/bpf/jitgate-test-adopt-{}",
        std::process::id()
    )));
    let opts = GateOptions {
        pin_dir: Some(dir.0.clone()),
        capacity: 65_536,
        ..Default::default()
    };
    let zones = [("10.9.0.0/16".parse().unwrap(), 1)];
    let expires = clock::boot_ns() + 3_600_000_000_000;
    let mut specs = Vec::new();
    {
        let mut gate = Gate::load(&opts).expect("the gate loads (as root)");
        gate.set_zones(&zones).unwrap();
        for i in 0..N {
            let slot = gate.allocate_slot().unwrap();
            let s = spec(i, slot, expires);
            gate.install(&s).unwrap();
            specs.push(s);
        }
        assert!(!gate.adopted_maps);
    }
    let mut gate = Gate::load(&opts).expect("the gate loads over its pins");
    assert!(gate.adopted_maps);
    assert_eq!(
        gate.flow_count(),
        N as usize,
        "every pinned entry read back"
    );
    gate.set_zones(&zones).unwrap();
    // The store forgot the last grant: reconciling deletes it from the
    // kernel and keeps the rest untouched.
    specs.pop();
    let report = gate.reconcile(&specs).unwrap();
    assert_eq!(report.kept, N as usize - 1, "{report:?}");
    assert_eq!(report.removed, 1, "{report:?}");
    assert_eq!(report.added + report.rewritten, 0, "{report:?}");
    drop(gate);
    let gate = Gate::load(&opts).unwrap();
    assert_eq!(gate.flow_count(), N as usize - 1);
}
