//! Stage two: raw structs to a [`Policy`], checking every value and every
//! reference, and reporting all problems rather than the first.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use chrono_tz::Tz;
use ipnet::IpNet;
use sha2::{Digest, Sha256};

use super::duration::{format_duration, parse_duration};
use super::error::{suggest, Diagnostics, ErrorKind, PortProblem};
use super::model::{
    defaults, net_interval, ApiSettings, Approval, AttachMode, GateSettings, GroupRef, HostIdle,
    Policy, PortRange, Protocol, Role, Rule, Target, UnixAccount, User, Zone, ZoneId,
};
use super::raw::{
    List, RawApi, RawFile, RawGate, RawRole, RawTarget, RawUser, RawWindow, RawZone, Scalar, Sp,
};
use super::source::{SourceFile, Span};
use super::window::{Days, Schedule, TimeOfDay, Window, DAY_NAMES};

/// Most rules one target may expand to; each becomes a kernel map entry per
/// grant.
pub const MAX_RULES_PER_TARGET: usize = 1024;
/// Most windows per role.
pub const MAX_WINDOWS: usize = 64;
/// Most distinct approvals a role may require.
pub const MAX_APPROVALS: i64 = 32;
/// Most zones: the kernel's zone id is 8 bits and 0 means "no zone".
pub const MAX_ZONES: usize = 255;

pub(crate) fn validate(
    files: &[SourceFile],
    raws: Vec<RawFile>,
    diags: &mut Diagnostics,
) -> Option<Policy> {
    let merged = merge(raws, diags);
    let mut v = Validator {
        diags,
        zone_names: merged.zones.keys().cloned().collect(),
        target_names: merged.targets.keys().cloned().collect(),
        role_names: merged.roles.keys().cloned().collect(),
    };

    let gate = match &merged.gate {
        Some(g) => v.gate(g),
        None => {
            if !merged.broken.iter().any(|k| k == "gate") {
                let path = files.first().map_or_else(PathBuf::new, |f| f.path.clone());
                v.diags.on_path(&path, ErrorKind::NoGate);
            }
            None
        }
    };
    if merged.zones.is_empty() && !merged.broken.iter().any(|k| k == "zones") {
        let path = files.first().map_or_else(PathBuf::new, |f| f.path.clone());
        v.diags.on_path(&path, ErrorKind::NoZones);
    }
    let zones = v.zones(&merged.zones);
    let index = ZoneIndex::new(&zones);
    let targets: BTreeMap<String, Target> = merged
        .targets
        .values()
        .filter_map(|t| v.target(t, &zones, &index))
        .map(|t| (t.name.clone(), t))
        .collect();
    let roles: Vec<CheckedRole> = merged.roles.values().filter_map(|r| v.role(r)).collect();
    let users: Vec<CheckedUser> = merged
        .users
        .values()
        .filter_map(|u| v.user(u, &roles))
        .collect();
    v.cross_check(&roles, &users);

    if !v.diags.is_empty() {
        return None;
    }
    let gate = gate?;
    let mut by_uid = HashMap::new();
    let mut by_login = HashMap::new();
    for u in &users {
        for a in &u.user.accounts {
            match a {
                UnixAccount::Uid(uid) => by_uid.insert(*uid, u.user.name.clone()),
                UnixAccount::Name(n) => by_login.insert(n.clone(), u.user.name.clone()),
            };
        }
    }
    let mut digest = Sha256::new();
    for f in files {
        digest.update(f.path.to_string_lossy().as_bytes());
        digest.update([0]);
        digest.update(f.text.as_bytes());
        digest.update([0]);
    }
    Some(Policy {
        gate,
        zone_index: index
            .entries
            .iter()
            .map(|e| (e.v6, e.start, e.end, e.zone))
            .collect(),
        zones: zones.into_iter().map(|z| z.zone).collect(),
        targets,
        roles: roles
            .into_iter()
            .map(|r| (r.role.name.clone(), r.role))
            .collect(),
        users: users
            .into_iter()
            .map(|u| (u.user.name.clone(), u.user))
            .collect(),
        by_uid,
        by_login,
        sources: files.iter().map(|f| f.path.clone()).collect(),
        digest: hex::encode(digest.finalize()),
    })
}

/// All files' sections, keyed by name. Names are global: the same name in
/// two files is an error pointing at both.
struct Merged {
    /// Top-level keys present but broken, in any file.
    broken: Vec<String>,
    gate: Option<RawGate>,
    zones: BTreeMap<String, RawZone>,
    targets: BTreeMap<String, RawTarget>,
    roles: BTreeMap<String, RawRole>,
    users: BTreeMap<String, RawUser>,
}

fn merge(raws: Vec<RawFile>, diags: &mut Diagnostics) -> Merged {
    fn insert<T>(
        map: &mut BTreeMap<String, T>,
        item: T,
        name: &Sp<String>,
        first_span: impl Fn(&T) -> Span,
        what: &'static str,
        diags: &mut Diagnostics,
    ) {
        if !valid_name(&name.value) {
            diags.at(
                name.span,
                ErrorKind::InvalidName {
                    what,
                    name: shorten(&name.value),
                },
            );
            return;
        }
        match map.get(&name.value) {
            Some(first) => diags.at_with(
                name.span,
                ErrorKind::Duplicate {
                    what,
                    name: name.value.clone(),
                },
                first_span(first),
            ),
            None => {
                map.insert(name.value.clone(), item);
            }
        }
    }

    let mut m = Merged {
        broken: Vec::new(),
        gate: None,
        zones: BTreeMap::new(),
        targets: BTreeMap::new(),
        roles: BTreeMap::new(),
        users: BTreeMap::new(),
    };
    for raw in raws {
        m.broken.extend(raw.broken);
        if let Some(g) = raw.gate {
            match &m.gate {
                Some(first) => diags.at_with(
                    g.span,
                    ErrorKind::Duplicate {
                        what: "section",
                        name: "gate".into(),
                    },
                    first.span,
                ),
                None => m.gate = Some(g),
            }
        }
        for z in raw.zones {
            let name = z.name.clone();
            insert(&mut m.zones, z, &name, |f| f.name.span, "zone", diags);
        }
        for t in raw.targets {
            let name = t.name.clone();
            insert(&mut m.targets, t, &name, |f| f.name.span, "target", diags);
        }
        for r in raw.roles {
            let name = r.name.clone();
            insert(&mut m.roles, r, &name, |f| f.name.span, "role", diags);
        }
        for u in raw.users {
            let name = u.name.clone();
            insert(&mut m.users, u, &name, |f| f.name.span, "user", diags);
        }
    }
    m
}

/// Names appear in commands, logs and metric labels, so they are kept plain.
fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn shorten(s: &str) -> String {
    let mut out: String = s.chars().take(64).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

struct CheckedZone {
    zone: Zone,
    prefix_spans: Vec<Span>,
}

struct CheckedRole {
    role: Role,
    name_span: Span,
    /// Span of `approvals_needed`, or of the approval table.
    approval_span: Option<Span>,
}

struct CheckedUser {
    user: User,
    name_span: Span,
    /// Span of each entry of `roles`, in order.
    role_spans: Vec<Span>,
    /// Span of each account, in order.
    account_spans: Vec<Span>,
    approver_span: Option<Span>,
}

/// Zone prefixes as sorted address intervals.
struct ZoneIndex {
    entries: Vec<ZoneEntry>,
}

#[derive(Clone, Copy)]
struct ZoneEntry {
    v6: bool,
    start: u128,
    end: u128,
    /// Index into the zone list.
    zone: usize,
    net: IpNet,
    span: Span,
}

impl ZoneIndex {
    fn new(zones: &[CheckedZone]) -> ZoneIndex {
        let mut entries: Vec<ZoneEntry> = zones
            .iter()
            .enumerate()
            .flat_map(|(zi, z)| {
                z.zone
                    .prefixes
                    .iter()
                    .zip(&z.prefix_spans)
                    .map(move |(net, span)| {
                        let (v6, start, end) = net_interval(net);
                        ZoneEntry {
                            v6,
                            start,
                            end,
                            zone: zi,
                            net: *net,
                            span: *span,
                        }
                    })
            })
            .collect();
        entries.sort_by_key(|e| (e.v6, e.start, std::cmp::Reverse(e.end)));
        ZoneIndex { entries }
    }

    /// The zone prefix containing `net`, or failing that one it overlaps.
    fn find(&self, net: &IpNet) -> Result<&ZoneEntry, Option<&ZoneEntry>> {
        let (v6, start, end) = net_interval(net);
        let i = self
            .entries
            .partition_point(|e| (e.v6, e.start) <= (v6, start));
        if let Some(e) = i.checked_sub(1).map(|j| &self.entries[j]) {
            if e.v6 == v6 && e.start <= start && end <= e.end {
                return Ok(e);
            }
            if e.v6 == v6 && e.end >= start {
                return Err(Some(e));
            }
        }
        match self.entries.get(i) {
            Some(e) if e.v6 == v6 && e.start <= end => Err(Some(e)),
            _ => Err(None),
        }
    }
}

struct Validator<'d> {
    diags: &'d mut Diagnostics,
    zone_names: Vec<String>,
    target_names: Vec<String>,
    role_names: Vec<String>,
}

impl Validator<'_> {
    /// Reports a missing key, unless the key is there but broken (and has
    /// its own error already).
    fn missing(&mut self, broken: &[String], span: Span, kind: ErrorKind) {
        if let ErrorKind::MissingKey { key, .. } = &kind {
            if broken.contains(key) {
                return;
            }
        }
        self.diags.at(span, kind);
    }

    fn undefined(
        &mut self,
        span: Span,
        what: &'static str,
        name: &str,
        context: &str,
        defined: &[String],
    ) {
        let suggestion = if self.diags.wants_more() {
            suggest(name, defined.iter().map(String::as_str))
        } else {
            None
        };
        self.diags.at(
            span,
            ErrorKind::Undefined {
                what,
                name: shorten(name),
                context: context.to_owned(),
                suggestion,
            },
        );
    }

    /// Reports repeated entries of a list and returns the distinct ones.
    fn distinct<'a>(
        &mut self,
        list: &'a List<String>,
        key: &str,
        context: &str,
    ) -> Vec<&'a Sp<String>> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for item in &list.value {
            if seen.insert(item.value.as_str()) {
                out.push(item);
            } else {
                self.diags.at(
                    item.span,
                    ErrorKind::DuplicateEntry {
                        value: shorten(&item.value),
                        key: key.to_owned(),
                        context: context.to_owned(),
                    },
                );
            }
        }
        out
    }

    fn limit<T>(&mut self, list: &List<T>, key: &str, context: &str, limit: usize) -> bool {
        if list.value.len() > limit {
            self.diags.at(
                list.span,
                ErrorKind::TooManyEntries {
                    key: key.to_owned(),
                    context: context.to_owned(),
                    count: list.value.len(),
                    limit,
                },
            );
            return false;
        }
        true
    }

    fn duration(&mut self, sp: &Sp<String>, key: &str, context: &str) -> Option<Duration> {
        match parse_duration(&sp.value) {
            Ok(d) => Some(d),
            Err(problem) => {
                self.diags.at(
                    sp.span,
                    ErrorKind::InvalidDuration {
                        key: key.to_owned(),
                        context: context.to_owned(),
                        value: shorten(&sp.value),
                        problem,
                    },
                );
                None
            }
        }
    }

    fn absolute_path(
        &mut self,
        sp: Option<&Sp<String>>,
        key: &str,
        context: &str,
        default: &str,
    ) -> Option<PathBuf> {
        let Some(sp) = sp else {
            return Some(PathBuf::from(default));
        };
        if sp.value.starts_with('/') && !sp.value.contains('\0') {
            Some(PathBuf::from(&sp.value))
        } else {
            self.diags.at(
                sp.span,
                ErrorKind::RelativePath {
                    key: key.to_owned(),
                    context: context.to_owned(),
                    value: shorten(&sp.value),
                },
            );
            None
        }
    }

    fn gate(&mut self, g: &RawGate) -> Option<GateSettings> {
        let c = "[gate]";
        let mut ok = true;
        let mut interfaces = Vec::new();
        match &g.interfaces {
            None => {
                self.missing(
                    &g.broken,
                    g.span,
                    ErrorKind::MissingKey {
                        key: "interfaces".into(),
                        context: c.into(),
                        example: "interfaces = [\"eth0\"]".into(),
                    },
                );
                ok = false;
            }
            Some(list) if list.value.is_empty() => {
                self.diags.at(
                    list.span,
                    ErrorKind::EmptyList {
                        key: "interfaces".into(),
                        context: c.into(),
                        example: "interfaces = [\"eth0\"]".into(),
                    },
                );
                ok = false;
            }
            Some(list) => {
                ok &= self.limit(list, "interfaces", c, 64);
                for name in self.distinct(list, "interfaces", c) {
                    match interface_problem(&name.value) {
                        None => interfaces.push(name.value.clone()),
                        Some(reason) => {
                            self.diags.at(
                                name.span,
                                ErrorKind::InvalidInterface {
                                    name: shorten(&name.value),
                                    reason,
                                },
                            );
                            ok = false;
                        }
                    }
                }
            }
        }
        let attach_mode = match &g.attach_mode {
            None => Some(AttachMode::Auto),
            Some(sp) => match sp.value.as_str() {
                "driver" => Some(AttachMode::Driver),
                "generic" => Some(AttachMode::Generic),
                "auto" => Some(AttachMode::Auto),
                other => {
                    let allowed = ["driver", "generic", "auto"];
                    // The kernel and other tools call these modes by other names.
                    let suggestion = match other.to_ascii_lowercase().as_str() {
                        "native" | "drv" | "drvmode" => Some("driver".to_owned()),
                        "skb" | "skbmode" => Some("generic".to_owned()),
                        o => suggest(o, allowed),
                    };
                    self.diags.at(
                        sp.span,
                        ErrorKind::UnknownValue {
                            key: "attach_mode".into(),
                            context: c.into(),
                            value: shorten(other),
                            allowed: allowed.iter().map(|s| (*s).to_owned()).collect(),
                            suggestion,
                        },
                    );
                    None
                }
            },
        };
        let bpffs_dir =
            self.absolute_path(g.bpffs_dir.as_ref(), "bpffs_dir", c, defaults::BPFFS_DIR);
        let state_dir =
            self.absolute_path(g.state_dir.as_ref(), "state_dir", c, defaults::STATE_DIR);
        let metrics_listen = match &g.metrics_listen {
            None => defaults::METRICS_LISTEN.parse::<SocketAddr>().ok(),
            Some(sp) => match sp.value.trim().parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    self.diags.at(
                        sp.span,
                        ErrorKind::InvalidSocketAddr {
                            key: "metrics_listen".into(),
                            context: c.into(),
                            value: shorten(&sp.value),
                        },
                    );
                    None
                }
            },
        };
        let map_capacity = match &g.map_capacity {
            None => Some(defaults::MAP_CAPACITY),
            Some(sp) if (1..=i64::from(defaults::MAX_MAP_CAPACITY)).contains(&sp.value) => {
                u32::try_from(sp.value).ok()
            }
            Some(sp) => {
                self.diags.at(
                    sp.span,
                    ErrorKind::OutOfRange {
                        key: "map_capacity".into(),
                        context: c.into(),
                        value: sp.value.to_string(),
                        min: "1".into(),
                        max: defaults::MAX_MAP_CAPACITY.to_string(),
                        why: "every entry takes kernel memory",
                    },
                );
                None
            }
        };
        let pending_ttl = match &g.pending_ttl {
            None => Some(defaults::PENDING_TTL),
            Some(sp) => self.duration(sp, "pending_ttl", c),
        };
        let mut idle = |sp: &Option<Sp<String>>, key: &str, default: Duration| match sp {
            None => Some(default),
            Some(sp) => self.duration(sp, key, c),
        };
        let host_tcp_idle = idle(&g.host_tcp_idle, "host_tcp_idle", defaults::HOST_TCP_IDLE);
        let host_udp_idle = idle(&g.host_udp_idle, "host_udp_idle", defaults::HOST_UDP_IDLE);
        let host_icmp_idle = idle(
            &g.host_icmp_idle,
            "host_icmp_idle",
            defaults::HOST_ICMP_IDLE,
        );
        let api = self.api(g.api.as_ref());
        Some(GateSettings {
            interfaces: ok.then_some(interfaces)?,
            attach_mode: attach_mode?,
            bpffs_dir: bpffs_dir?,
            state_dir: state_dir?,
            api: api?,
            metrics_listen: metrics_listen?,
            map_capacity: map_capacity?,
            pending_ttl: pending_ttl?,
            host_idle: HostIdle {
                tcp: host_tcp_idle?,
                udp: host_udp_idle?,
                icmp: host_icmp_idle?,
            },
        })
    }

    fn api(&mut self, api: Option<&RawApi>) -> Option<ApiSettings> {
        let c = "[gate.api]";
        let Some(api) = api else {
            return Some(ApiSettings {
                socket: PathBuf::from(defaults::API_SOCKET),
                group: None,
                mode: defaults::API_MODE,
            });
        };
        let socket = self.absolute_path(api.socket.as_ref(), "socket", c, defaults::API_SOCKET);
        let group = match &api.group {
            None => Some(None),
            Some(sp) => {
                let g = match &sp.value {
                    Scalar::Int(i) => uid_or_gid(*i).map(GroupRef::Gid),
                    Scalar::Str(s) if s.bytes().all(|b| b.is_ascii_digit()) && !s.is_empty() => s
                        .parse::<i64>()
                        .ok()
                        .and_then(uid_or_gid)
                        .map(GroupRef::Gid),
                    Scalar::Str(s) => login_problem(s)
                        .is_none()
                        .then(|| GroupRef::Name(s.clone())),
                };
                if g.is_none() {
                    self.diags.at(
                        sp.span,
                        ErrorKind::InvalidGroup {
                            value: shorten(&sp.value.to_string()),
                        },
                    );
                }
                g.map(Some)
            }
        };
        let mode = match &api.mode {
            None => Some(defaults::API_MODE),
            Some(sp) => {
                let (value, written) = &sp.value;
                let parsed = match value {
                    Scalar::Int(i) => u32::try_from(*i).ok().filter(|m| *m <= 0o777),
                    Scalar::Str(s) => {
                        let digits = s.trim().trim_start_matches("0o");
                        u32::from_str_radix(digits, 8).ok().filter(|m| *m <= 0o777)
                    }
                };
                match parsed {
                    Some(m) if m & 0o007 != 0 => {
                        self.diags.at(sp.span, ErrorKind::ModeTooOpen { mode: m });
                        None
                    }
                    Some(m) => Some(m),
                    None => {
                        let looks_decimal = matches!(value, Scalar::Int(_))
                            && !written.starts_with("0o")
                            && !written.is_empty()
                            && written.len() <= 4
                            && written.bytes().all(|b| (b'0'..=b'7').contains(&b));
                        self.diags.at(
                            sp.span,
                            ErrorKind::InvalidMode {
                                value: shorten(written),
                                looks_decimal,
                            },
                        );
                        None
                    }
                }
            }
        };
        Some(ApiSettings {
            socket: socket?,
            group: group?,
            mode: mode?,
        })
    }

    fn prefix(&mut self, sp: &Sp<String>, context: &str) -> Option<IpNet> {
        match parse_prefix(&sp.value) {
            Ok(net) => Some(net),
            Err(PrefixProblem::HostBits { network, host }) => {
                self.diags.at(
                    sp.span,
                    ErrorKind::HostBitsSet {
                        value: shorten(&sp.value),
                        context: context.to_owned(),
                        network,
                        host,
                    },
                );
                None
            }
            Err(PrefixProblem::Invalid(reason)) => {
                self.diags.at(
                    sp.span,
                    ErrorKind::InvalidPrefix {
                        value: shorten(&sp.value),
                        context: context.to_owned(),
                        reason,
                    },
                );
                None
            }
        }
    }

    fn prefixes(
        &mut self,
        list: &List<String>,
        key: &str,
        context: &str,
    ) -> Option<Vec<(IpNet, Span)>> {
        if !self.limit(list, key, context, 4096) {
            return None;
        }
        let entries = self.distinct(list, key, context);
        let mut ok = entries.len() == list.value.len();
        let mut out = Vec::new();
        for sp in entries {
            match self.prefix(sp, &format!("`{key}` of {context}")) {
                Some(net) => out.push((net, sp.span)),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn zones(&mut self, raw: &BTreeMap<String, RawZone>) -> Vec<CheckedZone> {
        if raw.len() > MAX_ZONES {
            let span = raw.values().nth(MAX_ZONES).map(|z| z.name.span);
            if let Some(span) = span {
                self.diags
                    .at(span, ErrorKind::TooManyZones { count: raw.len() });
            }
            return Vec::new();
        }
        let mut explicit: BTreeMap<u8, (String, Span)> = BTreeMap::new();
        // Explicit id, name and prefixes of each zone that passed its checks.
        type Draft<'a> = (Option<u8>, &'a str, Vec<(IpNet, Span)>, bool);
        let mut checked: Vec<Draft<'_>> = Vec::new();
        for z in raw.values() {
            let c = format!("zone `{}`", z.name.value);
            let mut id = None;
            if let Some(sp) = &z.id {
                match u8::try_from(sp.value).ok().filter(|i| *i != 0) {
                    None => self.diags.at(
                        sp.span,
                        ErrorKind::OutOfRange {
                            key: "id".into(),
                            context: c.clone(),
                            value: sp.value.to_string(),
                            min: "1".into(),
                            max: "255".into(),
                            why: "the kernel counts zones in 8 bits and 0 means no zone",
                        },
                    ),
                    Some(i) => match explicit.get(&i) {
                        Some((other, other_span)) => {
                            let other_span = *other_span;
                            self.diags.at_with(
                                sp.span,
                                ErrorKind::DuplicateZoneId {
                                    zone: z.name.value.clone(),
                                    id: i,
                                    other: other.clone(),
                                },
                                other_span,
                            );
                        }
                        None => {
                            explicit.insert(i, (z.name.value.clone(), sp.span));
                            id = Some(i);
                        }
                    },
                }
            }
            let prefixes = match &z.prefixes {
                None => {
                    self.missing(
                        &z.broken,
                        z.name.span,
                        ErrorKind::MissingKey {
                            key: "prefixes".into(),
                            context: c,
                            example: "prefixes = [\"10.20.0.0/16\"]".into(),
                        },
                    );
                    continue;
                }
                Some(list) if list.value.is_empty() => {
                    self.diags.at(
                        list.span,
                        ErrorKind::EmptyList {
                            key: "prefixes".into(),
                            context: c,
                            example: "prefixes = [\"10.20.0.0/16\"]".into(),
                        },
                    );
                    continue;
                }
                Some(list) => match self.prefixes(list, "prefixes", &c) {
                    Some(p) => p,
                    None => continue,
                },
            };
            let host = z.host.as_ref().is_some_and(|h| h.value);
            checked.push((id, &z.name.value, prefixes, host));
        }
        // Zones without an explicit id take the smallest free ids in name
        // order, so ids are stable as long as the set of zones is.
        let mut free = (1..=255u8).filter(|i| !explicit.contains_key(i));
        let mut zones: Vec<CheckedZone> = checked
            .into_iter()
            .filter_map(|(id, name, prefixes, host)| {
                let id = ZoneId::new(id.or_else(|| free.next())?)?;
                Some(CheckedZone {
                    zone: Zone {
                        name: name.to_owned(),
                        id,
                        prefixes: prefixes.iter().map(|(n, _)| *n).collect(),
                        host,
                    },
                    prefix_spans: prefixes.iter().map(|(_, s)| *s).collect(),
                })
            })
            .collect();
        zones.sort_by_key(|z| z.zone.id);
        self.zone_overlaps(&zones);
        zones
    }

    fn zone_overlaps(&mut self, zones: &[CheckedZone]) {
        let index = ZoneIndex::new(zones);
        let mut widest: Option<ZoneEntry> = None;
        for e in &index.entries {
            if let Some(w) = widest.filter(|w| w.v6 == e.v6 && e.start <= w.end) {
                let (zone, other) = (&zones[e.zone].zone.name, &zones[w.zone].zone.name);
                let kind = if e.zone == w.zone {
                    ErrorKind::ZonePrefixesOverlap {
                        zone: zone.clone(),
                        prefix: e.net.to_string(),
                        other_prefix: w.net.to_string(),
                    }
                } else {
                    ErrorKind::ZonesOverlap {
                        zone: zone.clone(),
                        prefix: e.net.to_string(),
                        other_zone: other.clone(),
                        other_prefix: w.net.to_string(),
                    }
                };
                self.diags.at_with(e.span, kind, w.span);
                if e.end <= w.end {
                    continue;
                }
            }
            widest = Some(*e);
        }
    }

    fn protocol(&mut self, sp: &Sp<Scalar>, context: &str) -> Option<Protocol> {
        let number = |n: i64| -> Result<Protocol, ()> {
            match u8::try_from(n) {
                Ok(n @ 1..=255) => Ok(Protocol::from_number(n)),
                _ => Err(()),
            }
        };
        let result = match &sp.value {
            Scalar::Int(n) => number(*n),
            Scalar::Str(s) => {
                let s = s.trim().to_ascii_lowercase();
                match s.as_str() {
                    "any" => Ok(Protocol::Any),
                    "tcp" => Ok(Protocol::Tcp),
                    "udp" => Ok(Protocol::Udp),
                    "sctp" => Ok(Protocol::Sctp),
                    "icmp" => Ok(Protocol::Icmp),
                    "icmpv6" | "ipv6-icmp" => Ok(Protocol::Icmpv6),
                    digits if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
                        digits.parse::<i64>().map_err(|_| ()).and_then(number)
                    }
                    other => {
                        let allowed = ["tcp", "udp", "sctp", "icmp", "icmpv6", "any"];
                        self.diags.at(
                            sp.span,
                            ErrorKind::UnknownValue {
                                key: "protocol".into(),
                                context: context.to_owned(),
                                value: shorten(other),
                                allowed: allowed
                                    .iter()
                                    .map(|s| (*s).to_owned())
                                    .chain(["1-255".to_owned()])
                                    .collect(),
                                suggestion: suggest(other, allowed),
                            },
                        );
                        return None;
                    }
                }
            }
        };
        match result {
            Ok(p) => Some(p),
            Err(()) => {
                self.diags.at(
                    sp.span,
                    ErrorKind::OutOfRange {
                        key: "protocol".into(),
                        context: context.to_owned(),
                        value: sp.value.to_string(),
                        min: "1".into(),
                        max: "255".into(),
                        why: "0 is IPv6 hop-by-hop, not a transport; write \"any\" for every protocol",
                    },
                );
                None
            }
        }
    }

    fn ports(&mut self, list: &List<Scalar>, target: &str) -> Option<Vec<PortRange>> {
        if !self.limit(list, "ports", &format!("target `{target}`"), 1024) {
            return None;
        }
        let mut ranges = Vec::new();
        let mut ok = true;
        for sp in &list.value {
            match parse_port_range(&sp.value) {
                Ok(r) => ranges.push(r),
                Err(problem) => {
                    self.diags.at(
                        sp.span,
                        ErrorKind::InvalidPort {
                            value: shorten(&sp.value.to_string()),
                            target: target.to_owned(),
                            problem,
                        },
                    );
                    ok = false;
                }
            }
        }
        ok.then(|| merge_ranges(ranges))
    }

    fn target(
        &mut self,
        t: &RawTarget,
        zones: &[CheckedZone],
        index: &ZoneIndex,
    ) -> Option<Target> {
        let name = &t.name.value;
        let c = format!("target `{name}`");
        let protocol = match &t.protocol {
            None => {
                self.missing(
                    &t.broken,
                    t.name.span,
                    ErrorKind::MissingKey {
                        key: "protocol".into(),
                        context: c.clone(),
                        example: "protocol = \"tcp\"".into(),
                    },
                );
                None
            }
            Some(sp) => self.protocol(sp, &c),
        };
        let ports = match (&t.ports, protocol) {
            (Some(list), Some(p)) if !p.has_ports() => {
                self.diags.at(
                    list.span,
                    ErrorKind::PortsNotAllowed {
                        target: name.clone(),
                        protocol: p.to_string(),
                    },
                );
                None
            }
            (Some(list), _) if list.value.is_empty() => {
                self.diags.at(
                    list.span,
                    ErrorKind::EmptyList {
                        key: "ports".into(),
                        context: c.clone(),
                        example: "ports = [22, \"8000-8100\"]".into(),
                    },
                );
                None
            }
            (Some(list), _) => self.ports(list, name),
            (None, Some(p)) if p.has_ports() && !t.broken.iter().any(|k| k == "ports") => {
                self.diags.at(
                    t.name.span,
                    ErrorKind::PortsRequired {
                        target: name.clone(),
                        protocol: p.to_string(),
                    },
                );
                None
            }
            (None, _) => Some(Vec::new()),
        };

        let zone = match &t.zone {
            None => None,
            Some(sp) => match zones.iter().position(|z| z.zone.name == sp.value) {
                Some(i) => Some(i),
                None => {
                    if !self.zone_names.contains(&sp.value) {
                        let names = self.zone_names.clone();
                        self.undefined(sp.span, "zone", &sp.value, &c, &names);
                    }
                    // A defined but invalid zone has its own errors already.
                    return None;
                }
            },
        };
        // Each destination prefix with its zone, and its span when explicit.
        let mut dsts: Vec<(IpNet, ZoneId, Option<Span>)> = Vec::new();
        match (&t.prefixes, zone) {
            (None, None) => {
                if t.broken.iter().any(|k| k == "zone" || k == "prefixes") {
                    return None;
                }
                self.diags.at(
                    t.name.span,
                    ErrorKind::TargetWithoutDestination {
                        target: name.clone(),
                    },
                );
                return None;
            }
            (None, Some(zi)) => {
                dsts.extend(
                    zones[zi]
                        .zone
                        .prefixes
                        .iter()
                        .map(|p| (*p, zones[zi].zone.id, None)),
                );
            }
            (Some(list), _) if list.value.is_empty() => {
                self.diags.at(
                    list.span,
                    ErrorKind::EmptyList {
                        key: "prefixes".into(),
                        context: c.clone(),
                        example: "prefixes = [\"10.20.1.0/24\"]".into(),
                    },
                );
                return None;
            }
            (Some(list), zone) => {
                let prefixes = self.prefixes(list, "prefixes", &c)?;
                let mut ok = true;
                for (net, span) in prefixes {
                    match (index.find(&net), zone) {
                        (Ok(e), Some(zi)) if e.zone != zi => {
                            self.diags.at(
                                span,
                                ErrorKind::PrefixOutsideZone {
                                    target: name.clone(),
                                    prefix: net.to_string(),
                                    zone: zones[zi].zone.name.clone(),
                                },
                            );
                            ok = false;
                        }
                        (Ok(e), _) => dsts.push((net, zones[e.zone].zone.id, Some(span))),
                        (Err(_), Some(zi)) => {
                            self.diags.at(
                                span,
                                ErrorKind::PrefixOutsideZone {
                                    target: name.clone(),
                                    prefix: net.to_string(),
                                    zone: zones[zi].zone.name.clone(),
                                },
                            );
                            ok = false;
                        }
                        (Err(Some(e)), None) => {
                            self.diags.at(
                                span,
                                ErrorKind::PrefixSpansZones {
                                    target: name.clone(),
                                    prefix: net.to_string(),
                                    zone_prefix: e.net.to_string(),
                                },
                            );
                            ok = false;
                        }
                        (Err(None), None) => {
                            self.diags.at(
                                span,
                                ErrorKind::PrefixOutsideZones {
                                    target: name.clone(),
                                    prefix: net.to_string(),
                                },
                            );
                            ok = false;
                        }
                    }
                }
                if !ok {
                    return None;
                }
            }
        }
        let protocol = protocol?;
        let ports = ports?;
        // ICMP and ICMPv6 only exist in their own family: an explicit prefix
        // of the other family is a mistake; a zone's other-family prefixes
        // are simply not part of the target.
        let mut family_ok = true;
        for (net, _, span) in &dsts {
            if let (false, Some(span)) = (protocol.applies_to(net), span) {
                self.diags.at(
                    *span,
                    ErrorKind::ProtocolFamilyMismatch {
                        target: name.clone(),
                        protocol: protocol.to_string(),
                        family: if matches!(net, IpNet::V4(_)) {
                            "IPv4"
                        } else {
                            "IPv6"
                        },
                        prefix: net.to_string(),
                    },
                );
                family_ok = false;
            }
        }
        if !family_ok {
            return None;
        }
        let all = dsts.len();
        dsts.retain(|(net, _, _)| protocol.applies_to(net));
        if dsts.is_empty() && all > 0 {
            let zone_name = zone
                .map(|zi| zones[zi].zone.name.clone())
                .unwrap_or_default();
            self.diags.at(
                t.zone.as_ref().map_or(t.name.span, |z| z.span),
                ErrorKind::ProtocolFamilyMismatch {
                    target: name.clone(),
                    protocol: protocol.to_string(),
                    family: if protocol == Protocol::Icmp {
                        "IPv6"
                    } else {
                        "IPv4"
                    },
                    prefix: format!("of zone `{zone_name}`"),
                },
            );
            return None;
        }
        let count = dsts.len() * ports.len().max(1);
        if count > MAX_RULES_PER_TARGET {
            self.diags.at(
                t.name.span,
                ErrorKind::TooManyRules {
                    target: name.clone(),
                    count,
                    limit: MAX_RULES_PER_TARGET,
                },
            );
            return None;
        }
        let mut rules = Vec::with_capacity(count);
        for (dst, zone, _) in &dsts {
            if ports.is_empty() {
                rules.push(Rule {
                    zone: *zone,
                    dst: *dst,
                    protocol,
                    ports: None,
                });
            }
            for r in &ports {
                rules.push(Rule {
                    zone: *zone,
                    dst: *dst,
                    protocol,
                    ports: Some(*r),
                });
            }
        }
        Some(Target {
            name: name.clone(),
            zone: zone.map(|zi| zones[zi].zone.name.clone()),
            protocol,
            ports,
            rules,
        })
    }

    fn role(&mut self, r: &RawRole) -> Option<CheckedRole> {
        let name = &r.name.value;
        let c = format!("role `{name}`");
        let mut ok = true;
        let mut targets = Vec::new();
        if let Some(list) = &r.targets {
            ok &= self.limit(list, "targets", &c, 1024);
            for t in self.distinct(list, "targets", &c) {
                if self.target_names.contains(&t.value) {
                    targets.push(t.value.clone());
                } else {
                    let names = self.target_names.clone();
                    self.undefined(t.span, "target", &t.value, &c, &names);
                    ok = false;
                }
            }
        }
        let max = match &r.max_duration {
            None => {
                self.missing(
                    &r.broken,
                    r.name.span,
                    ErrorKind::MissingKey {
                        key: "max_duration".into(),
                        context: c.clone(),
                        example: "max_duration = \"2h\"".into(),
                    },
                );
                None
            }
            Some(sp) => self.duration(sp, "max_duration", &c),
        };
        let default = match &r.default_duration {
            None => max,
            Some(sp) => {
                let d = self.duration(sp, "default_duration", &c);
                if let (Some(d), Some(m)) = (d, max) {
                    if d > m {
                        self.diags.at(
                            sp.span,
                            ErrorKind::DefaultExceedsMax {
                                role: name.clone(),
                                default: format_duration(d),
                                max: format_duration(m),
                            },
                        );
                        ok = false;
                    }
                }
                d
            }
        };
        let mut approval_span = None;
        let approval = match &r.approval {
            None => Some(None),
            Some(a) => {
                let ac = format!("the approval of role `{name}`");
                let required = a.required.as_ref().is_some_and(|s| s.value);
                if !required {
                    if let Some(list) = &a.approver_roles {
                        self.diags.at(
                            list.span,
                            ErrorKind::ApproverSettingsWithoutApproval {
                                role: name.clone(),
                                key: "approver_roles".into(),
                            },
                        );
                        ok = false;
                    }
                    if let Some(n) = &a.approvals_needed {
                        self.diags.at(
                            n.span,
                            ErrorKind::ApproverSettingsWithoutApproval {
                                role: name.clone(),
                                key: "approvals_needed".into(),
                            },
                        );
                        ok = false;
                    }
                    Some(None)
                } else {
                    let mut approver_roles = Vec::new();
                    match &a.approver_roles {
                        Some(list) if !list.value.is_empty() => {
                            ok &= self.limit(list, "approver_roles", &ac, 64);
                            for ar in self.distinct(list, "approver_roles", &ac) {
                                if self.role_names.contains(&ar.value) {
                                    approver_roles.push(ar.value.clone());
                                } else {
                                    let names = self.role_names.clone();
                                    self.undefined(ar.span, "role", &ar.value, &ac, &names);
                                    ok = false;
                                }
                            }
                        }
                        other => {
                            self.diags.at(
                                other.as_ref().map_or(a.span, |l| l.span),
                                ErrorKind::ApprovalWithoutApprovers { role: name.clone() },
                            );
                            ok = false;
                        }
                    }
                    approval_span = Some(a.span);
                    let needed = match &a.approvals_needed {
                        None => Some(1),
                        Some(sp) => {
                            approval_span = Some(sp.span);
                            if (1..=MAX_APPROVALS).contains(&sp.value) {
                                u32::try_from(sp.value).ok()
                            } else {
                                self.diags.at(
                                    sp.span,
                                    ErrorKind::OutOfRange {
                                        key: "approvals_needed".into(),
                                        context: ac.clone(),
                                        value: sp.value.to_string(),
                                        min: "1".into(),
                                        max: MAX_APPROVALS.to_string(),
                                        why: "each approval comes from a different user",
                                    },
                                );
                                None
                            }
                        }
                    };
                    needed.map(|approvals_needed| {
                        Some(Approval {
                            approver_roles,
                            approvals_needed,
                        })
                    })
                }
            }
        };
        let windows = self.windows(&r.windows, &c, r.name.span);
        Some(CheckedRole {
            role: Role {
                name: name.clone(),
                targets: ok.then_some(targets)?,
                max_duration: max?,
                default_duration: default?,
                approval: approval?,
                reason_required: r.reason_required.as_ref().is_some_and(|s| s.value),
                windows: windows?,
            },
            name_span: r.name.span,
            approval_span,
        })
    }

    fn windows(&mut self, raw: &[RawWindow], role_c: &str, role_span: Span) -> Option<Schedule> {
        if raw.len() > MAX_WINDOWS {
            self.diags.at(
                raw.get(MAX_WINDOWS).map_or(role_span, |w| w.span),
                ErrorKind::TooManyEntries {
                    key: "windows".into(),
                    context: role_c.to_owned(),
                    count: raw.len(),
                    limit: MAX_WINDOWS,
                },
            );
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for w in raw {
            match self.window(w) {
                Some(w) => out.push(w),
                None => ok = false,
            }
        }
        ok.then(|| Schedule::new(out))
    }

    fn window(&mut self, w: &RawWindow) -> Option<Window> {
        let c = &w.context;
        let missing = |key: &str, example: &str| ErrorKind::MissingKey {
            key: key.into(),
            context: c.clone(),
            example: example.into(),
        };
        let days = match &w.days {
            None => {
                self.missing(&w.broken, w.span, missing("days", "days = [\"mon-fri\"]"));
                None
            }
            Some(list) if list.value.is_empty() => {
                self.diags.at(
                    list.span,
                    ErrorKind::EmptyList {
                        key: "days".into(),
                        context: c.clone(),
                        example: "days = [\"mon-fri\"]".into(),
                    },
                );
                None
            }
            Some(list) => {
                let mut set = Days::default();
                let mut ok = true;
                for d in &list.value {
                    match Days::parse(&d.value) {
                        Some(parsed) if set.intersects(parsed) => {
                            self.diags.at(
                                d.span,
                                ErrorKind::DuplicateEntry {
                                    value: d.value.clone(),
                                    key: "days".into(),
                                    context: c.clone(),
                                },
                            );
                            ok = false;
                        }
                        Some(parsed) => set = set.union(parsed),
                        None => {
                            self.diags.at(
                                d.span,
                                ErrorKind::UnknownValue {
                                    key: "days".into(),
                                    context: c.clone(),
                                    value: shorten(&d.value),
                                    allowed: DAY_NAMES
                                        .iter()
                                        .map(|s| (*s).to_owned())
                                        .chain(["mon-fri".to_owned()])
                                        .collect(),
                                    suggestion: suggest(&d.value, DAY_NAMES),
                                },
                            );
                            ok = false;
                        }
                    }
                }
                ok.then_some(set)
            }
        };
        let time = |this: &mut Self,
                    sp: &Option<Sp<String>>,
                    key: &str,
                    example: &str,
                    may_be_24: bool| match sp {
            None => {
                this.missing(&w.broken, w.span, missing(key, example));
                None
            }
            Some(sp) => match TimeOfDay::parse(&sp.value) {
                Some(t) if may_be_24 || t != TimeOfDay::END_OF_DAY => Some(t),
                _ => {
                    this.diags.at(
                        sp.span,
                        ErrorKind::InvalidTimeOfDay {
                            key: key.into(),
                            context: c.clone(),
                            value: shorten(&sp.value),
                        },
                    );
                    None
                }
            },
        };
        let start = time(self, &w.start, "start", "start = \"08:00\"", false);
        let end = time(self, &w.end, "end", "end = \"18:00\"", true);
        if let (Some(s), Some(e)) = (start, end) {
            if s == e {
                self.diags.at(
                    w.end.as_ref().map_or(w.span, |e| e.span),
                    ErrorKind::EmptyWindow {
                        context: c.clone(),
                        time: s.to_string(),
                    },
                );
                return None;
            }
        }
        let tz = match &w.tz {
            None => {
                self.missing(&w.broken, w.span, missing("tz", "tz = \"Europe/Berlin\""));
                None
            }
            Some(sp) => match sp.value.parse::<Tz>() {
                Ok(tz) => Some(tz),
                Err(_) => {
                    let lower = sp.value.to_ascii_lowercase();
                    let suggestion = chrono_tz::TZ_VARIANTS
                        .iter()
                        .find(|t| t.name().to_ascii_lowercase() == lower)
                        .map(|t| t.name().to_owned())
                        .or_else(|| {
                            suggest(&sp.value, chrono_tz::TZ_VARIANTS.iter().map(|t| t.name()))
                        });
                    self.diags.at(
                        sp.span,
                        ErrorKind::UnknownTimeZone {
                            context: c.clone(),
                            value: shorten(&sp.value),
                            suggestion,
                        },
                    );
                    None
                }
            },
        };
        Some(Window {
            days: days?,
            start: start?,
            end: end?,
            tz: tz?,
        })
    }

    fn user(&mut self, u: &RawUser, roles: &[CheckedRole]) -> Option<CheckedUser> {
        let name = &u.name.value;
        let c = format!("user `{name}`");
        let mut ok = true;
        let mut accounts = Vec::new();
        match &u.accounts {
            None => {
                self.missing(
                    &u.broken,
                    u.name.span,
                    ErrorKind::MissingKey {
                        key: "accounts".into(),
                        context: c.clone(),
                        example: format!("accounts = [\"{name}\"]"),
                    },
                );
                ok = false;
            }
            Some(list) if list.value.is_empty() => {
                self.diags.at(
                    list.span,
                    ErrorKind::EmptyList {
                        key: "accounts".into(),
                        context: c.clone(),
                        example: format!("accounts = [\"{name}\"]"),
                    },
                );
                ok = false;
            }
            Some(list) => {
                ok &= self.limit(list, "accounts", &c, 64);
                for sp in &list.value {
                    let parsed = match &sp.value {
                        Scalar::Int(i) => uid_or_gid(*i)
                            .map(UnixAccount::Uid)
                            .ok_or("uids go from 0 to 4294967294"),
                        Scalar::Str(s)
                            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) =>
                        {
                            s.parse::<i64>()
                                .ok()
                                .and_then(uid_or_gid)
                                .map(UnixAccount::Uid)
                                .ok_or("uids go from 0 to 4294967294")
                        }
                        Scalar::Str(s) => match login_problem(s) {
                            None => Ok(UnixAccount::Name(s.clone())),
                            Some(reason) => Err(reason),
                        },
                    };
                    match parsed {
                        Ok(a) if accounts.iter().any(|(b, _)| *b == a) => {
                            self.diags.at(
                                sp.span,
                                ErrorKind::DuplicateEntry {
                                    value: a.to_string(),
                                    key: "accounts".into(),
                                    context: c.clone(),
                                },
                            );
                            ok = false;
                        }
                        Ok(a) => accounts.push((a, sp.span)),
                        Err(reason) => {
                            self.diags.at(
                                sp.span,
                                ErrorKind::InvalidAccount {
                                    value: shorten(&sp.value.to_string()),
                                    user: name.clone(),
                                    reason,
                                },
                            );
                            ok = false;
                        }
                    }
                }
            }
        }
        let mut user_roles = Vec::new();
        let mut role_spans = Vec::new();
        if let Some(list) = &u.roles {
            ok &= self.limit(list, "roles", &c, 256);
            for r in self.distinct(list, "roles", &c) {
                if self.role_names.contains(&r.value) {
                    user_roles.push(r.value.clone());
                    role_spans.push(r.span);
                } else {
                    let names = self.role_names.clone();
                    self.undefined(r.span, "role", &r.value, &c, &names);
                    ok = false;
                }
            }
        }
        let admin = u.admin.as_ref().is_some_and(|s| s.value);
        let approver = u.approver.as_ref().is_some_and(|s| s.value);
        let source_prefixes = match &u.source_prefixes {
            None => Vec::new(),
            Some(list) => match self.prefixes(list, "source_prefixes", &c) {
                Some(p) => p.into_iter().map(|(n, _)| n).collect(),
                None => {
                    ok = false;
                    Vec::new()
                }
            },
        };
        let roles_checked = u
            .roles
            .as_ref()
            .is_some_and(|l| l.value.len() == user_roles.len());
        let roles_broken = u.broken.iter().any(|k| k == "roles");
        if u.roles.as_ref().is_none_or(|l| l.value.is_empty()) && !admin && !roles_broken {
            self.diags.at(
                u.roles.as_ref().map_or(u.name.span, |l| l.span),
                ErrorKind::UserWithoutRoles { user: name.clone() },
            );
            ok = false;
        }
        let reaches_something = user_roles.iter().any(|r| {
            roles
                .iter()
                .any(|cr| cr.role.name == *r && !cr.role.targets.is_empty())
        });
        let sources_broken = u.broken.iter().any(|k| k == "source_prefixes");
        if roles_checked && reaches_something && u.source_prefixes.is_none() && !sources_broken {
            self.diags.at(
                u.name.span,
                ErrorKind::NoSourcePrefixes { user: name.clone() },
            );
            ok = false;
        }
        if !ok {
            return None;
        }
        Some(CheckedUser {
            user: User {
                name: name.clone(),
                accounts: accounts.iter().map(|(a, _)| a.clone()).collect(),
                roles: user_roles,
                source_prefixes,
                admin,
                approver,
            },
            name_span: u.name.span,
            role_spans,
            account_spans: accounts.iter().map(|(_, s)| *s).collect(),
            approver_span: u.approver.as_ref().map(|s| s.span),
        })
    }

    fn cross_check(&mut self, roles: &[CheckedRole], users: &[CheckedUser]) {
        // One account, one user: the API maps a peer's uid to exactly one.
        let mut claimed: HashMap<&UnixAccount, (&str, Span)> = HashMap::new();
        for u in users {
            for (i, a) in u.user.accounts.iter().enumerate() {
                let span = u.account_spans[i];
                match claimed.get(a) {
                    Some((other, first)) => self.diags.at_with(
                        span,
                        ErrorKind::AccountClaimedTwice {
                            account: a.to_string(),
                            user: u.user.name.clone(),
                            other: (*other).to_owned(),
                        },
                        *first,
                    ),
                    None => {
                        claimed.insert(a, (&u.user.name, span));
                    }
                }
            }
        }

        let approving: BTreeSet<&str> = roles
            .iter()
            .filter_map(|r| r.role.approval.as_ref())
            .flat_map(|a| a.approver_roles.iter().map(String::as_str))
            .collect();
        for r in roles {
            if r.role.targets.is_empty() && !approving.contains(r.role.name.as_str()) {
                self.diags.at(
                    r.name_span,
                    ErrorKind::RoleGrantsNothing {
                        role: r.role.name.clone(),
                    },
                );
            }
            let Some(a) = &r.role.approval else { continue };
            let approvers: Vec<&str> = users
                .iter()
                .filter(|u| u.user.approver && a.approver_roles.iter().any(|ar| u.user.holds(ar)))
                .map(|u| u.user.name.as_str())
                .collect();
            if approvers.len() < a.approvals_needed as usize {
                self.diags.at(
                    r.approval_span.unwrap_or(r.name_span),
                    ErrorKind::NotEnoughApprovers {
                        role: r.role.name.clone(),
                        needed: a.approvals_needed,
                        approvers: approvers.iter().map(|s| (*s).to_owned()).collect(),
                        approver_roles: a.approver_roles.clone(),
                    },
                );
                continue;
            }
            for u in users {
                let Some(pos) = u.user.roles.iter().position(|x| *x == r.role.name) else {
                    continue;
                };
                let others: Vec<String> = approvers
                    .iter()
                    .filter(|n| **n != u.user.name)
                    .map(|s| (*s).to_owned())
                    .collect();
                if others.len() < a.approvals_needed as usize {
                    self.diags.at(
                        u.role_spans[pos],
                        ErrorKind::RequesterCannotBeApproved {
                            user: u.user.name.clone(),
                            role: r.role.name.clone(),
                            needed: a.approvals_needed,
                            others,
                        },
                    );
                }
            }
        }
        for u in users {
            if u.user.approver && !u.user.roles.iter().any(|r| approving.contains(r.as_str())) {
                self.diags.at(
                    u.approver_span.unwrap_or(u.name_span),
                    ErrorKind::ApproverWithoutApprovingRole {
                        user: u.user.name.clone(),
                        approving_roles: approving.iter().map(|s| (*s).to_owned()).collect(),
                    },
                );
            }
        }
    }
}

fn uid_or_gid(i: i64) -> Option<u32> {
    // (uid_t)-1 means "no change" to chown and is never a real id.
    u32::try_from(i).ok().filter(|u| *u != u32::MAX)
}

/// What is wrong with a login or group name, if anything. Follows the
/// portable rules `useradd` enforces, with `$` allowed last for machine
/// accounts.
fn login_problem(s: &str) -> Option<&'static str> {
    let body = s.strip_suffix('$').unwrap_or(s);
    if s.is_empty() {
        Some("the name is empty")
    } else if s.len() > 32 {
        Some("names are at most 32 characters")
    } else if body.starts_with('-') {
        Some("names cannot start with `-`")
    } else if !body
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        Some("names may contain only letters, digits, `_`, `-` and `.`")
    } else {
        None
    }
}

fn interface_problem(name: &str) -> Option<&'static str> {
    // Mirrors the kernel's dev_valid_name().
    if name.is_empty() {
        Some("it is empty")
    } else if name.len() > 15 {
        Some("interface names are at most 15 bytes")
    } else if name == "." || name == ".." {
        Some("`.` and `..` are not interface names")
    } else if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b.is_ascii_control())
    {
        Some("interface names cannot contain `/`, `:`, spaces or control characters")
    } else {
        None
    }
}

enum PrefixProblem {
    Invalid(String),
    HostBits { network: String, host: String },
}

fn parse_prefix(text: &str) -> Result<IpNet, PrefixProblem> {
    let text = text.trim();
    let (addr, len) = match text.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (text, None),
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| PrefixProblem::Invalid(format!("`{}` is not an IP address", shorten(addr))))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => l.parse::<u8>().ok().filter(|l| *l <= max).ok_or_else(|| {
            PrefixProblem::Invalid(format!("the prefix length must be 0 to {max}"))
        })?,
    };
    let net = IpNet::new(addr, len).map_err(|e| PrefixProblem::Invalid(e.to_string()))?;
    if net.trunc() != net {
        return Err(PrefixProblem::HostBits {
            network: net.trunc().to_string(),
            host: IpNet::from(addr).to_string(),
        });
    }
    Ok(net)
}

fn parse_port(text: &str) -> Result<u16, PortProblem> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PortProblem::NotAPort);
    }
    match text.parse::<u64>() {
        Ok(0) => Err(PortProblem::Zero),
        Ok(n) => u16::try_from(n).map_err(|_| PortProblem::TooLarge),
        Err(_) => Err(PortProblem::TooLarge),
    }
}

fn parse_port_range(s: &Scalar) -> Result<PortRange, PortProblem> {
    match s {
        Scalar::Int(i) if *i < 0 => Err(PortProblem::NotAPort),
        Scalar::Int(0) => Err(PortProblem::Zero),
        Scalar::Int(i) => u16::try_from(*i)
            .map(|p| PortRange { start: p, end: p })
            .map_err(|_| PortProblem::TooLarge),
        Scalar::Str(s) => match s.split_once('-') {
            None => parse_port(s).map(|p| PortRange { start: p, end: p }),
            Some((a, b)) => {
                let (start, end) = (parse_port(a)?, parse_port(b)?);
                if start > end {
                    return Err(PortProblem::Reversed);
                }
                Ok(PortRange { start, end })
            }
        },
    }
}

/// Sorts ranges and merges those that overlap or touch.
fn merge_ranges(mut ranges: Vec<PortRange>) -> Vec<PortRange> {
    ranges.sort();
    let mut out: Vec<PortRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if u32::from(r.start) <= u32::from(last.end) + 1 => {
                last.end = last.end.max(r.end);
            }
            _ => out.push(r),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_and_reject_host_bits() {
        assert_eq!(parse_prefix("10.0.0.0/8").ok(), "10.0.0.0/8".parse().ok());
        assert_eq!(parse_prefix("10.1.2.3").ok(), "10.1.2.3/32".parse().ok());
        assert_eq!(
            parse_prefix("2001:db8::/32").ok(),
            "2001:db8::/32".parse().ok()
        );
        match parse_prefix("10.0.0.1/24") {
            Err(PrefixProblem::HostBits { network, host }) => {
                assert_eq!(network, "10.0.0.0/24");
                assert_eq!(host, "10.0.0.1/32");
            }
            _ => panic!("host bits not caught"),
        }
        assert!(matches!(
            parse_prefix("10.0.0.0/33"),
            Err(PrefixProblem::Invalid(_))
        ));
        assert!(matches!(
            parse_prefix("10.0.0.300/8"),
            Err(PrefixProblem::Invalid(_))
        ));
        assert!(matches!(
            parse_prefix("db-prod"),
            Err(PrefixProblem::Invalid(_))
        ));
    }

    #[test]
    fn ports_parse_and_merge() {
        let p = |s: &str| parse_port_range(&Scalar::Str(s.into()));
        assert_eq!(p("22"), Ok(PortRange { start: 22, end: 22 }));
        assert_eq!(
            p("8000-8100"),
            Ok(PortRange {
                start: 8000,
                end: 8100
            })
        );
        assert_eq!(p("8100-8000"), Err(PortProblem::Reversed));
        assert_eq!(p("0"), Err(PortProblem::Zero));
        assert_eq!(p("65536"), Err(PortProblem::TooLarge));
        assert_eq!(p("99999999999999999999999"), Err(PortProblem::TooLarge));
        assert_eq!(p("ssh"), Err(PortProblem::NotAPort));
        assert_eq!(
            parse_port_range(&Scalar::Int(-1)),
            Err(PortProblem::NotAPort)
        );
        let merged = merge_ranges(vec![
            PortRange { start: 10, end: 20 },
            PortRange { start: 21, end: 30 },
            PortRange { start: 5, end: 5 },
            PortRange { start: 15, end: 16 },
        ]);
        assert_eq!(
            merged,
            vec![
                PortRange { start: 5, end: 5 },
                PortRange { start: 10, end: 30 }
            ]
        );
    }

    #[test]
    fn names_are_plain() {
        assert!(valid_name("db-prod.eu_1"));
        assert!(!valid_name(""));
        assert!(!valid_name("-x"));
        assert!(!valid_name("db prod"));
        assert!(!valid_name(&"a".repeat(65)));
    }
}
