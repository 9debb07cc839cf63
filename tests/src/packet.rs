//! A small builder for the frames the gate's tests feed to the program:
//! Ethernet with any number of VLAN tags, IPv4 with options and fragment
//! fields, IPv6 with extension headers, and the transport headers the gate
//! reads. Checksums are left zero: the gate never looks at them.
//!
//! Every field the gate checks can be set to a wrong value on purpose, and
//! [`Frame::layout`] says where each header starts so tests can cut a frame
//! at any header boundary.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_GRE: u8 = 47;
pub const PROTO_ESP: u8 = 50;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_SCTP: u8 = 132;

/// Source port of generated transport headers unless [`Frame::sport`] sets
/// one: grants only look at destination ports, so a fixed value keeps
/// fixtures short. (Host mode's flow table also keys on source ports.)
pub const SRC_PORT: u16 = 40000;
/// ICMP echo identifier unless [`Frame::icmp_id`] sets one.
pub const ICMP_ID: u16 = 0x1234;

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_PSH: u8 = 0x08;

/// Transport fields besides the destination port, with their defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct L4Fields {
    sport: u16,
    tcp_flags: u8,
    icmp_id: u16,
}

/// The transport header that ends the IP header chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        dport: u16,
    },
    Udp {
        dport: u16,
    },
    Sctp {
        dport: u16,
    },
    Icmp {
        ty: u8,
    },
    Icmpv6 {
        ty: u8,
    },
    /// Any protocol number followed by `len` opaque bytes.
    Other {
        proto: u8,
        len: usize,
    },
}

impl L4 {
    pub fn proto(&self) -> u8 {
        match self {
            L4::Tcp { .. } => PROTO_TCP,
            L4::Udp { .. } => PROTO_UDP,
            L4::Sctp { .. } => PROTO_SCTP,
            L4::Icmp { .. } => PROTO_ICMP,
            L4::Icmpv6 { .. } => PROTO_ICMPV6,
            L4::Other { proto, .. } => *proto,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            L4::Tcp { .. } => "tcp",
            L4::Udp { .. } => "udp",
            L4::Sctp { .. } => "sctp",
            L4::Icmp { .. } => "icmp",
            L4::Icmpv6 { .. } => "icmpv6",
            L4::Other { .. } => "l4-other",
        }
    }

    fn write(&self, out: &mut Vec<u8>, payload_len: usize, f: L4Fields) {
        match *self {
            L4::Tcp { dport } => {
                out.extend_from_slice(&f.sport.to_be_bytes());
                out.extend_from_slice(&dport.to_be_bytes());
                out.extend_from_slice(&1u32.to_be_bytes()); // sequence
                out.extend_from_slice(&0u32.to_be_bytes()); // ack
                out.push(5 << 4); // data offset: 5 words, no options
                out.push(f.tcp_flags);
                out.extend_from_slice(&65535u16.to_be_bytes());
                out.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
            }
            L4::Udp { dport } => {
                out.extend_from_slice(&f.sport.to_be_bytes());
                out.extend_from_slice(&dport.to_be_bytes());
                out.extend_from_slice(&((8 + payload_len) as u16).to_be_bytes());
                out.extend_from_slice(&[0, 0]);
            }
            L4::Sctp { dport } => {
                out.extend_from_slice(&f.sport.to_be_bytes());
                out.extend_from_slice(&dport.to_be_bytes());
                out.extend_from_slice(&0x1234_5678u32.to_be_bytes()); // verification tag
                out.extend_from_slice(&[0, 0, 0, 0]);
            }
            L4::Icmp { ty } | L4::Icmpv6 { ty } => {
                out.extend_from_slice(&[ty, 0, 0, 0]);
                out.extend_from_slice(&f.icmp_id.to_be_bytes());
                out.extend_from_slice(&[0, 1]); // sequence
            }
            L4::Other { len, .. } => out.extend(std::iter::repeat_n(0xab, len)),
        }
    }
}

/// An IPv6 extension header. Lengths are in the header's own 8-byte units
/// beyond the first 8 bytes, as on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ext {
    HopByHop {
        len8: u8,
    },
    Routing {
        len8: u8,
    },
    DestOpts {
        len8: u8,
    },
    /// `offset` in 8-byte units, `more` the M flag.
    Fragment {
        offset: u16,
        more: bool,
    },
    /// Any other next-header value (AH, mobility, HIP, ...) laid out as
    /// next header, length, then zeros.
    Other {
        code: u8,
        len8: u8,
    },
}

impl Ext {
    pub fn code(&self) -> u8 {
        match self {
            Ext::HopByHop { .. } => 0,
            Ext::Routing { .. } => 43,
            Ext::Fragment { .. } => 44,
            Ext::DestOpts { .. } => 60,
            Ext::Other { code, .. } => *code,
        }
    }

    fn name(&self) -> String {
        match self {
            Ext::HopByHop { .. } => "hop-by-hop".into(),
            Ext::Routing { .. } => "routing".into(),
            Ext::Fragment { .. } => "fragment".into(),
            Ext::DestOpts { .. } => "dest-opts".into(),
            Ext::Other { code, .. } => format!("ext-{code}"),
        }
    }

    fn write(&self, next: u8, out: &mut Vec<u8>) {
        match *self {
            Ext::HopByHop { len8 } | Ext::DestOpts { len8 } => {
                let total = (len8 as usize + 1) * 8;
                out.extend_from_slice(&[next, len8]);
                // One PadN option fills the rest, so the options area parses.
                out.extend_from_slice(&[1, (total - 4) as u8]);
                out.extend(std::iter::repeat_n(0, total - 4));
            }
            Ext::Routing { len8 } => {
                let total = (len8 as usize + 1) * 8;
                // Routing type 4 (segment routing) with no segments left:
                // a receiver skips it.
                out.extend_from_slice(&[next, len8, 4, 0]);
                out.extend(std::iter::repeat_n(0, total - 4));
            }
            Ext::Fragment { offset, more } => {
                let field = (offset << 3) | more as u16;
                out.extend_from_slice(&[next, 0]);
                out.extend_from_slice(&field.to_be_bytes());
                out.extend_from_slice(&0xdead_beefu32.to_be_bytes());
            }
            Ext::Other { len8, .. } => {
                let total = (len8 as usize + 1) * 8;
                out.extend_from_slice(&[next, len8]);
                out.extend(std::iter::repeat_n(0, total - 2));
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    /// Option bytes, padded with end-of-options to a multiple of 4.
    pub options: Vec<u8>,
    pub more_fragments: bool,
    /// Fragment offset in 8-byte units.
    pub frag_offset: u16,
    pub version: u8,
    /// Header length in 32-bit words; `None` for the true length.
    pub ihl: Option<u8>,
    /// Total length; `None` for the true length.
    pub total_len: Option<u16>,
    pub l4: L4,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub hop_limit: u8,
    pub version: u8,
    pub ext: Vec<Ext>,
    pub l4: L4,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Net {
    V4(Ipv4),
    V6(Ipv6),
    /// Whatever follows the Ethernet header of a non-IP frame.
    Raw(Vec<u8>),
}

/// One header's place in a built frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
    pub name: String,
    pub start: usize,
    pub len: usize,
}

/// An Ethernet frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Tag protocol identifiers, outermost first.
    pub vlans: Vec<u16>,
    /// `None` for the ethertype that fits `net`.
    pub ethertype: Option<u16>,
    pub net: Net,
    /// Bytes after the transport header.
    pub payload: usize,
    /// TCP/UDP/SCTP source port; `None` for [`SRC_PORT`].
    pub sport: Option<u16>,
    /// TCP flags; `None` for a bare SYN.
    pub tcp_flags: Option<u8>,
    /// ICMP/ICMPv6 echo identifier; `None` for [`ICMP_ID`].
    pub icmp_id: Option<u16>,
}

impl Frame {
    pub fn v4(src: Ipv4Addr, dst: Ipv4Addr, l4: L4) -> Frame {
        Frame::with_net(Net::V4(Ipv4 {
            src,
            dst,
            ttl: 64,
            options: Vec::new(),
            more_fragments: false,
            frag_offset: 0,
            version: 4,
            ihl: None,
            total_len: None,
            l4,
        }))
    }

    pub fn v6(src: Ipv6Addr, dst: Ipv6Addr, l4: L4) -> Frame {
        Frame::with_net(Net::V6(Ipv6 {
            src,
            dst,
            hop_limit: 64,
            version: 6,
            ext: Vec::new(),
            l4,
        }))
    }

    /// An IPv4 or IPv6 frame, by the family of the addresses.
    pub fn ip(src: IpAddr, dst: IpAddr, l4: L4) -> Frame {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => Frame::v4(s, d, l4),
            (IpAddr::V6(s), IpAddr::V6(d)) => Frame::v6(s, d, l4),
            _ => panic!("mixed address families {src} -> {dst}"),
        }
    }

    /// An ARP request (who-has 10.0.0.1), the usual non-IP frame.
    pub fn arp() -> Frame {
        let mut body = vec![0, 1, 8, 0, 6, 4, 0, 1];
        body.extend_from_slice(&[2, 0, 0, 0, 0, 1, 10, 0, 0, 2]);
        body.extend_from_slice(&[0, 0, 0, 0, 0, 0, 10, 0, 0, 1]);
        Frame {
            ethertype: Some(ETH_P_ARP),
            ..Frame::with_net(Net::Raw(body))
        }
    }

    fn with_net(net: Net) -> Frame {
        Frame {
            vlans: Vec::new(),
            ethertype: None,
            net,
            payload: 0,
            sport: None,
            tcp_flags: None,
            icmp_id: None,
        }
    }

    pub fn sport(mut self, port: u16) -> Frame {
        self.sport = Some(port);
        self
    }

    pub fn tcp_flags(mut self, flags: u8) -> Frame {
        self.tcp_flags = Some(flags);
        self
    }

    pub fn icmp_id(mut self, id: u16) -> Frame {
        self.icmp_id = Some(id);
        self
    }

    fn l4_fields(&self) -> L4Fields {
        L4Fields {
            sport: self.sport.unwrap_or(SRC_PORT),
            tcp_flags: self.tcp_flags.unwrap_or(TCP_SYN),
            icmp_id: self.icmp_id.unwrap_or(ICMP_ID),
        }
    }

    /// Adds a VLAN tag inside the ones already there.
    pub fn vlan(mut self, tpid: u16) -> Frame {
        self.vlans.push(tpid);
        self
    }

    pub fn ethertype(mut self, ethertype: u16) -> Frame {
        self.ethertype = Some(ethertype);
        self
    }

    pub fn payload(mut self, len: usize) -> Frame {
        self.payload = len;
        self
    }

    /// Edits the IPv4 header; panics on another kind of frame.
    pub fn with_v4(mut self, edit: impl FnOnce(&mut Ipv4)) -> Frame {
        match &mut self.net {
            Net::V4(h) => edit(h),
            other => panic!("not an IPv4 frame: {other:?}"),
        }
        self
    }

    /// Edits the IPv6 header; panics on another kind of frame.
    pub fn with_v6(mut self, edit: impl FnOnce(&mut Ipv6)) -> Frame {
        match &mut self.net {
            Net::V6(h) => edit(h),
            other => panic!("not an IPv6 frame: {other:?}"),
        }
        self
    }

    /// Appends IPv6 extension headers before the transport header.
    pub fn ext(self, headers: &[Ext]) -> Frame {
        self.with_v6(|h| h.ext.extend_from_slice(headers))
    }

    pub fn hop_limit(self, hop_limit: u8) -> Frame {
        match &self.net {
            Net::V4(_) => self.with_v4(|h| h.ttl = hop_limit),
            _ => self.with_v6(|h| h.hop_limit = hop_limit),
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.build().0
    }

    /// Where each header lies in [`Frame::bytes`], outermost first.
    pub fn layout(&self) -> Vec<Span> {
        self.build().1
    }

    /// The frame cut to its first `len` bytes.
    pub fn truncate(&self, len: usize) -> Vec<u8> {
        let mut bytes = self.bytes();
        bytes.truncate(len);
        bytes
    }

    fn build(&self) -> (Vec<u8>, Vec<Span>) {
        let mut out = Vec::with_capacity(128);
        let mut spans = Vec::new();
        let mut mark = |name: String, out: &Vec<u8>, start: usize| {
            spans.push(Span {
                name,
                start,
                len: out.len() - start,
            });
        };
        // Locally administered MACs: the gate never reads them.
        out.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01]);
        let ethertype = self.ethertype.unwrap_or(match self.net {
            Net::V4(_) => ETH_P_IP,
            Net::V6(_) => ETH_P_IPV6,
            Net::Raw(_) => ETH_P_ARP,
        });
        let first = self.vlans.first().copied().unwrap_or(ethertype);
        out.extend_from_slice(&first.to_be_bytes());
        mark("ethernet".into(), &out, 0);
        for (i, _) in self.vlans.iter().enumerate() {
            let start = out.len();
            let inner = self.vlans.get(i + 1).copied().unwrap_or(ethertype);
            out.extend_from_slice(&(100 + i as u16).to_be_bytes()); // VLAN id
            out.extend_from_slice(&inner.to_be_bytes());
            mark(format!("vlan{}", i + 1), &out, start);
        }
        match &self.net {
            Net::Raw(body) => {
                let start = out.len();
                out.extend_from_slice(body);
                mark("non-ip".into(), &out, start);
            }
            Net::V4(h) => {
                let mut options = h.options.clone();
                while options.len() % 4 != 0 {
                    options.push(0);
                }
                let header_len = 20 + options.len();
                let l4_len = l4_len(&h.l4, self.payload);
                let ihl = h.ihl.unwrap_or((header_len / 4) as u8);
                let total = h.total_len.unwrap_or((header_len + l4_len) as u16);
                let frag = (h.more_fragments as u16) << 13 | (h.frag_offset & 0x1fff);
                let start = out.len();
                out.push(h.version << 4 | (ihl & 0x0f));
                out.push(0);
                out.extend_from_slice(&total.to_be_bytes());
                out.extend_from_slice(&0x4242u16.to_be_bytes());
                out.extend_from_slice(&frag.to_be_bytes());
                out.push(h.ttl);
                out.push(h.l4.proto());
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(&h.src.octets());
                out.extend_from_slice(&h.dst.octets());
                mark("ipv4".into(), &out, start);
                if !options.is_empty() {
                    let start = out.len();
                    out.extend_from_slice(&options);
                    mark("ipv4-options".into(), &out, start);
                }
                let start = out.len();
                h.l4.write(&mut out, self.payload, self.l4_fields());
                mark(h.l4.name().into(), &out, start);
            }
            Net::V6(h) => {
                let ext_len: usize = h.ext.iter().map(ext_len).sum();
                let payload_len = ext_len + l4_len(&h.l4, self.payload);
                let first = h.ext.first().map_or(h.l4.proto(), Ext::code);
                let start = out.len();
                out.extend_from_slice(&[h.version << 4, 0, 0, 0]);
                out.extend_from_slice(&(payload_len as u16).to_be_bytes());
                out.push(first);
                out.push(h.hop_limit);
                out.extend_from_slice(&h.src.octets());
                out.extend_from_slice(&h.dst.octets());
                mark("ipv6".into(), &out, start);
                for (i, ext) in h.ext.iter().enumerate() {
                    let next = h.ext.get(i + 1).map_or(h.l4.proto(), Ext::code);
                    let start = out.len();
                    ext.write(next, &mut out);
                    mark(format!("{} (ext {})", ext.name(), i + 1), &out, start);
                }
                let start = out.len();
                h.l4.write(&mut out, self.payload, self.l4_fields());
                mark(h.l4.name().into(), &out, start);
            }
        }
        out.extend((0..self.payload).map(|i| i as u8));
        (out, spans)
    }
}

fn l4_len(l4: &L4, payload: usize) -> usize {
    let header = match l4 {
        L4::Tcp { .. } => 20,
        L4::Udp { .. } => 8,
        L4::Sctp { .. } => 12,
        L4::Icmp { .. } | L4::Icmpv6 { .. } => 8,
        L4::Other { len, .. } => *len,
    };
    header + payload
}

fn ext_len(ext: &Ext) -> usize {
    match ext {
        Ext::Fragment { .. } => 8,
        Ext::HopByHop { len8 }
        | Ext::Routing { len8 }
        | Ext::DestOpts { len8 }
        | Ext::Other { len8, .. } => (*len8 as usize + 1) * 8,
    }
}

/// Lowercase hex, for failure messages that can be replayed.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_over_ipv4_has_the_wire_layout() {
        let frame = Frame::v4(
            Ipv4Addr::new(192, 0, 2, 1),
            Ipv4Addr::new(10, 9, 1, 1),
            L4::Tcp { dport: 22 },
        );
        let bytes = frame.bytes();
        assert_eq!(bytes.len(), 14 + 20 + 20);
        assert_eq!(&bytes[12..14], &[0x08, 0x00]);
        assert_eq!(bytes[14], 0x45);
        assert_eq!(&bytes[16..18], &40u16.to_be_bytes());
        assert_eq!(bytes[23], PROTO_TCP);
        assert_eq!(&bytes[30..34], &[10, 9, 1, 1]);
        assert_eq!(&bytes[36..38], &22u16.to_be_bytes());
        let names: Vec<_> = frame.layout().into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["ethernet", "ipv4", "tcp"]);
    }

    #[test]
    fn ipv6_extension_chain_links_next_headers() {
        let frame = Frame::v6(
            "2001:db8::1".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
            L4::Udp { dport: 53 },
        )
        .vlan(ETH_P_8021AD)
        .vlan(ETH_P_8021Q)
        .ext(&[
            Ext::HopByHop { len8: 0 },
            Ext::Fragment {
                offset: 0,
                more: true,
            },
        ]);
        let bytes = frame.bytes();
        assert_eq!(&bytes[12..14], &ETH_P_8021AD.to_be_bytes());
        assert_eq!(&bytes[16..18], &ETH_P_8021Q.to_be_bytes());
        assert_eq!(&bytes[20..22], &ETH_P_IPV6.to_be_bytes());
        let ip = 22;
        assert_eq!(bytes[ip + 6], 0, "first next header is hop-by-hop");
        assert_eq!(&bytes[ip + 4..ip + 6], &(8u16 + 8 + 8).to_be_bytes());
        assert_eq!(
            bytes[ip + 40],
            44,
            "hop-by-hop points at the fragment header"
        );
        assert_eq!(bytes[ip + 48], PROTO_UDP);
        assert_eq!(&bytes[ip + 50..ip + 52], &[0, 1], "offset 0, M set");
        assert_eq!(bytes.len(), ip + 40 + 16 + 8);
    }
}
