//! Kernel and userspace agree on every shared layout.
//!
//! Field offsets are proven at compile time on both targets
//! (jit-common/src/layout.rs). Here the real object is loaded and the
//! kernel's view of each map (sizes computed by the BPF build) is compared
//! with the userspace types. Needs root.

use aya::maps::MapInfo;
use jit_agent::gate::{pins, Gate, GateOptions};

#[test]
fn kernel_maps_have_the_sizes_userspace_uses() {
    let dir = std::path::PathBuf::from(format!("/sys/fs/bpf/jg-layout-{}", std::process::id()));
    let _ = jit_agent::gate::remove_pins(&dir);
    let gate = Gate::load(&GateOptions {
        pin_dir: Some(dir.clone()),
        capacity: 4096,
        ..Default::default()
    })
    .expect("the gate loads (as root, with bpffs mounted)");
    let mut checked = 0;
    for spec in pins::map_specs(4096) {
        let info = MapInfo::from_pin(pins::map_pin(&dir, spec.name)).expect("map is pinned");
        assert_eq!(info.map_type().unwrap(), spec.map_type, "{}", spec.name);
        assert_eq!(info.key_size(), spec.key_size, "key size of {}", spec.name);
        assert_eq!(
            info.value_size(),
            spec.value_size,
            "value size of {}",
            spec.name
        );
        assert_eq!(
            info.max_entries(),
            spec.max_entries,
            "capacity of {}",
            spec.name
        );
        checked += 1;
    }
    assert_eq!(checked, 9);
    drop(gate);
    jit_agent::gate::remove_pins(&dir).unwrap();
}

#[test]
fn a_pinned_map_of_another_capacity_is_refused() {
    let dir = std::path::PathBuf::from(format!("/sys/fs/bpf/jg-layout2-{}", std::process::id()));
    let _ = jit_agent::gate::remove_pins(&dir);
    let opts = |capacity| GateOptions {
        pin_dir: Some(dir.clone()),
        capacity,
        ..Default::default()
    };
    drop(Gate::load(&opts(4096)).unwrap());
    let err = Gate::load(&opts(8192))
        .err()
        .expect("a mismatched pin must be refused");
    let text = err.to_string();
    assert!(
        text.contains("capacity") && text.contains("detach"),
        "{text}"
    );
    let again = Gate::load(&opts(4096)).expect("the matching build adopts the pins");
    assert!(again.adopted_maps);
    drop(again);
    jit_agent::gate::remove_pins(&dir).unwrap();
}
