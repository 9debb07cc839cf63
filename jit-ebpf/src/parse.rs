//! Header parsing. Every read goes through `ptr_at`, which proves to the
//! verifier that the bytes lie inside the packet.

use aya_ebpf::programs::XdpContext;
use jit_common::{proto, v4_mapped};

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
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*const T, Malformed> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return Err(Malformed);
    }
    Ok((start + offset) as *const T)
}

#[inline(always)]
fn u8_at(ctx: &XdpContext, offset: usize) -> Result<u8, Malformed> {
    // SAFETY: ptr_at checked the byte lies inside the packet.
    Ok(unsafe { *ptr_at::<u8>(ctx, offset)? })
}

#[inline(always)]
fn be16_at(ctx: &XdpContext, offset: usize) -> Result<u16, Malformed> {
    // SAFETY: ptr_at checked both bytes lie inside the packet; the read is
    // unaligned-safe.
    let raw = unsafe { core::ptr::read_unaligned(ptr_at::<[u8; 2]>(ctx, offset)?) };
    Ok(u16::from_be_bytes(raw))
}

#[inline(always)]
fn addr16_at(ctx: &XdpContext, offset: usize) -> Result<[u8; 16], Malformed> {
    // SAFETY: ptr_at checked the 16 bytes lie inside the packet.
    Ok(unsafe { core::ptr::read_unaligned(ptr_at::<[u8; 16]>(ctx, offset)?) })
}

#[inline(always)]
fn addr4_at(ctx: &XdpContext, offset: usize) -> Result<[u8; 4], Malformed> {
    // SAFETY: ptr_at checked the 4 bytes lie inside the packet.
    Ok(unsafe { core::ptr::read_unaligned(ptr_at::<[u8; 4]>(ctx, offset)?) })
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
pub fn parse_l3(ctx: &XdpContext) -> Result<L3, Malformed> {
    let mut offset = ETH_LEN;
    let mut ethertype = be16_at(ctx, 12)?;
    // Two tags cover 802.1ad + 802.1Q (QinQ); a third tag is not parsed and
    // its frame passes as non-IP only if its ethertype is not a VLAN type.
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        ethertype = be16_at(ctx, offset + 2)?;
        offset += VLAN_LEN;
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            ethertype = be16_at(ctx, offset + 2)?;
            offset += VLAN_LEN;
            if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
                // A third tag could hide an IP packet from the gate: refuse it.
                return Err(Malformed);
            }
        }
    }
    match ethertype {
        ETH_P_IP => {
            ptr_at::<[u8; IPV4_LEN]>(ctx, offset)?;
            let vihl = u8_at(ctx, offset)?;
            let ihl_bytes = ((vihl & 0x0f) as usize) * 4;
            Ok(L3::Ip(IpHeader {
                family: 4,
                src: v4_mapped(addr4_at(ctx, offset + 12)?),
                dst: v4_mapped(addr4_at(ctx, offset + 16)?),
                next_offset: offset + ihl_bytes,
                v4_ihl_bytes: ihl_bytes,
                v4_frag: be16_at(ctx, offset + 6)?,
                v4_total_len: be16_at(ctx, offset + 2)?,
                next_header: u8_at(ctx, offset + 9)?,
                hop_limit: u8_at(ctx, offset + 8)?,
                version_ok: vihl >> 4 == 4 && ihl_bytes >= IPV4_LEN,
            }))
        }
        ETH_P_IPV6 => {
            ptr_at::<[u8; IPV6_LEN]>(ctx, offset)?;
            let version = u8_at(ctx, offset)? >> 4;
            Ok(L3::Ip(IpHeader {
                family: 6,
                src: addr16_at(ctx, offset + 8)?,
                dst: addr16_at(ctx, offset + 24)?,
                next_offset: offset + IPV6_LEN,
                v4_ihl_bytes: 0,
                v4_frag: 0,
                v4_total_len: 0,
                next_header: u8_at(ctx, offset + 6)?,
                hop_limit: u8_at(ctx, offset + 7)?,
                version_ok: version == 6,
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
        /// (ICMP types only matter for neighbour discovery), 0 otherwise.
        port_or_type: u16,
    },
    /// A non-first fragment: no transport header to match.
    Fragment,
}

const IPV4_MF_OFFSET_MASK: u16 = 0x1fff;

/// Finds the transport protocol and port of a protected packet.
#[inline(always)]
pub fn parse_l4(ctx: &XdpContext, ip: &IpHeader) -> Result<L4, Malformed> {
    if !ip.version_ok {
        return Err(Malformed);
    }
    let (proto, offset) = if ip.family == 4 {
        if (ip.v4_total_len as usize) < ip.v4_ihl_bytes {
            return Err(Malformed);
        }
        if ip.v4_frag & IPV4_MF_OFFSET_MASK != 0 {
            return Ok(L4::Fragment);
        }
        (ip.next_header, ip.next_offset)
    } else {
        match walk_ipv6_ext(ctx, ip.next_header, ip.next_offset)? {
            Some(found) => found,
            None => return Ok(L4::Fragment),
        }
    };
    let port_or_type = match proto {
        proto::TCP => {
            ptr_at::<[u8; 20]>(ctx, offset)?;
            be16_at(ctx, offset + 2)?
        }
        proto::UDP => {
            ptr_at::<[u8; 8]>(ctx, offset)?;
            be16_at(ctx, offset + 2)?
        }
        proto::SCTP => {
            ptr_at::<[u8; 12]>(ctx, offset)?;
            be16_at(ctx, offset + 2)?
        }
        proto::ICMP | proto::ICMPV6 => {
            ptr_at::<[u8; 8]>(ctx, offset)?;
            u8_at(ctx, offset)? as u16
        }
        _ => 0,
    };
    Ok(L4::Flow {
        proto,
        port_or_type,
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
fn walk_ipv6_ext(
    ctx: &XdpContext,
    first: u8,
    start: usize,
) -> Result<Option<(u8, usize)>, Malformed> {
    let mut next = first;
    let mut offset = start;
    for _ in 0..MAX_IPV6_EXT {
        match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                ptr_at::<[u8; 8]>(ctx, offset)?;
                next = u8_at(ctx, offset)?;
                let len = (u8_at(ctx, offset + 1)? as usize + 1) * 8;
                offset += len;
            }
            NEXTHDR_FRAGMENT => {
                ptr_at::<[u8; 8]>(ctx, offset)?;
                next = u8_at(ctx, offset)?;
                let frag = be16_at(ctx, offset + 2)?;
                if frag >> 3 != 0 {
                    return Ok(None);
                }
                offset += 8;
            }
            NEXTHDR_AUTH | NEXTHDR_MOBILITY | NEXTHDR_HIP | NEXTHDR_SHIM6 | NEXTHDR_EXP1
            | NEXTHDR_EXP2 => return Err(Malformed),
            _ => return Ok(Some((next, offset))),
        }
    }
    Err(Malformed)
}
