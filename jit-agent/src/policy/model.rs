//! The validated policy. A [`Policy`] only comes out of validation, so every
//! reference in it resolves and every value is in range.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::window::Schedule;

/// A zone's small numeric id, as the kernel counts it: 1 to 255.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct ZoneId(u8);

impl TryFrom<u8> for ZoneId {
    type Error = &'static str;

    fn try_from(id: u8) -> Result<ZoneId, Self::Error> {
        ZoneId::new(id).ok_or("zone id 0 is reserved for \"no zone\"")
    }
}

impl From<ZoneId> for u8 {
    fn from(id: ZoneId) -> u8 {
        id.0
    }
}

impl ZoneId {
    /// The id; never 0, which the data plane keeps for "no zone".
    pub fn get(self) -> u8 {
        self.0
    }

    pub(crate) fn new(id: u8) -> Option<ZoneId> {
        (id != 0).then_some(ZoneId(id))
    }
}

impl fmt::Display for ZoneId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An IP protocol a target allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Every protocol.
    Any,
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
    /// SCTP (132).
    Sctp,
    /// ICMP (1), IPv4 only.
    Icmp,
    /// ICMPv6 (58), IPv6 only.
    Icmpv6,
    /// Another protocol by number; never one of the named ones, nor 0.
    Other(u8),
}

impl Protocol {
    /// The IP protocol number; `None` for [`Protocol::Any`].
    pub fn number(self) -> Option<u8> {
        match self {
            Protocol::Any => None,
            Protocol::Tcp => Some(6),
            Protocol::Udp => Some(17),
            Protocol::Sctp => Some(132),
            Protocol::Icmp => Some(1),
            Protocol::Icmpv6 => Some(58),
            Protocol::Other(n) => Some(n),
        }
    }

    /// The named protocol for a number, so that `6` and `tcp` are the same.
    pub fn from_number(n: u8) -> Protocol {
        match n {
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            132 => Protocol::Sctp,
            1 => Protocol::Icmp,
            58 => Protocol::Icmpv6,
            n => Protocol::Other(n),
        }
    }

    /// Whether traffic of this protocol has ports the gate can match.
    pub fn has_ports(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Udp | Protocol::Sctp)
    }

    /// Whether the protocol exists for prefixes of this family.
    pub fn applies_to(self, net: &IpNet) -> bool {
        match self {
            Protocol::Icmp => matches!(net, IpNet::V4(_)),
            Protocol::Icmpv6 => matches!(net, IpNet::V6(_)),
            _ => true,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protocol::Any => f.write_str("any"),
            Protocol::Tcp => f.write_str("tcp"),
            Protocol::Udp => f.write_str("udp"),
            Protocol::Sctp => f.write_str("sctp"),
            Protocol::Icmp => f.write_str("icmp"),
            Protocol::Icmpv6 => f.write_str("icmpv6"),
            Protocol::Other(n) => write!(f, "{n}"),
        }
    }
}

/// An inclusive range of ports, `start <= end`, both at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortRange {
    /// First port.
    pub start: u16,
    /// Last port, inclusive.
    pub end: u16,
}

impl PortRange {
    /// Whether `port` is in the range.
    pub fn contains(self, port: u16) -> bool {
        self.start <= port && port <= self.end
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

/// One destination rule a target expands to: traffic to `dst` with
/// `protocol` and, for port protocols, a destination port in `ports`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Rule {
    /// The zone `dst` lies in.
    pub zone: ZoneId,
    /// Destination prefix.
    pub dst: IpNet,
    /// Protocol.
    pub protocol: Protocol,
    /// Destination ports; `None` for protocols without ports.
    pub ports: Option<PortRange>,
}

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// Native (driver) XDP; fails if the driver lacks it.
    Driver,
    /// Generic (skb) XDP; works everywhere, slower.
    Generic,
    /// Driver mode, falling back to generic.
    Auto,
}

/// A group by name or number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum GroupRef {
    /// A group name, resolved when the socket is created.
    Name(String),
    /// A gid.
    Gid(u32),
}

/// `[gate.api]`: the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiSettings {
    /// Socket path.
    pub socket: PathBuf,
    /// Group owning the socket; `None` keeps the agent's group.
    pub group: Option<GroupRef>,
    /// Permission bits of the socket, never giving access to others.
    pub mode: u32,
}

/// `[gate]`: how the agent runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GateSettings {
    /// Interfaces to attach to; at least one, no repeats.
    pub interfaces: Vec<String>,
    /// XDP attach mode.
    pub attach_mode: AttachMode,
    /// Where programs and maps are pinned.
    pub bpffs_dir: PathBuf,
    /// Where the state store and audit log live.
    pub state_dir: PathBuf,
    /// API socket settings.
    pub api: ApiSettings,
    /// Prometheus listen address.
    pub metrics_listen: SocketAddr,
    /// Capacity of the kernel grant map, in entries.
    pub map_capacity: u32,
    /// How long a request may wait for approval.
    #[serde(with = "super::duration::serde_text")]
    pub pending_ttl: Duration,
    /// Host mode: how long a flow a host zone started stays open to its
    /// replies after the host's last packet on it, per protocol.
    pub host_idle: HostIdle,
}

/// Idle timeouts of flows the protected host starts (host mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HostIdle {
    /// `host_tcp_idle`.
    #[serde(with = "super::duration::serde_text")]
    pub tcp: Duration,
    /// `host_udp_idle`.
    #[serde(with = "super::duration::serde_text")]
    pub udp: Duration,
    /// `host_icmp_idle` (ICMP and ICMPv6 echo).
    #[serde(with = "super::duration::serde_text")]
    pub icmp: Duration,
}

/// Defaults for `[gate]`, as documented in `policies/REFERENCE.md`.
pub mod defaults {
    use std::time::Duration;

    /// `attach_mode`.
    pub const ATTACH_MODE: &str = "auto";
    /// `bpffs_dir`.
    pub const BPFFS_DIR: &str = "/sys/fs/bpf/jitgate";
    /// `state_dir`.
    pub const STATE_DIR: &str = "/var/lib/jitgate";
    /// `api.socket`.
    pub const API_SOCKET: &str = "/run/jitgate/api.sock";
    /// `api.mode`.
    pub const API_MODE: u32 = 0o660;
    /// `metrics_listen`.
    pub const METRICS_LISTEN: &str = "127.0.0.1:9477";
    /// `map_capacity`.
    pub const MAP_CAPACITY: u32 = 1 << 20;
    /// Largest `map_capacity`: beyond this the map's kernel memory is
    /// gigabytes.
    pub const MAX_MAP_CAPACITY: u32 = 1 << 24;
    /// `pending_ttl`.
    pub const PENDING_TTL: Duration = Duration::from_secs(3600);
    /// `host_tcp_idle`.
    pub const HOST_TCP_IDLE: Duration =
        Duration::from_secs(jit_common::track::DEFAULT_TCP_IDLE_SECS);
    /// `host_udp_idle`.
    pub const HOST_UDP_IDLE: Duration =
        Duration::from_secs(jit_common::track::DEFAULT_UDP_IDLE_SECS);
    /// `host_icmp_idle`.
    pub const HOST_ICMP_IDLE: Duration =
        Duration::from_secs(jit_common::track::DEFAULT_ICMP_IDLE_SECS);
}

/// `[zones.NAME]`: protected prefixes. Zones never overlap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Zone {
    /// Name.
    pub name: String,
    /// Numeric id for the kernel.
    pub id: ZoneId,
    /// Prefixes, disjoint.
    pub prefixes: Vec<IpNet>,
    /// The prefixes are the protected machine's own addresses (host mode):
    /// replies on flows it starts pass without a grant.
    pub host: bool,
}

/// `[targets.NAME]`: something a role may reach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    /// Name.
    pub name: String,
    /// The zone the target named, if it named one.
    pub zone: Option<String>,
    /// Protocol.
    pub protocol: Protocol,
    /// Port ranges, sorted and merged; empty for protocols without ports.
    pub ports: Vec<PortRange>,
    /// Destination rules: every (prefix, port range) pair.
    pub rules: Vec<Rule>,
}

/// A role's approval requirement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Approval {
    /// Holders of these roles who are marked `approver` may approve.
    pub approver_roles: Vec<String>,
    /// Distinct approvals needed, at least 1.
    pub approvals_needed: u32,
}

/// `[roles.NAME]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Role {
    /// Name.
    pub name: String,
    /// Targets the role reaches.
    pub targets: Vec<String>,
    /// Longest a grant may last, counted from activation, extensions included.
    #[serde(with = "super::duration::serde_text")]
    pub max_duration: Duration,
    /// Duration when the request names none; at most `max_duration`.
    #[serde(with = "super::duration::serde_text")]
    pub default_duration: Duration,
    /// `None` when grants need no approval.
    pub approval: Option<Approval>,
    /// Whether a request must carry a reason or ticket.
    pub reason_required: bool,
    /// When the role may be used; grants are cut at a window's end.
    pub windows: Schedule,
}

impl Role {
    /// Whether the role reaches `target`.
    pub fn reaches(&self, target: &str) -> bool {
        self.targets.iter().any(|t| t == target)
    }
}

/// A local Unix account identifying a user.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum UnixAccount {
    /// By login name.
    Name(String),
    /// By uid.
    Uid(u32),
}

impl fmt::Display for UnixAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnixAccount::Name(n) => f.write_str(n),
            UnixAccount::Uid(u) => write!(f, "uid {u}"),
        }
    }
}

/// `[users.NAME]`: a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    /// Name.
    pub name: String,
    /// Accounts identifying the user; each identifies only this user.
    pub accounts: Vec<UnixAccount>,
    /// Roles held, defined, in file order.
    pub roles: Vec<String>,
    /// Where the user may hold grants from.
    pub source_prefixes: Vec<IpNet>,
    /// May grant directly, revoke anything and reload the policy.
    pub admin: bool,
    /// May approve, for roles whose approver_roles they hold.
    pub approver: bool,
}

impl User {
    /// Whether the user holds `role`.
    pub fn holds(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// Whether `addr` lies in the user's source prefixes.
    pub fn may_connect_from(&self, addr: IpAddr) -> bool {
        self.source_prefixes.iter().any(|p| p.contains(&addr))
    }
}

/// A validated policy.
#[derive(Debug, Clone, Serialize)]
pub struct Policy {
    pub(crate) gate: GateSettings,
    /// Sorted by id.
    pub(crate) zones: Vec<Zone>,
    pub(crate) targets: BTreeMap<String, Target>,
    pub(crate) roles: BTreeMap<String, Role>,
    pub(crate) users: BTreeMap<String, User>,
    #[serde(skip)]
    pub(crate) by_uid: HashMap<u32, String>,
    #[serde(skip)]
    pub(crate) by_login: HashMap<String, String>,
    /// Zone prefixes as sorted, disjoint address intervals, for `zone_of`.
    #[serde(skip)]
    pub(crate) zone_index: Vec<(bool, u128, u128, usize)>,
    pub(crate) sources: Vec<PathBuf>,
    pub(crate) digest: String,
}

fn addr_bits(addr: IpAddr) -> (bool, u128) {
    match addr {
        IpAddr::V4(a) => (false, u128::from(u32::from(a))),
        IpAddr::V6(a) => (true, u128::from(a)),
    }
}

pub(crate) fn net_interval(net: &IpNet) -> (bool, u128, u128) {
    let (v6, start) = addr_bits(net.network());
    let (_, end) = addr_bits(net.broadcast());
    (v6, start, end)
}

impl Policy {
    /// `[gate]` settings.
    pub fn gate(&self) -> &GateSettings {
        &self.gate
    }

    /// Zones, by id.
    pub fn zones(&self) -> &[Zone] {
        &self.zones
    }

    /// A zone by name.
    pub fn zone(&self, name: &str) -> Option<&Zone> {
        self.zones.iter().find(|z| z.name == name)
    }

    /// A zone by id.
    pub fn zone_by_id(&self, id: ZoneId) -> Option<&Zone> {
        self.zones.iter().find(|z| z.id == id)
    }

    /// The zone an address lies in, if any.
    pub fn zone_of(&self, addr: IpAddr) -> Option<&Zone> {
        let (v6, bits) = addr_bits(addr);
        let i = self
            .zone_index
            .partition_point(|&(f, start, _, _)| (f, start) <= (v6, bits));
        let &(f, start, end, zone) = self.zone_index.get(i.checked_sub(1)?)?;
        (f == v6 && start <= bits && bits <= end).then(|| &self.zones[zone])
    }

    /// Targets, by name.
    pub fn targets(&self) -> impl Iterator<Item = &Target> {
        self.targets.values()
    }

    /// A target by name.
    pub fn target(&self, name: &str) -> Option<&Target> {
        self.targets.get(name)
    }

    /// The rules a target expands to.
    pub fn rules_of(&self, target: &str) -> Option<&[Rule]> {
        self.targets.get(target).map(|t| t.rules.as_slice())
    }

    /// Roles, by name.
    pub fn roles(&self) -> impl Iterator<Item = &Role> {
        self.roles.values()
    }

    /// A role by name.
    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.get(name)
    }

    /// Users, by name.
    pub fn users(&self) -> impl Iterator<Item = &User> {
        self.users.values()
    }

    /// A user by policy name.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    /// The user who listed this uid in `accounts`.
    pub fn user_by_uid(&self, uid: u32) -> Option<&User> {
        self.by_uid.get(&uid).and_then(|n| self.users.get(n))
    }

    /// The user who listed this login name in `accounts`.
    pub fn user_by_login(&self, login: &str) -> Option<&User> {
        self.by_login.get(login).and_then(|n| self.users.get(n))
    }

    /// The user behind a connecting peer, given its uid and the login name
    /// the system has for that uid. When the uid and the name point to two
    /// different users the answer is `None`: an ambiguous identity is
    /// refused rather than guessed.
    pub fn user_for_peer(&self, uid: u32, login: Option<&str>) -> Option<&User> {
        let by_uid = self.user_by_uid(uid);
        let by_name = login.and_then(|l| self.user_by_login(l));
        match (by_uid, by_name) {
            (Some(a), Some(b)) if a.name != b.name => None,
            (Some(a), _) => Some(a),
            (None, b) => b,
        }
    }

    /// The user's roles that reach `target`, in the user's order.
    pub fn roles_reaching<'a>(
        &'a self,
        user: &'a User,
        target: &'a str,
    ) -> impl Iterator<Item = &'a Role> + 'a {
        user.roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .filter(move |r| r.reaches(target))
    }

    /// Whether `user` may approve requests for `role`: they must be marked
    /// `approver = true` *and* hold one of the role's approver_roles. Nobody
    /// may approve a role that needs no approval. (That the requester never
    /// approves their own request is the grant lifecycle's rule.)
    pub fn can_approve(&self, user: &User, role: &Role) -> bool {
        user.approver
            && role
                .approval
                .as_ref()
                .is_some_and(|a| a.approver_roles.iter().any(|r| user.holds(r)))
    }

    /// Every user who may approve `role`, by name.
    pub fn approvers_of<'a>(&'a self, role: &'a Role) -> impl Iterator<Item = &'a User> + 'a {
        self.users
            .values()
            .filter(move |u| self.can_approve(u, role))
    }

    /// The files the policy was read from.
    pub fn sources(&self) -> &[PathBuf] {
        &self.sources
    }

    /// SHA-256 over the policy's files, for audit records of reloads.
    pub fn digest(&self) -> &str {
        &self.digest
    }
}
