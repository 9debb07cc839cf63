//! Denied attempts sent to userspace through the ring buffer.

/// One denied packet to a protected destination.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeniedEvent {
    /// Boot clock ns when the packet was seen.
    pub time_ns: u64,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub zone_id: u32,
    /// `Reason` as u32 (no grant, expired, malformed, fragment).
    pub reason: u32,
    /// Destination port, 0 where the protocol has none.
    pub dport: u16,
    pub proto: u8,
    /// 4 or 6.
    pub family: u8,
    /// Explicit padding, must be zero.
    pub _pad: u32,
}
