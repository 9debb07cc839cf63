//! The verdict table: hand-written frames with the verdict and reason the
//! gate must give them, run on the compiled XDP program through
//! BPF_PROG_TEST_RUN (an unpinned gate, attached to no interface).
//!
//! Every case is also checked against the reference model, so this table
//! validates the model the property test relies on, and against the
//! program's own counters, so the reason is checked and not only the
//! verdict.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use aya::programs::{TestRun, TestRunOptions};
use ipnet::IpNet;
use jit_agent::gate::{
    addr::to16, clock::boot_ns, FlowIdle, Gate, GateOptions, GrantSpec, RuleSpec,
};
use jit_common::{Reason, TrackKey, TrackValue, TRACK_INBOUND, TRACK_OUTBOUND};
use jit_tests::{
    model::{self, Grant, Idle, Policy, Rule, TrackedFlow, ANY, MAX_IPV6_EXT_HEADERS},
    packet::{
        hex, Ext, Frame, ETH_P_8021AD, ETH_P_8021Q, L4, PROTO_ESP, PROTO_GRE, PROTO_ICMP,
        PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_PSH, TCP_SYN,
    },
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const HOUR_NS: u64 = 3_600_000_000_000;

const ZONE_V4: u32 = 1;
const ZONE_V6: u32 = 2;
/// A /24 nested in ZONE_V4's /16: the longest prefix must win.
const ZONE_NESTED: u32 = 3;

fn v4(s: &str) -> Ipv4Addr {
    s.parse().expect("IPv4 literal")
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().expect("IPv6 literal")
}

fn net(s: &str) -> IpNet {
    s.parse().expect("prefix literal")
}

// Sources: alice holds live grants, bob an expired one beside a live one,
// carol an expired and a live grant for the same flow, dave an
// any-protocol grant, erin an exact live grant beside an expired
// any-protocol one, frank only an expired any-protocol grant, mallory
// nothing.
const ALICE4: &str = "192.0.2.1";
const BOB4: &str = "192.0.2.2";
const CAROL4: &str = "192.0.2.3";
const DAVE4: &str = "192.0.2.4";
const ERIN4: &str = "192.0.2.5";
const FRANK4: &str = "192.0.2.6";
const MALLORY4: &str = "192.0.2.66";
const ALICE6: &str = "2001:db8:1::1";
const BOB6: &str = "2001:db8:1::2";
const DAVE6: &str = "2001:db8:1::4";
const MALLORY6: &str = "2001:db8:1::66";

// Destinations.
const HOST4: &str = "10.9.1.1";
const HOST6: &str = "2001:db8:9:1::1";
const OPEN4: &str = "10.77.0.1";
const OPEN6: &str = "2001:db8:77::1";

fn zones() -> Vec<(IpNet, u32)> {
    vec![
        (net("10.9.0.0/16"), ZONE_V4),
        (net("2001:db8:9::/48"), ZONE_V6),
        (net("10.9.200.0/24"), ZONE_NESTED),
    ]
}

fn rule(dst: &str, proto: u8, port_lo: u16, port_hi: u16) -> Rule {
    Rule {
        dst: net(dst),
        proto,
        port_lo,
        port_hi,
    }
}

fn grants(now: u64) -> Vec<Grant> {
    let live = now + HOUR_NS;
    // In the past but not zero: zero marks an unused kernel slot.
    let past = now - 1;
    let grant = |src: &str, rules: Vec<Rule>, expires_at_ns| Grant {
        src: src.parse().expect("address literal"),
        rules,
        expires_at_ns,
    };
    let (p4, p6) = ("10.9.1.0/24", "2001:db8:9:1::/64");
    vec![
        grant(
            ALICE4,
            vec![
                rule(p4, PROTO_TCP, 22, 22),
                rule(p4, PROTO_UDP, 5000, 5010),
                rule(p4, PROTO_SCTP, 3868, 3869),
                rule(p4, PROTO_ICMP, 0, 0),
                rule(p4, PROTO_GRE, 0, 0),
            ],
            live,
        ),
        grant(
            ALICE6,
            vec![
                rule(p6, PROTO_TCP, 22, 22),
                rule(p6, PROTO_UDP, 5000, 5010),
                rule(p6, PROTO_SCTP, 3868, 3869),
                rule(p6, PROTO_ICMPV6, 0, 0),
                rule(p6, PROTO_GRE, 0, 0),
            ],
            live,
        ),
        // A second grant for the same flow keys as the first two: the
        // kernel holds both in one set per (source, zone, protocol).
        grant(ALICE4, vec![rule(p4, PROTO_TCP, 8000, 8080)], live),
        grant(ALICE6, vec![rule(p6, PROTO_TCP, 8000, 8080)], live),
        grant(BOB4, vec![rule(p4, PROTO_TCP, 22, 22)], past),
        grant(BOB4, vec![rule(p4, PROTO_TCP, 80, 80)], live),
        grant(BOB6, vec![rule(p6, PROTO_TCP, 22, 22)], past),
        grant(BOB6, vec![rule(p6, PROTO_UDP, 53, 53)], live),
        grant(CAROL4, vec![rule(p4, PROTO_TCP, 22, 22)], past),
        grant(CAROL4, vec![rule(p4, PROTO_TCP, 22, 22)], live),
        grant(DAVE4, vec![rule("10.9.5.0/24", ANY, 0, 0)], live),
        grant(DAVE6, vec![rule("2001:db8:9:5::/64", ANY, 0, 0)], live),
        grant(ERIN4, vec![rule(p4, PROTO_TCP, 22, 22)], live),
        grant(ERIN4, vec![rule(p4, ANY, 0, 0)], past),
        grant(FRANK4, vec![rule(p4, ANY, 0, 0)], past),
    ]
}

struct Case {
    name: String,
    packet: Vec<u8>,
    expect: Reason,
}

fn tcp4(src: &str, dst: &str, dport: u16) -> Frame {
    Frame::v4(v4(src), v4(dst), L4::Tcp { dport })
}

fn tcp6(src: &str, dst: &str, dport: u16) -> Frame {
    Frame::v6(v6(src), v6(dst), L4::Tcp { dport })
}

fn table() -> Vec<Case> {
    use Reason::*;
    let mut t = Vec::new();
    let mut case = |name: &str, frame: Frame, expect: Reason| {
        t.push(Case {
            name: name.into(),
            packet: frame.bytes(),
            expect,
        })
    };

    // Protocols, IPv4.
    case("v4 tcp to granted port", tcp4(ALICE4, HOST4, 22), PassGrant);
    case(
        "v4 tcp to another port",
        tcp4(ALICE4, HOST4, 23),
        DropNoGrant,
    );
    case(
        "v4 udp to granted port",
        Frame::v4(v4(ALICE4), v4(HOST4), L4::Udp { dport: 5005 }),
        PassGrant,
    );
    case(
        "v4 sctp to granted port",
        Frame::v4(v4(ALICE4), v4(HOST4), L4::Sctp { dport: 3868 }),
        PassGrant,
    );
    case(
        "v4 icmp echo with an icmp grant",
        Frame::v4(v4(ALICE4), v4(HOST4), L4::Icmp { ty: 8 }),
        PassGrant,
    );
    case(
        "v4 gre matched on protocol number alone",
        Frame::v4(
            v4(ALICE4),
            v4(HOST4),
            L4::Other {
                proto: PROTO_GRE,
                len: 4,
            },
        ),
        PassGrant,
    );
    case(
        "v4 gre with no bytes after the IP header",
        Frame::v4(
            v4(ALICE4),
            v4(HOST4),
            L4::Other {
                proto: PROTO_GRE,
                len: 0,
            },
        ),
        PassGrant,
    );
    case(
        "v4 ipip: no rule for protocol 4",
        Frame::v4(v4(ALICE4), v4(HOST4), L4::Other { proto: 4, len: 20 }),
        DropNoGrant,
    );
    case(
        "v4 udp: tcp rule's port does not open udp",
        Frame::v4(v4(ALICE4), v4(HOST4), L4::Udp { dport: 22 }),
        DropNoGrant,
    );

    // Protocols, IPv6.
    case("v6 tcp to granted port", tcp6(ALICE6, HOST6, 22), PassGrant);
    case(
        "v6 tcp to another port",
        tcp6(ALICE6, HOST6, 23),
        DropNoGrant,
    );
    case(
        "v6 udp to granted port",
        Frame::v6(v6(ALICE6), v6(HOST6), L4::Udp { dport: 5000 }),
        PassGrant,
    );
    case(
        "v6 sctp to granted port",
        Frame::v6(v6(ALICE6), v6(HOST6), L4::Sctp { dport: 3869 }),
        PassGrant,
    );
    case(
        "v6 icmpv6 echo with an icmpv6 grant",
        Frame::v6(v6(ALICE6), v6(HOST6), L4::Icmpv6 { ty: 128 }),
        PassGrant,
    );
    case(
        "v6 gre matched on protocol number alone",
        Frame::v6(
            v6(ALICE6),
            v6(HOST6),
            L4::Other {
                proto: PROTO_GRE,
                len: 8,
            },
        ),
        PassGrant,
    );
    case(
        "v6 esp is a protocol, not an extension header, and has no rule",
        Frame::v6(
            v6(ALICE6),
            v6(HOST6),
            L4::Other {
                proto: PROTO_ESP,
                len: 16,
            },
        ),
        DropNoGrant,
    );
    case(
        "v6 no-next-header (59) has no rule",
        Frame::v6(v6(ALICE6), v6(HOST6), L4::Other { proto: 59, len: 0 }),
        DropNoGrant,
    );

    // Port range edges.
    for (port, expect) in [
        (7999, DropNoGrant),
        (8000, PassGrant),
        (8080, PassGrant),
        (8081, DropNoGrant),
    ] {
        case(
            &format!("v4 tcp port {port} against 8000-8080"),
            tcp4(ALICE4, HOST4, port),
            expect,
        );
        case(
            &format!("v6 tcp port {port} against 8000-8080"),
            tcp6(ALICE6, HOST6, port),
            expect,
        );
    }
    for (port, expect) in [
        (4999, DropNoGrant),
        (5000, PassGrant),
        (5010, PassGrant),
        (5011, DropNoGrant),
    ] {
        case(
            &format!("v4 udp port {port} against 5000-5010"),
            Frame::v4(v4(ALICE4), v4(HOST4), L4::Udp { dport: port }),
            expect,
        );
    }
    for (port, expect) in [
        (3867, DropNoGrant),
        (3868, PassGrant),
        (3869, PassGrant),
        (3870, DropNoGrant),
    ] {
        case(
            &format!("v6 sctp port {port} against 3868-3869"),
            Frame::v6(v6(ALICE6), v6(HOST6), L4::Sctp { dport: port }),
            expect,
        );
    }

    // Prefix edges: the rule's /24 and /64, then the zone's /16 and /48.
    for (dst, expect) in [
        ("10.9.1.0", PassGrant),
        ("10.9.1.255", PassGrant),
        ("10.9.0.255", DropNoGrant),
        ("10.9.2.0", DropNoGrant),
        ("10.9.0.0", DropNoGrant),
        ("10.9.255.255", DropNoGrant),
        ("10.8.255.255", PassUnprotected),
        ("10.10.0.0", PassUnprotected),
    ] {
        case(
            &format!("v4 prefix edge {dst}"),
            tcp4(ALICE4, dst, 22),
            expect,
        );
    }
    for (dst, expect) in [
        ("2001:db8:9:1::", PassGrant),
        ("2001:db8:9:1:ffff:ffff:ffff:ffff", PassGrant),
        ("2001:db8:9:0:ffff:ffff:ffff:ffff", DropNoGrant),
        ("2001:db8:9:2::", DropNoGrant),
        ("2001:db8:9::", DropNoGrant),
        ("2001:db8:9:ffff:ffff:ffff:ffff:ffff", DropNoGrant),
        ("2001:db8:8:ffff:ffff:ffff:ffff:ffff", PassUnprotected),
        ("2001:db8:a::", PassUnprotected),
    ] {
        case(
            &format!("v6 prefix edge {dst}"),
            tcp6(ALICE6, dst, 22),
            expect,
        );
    }
    case(
        "v4 nested zone wins the longest-prefix lookup (counted in zone 3)",
        tcp4(ALICE4, "10.9.200.1", 22),
        DropNoGrant,
    );

    // Sources.
    case(
        "v4 another user's source under alice's grant",
        tcp4(MALLORY4, HOST4, 22),
        DropNoGrant,
    );
    case(
        "v6 another user's source under alice's grant",
        tcp6(MALLORY6, HOST6, 22),
        DropNoGrant,
    );
    case(
        "v4 grantee's IPv4-mapped address to an IPv6 zone is malformed",
        tcp6("::ffff:192.0.2.1", HOST6, 22),
        DropMalformed,
    );

    // Expired against live.
    case("v4 expired grant", tcp4(BOB4, HOST4, 22), DropExpired);
    case(
        "v4 same user's live grant next to the expired one",
        tcp4(BOB4, HOST4, 80),
        PassGrant,
    );
    case(
        "v4 same user, port in neither grant",
        tcp4(BOB4, HOST4, 443),
        DropNoGrant,
    );
    case("v6 expired grant", tcp6(BOB6, HOST6, 22), DropExpired);
    case(
        "v6 same user's live grant next to the expired one",
        Frame::v6(v6(BOB6), v6(HOST6), L4::Udp { dport: 53 }),
        PassGrant,
    );
    case(
        "v4 live grant wins over an expired one for the same flow",
        tcp4(CAROL4, HOST4, 22),
        PassGrant,
    );
    case(
        "v4 expired grant does not leak past its prefix",
        tcp4(BOB4, "10.9.2.1", 22),
        DropNoGrant,
    );

    // Any-protocol grants.
    case(
        "v4 any-protocol grant opens tcp on any port",
        tcp4(DAVE4, "10.9.5.7", 443),
        PassGrant,
    );
    case(
        "v4 any-protocol grant opens udp",
        Frame::v4(v4(DAVE4), v4("10.9.5.7"), L4::Udp { dport: 53 }),
        PassGrant,
    );
    case(
        "v4 any-protocol grant opens gre",
        Frame::v4(
            v4(DAVE4),
            v4("10.9.5.7"),
            L4::Other {
                proto: PROTO_GRE,
                len: 4,
            },
        ),
        PassGrant,
    );
    case(
        "v4 any-protocol grant stops at its prefix",
        tcp4(DAVE4, "10.9.6.0", 443),
        DropNoGrant,
    );
    case(
        "v6 any-protocol grant opens sctp",
        Frame::v6(v6(DAVE6), v6("2001:db8:9:5::9"), L4::Sctp { dport: 9 }),
        PassGrant,
    );
    case(
        "v6 any-protocol grant is no fragment exception",
        tcp6(DAVE6, "2001:db8:9:5::9", 22).ext(&[Ext::Fragment {
            offset: 9,
            more: false,
        }]),
        DropFragment,
    );
    case(
        "v4 live exact grant beside an expired any-protocol one",
        tcp4(ERIN4, HOST4, 22),
        PassGrant,
    );
    case(
        "v4 port outside the live grant, expired any-protocol grant matches",
        tcp4(ERIN4, HOST4, 23),
        DropExpired,
    );
    case(
        "v4 only an expired any-protocol grant",
        Frame::v4(v4(FRANK4), v4(HOST4), L4::Icmp { ty: 8 }),
        DropExpired,
    );

    // VLAN tags.
    case(
        "v4 one 802.1Q tag",
        tcp4(ALICE4, HOST4, 22).vlan(ETH_P_8021Q),
        PassGrant,
    );
    case(
        "v6 one 802.1ad tag",
        tcp6(ALICE6, HOST6, 22).vlan(ETH_P_8021AD),
        PassGrant,
    );
    case(
        "v4 two tags (QinQ)",
        tcp4(ALICE4, HOST4, 22).vlan(ETH_P_8021AD).vlan(ETH_P_8021Q),
        PassGrant,
    );
    case(
        "v6 two tags, no grant",
        tcp6(MALLORY6, HOST6, 22)
            .vlan(ETH_P_8021Q)
            .vlan(ETH_P_8021Q),
        DropNoGrant,
    );
    case(
        "v4 three tags to a protected host",
        tcp4(ALICE4, HOST4, 22)
            .vlan(ETH_P_8021AD)
            .vlan(ETH_P_8021Q)
            .vlan(ETH_P_8021Q),
        DropMalformed,
    );
    case(
        "v4 three tags to an unprotected host",
        tcp4(ALICE4, OPEN4, 22)
            .vlan(ETH_P_8021Q)
            .vlan(ETH_P_8021Q)
            .vlan(ETH_P_8021Q),
        DropMalformed,
    );
    case(
        "arp inside a vlan tag",
        Frame::arp().vlan(ETH_P_8021Q),
        PassNonIp,
    );

    // IPv4 header fields.
    case(
        "v4 with 4 bytes of options",
        tcp4(ALICE4, HOST4, 22).with_v4(|h| h.options = vec![1, 1, 1, 0]),
        PassGrant,
    );
    case(
        "v4 with 40 bytes of options (IHL 15)",
        tcp4(ALICE4, HOST4, 22).with_v4(|h| h.options = router_alert_and_nops(40)),
        PassGrant,
    );
    case(
        "v4 options hide no port: port read after them",
        tcp4(ALICE4, HOST4, 23).with_v4(|h| h.options = vec![0, 22, 0, 22]),
        DropNoGrant,
    );
    case(
        "v4 IHL 4",
        tcp4(ALICE4, HOST4, 22).with_v4(|h| h.ihl = Some(4)),
        DropMalformed,
    );
    case(
        "v4 version 6 in an IPv4 ethertype",
        tcp4(ALICE4, HOST4, 22).with_v4(|h| h.version = 6),
        DropMalformed,
    );
    case(
        "v4 total length shorter than the header",
        tcp4(ALICE4, HOST4, 22).with_v4(|h| h.total_len = Some(19)),
        DropMalformed,
    );
    case(
        "v4 bad version to an unprotected host",
        tcp4(ALICE4, OPEN4, 22).with_v4(|h| {
            h.version = 0;
            h.ihl = Some(0)
        }),
        PassUnprotected,
    );
    case(
        "v4 IHL past the end of the frame (tcp)",
        tcp4(ALICE4, HOST4, 22).with_v4(|h| {
            h.ihl = Some(15);
            h.total_len = Some(80)
        }),
        DropMalformed,
    );

    // Fragments.
    let frag4 = |more, offset| {
        tcp4(ALICE4, HOST4, 22).with_v4(|h| {
            h.more_fragments = more;
            h.frag_offset = offset
        })
    };
    case("v4 first fragment is judged", frag4(true, 0), PassGrant);
    case(
        "v4 first fragment of a denied flow",
        tcp4(MALLORY4, HOST4, 22).with_v4(|h| h.more_fragments = true),
        DropNoGrant,
    );
    case("v4 middle fragment", frag4(true, 1), DropFragment);
    case("v4 last fragment", frag4(false, 185), DropFragment);
    case(
        "v4 largest fragment offset",
        frag4(false, 0x1fff),
        DropFragment,
    );
    case(
        "v4 non-first fragment to an unprotected host",
        tcp4(ALICE4, OPEN4, 22).with_v4(|h| h.frag_offset = 3),
        PassUnprotected,
    );
    let frag6 = |offset, more| Ext::Fragment { offset, more };
    case(
        "v6 first fragment is judged",
        tcp6(ALICE6, HOST6, 22).ext(&[frag6(0, true)]),
        PassGrant,
    );
    case(
        "v6 atomic fragment (offset 0, no M)",
        tcp6(ALICE6, HOST6, 22).ext(&[frag6(0, false)]),
        PassGrant,
    );
    case(
        "v6 middle fragment",
        tcp6(ALICE6, HOST6, 22).ext(&[frag6(1, true)]),
        DropFragment,
    );
    case(
        "v6 last fragment after hop-by-hop",
        tcp6(ALICE6, HOST6, 22).ext(&[Ext::HopByHop { len8: 0 }, frag6(100, false)]),
        DropFragment,
    );
    case(
        "v6 non-first fragment to an unprotected host",
        tcp6(ALICE6, OPEN6, 22).ext(&[frag6(7, false)]),
        PassUnprotected,
    );

    // IPv6 extension headers.
    for (name, ext) in [
        ("hop-by-hop", Ext::HopByHop { len8: 0 }),
        ("long hop-by-hop", Ext::HopByHop { len8: 5 }),
        ("routing", Ext::Routing { len8: 2 }),
        ("destination options", Ext::DestOpts { len8: 1 }),
    ] {
        case(
            &format!("v6 {name} then tcp"),
            tcp6(ALICE6, HOST6, 22).ext(&[ext]),
            PassGrant,
        );
    }
    case(
        "v6 every walked header in a chain, port denied",
        tcp6(ALICE6, HOST6, 23).ext(&[
            Ext::HopByHop { len8: 0 },
            Ext::DestOpts { len8: 0 },
            Ext::Routing { len8: 2 },
            frag6(0, true),
            Ext::DestOpts { len8: 0 },
        ]),
        DropNoGrant,
    );
    case(
        "v6 seven extension headers",
        tcp6(ALICE6, HOST6, 22).ext(&vec![Ext::DestOpts { len8: 0 }; 7]),
        PassGrant,
    );
    case(
        "v6 eight extension headers (the documented limit)",
        tcp6(ALICE6, HOST6, 22).ext(&vec![Ext::DestOpts { len8: 0 }; MAX_IPV6_EXT_HEADERS]),
        PassGrant,
    );
    case(
        "v6 nine extension headers",
        tcp6(ALICE6, HOST6, 22).ext(&vec![Ext::DestOpts { len8: 0 }; MAX_IPV6_EXT_HEADERS + 1]),
        DropMalformed,
    );
    for (name, code) in [
        ("AH", 51),
        ("mobility", 135),
        ("HIP", 139),
        ("shim6", 140),
        ("experimental 253", 253),
        ("experimental 254", 254),
    ] {
        case(
            &format!("v6 {name} header is not walked"),
            tcp6(ALICE6, HOST6, 22).ext(&[Ext::Other { code, len8: 1 }]),
            DropMalformed,
        );
    }
    case(
        "v6 AH after hop-by-hop",
        tcp6(ALICE6, HOST6, 22).ext(&[Ext::HopByHop { len8: 0 }, Ext::Other { code: 51, len8: 1 }]),
        DropMalformed,
    );
    case(
        "v6 AH to an unprotected host",
        tcp6(ALICE6, OPEN6, 22).ext(&[Ext::Other { code: 51, len8: 1 }]),
        PassUnprotected,
    );
    case(
        "v6 version 4 in an IPv6 ethertype",
        tcp6(ALICE6, HOST6, 22).with_v6(|h| h.version = 4),
        DropMalformed,
    );

    // Truncated headers whose protocol needs no transport bytes: the gate
    // must still refuse a header that ends early.
    case(
        "v4 gre with the options cut off",
        Frame::v4(
            v4(ALICE4),
            v4(HOST4),
            L4::Other {
                proto: PROTO_GRE,
                len: 0,
            },
        )
        .with_v4(|h| {
            h.ihl = Some(6);
            h.total_len = Some(24)
        }),
        DropMalformed,
    );
    // Neighbour discovery.
    for ty in 133..=137 {
        case(
            &format!("v6 neighbour discovery type {ty}, hop limit 255, no grant"),
            Frame::v6(v6(MALLORY6), v6(HOST6), L4::Icmpv6 { ty }).hop_limit(255),
            PassNeighbor,
        );
    }
    case(
        "v6 neighbour solicitation with hop limit 64 needs a grant",
        Frame::v6(v6(MALLORY6), v6(HOST6), L4::Icmpv6 { ty: 135 }),
        DropNoGrant,
    );
    case(
        "v6 neighbour solicitation with hop limit 64 and a grant",
        Frame::v6(v6(ALICE6), v6(HOST6), L4::Icmpv6 { ty: 135 }),
        PassGrant,
    );
    case(
        "v6 icmpv6 type 132 with hop limit 255 needs a grant",
        Frame::v6(v6(MALLORY6), v6(HOST6), L4::Icmpv6 { ty: 132 }).hop_limit(255),
        DropNoGrant,
    );
    case(
        "v6 icmpv6 type 138 with hop limit 255 needs a grant",
        Frame::v6(v6(MALLORY6), v6(HOST6), L4::Icmpv6 { ty: 138 }).hop_limit(255),
        DropNoGrant,
    );
    case(
        "v6 neighbour advertisement after a destination-options header",
        Frame::v6(v6(MALLORY6), v6(HOST6), L4::Icmpv6 { ty: 136 })
            .hop_limit(255)
            .ext(&[Ext::DestOpts { len8: 0 }]),
        PassNeighbor,
    );
    case(
        "v4 icmp type 135 with ttl 255 is not neighbour discovery",
        Frame::v4(v4(MALLORY4), v4(HOST4), L4::Icmp { ty: 135 }).hop_limit(255),
        DropNoGrant,
    );
    case(
        "v4 protocol 58 type 135 with ttl 255 is not neighbour discovery",
        Frame::v4(v4(MALLORY4), v4(HOST4), L4::Icmpv6 { ty: 135 }).hop_limit(255),
        DropNoGrant,
    );
    case(
        "v6 frame with IPv4-mapped addresses does not ride on the IPv4 grant",
        Frame::ip(
            "::ffff:192.0.2.1".parse().unwrap(),
            "::ffff:10.9.1.1".parse().unwrap(),
            L4::Tcp { dport: 22 },
        ),
        DropMalformed,
    );

    // Unprotected and non-IP.
    case("arp", Frame::arp(), PassNonIp);
    case("lldp ethertype", Frame::arp().ethertype(0x88cc), PassNonIp);
    case(
        "v4 unprotected destination",
        tcp4(MALLORY4, OPEN4, 22),
        PassUnprotected,
    );
    case(
        "v6 unprotected destination",
        tcp6(MALLORY6, OPEN6, 22),
        PassUnprotected,
    );
    case(
        "v4 unprotected destination, unknown protocol",
        Frame::v4(v4(MALLORY4), v4(OPEN4), L4::Other { proto: 253, len: 3 }),
        PassUnprotected,
    );

    // A hop-by-hop header cut 8 bytes short, before a protocol that needs
    // no transport bytes.
    let mut short_hbh = Frame::v6(
        v6(ALICE6),
        v6(HOST6),
        L4::Other {
            proto: PROTO_GRE,
            len: 0,
        },
    )
    .ext(&[Ext::HopByHop { len8: 2 }])
    .bytes();
    short_hbh.truncate(short_hbh.len() - 8);
    t.push(Case {
        name: "v6 gre after a cut-short hop-by-hop".into(),
        packet: short_hbh,
        expect: DropMalformed,
    });
    t.extend(truncations());
    t
}

/// Router alert (4 bytes) then NOPs up to `len`.
fn router_alert_and_nops(len: usize) -> Vec<u8> {
    let mut options = vec![0x94, 4, 0, 0];
    options.resize(len, 1);
    options
}

/// Each frame cut at the start of every header and one byte before the end
/// of every header, to protected and unprotected destinations.
fn truncations() -> Vec<Case> {
    let chain = [
        Ext::HopByHop { len8: 0 },
        Ext::Routing { len8: 2 },
        Ext::DestOpts { len8: 1 },
        Ext::Fragment {
            offset: 0,
            more: true,
        },
    ];
    let v6_tcp = |dst: &str| {
        tcp6(ALICE6, dst, 22)
            .vlan(ETH_P_8021AD)
            .vlan(ETH_P_8021Q)
            .ext(&chain)
    };
    let v4_udp = |dst: &str| {
        Frame::v4(v4(ALICE4), v4(dst), L4::Udp { dport: 5000 })
            .vlan(ETH_P_8021Q)
            .with_v4(|h| h.options = router_alert_and_nops(8))
    };
    let frames = [
        ("v6 qinq tcp", v6_tcp(HOST6), v6_tcp(OPEN6)),
        ("v4 vlan udp with options", v4_udp(HOST4), v4_udp(OPEN4)),
        (
            "v4 sctp",
            Frame::v4(v4(ALICE4), v4(HOST4), L4::Sctp { dport: 3868 }),
            Frame::v4(v4(ALICE4), v4(OPEN4), L4::Sctp { dport: 3868 }),
        ),
        (
            "v4 icmp",
            Frame::v4(v4(ALICE4), v4(HOST4), L4::Icmp { ty: 8 }),
            Frame::v4(v4(ALICE4), v4(OPEN4), L4::Icmp { ty: 8 }),
        ),
        (
            "v6 icmpv6",
            Frame::v6(v6(ALICE6), v6(HOST6), L4::Icmpv6 { ty: 128 }),
            Frame::v6(v6(ALICE6), v6(OPEN6), L4::Icmpv6 { ty: 128 }),
        ),
    ];
    let mut out = Vec::new();
    for (what, protected, open) in frames {
        for (frame, dest, whole) in [
            (protected, "protected", Reason::PassGrant),
            (open, "unprotected", Reason::PassUnprotected),
        ] {
            let layout = frame.layout();
            let fixed_ip_end = layout
                .iter()
                .find(|s| s.name == "ipv4" || s.name == "ipv6")
                .map(|s| s.start + s.len)
                .expect("an IP frame");
            let mut cuts: Vec<(usize, String)> = Vec::new();
            for span in &layout {
                cuts.push((span.start, format!("at the start of {}", span.name)));
                cuts.push((span.start + span.len - 1, format!("inside {}", span.name)));
            }
            cuts.retain(|(len, _)| *len > 0);
            cuts.sort_by_key(|(len, _)| *len);
            cuts.dedup_by_key(|(len, _)| *len);
            for (len, place) in cuts {
                let expect = if len < fixed_ip_end || dest == "protected" {
                    Reason::DropMalformed
                } else {
                    Reason::PassUnprotected
                };
                out.push(Case {
                    name: format!("{what} to {dest} cut {place} ({len} bytes)"),
                    packet: frame.truncate(len),
                    expect,
                });
            }
            out.push(Case {
                name: format!("{what} to {dest}, whole"),
                packet: frame.bytes(),
                expect: whole,
            });
        }
    }
    out
}

/// The gate under test with the policy installed, and each grant's slot.
struct Bench {
    gate: Gate,
    policy: Policy,
    slots: Vec<u32>,
    zone_ids: Vec<u32>,
    /// Frames BPF_PROG_TEST_RUN refused for being shorter than Ethernet.
    runts_refused: usize,
}

impl Bench {
    fn new(zones: Vec<(IpNet, u32)>, grants: Vec<Grant>) -> Bench {
        Bench::with_policy(Policy {
            zones,
            grants,
            ..Policy::default()
        })
    }

    /// A gate holding everything `policy` says: zones (host zones flagged),
    /// grants, tracked flows and their idle timeouts.
    fn with_policy(policy: Policy) -> Bench {
        let mut gate = Gate::load(&GateOptions {
            pin_dir: None,
            capacity: 1024,
            debug_log: false,
            denied_events_per_sec: 1000,
        })
        .expect("loading the gate (needs root and a BPF-capable kernel)");
        let zones = policy.zones.clone();
        gate.set_zones_with_hosts(&zones, &policy.host_zones)
            .expect("setting zones");
        gate.set_flow_idle(FlowIdle {
            tcp: Duration::from_nanos(policy.idle.tcp_ns),
            udp: Duration::from_nanos(policy.idle.udp_ns),
            icmp: Duration::from_nanos(policy.idle.icmp_ns),
        })
        .expect("setting idle timeouts");
        for flow in &policy.flows {
            let (key, value) = track_entry(flow);
            gate.insert_tracked_flow(key, value)
                .expect("writing a tracked flow");
        }
        let mut slots = Vec::new();
        for (id, grant) in policy.grants.iter().enumerate() {
            let slot = gate.allocate_slot().expect("a free slot");
            gate.install(&GrantSpec {
                id: id as u64,
                src: grant.src,
                rules: grant
                    .rules
                    .iter()
                    .map(|r| RuleSpec {
                        dst: r.dst,
                        proto: r.proto,
                        port_lo: r.port_lo,
                        port_hi: r.port_hi,
                    })
                    .collect(),
                expires_at_boot_ns: grant.expires_at_ns,
                slot,
            })
            .unwrap_or_else(|e| panic!("installing grant {id}: {e}"));
            slots.push(slot);
        }
        let mut zone_ids: Vec<u32> = zones.iter().map(|(_, id)| *id).collect();
        zone_ids.sort_unstable();
        zone_ids.dedup();
        Bench {
            gate,
            policy,
            slots,
            zone_ids,
            runts_refused: 0,
        }
    }

    fn counters(&self) -> Vec<((u32, Reason), (u64, u64))> {
        self.gate
            .counters(&self.zone_ids)
            .expect("reading counters")
            .into_iter()
            .map(|c| ((c.zone_id, c.reason), (c.packets, c.bytes)))
            .collect()
    }

    fn stats(&self) -> Vec<(u64, u64)> {
        self.slots
            .iter()
            .map(|slot| {
                let s = self.gate.stats(*slot).expect("reading grant stats");
                (s.packets, s.bytes)
            })
            .collect()
    }

    /// Runs one case; returns what went wrong, if anything.
    fn check(&mut self, case: &Case) -> Vec<String> {
        let mut problems = Vec::new();
        let now = boot_ns();
        let model = model::expect(&case.packet, &self.policy, now);
        if model.reason != case.expect {
            problems.push(format!(
                "model says {:?}, table says {:?}",
                model.reason, case.expect
            ));
        }
        let counters_before = self.counters();
        let stats_before = self.stats();
        let result = self.gate.xdp().test_run(TestRunOptions {
            data_in: Some(&case.packet),
            ..TestRunOptions::new()
        });
        let ret = match result {
            Ok(r) => r.return_value,
            // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet
            // header (net/bpf/test_run.c, bpf_test_init), as NICs drop
            // runts: such a frame never reaches XDP.
            Err(e) if case.packet.len() < 14 => {
                if case.expect != Reason::DropMalformed {
                    problems.push(format!(
                        "runt frame refused ({e}) but expected {:?}",
                        case.expect
                    ));
                }
                self.runts_refused += 1;
                return problems;
            }
            Err(e) => panic!("BPF_PROG_TEST_RUN failed for {:?}: {e}", case.name),
        };
        let want = if case.expect.is_pass() {
            XDP_PASS
        } else {
            XDP_DROP
        };
        if ret != want {
            problems.push(format!(
                "program returned {ret}, expected {want} ({:?})",
                case.expect
            ));
        }
        let len = case.packet.len() as u64;
        let changed: Vec<_> = self
            .counters()
            .into_iter()
            .zip(counters_before)
            .filter(|(after, before)| after.1 != before.1)
            .map(|((cell, (p, b)), (_, (p0, b0)))| (cell, p - p0, b - b0))
            .collect();
        let wanted_cell = (model.zone_id, case.expect);
        if changed != [(wanted_cell, 1, len)] {
            problems.push(format!(
                "counter deltas {changed:?}, expected one packet of {len} bytes in zone {} {:?}",
                wanted_cell.0, wanted_cell.1
            ));
        }
        let stats_delta: Vec<(usize, u64, u64)> = self
            .stats()
            .into_iter()
            .zip(stats_before)
            .enumerate()
            .filter(|(_, (after, before))| after != before)
            .map(|(i, (after, before))| (i, after.0 - before.0, after.1 - before.1))
            .collect();
        let stats_ok = match case.expect {
            Reason::PassGrant => {
                stats_delta.len() == 1
                    && model.passed_by.contains(&stats_delta[0].0)
                    && stats_delta[0].1 == 1
                    && stats_delta[0].2 == len
            }
            _ => stats_delta.is_empty(),
        };
        if !stats_ok {
            problems.push(format!(
                "grant stats deltas (grant, packets, bytes) {stats_delta:?}, grants that match {:?}",
                model.passed_by
            ));
        }
        problems
    }
}

#[test]
fn verdict_table() {
    let mut bench = Bench::new(zones(), grants(boot_ns()));
    let cases = table();
    let mut failures = Vec::new();
    let mut names = std::collections::HashSet::new();
    for case in &cases {
        assert!(
            names.insert(case.name.clone()),
            "duplicate case name {:?}",
            case.name
        );
        let problems = bench.check(case);
        if !problems.is_empty() {
            failures.push(format!(
                "{}\n  packet {}\n  {}",
                case.name,
                hex(&case.packet),
                problems.join("\n  ")
            ));
        }
    }
    for f in &failures {
        eprintln!("FAIL {f}");
    }
    println!(
        "verdict table: {} cases, {} failed ({} frames shorter than Ethernet refused by BPF_PROG_TEST_RUN, as a NIC drops runts)",
        cases.len(),
        failures.len(),
        bench.runts_refused
    );
    assert!(
        failures.is_empty(),
        "{} verdict cases failed",
        failures.len()
    );
    assert!(cases.len() >= 60, "only {} cases", cases.len());
}

#[test]
fn one_grant_opens_every_rule_of_one_flow() {
    // Two rules of one grant that share a (source, zone, protocol) key go
    // into one kernel set; installing the second must not drop the first.
    let grant = Grant {
        src: ALICE4.parse().unwrap(),
        rules: vec![
            rule("10.9.1.0/24", PROTO_TCP, 22, 22),
            rule("10.9.1.0/24", PROTO_TCP, 443, 443),
        ],
        expires_at_ns: boot_ns() + HOUR_NS,
    };
    let mut bench = Bench::new(zones(), vec![grant]);
    let failures: Vec<String> = [22, 443, 444]
        .into_iter()
        .map(|port| Case {
            name: format!("one grant, tcp port {port}"),
            packet: tcp4(ALICE4, HOST4, port).bytes(),
            expect: if port == 444 {
                Reason::DropNoGrant
            } else {
                Reason::PassGrant
            },
        })
        .filter_map(|case| {
            let problems = bench.check(&case);
            (!problems.is_empty()).then(|| format!("{}: {}", case.name, problems.join("; ")))
        })
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
}

// Host mode: the gate's own machine in a zone marked `host`, replies on the
// flows it started, and the egress tracker that records them.

const ZONE_HOST: u32 = 4;
/// The protected machine's own addresses.
const SELF4: &str = "10.50.0.1";
const SELF6: &str = "2001:db8:50::1";
/// Servers the machine talks to, and a spoofer elsewhere.
const PEER4: &str = "198.18.0.7";
const PEER6: &str = "2001:db8:77::7";
const SPOOF4: &str = "198.18.0.99";
const SPOOF6: &str = "2001:db8:77::99";
const IDLE_NS: u64 = 10_000_000_000;
const ECHO_ID: u16 = 0x4242;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address literal")
}

fn host_zones() -> Vec<(IpNet, u32)> {
    let mut zones = zones();
    zones.push((net("10.50.0.1/32"), ZONE_HOST));
    zones.push((net("2001:db8:50::1/128"), ZONE_HOST));
    zones
}

fn flow(local: &str, lport: u16, remote: &str, rport: u16, proto: u8, last: u64) -> TrackedFlow {
    TrackedFlow {
        local: ip(local),
        remote: ip(remote),
        proto,
        local_port: lport,
        remote_port: rport,
        last_seen_ns: last,
        outbound: true,
    }
}

/// A host zone holding flows the host started: fresh ones of every tracked
/// protocol, an idle one, a granted peer's UDP flow, and one whose local
/// address is in an ordinary zone (which must not matter).
fn host_policy(now: u64) -> Policy {
    let fresh = now - 1_000_000_000;
    let stale = now - 2 * IDLE_NS;
    let mut inbound = flow(SELF4, 5353, PEER4, 5353, PROTO_UDP, fresh);
    inbound.outbound = false;
    Policy {
        zones: host_zones(),
        grants: vec![Grant {
            src: ip(ALICE4),
            rules: vec![rule("10.50.0.1/32", PROTO_UDP, 53, 53)],
            expires_at_ns: now + HOUR_NS,
        }],
        host_zones: vec![ZONE_HOST],
        flows: vec![
            flow(SELF4, 40001, PEER4, 443, PROTO_TCP, fresh),
            flow(SELF6, 40001, PEER6, 22, PROTO_TCP, fresh),
            flow(SELF4, 40002, PEER4, 53, PROTO_UDP, fresh),
            flow(SELF6, 40002, PEER6, 53, PROTO_UDP, fresh),
            flow(SELF4, ECHO_ID, PEER4, 0, PROTO_ICMP, fresh),
            flow(SELF6, ECHO_ID, PEER6, 0, PROTO_ICMPV6, fresh),
            flow(SELF4, 40003, PEER4, 443, PROTO_TCP, stale),
            inbound,
            flow(HOST4, 40001, PEER4, 443, PROTO_TCP, fresh),
        ],
        idle: Idle {
            tcp_ns: IDLE_NS,
            udp_ns: IDLE_NS,
            icmp_ns: IDLE_NS,
        },
    }
}

fn track_entry(f: &TrackedFlow) -> (TrackKey, TrackValue) {
    (
        track_key(f.local, f.remote, f.local_port, f.remote_port, f.proto),
        TrackValue {
            last_seen_ns: f.last_seen_ns,
            direction: if f.outbound {
                TRACK_OUTBOUND
            } else {
                TRACK_INBOUND
            },
            _pad: 0,
        },
    )
}

fn track_key(local: IpAddr, remote: IpAddr, lport: u16, rport: u16, proto: u8) -> TrackKey {
    TrackKey {
        local: to16(local),
        remote: to16(remote),
        local_port: lport,
        remote_port: rport,
        proto,
        _pad: [0; 3],
    }
}

/// A TCP segment from `src:sport` to `dst:dport` with `flags`.
fn tcp(src: &str, sport: u16, dst: &str, dport: u16, flags: u8) -> Frame {
    Frame::ip(ip(src), ip(dst), L4::Tcp { dport })
        .sport(sport)
        .tcp_flags(flags)
}

fn udp(src: &str, sport: u16, dst: &str, dport: u16) -> Frame {
    Frame::ip(ip(src), ip(dst), L4::Udp { dport }).sport(sport)
}

fn echo(src: &str, dst: &str, ty: u8, id: u16) -> Frame {
    let l4 = if ip(src).is_ipv4() {
        L4::Icmp { ty }
    } else {
        L4::Icmpv6 { ty }
    };
    Frame::ip(ip(src), ip(dst), l4).icmp_id(id)
}

fn host_table() -> Vec<Case> {
    use Reason::*;
    let ack = TCP_ACK;
    let mut t = Vec::new();
    let mut case = |name: &str, frame: Frame, expect: Reason| {
        t.push(Case {
            name: name.into(),
            packet: frame.bytes(),
            expect,
        })
    };
    case(
        "host v4 tcp reply on a tracked flow",
        tcp(PEER4, 443, SELF4, 40001, ack | TCP_PSH),
        PassTracked,
    );
    case(
        "host v4 tcp syn-ack answering the host's syn",
        tcp(PEER4, 443, SELF4, 40001, TCP_SYN | ack),
        PassTracked,
    );
    case(
        "host v4 tcp syn on a tracked tuple opens a new connection",
        tcp(PEER4, 443, SELF4, 40001, TCP_SYN),
        DropNoGrant,
    );
    case(
        "host v4 tracked tuple from an unrelated source",
        tcp(SPOOF4, 443, SELF4, 40001, ack),
        DropNoGrant,
    );
    case(
        "host v4 tracked flow, another peer port",
        tcp(PEER4, 444, SELF4, 40001, ack),
        DropNoGrant,
    );
    case(
        "host v4 tracked flow, another local port",
        tcp(PEER4, 443, SELF4, 40009, ack),
        DropNoGrant,
    );
    case(
        "host v4 udp on a tcp flow's ports",
        udp(PEER4, 443, SELF4, 40001),
        DropNoGrant,
    );
    case(
        "host v4 tcp after the flow went idle",
        tcp(PEER4, 443, SELF4, 40003, ack),
        DropNoGrant,
    );
    case(
        "host v6 tcp reply on a tracked flow",
        tcp(PEER6, 22, SELF6, 40001, ack),
        PassTracked,
    );
    case(
        "host v6 tcp syn on a tracked tuple",
        tcp(PEER6, 22, SELF6, 40001, TCP_SYN),
        DropNoGrant,
    );
    case(
        "host v6 tracked tuple from an unrelated source",
        tcp(SPOOF6, 22, SELF6, 40001, ack),
        DropNoGrant,
    );
    case(
        "host v4 udp reply (dns)",
        udp(PEER4, 53, SELF4, 40002),
        PassTracked,
    );
    case(
        "host v4 udp tuple from an unrelated source",
        udp(SPOOF4, 53, SELF4, 40002),
        DropNoGrant,
    );
    case(
        "host v6 udp reply (dns)",
        udp(PEER6, 53, SELF6, 40002),
        PassTracked,
    );
    case(
        "host v4 a granted peer's udp flow is no exception",
        udp(PEER4, 5353, SELF4, 5353),
        DropNoGrant,
    );
    case(
        "host v4 echo reply to the host's ping",
        echo(PEER4, SELF4, 0, ECHO_ID),
        PassTracked,
    );
    case(
        "host v4 echo request with the tracked id",
        echo(PEER4, SELF4, 8, ECHO_ID),
        DropNoGrant,
    );
    case(
        "host v4 echo reply with another id",
        echo(PEER4, SELF4, 0, ECHO_ID + 1),
        DropNoGrant,
    );
    case(
        "host v4 echo reply from an unrelated source",
        echo(SPOOF4, SELF4, 0, ECHO_ID),
        DropNoGrant,
    );
    case(
        "host v4 icmp error is not matched to the flow",
        echo(PEER4, SELF4, 3, ECHO_ID),
        DropNoGrant,
    );
    case(
        "host v6 echo reply to the host's ping",
        echo(PEER6, SELF6, 129, ECHO_ID),
        PassTracked,
    );
    case(
        "host v6 echo request with the tracked id",
        echo(PEER6, SELF6, 128, ECHO_ID),
        DropNoGrant,
    );
    case(
        "host zone: an ordinary zone ignores the flow table",
        tcp(PEER4, 443, HOST4, 40001, ack),
        DropNoGrant,
    );
    case(
        "host zone: a grant still passes first",
        udp(ALICE4, 40000, SELF4, 53),
        PassGrant,
    );
    case(
        "host zone: a tracked reply in a vlan tag",
        tcp(PEER4, 443, SELF4, 40001, ack).vlan(ETH_P_8021Q),
        PassTracked,
    );
    case(
        "host zone: first fragment of a tracked reply",
        tcp(PEER4, 443, SELF4, 40001, ack).with_v4(|h| h.more_fragments = true),
        PassTracked,
    );
    case(
        "host zone: non-first fragment of a tracked flow",
        tcp(PEER4, 443, SELF4, 40001, ack).with_v4(|h| h.frag_offset = 4),
        DropFragment,
    );
    case(
        "host zone: neighbour discovery still passes",
        Frame::v6(v6(MALLORY6), v6(SELF6), L4::Icmpv6 { ty: 135 }).hop_limit(255),
        PassNeighbor,
    );
    t
}

#[test]
fn host_mode_verdict_table() {
    let mut bench = Bench::with_policy(host_policy(boot_ns()));
    let cases = host_table();
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|case| {
            let problems = bench.check(case);
            (!problems.is_empty()).then(|| {
                format!(
                    "{}\n  packet {}\n  {}",
                    case.name,
                    hex(&case.packet),
                    problems.join("\n  ")
                )
            })
        })
        .collect();
    for f in &failures {
        eprintln!("FAIL {f}");
    }
    println!(
        "host-mode verdict table: {} cases, {} failed",
        cases.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} host-mode cases failed",
        failures.len()
    );
}

const TC_ACT_OK: u32 = 0;

/// Runs the egress tracker on `frame` with an empty flow table (plus
/// `before`) and returns the table afterwards.
fn track_once(
    bench: &mut Bench,
    before: &[(TrackKey, TrackValue)],
    frame: &Frame,
) -> Vec<(TrackKey, TrackValue)> {
    bench.gate.clear_tracked_flows().expect("clearing flows");
    for (k, v) in before {
        bench
            .gate
            .insert_tracked_flow(*k, *v)
            .expect("writing a flow");
    }
    let packet = frame.bytes();
    let ret = bench
        .gate
        .tracker()
        .test_run(TestRunOptions {
            data_in: Some(&packet),
            ..TestRunOptions::new()
        })
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of the tracker on {}: {e}", hex(&packet)))
        .return_value;
    assert_eq!(ret, TC_ACT_OK, "the tracker never drops ({})", hex(&packet));
    bench.gate.tracked_flows().expect("reading flows")
}

/// What the tracker should leave in the table: one flow and its direction.
type Recorded = (TrackKey, u32);

#[test]
fn tracker_records_only_flows_the_host_starts() {
    let mut bench = Bench::with_policy(host_policy(boot_ns()));
    let key = |local: &str, lport, remote: &str, rport, proto| {
        track_key(ip(local), ip(remote), lport, rport, proto)
    };
    let out = Some(TRACK_OUTBOUND);
    let cases: Vec<(&str, Frame, Option<Recorded>)> = vec![
        (
            "v4 tcp syn opens a flow",
            tcp(SELF4, 40010, PEER4, 443, TCP_SYN),
            out.map(|d| (key(SELF4, 40010, PEER4, 443, PROTO_TCP), d)),
        ),
        (
            "v6 tcp syn opens a flow",
            tcp(SELF6, 40010, PEER6, 22, TCP_SYN),
            out.map(|d| (key(SELF6, 40010, PEER6, 22, PROTO_TCP), d)),
        ),
        (
            "v4 tcp ack creates nothing",
            tcp(SELF4, 40010, PEER4, 443, TCP_ACK),
            None,
        ),
        (
            "v4 tcp syn-ack (the host answering) creates nothing",
            tcp(SELF4, 22, PEER4, 40010, TCP_SYN | TCP_ACK),
            None,
        ),
        (
            "v4 udp datagram opens a flow",
            udp(SELF4, 40011, PEER4, 53),
            out.map(|d| (key(SELF4, 40011, PEER4, 53, PROTO_UDP), d)),
        ),
        (
            "v6 udp datagram opens a flow",
            udp(SELF6, 40011, PEER6, 53),
            out.map(|d| (key(SELF6, 40011, PEER6, 53, PROTO_UDP), d)),
        ),
        (
            "v4 udp answer to a granted peer is the peer's flow",
            udp(SELF4, 53, ALICE4, 40000),
            Some((key(SELF4, 53, ALICE4, 40000, PROTO_UDP), TRACK_INBOUND)),
        ),
        (
            "v4 udp from the same port to a peer without a grant",
            udp(SELF4, 53, MALLORY4, 40000),
            out.map(|d| (key(SELF4, 53, MALLORY4, 40000, PROTO_UDP), d)),
        ),
        (
            "v4 echo request opens a flow",
            echo(SELF4, PEER4, 8, 7),
            out.map(|d| (key(SELF4, 7, PEER4, 0, PROTO_ICMP), d)),
        ),
        (
            "v6 echo request opens a flow",
            echo(SELF6, PEER6, 128, 7),
            out.map(|d| (key(SELF6, 7, PEER6, 0, PROTO_ICMPV6), d)),
        ),
        (
            "v4 echo reply creates nothing",
            echo(SELF4, PEER4, 0, 7),
            None,
        ),
        (
            "v6 echo reply creates nothing",
            echo(SELF6, PEER6, 129, 7),
            None,
        ),
        (
            "v4 protocol 58 echo request creates nothing",
            Frame::v4(v4(SELF4), v4(PEER4), L4::Icmpv6 { ty: 128 }),
            None,
        ),
        (
            "source in an ordinary zone creates nothing",
            tcp(HOST4, 40010, PEER4, 443, TCP_SYN),
            None,
        ),
        (
            "unprotected source creates nothing",
            tcp(OPEN4, 40010, PEER4, 443, TCP_SYN),
            None,
        ),
        (
            "non-first fragment creates nothing",
            tcp(SELF4, 40010, PEER4, 443, TCP_SYN).with_v4(|h| h.frag_offset = 3),
            None,
        ),
        (
            "sctp is not tracked",
            Frame::v4(v4(SELF4), v4(PEER4), L4::Sctp { dport: 9 }),
            None,
        ),
        ("arp is not tracked", Frame::arp(), None),
    ];
    let mut failures = Vec::new();
    for (name, frame, expect) in &cases {
        let after = track_once(&mut bench, &[], frame);
        let got: Vec<(TrackKey, u32)> = after.iter().map(|(k, v)| (*k, v.direction)).collect();
        let want: Vec<(TrackKey, u32)> = expect.iter().copied().collect();
        if got != want {
            failures.push(format!("{name}: table {got:?}, expected {want:?}"));
        }
    }

    // Refreshing: only the host's packets move `last_seen_ns`.
    let old = |direction, last_seen_ns| TrackValue {
        last_seen_ns,
        direction,
        _pad: 0,
    };
    let k = key(SELF4, 40012, PEER4, 443, PROTO_TCP);
    let after = track_once(
        &mut bench,
        &[(k, old(TRACK_OUTBOUND, 1))],
        &tcp(SELF4, 40012, PEER4, 443, TCP_ACK),
    );
    if !matches!(after.as_slice(), [(key, v)] if *key == k && v.direction == TRACK_OUTBOUND && v.last_seen_ns > 1)
    {
        failures.push(format!(
            "an outbound ack did not refresh its flow: {after:?}"
        ));
    }
    let k = key(SELF4, 5353, PEER4, 5353, PROTO_UDP);
    let now = boot_ns();
    let after = track_once(
        &mut bench,
        &[(k, old(TRACK_INBOUND, now))],
        &udp(SELF4, 5353, PEER4, 5353),
    );
    if !matches!(after.as_slice(), [(key, v)] if *key == k && v.direction == TRACK_INBOUND) {
        failures.push(format!(
            "the host's answer turned a fresh granted flow into its own: {after:?}"
        ));
    }
    let after = track_once(
        &mut bench,
        &[(k, old(TRACK_INBOUND, 1))],
        &udp(SELF4, 5353, PEER4, 5353),
    );
    if !matches!(after.as_slice(), [(key, v)] if *key == k && v.direction == TRACK_OUTBOUND) {
        failures.push(format!(
            "a long-idle granted flow did not become the host's when it spoke first: {after:?}"
        ));
    }
    assert!(failures.is_empty(), "{failures:#?}");
    println!(
        "tracker table: {} creation cases and 3 refresh cases passed",
        cases.len()
    );
}

#[test]
fn a_tracked_flow_closes_when_the_host_falls_silent() {
    // The whole path on the real programs: the tracker sees the host's
    // syn, the gate passes the reply, then the flow goes idle.
    let mut policy = host_policy(boot_ns());
    policy.flows.clear();
    policy.idle = Idle {
        tcp_ns: 1_000_000_000,
        udp_ns: 1_000_000_000,
        icmp_ns: 1_000_000_000,
    };
    let mut bench = Bench::with_policy(policy);
    let syn = tcp(SELF4, 40020, PEER4, 443, TCP_SYN).bytes();
    let reply = tcp(PEER4, 443, SELF4, 40020, TCP_SYN | TCP_ACK).bytes();
    let run_gate = |bench: &mut Bench| {
        bench
            .gate
            .xdp()
            .test_run(TestRunOptions {
                data_in: Some(&reply),
                ..TestRunOptions::new()
            })
            .expect("BPF_PROG_TEST_RUN")
            .return_value
    };
    assert_eq!(
        run_gate(&mut bench),
        XDP_DROP,
        "reply before the host spoke"
    );
    bench
        .gate
        .tracker()
        .test_run(TestRunOptions {
            data_in: Some(&syn),
            ..TestRunOptions::new()
        })
        .expect("BPF_PROG_TEST_RUN of the tracker");
    assert_eq!(run_gate(&mut bench), XDP_PASS, "reply to the host's syn");
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        run_gate(&mut bench),
        XDP_DROP,
        "reply after the flow was idle for longer than its timeout"
    );
}
