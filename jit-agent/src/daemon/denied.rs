//! Reads denied attempts from the kernel's ring buffer.

use aya::maps::{MapData, RingBuf};
use jit_common::DeniedEvent;
use tokio::io::unix::AsyncFd;

use crate::{audit::denied::DeniedAttempt, gate::addr};

/// Decodes one ring-buffer record; short records are ignored.
pub fn decode(bytes: &[u8]) -> Option<DeniedEvent> {
    if bytes.len() < size_of::<DeniedEvent>() {
        return None;
    }
    // SAFETY: the length was checked; DeniedEvent is plain integers, valid
    // for any bit pattern; the read is unaligned-safe.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<DeniedEvent>()) })
}

pub fn to_attempt(event: &DeniedEvent) -> DeniedAttempt {
    DeniedAttempt {
        src: addr::from16(event.src, event.family),
        dst: addr::from16(event.dst, event.family),
        protocol: event.proto,
        dst_port: event.dport,
        zone_id: event.zone_id,
    }
}

/// Waits for ring-buffer records and hands each batch to `each`.
pub async fn read_loop(
    ring: RingBuf<MapData>,
    mut each: impl FnMut(Vec<DeniedEvent>),
) -> std::io::Result<()> {
    // SAFETY: the ring buffer owns its fd for as long as the AsyncFd owns
    // the ring buffer, so the registered fd cannot be closed under tokio.
    let mut fd = match unsafe { AsyncFd::register(ring) } {
        Ok(fd) => fd,
        Err(e) => return Err(e.into()),
    };
    loop {
        let mut guard = fd.readable_mut().await?;
        let ring = guard.get_inner_mut();
        let mut batch = Vec::new();
        while let Some(item) = ring.next() {
            if let Some(event) = decode(&item) {
                batch.push(event);
            }
        }
        guard.clear_ready();
        if !batch.is_empty() {
            each(batch);
        }
    }
}

/// Forwards the XDP program's aya-log records into the agent's log as they
/// arrive (debug builds of the gate only).
pub async fn flush_bpf_log(
    logger: aya_log::EbpfLogger<&'static dyn log::Log>,
) -> std::io::Result<()> {
    // SAFETY: the logger owns its ring buffer fd for as long as the AsyncFd
    // owns the logger.
    let mut fd = match unsafe { AsyncFd::register(logger) } {
        Ok(fd) => fd,
        Err(e) => return Err(e.into()),
    };
    loop {
        let mut guard = fd.readable_mut().await?;
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
