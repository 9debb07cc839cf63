//! The gate's kernel-side rate limit on denied-attempt events, and the
//! automatic fallback to generic XDP. Needs root.

use std::{process::Command, time::Duration};

use aya::programs::{TestRun, TestRunOptions};
use jit_agent::gate::{AttachMode, Gate, GateOptions};

fn denied_packet() -> Vec<u8> {
    // Ethernet + IPv4 + TCP to 10.9.1.1:22 from 192.0.2.1.
    let mut p = vec![0u8; 14 + 20 + 20];
    p[12] = 0x08;
    p[14] = 0x45;
    p[17] = 40;
    p[23] = 6;
    p[26..30].copy_from_slice(&[192, 0, 2, 1]);
    p[30..34].copy_from_slice(&[10, 9, 1, 1]);
    p[37] = 22;
    p
}

#[test]
fn denied_events_are_rate_limited_in_the_kernel() {
    let mut gate = Gate::load(&GateOptions {
        capacity: 1024,
        denied_events_per_sec: 5,
        ..Default::default()
    })
    .expect("the gate loads (as root)");
    gate.set_zones(&[("10.9.0.0/16".parse().unwrap(), 1)])
        .unwrap();
    let mut ring = gate.take_denied_events().expect("ring buffer");
    let packet = denied_packet();
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(&packet);
    // One syscall runs every repetition on one CPU within one second.
    opts.repeat = 200;
    let result = gate.xdp().test_run(opts).unwrap();
    assert_eq!(result.return_value, 1, "XDP_DROP");
    let mut events = 0;
    while let Some(item) = ring.next() {
        assert!(item.len() >= size_of::<jit_common::DeniedEvent>());
        events += 1;
    }
    assert_eq!(
        events, 5,
        "the kernel must emit exactly the per-second budget"
    );
    assert_eq!(gate.suppressed_events().unwrap(), 195);
    let drops: u64 = gate
        .counters(&[1])
        .unwrap()
        .iter()
        .filter(|c| c.reason == jit_common::Reason::DropNoGrant)
        .map(|c| c.packets)
        .sum();
    assert_eq!(drops, 200, "every packet is still counted and dropped");
}

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

#[test]
fn auto_mode_falls_back_to_generic_where_the_driver_has_no_xdp() {
    let ns = Netns(format!("jgdummy{}", std::process::id()));
    assert!(Command::new("ip")
        .args(["netns", "add", &ns.0])
        .status()
        .unwrap()
        .success());
    let run = |args: &[&str]| {
        let ok = Command::new("ip")
            .args(["netns", "exec", &ns.0])
            .args(args)
            .status()
            .unwrap()
            .success();
        assert!(ok, "{args:?}");
    };
    // A bridge has no native XDP (no ndo_bpf), so driver mode is refused.
    // (This kernel has no dummy driver.)
    run(&["ip", "link", "add", "jgbr0", "type", "bridge"]);
    run(&["ip", "link", "set", "jgbr0", "up"]);
    let handle = std::fs::File::open(format!("/run/netns/{}", ns.0)).unwrap();
    let attached = std::thread::spawn(move || {
        nix::sched::setns(&handle, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let mut gate = Gate::load(&GateOptions {
            capacity: 1024,
            ..Default::default()
        })
        .unwrap();
        let driver = gate.attach("jgbr0", AttachMode::Driver);
        let auto = gate.attach("jgbr0", AttachMode::Auto).map(|a| a.mode);
        std::thread::sleep(Duration::from_millis(10));
        (driver.is_err(), auto)
    })
    .join()
    .unwrap();
    assert!(attached.0, "driver mode should be refused on a bridge");
    assert_eq!(attached.1.unwrap(), "generic");
}
