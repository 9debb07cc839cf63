//! Header parsing, shared by the XDP gate and the TC egress tracker. Every
//! read goes through `ptr_at`, which proves to the verifier that the bytes
//! lie inside the packet.

use aya_ebpf::programs::{TcContext, XdpContext};
use jit_common::{proto, v4_mapped};

/// A program context with direct packet access: the bytes from `data()` to
/// `data_end()`.
pub trait Packet {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
}

impl Packet for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
}

// Direct access covers the skb's linear part only; the headers of locally
// sent packets are there. A header outside it fails to parse, and the
// tracker then records nothing (which fails closed).
impl Packet for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
}

pub const ETH_LEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const VLAN_LEN: usize = 4;
const IPV4_LEN: usize = 20;
const IPV6_LEN: usize = 40;

/// IPv6 extension headers walked; more than this many is treated as
/// malformed rather than looped over without bound.
const MAX_IPV6_EXT: usize = 8;

/// A packet's parse failed; the caller drops it if the destination is
/// protected (or unknown).
pub struct Malformed;

#[inline(always)]
pub fn ptr_at<T, C: Packet>(ctx: &C, offset: usize) -> Result<*const T, Malformed> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return Err(Malformed);
    }
    Ok((start + offset) as *const T)
}

/// Copies a whole header out of the packet. Reading fields from one checked
/// copy keeps LLVM from re-deriving packet pointers the verifier has not seen
/// checked.
#[inline(always)]
fn header<const N: usize, C: Packet>(ctx: &C, offset: usize) -> Result<[u8; N], Malformed> {
    // SAFETY: ptr_at checked the N bytes lie inside the packet; the read is
    // unaligned-safe.
    Ok(unsafe { core::ptr::read_unaligned(ptr_at::<[u8; N], C>(ctx, offset)?) })
}

#[inline(always)]
fn is_v4_mapped(addr: &[u8; 16]) -> bool {
    addr[..12] == jit_common::V4_MAPPED_PREFIX
}

/// Checks that `offset` is at or before the end of the frame, without a read.
#[inline(always)]
fn within<C: Packet>(ctx: &C, offset: usize) -> Result<(), Malformed> {
    if ctx.data() + offset > ctx.data_end() {
        return Err(Malformed);
    }
    Ok(())
}

#[inline(always)]
fn be16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

#[inline(always)]
fn addr16(bytes: &[u8], at: usize) -> [u8; 16] {
    let mut out = [0u8; 16];
    out.copy_from_slice(&bytes[at..at + 16]);
    out
}

/// The network layer of a frame.
pub enum L3 {
    /// Not IPv4 or IPv6.
    NonIp,
    /// An IP header was read far enough to know both addresses.
    Ip(IpHeader),
}

pub struct IpHeader {
    pub family: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Offset of the byte after the fixed IP header.
    pub next_offset: usize,
    /// IPv4 only: header length in bytes and fragment field.
    pub v4_ihl_bytes: usize,
    pub v4_frag: u16,
    pub v4_total_len: u16,
    /// IPv4 protocol or the IPv6 fixed header's next header.
    pub next_header: u8,
    pub hop_limit: u8,
    pub version_ok: bool,
}

/// Reads Ethernet, up to two VLAN tags and the fixed IP header.
#[inline(always)]
pub fn parse_l3<C: Packet>(ctx: &C) -> Result<L3, Malformed> {
    let eth: [u8; ETH_LEN] = header(ctx, 0)?;
    let mut offset = ETH_LEN;
    let mut ethertype = be16(&eth, 12);
    // Two tags cover 802.1ad + 802.1Q (QinQ). A third tag could hide an IP
    // packet from the gate, so it is refused.
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let tag: [u8; VLAN_LEN] = header(ctx, offset)?;
        ethertype = be16(&tag, 2);
        offset += VLAN_LEN;
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            let tag: [u8; VLAN_LEN] = header(ctx, offset)?;
            ethertype = be16(&tag, 2);
            offset += VLAN_LEN;
            if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
                return Err(Malformed);
            }
        }
    }
    match ethertype {
        ETH_P_IP => {
            let h: [u8; IPV4_LEN] = header(ctx, offset)?;
            let ihl_bytes = ((h[0] & 0x0f) as usize) * 4;
            Ok(L3::Ip(IpHeader {
                family: 4,
                src: v4_mapped([h[12], h[13], h[14], h[15]]),
                dst: v4_mapped([h[16], h[17], h[18], h[19]]),
                next_offset: offset + ihl_bytes,
                v4_ihl_bytes: ihl_bytes,
                v4_frag: be16(&h, 6),
                v4_total_len: be16(&h, 2),
                next_header: h[9],
                hop_limit: h[8],
                version_ok: h[0] >> 4 == 4 && ihl_bytes >= IPV4_LEN,
            }))
        }
        ETH_P_IPV6 => {
            let h: [u8; IPV6_LEN] = header(ctx, offset)?;
            Ok(L3::Ip(IpHeader {
                family: 6,
                src: addr16(&h, 8),
                dst: addr16(&h, 24),
                next_offset: offset + IPV6_LEN,
                v4_ihl_bytes: 0,
                v4_frag: 0,
                v4_total_len: 0,
                next_header: h[6],
                hop_limit: h[7],
                version_ok: h[0] >> 4 == 6,
            }))
        }
        _ => Ok(L3::NonIp),
    }
}

/// The transport layer as far as the gate needs it.
pub enum L4 {
    /// A first fragment or an unfragmented packet.
    Flow {
        proto: u8,
        /// Destination port for TCP/UDP/SCTP, ICMP type for ICMP/ICMPv6
        /// (ICMP types matter for neighbour discovery and echo), 0 otherwise.
        port_or_type: u16,
        /// Source port for TCP/UDP/SCTP, echo identifier for ICMP/ICMPv6,
        /// 0 otherwise.
        sport_or_id: u16,
        /// TCP flags byte (`TCP_SYN`, `TCP_ACK`, ...), 0 for other protocols.
        tcp_flags: u8,
    },
    /// A non-first fragment: no transport header to match.
    Fragment,
}

const IPV4_MF_OFFSET_MASK: u16 = 0x1fff;

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

/// Finds the transport protocol and port of a protected packet.
#[inline(always)]
pub fn parse_l4<C: Packet>(ctx: &C, ip: &IpHeader) -> Result<L4, Malformed> {
    if !ip.version_ok {
        return Err(Malformed);
    }
    // RFC 4291 §2.5.5.2: IPv4-mapped addresses never appear on the wire.
    // In the gate's one 16-byte address space such a packet would be judged
    // by IPv4 grants, so it is refused.
    if ip.family == 6 && (is_v4_mapped(&ip.src) || is_v4_mapped(&ip.dst)) {
        return Err(Malformed);
    }
    let (proto, offset) = if ip.family == 4 {
        if (ip.v4_total_len as usize) < ip.v4_ihl_bytes {
            return Err(Malformed);
        }
        if ip.v4_frag & IPV4_MF_OFFSET_MASK != 0 {
            return Ok(L4::Fragment);
        }
        // Options claimed by IHL must be in the frame.
        within(ctx, ip.next_offset)?;
        (ip.next_header, ip.next_offset)
    } else {
        match walk_ipv6_ext(ctx, ip.next_header, ip.next_offset)? {
            Some(found) => found,
            None => return Ok(L4::Fragment),
        }
    };
    let (port_or_type, sport_or_id, tcp_flags) = match proto {
        proto::TCP => {
            let h = header::<20, C>(ctx, offset)?;
            (be16(&h, 2), be16(&h, 0), h[13])
        }
        proto::UDP => {
            let h = header::<8, C>(ctx, offset)?;
            (be16(&h, 2), be16(&h, 0), 0)
        }
        proto::SCTP => {
            let h = header::<12, C>(ctx, offset)?;
            (be16(&h, 2), be16(&h, 0), 0)
        }
        proto::ICMP | proto::ICMPV6 => {
            let h = header::<8, C>(ctx, offset)?;
            (h[0] as u16, be16(&h, 4), 0)
        }
        _ => (0, 0, 0),
    };
    Ok(L4::Flow {
        proto,
        port_or_type,
        sport_or_id,
        tcp_flags,
    })
}

const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;
const NEXTHDR_MOBILITY: u8 = 135;
const NEXTHDR_HIP: u8 = 139;
const NEXTHDR_SHIM6: u8 = 140;
const NEXTHDR_EXP1: u8 = 253;
const NEXTHDR_EXP2: u8 = 254;

/// Walks IPv6 extension headers to the transport header. Returns `None` for
/// a non-first fragment. Extension headers the gate does not walk (AH,
/// mobility, HIP, shim6, experimental) are malformed: their payload could
/// hide the real transport header.
#[inline(always)]
fn walk_ipv6_ext<C: Packet>(
    ctx: &C,
    first: u8,
    start: usize,
) -> Result<Option<(u8, usize)>, Malformed> {
    let mut next = first;
    let mut offset = start;
    for _ in 0..MAX_IPV6_EXT {
        match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                let h: [u8; 8] = header(ctx, offset)?;
                next = h[0];
                offset += (h[1] as usize + 1) * 8;
                // The whole header must be in the frame, even when what
                // follows has no header of its own to read.
                within(ctx, offset)?;
            }
            NEXTHDR_FRAGMENT => {
                let h: [u8; 8] = header(ctx, offset)?;
                next = h[0];
                if be16(&h, 2) >> 3 != 0 {
                    return Ok(None);
                }
                offset += 8;
            }
            NEXTHDR_AUTH | NEXTHDR_MOBILITY | NEXTHDR_HIP | NEXTHDR_SHIM6 | NEXTHDR_EXP1
            | NEXTHDR_EXP2 => return Err(Malformed),
            _ => return Ok(Some((next, offset))),
        }
    }
    // MAX_IPV6_EXT headers walked: what follows must not be another one.
    match next {
        NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_FRAGMENT | NEXTHDR_AUTH
        | NEXTHDR_MOBILITY | NEXTHDR_HIP | NEXTHDR_SHIM6 | NEXTHDR_EXP1 | NEXTHDR_EXP2 => {
            Err(Malformed)
        }
        _ => Ok(Some((next, offset))),
    }
}
