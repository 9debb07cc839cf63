use std::path::PathBuf;

/// Errors of the data-plane side of the agent.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// The embedded eBPF object is empty (built with AYA_BUILD_SKIP).
    #[error("this build has no eBPF program (it was built with AYA_BUILD_SKIP=1); rebuild with `cargo xtask build`")]
    NoProgram,
    /// Loading the object or one of its maps failed.
    #[error("loading the XDP gate failed")]
    Load(#[source] aya::EbpfError),
    /// The verifier or the kernel refused the program.
    #[error("the kernel refused the XDP gate program")]
    Program(#[source] aya::programs::ProgramError),
    /// A map operation failed.
    #[error("{what} failed")]
    Map {
        what: String,
        #[source]
        source: aya::maps::MapError,
    },
    /// A pinned map from an earlier run does not match this build.
    #[error(
        "pinned map {path} does not match this build: {field} is {found}, expected {expected}; \
         run `jit-agent detach --pin-dir {pin_dir}` to remove the old gate (this drops its grants)"
    )]
    PinnedMapMismatch {
        path: PathBuf,
        pin_dir: PathBuf,
        field: &'static str,
        found: String,
        expected: String,
    },
    /// The pin directory is not on a bpffs mount.
    #[error("{path} is not on a bpf filesystem; mount one with `mount -t bpf bpf /sys/fs/bpf`")]
    NotBpffs { path: PathBuf },
    /// A filesystem operation under the pin directory failed.
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Attaching to an interface failed.
    #[error("attaching the gate to interface {iface} failed: {detail}")]
    Attach { iface: String, detail: String },
    /// A link operation (pin, adopt, replace) failed.
    #[error("{what} for interface {iface} failed: {detail}")]
    Link {
        what: &'static str,
        iface: String,
        detail: String,
    },
    /// A grant rule names a destination outside every zone.
    #[error(
        "destination {prefix} lies in no protected zone; a grant there would never be enforced"
    )]
    OutsideZones { prefix: String },
    /// A grant rule's destination spans a more specific zone.
    #[error("destination {prefix} contains zone prefix {inner}; split the target so each prefix lies in one zone")]
    SpansZones { prefix: String, inner: String },
    /// Too many rules for one (source, zone, protocol).
    #[error(
        "source {src} already holds {held} rules for protocol {proto} in zone {zone}; \
         at most {max} fit (release or merge grants)"
    )]
    FlowFull {
        src: String,
        zone: u32,
        proto: u8,
        held: usize,
        max: usize,
    },
    /// Every stats slot (grant capacity) is in use.
    #[error("the gate holds {capacity} grants, its capacity; raise gate.grant_capacity or revoke grants")]
    CapacityFull { capacity: u32 },
    /// A grant with this id is not installed.
    #[error("grant {id} is not installed in the kernel")]
    UnknownGrant { id: u64 },
    /// A zone definition is invalid for the kernel.
    #[error("zone {name}: {detail}")]
    Zone { name: String, detail: String },
}

impl GateError {
    pub(crate) fn map(what: impl Into<String>, source: aya::maps::MapError) -> Self {
        GateError::Map {
            what: what.into(),
            source,
        }
    }
}
