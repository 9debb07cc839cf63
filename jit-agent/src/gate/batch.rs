//! Reading a whole BPF hash map in a few system calls.
//!
//! aya 0.14 walks a map one key at a time (`BPF_MAP_GET_NEXT_KEY` and then
//! `BPF_MAP_LOOKUP_ELEM` per entry); adopting 100,000 pinned grants that way
//! took about half a second of a restart. `BPF_MAP_LOOKUP_BATCH` (Linux 5.6)
//! copies thousands of entries per call. aya has no wrapper for it, so this
//! module makes the one system call itself.

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd, BorrowedFd},
};

/// `enum bpf_cmd` in `include/uapi/linux/bpf.h`.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// `ENOTSUPP` of `include/linux/errno.h`, which the bpf syscall returns
/// for map types without batch operations; userspace headers lack it.
const KERNEL_ENOTSUPP: i32 = 524;

/// Entries asked for per call. A hash map's batch never splits a bucket, so
/// the kernel answers ENOSPC when one bucket holds more than this; the
/// buffer then grows.
const FIRST_CHUNK: usize = 4096;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every (key, value) of the hash map `fd`, whose key and value types must be
/// `K` and `V` exactly (the caller has checked the map's sizes, as aya does
/// when it opens a typed map).
///
/// An error leaves nothing half-read for the caller: it gets all or nothing.
/// `ErrorKind::Unsupported` means the kernel has no batch lookup for this map;
/// the caller should then read it key by key.
pub fn read_hash<K: Copy + Default, V: Copy + Default>(
    fd: BorrowedFd<'_>,
) -> io::Result<Vec<(K, V)>> {
    let mut out = Vec::new();
    let mut keys = vec![K::default(); FIRST_CHUNK];
    let mut values = vec![V::default(); FIRST_CHUNK];
    // The position token of a hash map is a bucket index (a u32); 8 bytes
    // leave room for any map type's token up to that size.
    let mut token_in = [0u8; 8];
    let mut token_out = [0u8; 8];
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                token_in.as_mut_ptr() as u64
            },
            out_batch: token_out.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: keys.len() as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` is a valid `bpf_attr` prefix for this command (the
        // kernel zero-extends a shorter attr); the buffers it points to hold
        // `count` keys and values of the map's own sizes and outlive the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>() as libc::c_uint,
            )
        };
        let err = (rc < 0).then(io::Error::last_os_error);
        match err.as_ref().and_then(io::Error::raw_os_error) {
            None | Some(libc::ENOENT) => {
                let filled = attr.count as usize;
                out.extend(
                    keys[..filled]
                        .iter()
                        .copied()
                        .zip(values[..filled].iter().copied()),
                );
                if err.is_some() {
                    // ENOENT: the walk reached the end.
                    return Ok(out);
                }
                token_in = token_out;
                first = false;
            }
            Some(libc::ENOSPC) if keys.len() < (1 << 20) => {
                keys.resize(keys.len() * 4, K::default());
                values.resize(values.len() * 4, V::default());
            }
            // EINVAL: a kernel without the command; ENOTSUPP (the kernel's
            // own 524, not libc's ENOTSUP) or EOPNOTSUPP: a map type without it.
            Some(libc::EINVAL) | Some(KERNEL_ENOTSUPP) | Some(libc::EOPNOTSUPP) if first => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "BPF_MAP_LOOKUP_BATCH is not available for this map",
                ));
            }
            Some(_) => return Err(err.expect("an errno came from an error")),
        }
    }
}
