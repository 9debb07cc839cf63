//! Conversions between std addresses and the gate's 16-byte form.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;
use jit_common::{v4_mapped, V4_PREFIX_OFFSET};

pub fn to16(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

pub fn from16(bytes: [u8; 16], family: u8) -> IpAddr {
    let v6 = Ipv6Addr::from(bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) if family != 6 => IpAddr::V4(v4),
        _ => IpAddr::V6(v6),
    }
}

/// A prefix in the 128-bit space: (network address, prefix length).
pub fn net16(net: IpNet) -> ([u8; 16], u8) {
    let net = net.trunc();
    match net {
        IpNet::V4(n) => (
            v4_mapped(n.network().octets()),
            n.prefix_len() + V4_PREFIX_OFFSET,
        ),
        IpNet::V6(n) => (n.network().octets(), n.prefix_len()),
    }
}

pub fn net_from16(addr: [u8; 16], len: u8) -> IpNet {
    let v6 = Ipv6Addr::from(addr);
    if len >= V4_PREFIX_OFFSET {
        if let Some(v4) = v6.to_ipv4_mapped() {
            return IpNet::new(IpAddr::V4(v4), len - V4_PREFIX_OFFSET).expect("length checked");
        }
    }
    IpNet::new(IpAddr::V6(v6), len.min(128)).expect("length checked")
}
