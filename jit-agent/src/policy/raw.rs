//! Stage one: TOML text to raw structs that mirror the file and keep the span
//! of every value.
//!
//! This walks toml_edit's spanned tree by hand instead of deriving serde with
//! `deny_unknown_fields`, because serde stops at the first unknown key or
//! wrong type, and the operator should see every problem at once. Nothing here
//! judges values; [`super::validate`] does.

use toml_edit::{ImDocument, Item, TableLike, Value};

use super::error::{suggest, Diagnostics, ErrorKind};
use super::source::{SourceFile, Span};

/// A value and where it was written.
#[derive(Debug, Clone)]
pub(crate) struct Sp<T> {
    pub value: T,
    pub span: Span,
}

/// A string or an integer, for keys that accept both (ports, uids, ...).
#[derive(Debug, Clone)]
pub(crate) enum Scalar {
    Str(String),
    Int(i64),
}

impl std::fmt::Display for Scalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scalar::Str(s) => f.write_str(s),
            Scalar::Int(i) => write!(f, "{i}"),
        }
    }
}

pub(crate) type List<T> = Sp<Vec<Sp<T>>>;

/// One policy file's sections.
#[derive(Debug, Default)]
pub(crate) struct RawFile {
    /// Keys that are present but unusable (wrong type) or misspelt (the
    /// key an unknown one was taken for), so that validation does not also
    /// call them missing.
    pub broken: Vec<String>,
    pub gate: Option<RawGate>,
    pub zones: Vec<RawZone>,
    pub targets: Vec<RawTarget>,
    pub roles: Vec<RawRole>,
    pub users: Vec<RawUser>,
}

#[derive(Debug)]
pub(crate) struct RawGate {
    /// Keys that are present but unusable (wrong type) or misspelt (the
    /// key an unknown one was taken for), so that validation does not also
    /// call them missing.
    pub broken: Vec<String>,
    /// The `gate` key.
    pub span: Span,
    pub interfaces: Option<List<String>>,
    pub attach_mode: Option<Sp<String>>,
    pub bpffs_dir: Option<Sp<String>>,
    pub state_dir: Option<Sp<String>>,
    pub metrics_listen: Option<Sp<String>>,
    pub map_capacity: Option<Sp<i64>>,
    pub pending_ttl: Option<Sp<String>>,
    pub host_tcp_idle: Option<Sp<String>>,
    pub host_udp_idle: Option<Sp<String>>,
    pub host_icmp_idle: Option<Sp<String>>,
    pub api: Option<RawApi>,
}

#[derive(Debug)]
pub(crate) struct RawApi {
    /// Keys that are present but unusable (wrong type) or misspelt (the
    /// key an unknown one was taken for), so that validation does not also
    /// call them missing.
    pub broken: Vec<String>,
    pub socket: Option<Sp<String>>,
    pub group: Option<Sp<Scalar>>,
    /// The mode, and the text it was written as (`0o660` or `660`).
    pub mode: Option<Sp<(Scalar, String)>>,
}

#[derive(Debug)]
pub(crate) struct RawZone {
    /// Keys that are present but unusable (wrong type) or misspelt (the
    /// key an unknown one was taken for), so that validation does not also
    /// call them missing.
    pub broken: Vec<String>,
    pub name: Sp<String>,
    pub id: Option<Sp<i64>>,
    pub prefixes: Option<List<String>>,
    pub host: Option<Sp<bool>>,
}

#[derive(Debug)]
pub(crate) struct RawTarget {
    /// Keys that are present but unusable (wrong type) or misspelt (the
    /// key an unknown one was taken for), so that validation does not also
    /// call them missing.
    pub broken: Vec<String>,
    pub name: Sp<String>,
    pub zone: Option<Sp<String>>,
    pub prefixes: Option<List<String>>,
    pub protocol: Option<Sp<Scalar>>,
    pub ports: Option<List<Scalar>>,
}

#[derive(Debug)]
pub(crate) struct RawRole {
    /// Keys that are present but unusable (wrong type) or misspelt (the
    /// key an unknown one was taken for), so that validation does not also
    /// call them missing.
    pub broken: Vec<String>,
    pub name: Sp<String>,
    pub targets: Option<List<String>>,
    pub max_duration: Option<Sp<String>>,
    pub default_duration: Option<Sp<String>>,
    pub reason_required: Option<Sp<bool>>,
    pub approval: Option<RawApproval>,
    pub windows: Vec<RawWindow>,
}

#[derive(Debug)]
pub(crate) struct RawApproval {
    /// Keys that are present but unusable (wrong type) or misspelt (the
    /// key an unknown one was taken for), so that validation does not also
    /// call them missing.
    pub broken: Vec<String>,
    pub span: Span,
    pub required: Option<Sp<bool>>,
    pub approver_roles: Option<List<String>>,
    pub approvals_needed: Option<Sp<i64>>,
}

#[derive(Debug)]
pub(crate) struct RawWindow {
    /// Keys that are present but unusable (wrong type) or misspelt (the
    /// key an unknown one was taken for), so that validation does not also
    /// call them missing.
    pub broken: Vec<String>,
    pub span: Span,
    /// "window 2 of role `x`".
    pub context: String,
    pub days: Option<List<String>>,
    pub start: Option<Sp<String>>,
    pub end: Option<Sp<String>>,
    pub tz: Option<Sp<String>>,
}

#[derive(Debug)]
pub(crate) struct RawUser {
    /// Keys that are present but unusable (wrong type) or misspelt (the
    /// key an unknown one was taken for), so that validation does not also
    /// call them missing.
    pub broken: Vec<String>,
    pub name: Sp<String>,
    pub accounts: Option<List<Scalar>>,
    pub roles: Option<List<String>>,
    pub source_prefixes: Option<List<String>>,
    pub admin: Option<Sp<bool>>,
    pub approver: Option<Sp<bool>>,
}

const TOP_KEYS: &[&str] = &["gate", "zones", "targets", "roles", "users"];
const GATE_KEYS: &[&str] = &[
    "interfaces",
    "attach_mode",
    "bpffs_dir",
    "state_dir",
    "metrics_listen",
    "map_capacity",
    "pending_ttl",
    "host_tcp_idle",
    "host_udp_idle",
    "host_icmp_idle",
    "api",
];
const API_KEYS: &[&str] = &["socket", "group", "mode"];
const ZONE_KEYS: &[&str] = &["prefixes", "id", "host"];
const TARGET_KEYS: &[&str] = &["zone", "prefixes", "protocol", "ports"];
const ROLE_KEYS: &[&str] = &[
    "targets",
    "max_duration",
    "default_duration",
    "reason_required",
    "approval",
    "windows",
];
const APPROVAL_KEYS: &[&str] = &["required", "approver_roles", "approvals_needed"];
const WINDOW_KEYS: &[&str] = &["days", "start", "end", "tz"];
const USER_KEYS: &[&str] = &["accounts", "roles", "source_prefixes", "admin", "approver"];

/// Longest list accepted for any key; specific keys have tighter limits in
/// validation. Bounds the work a hostile file can cause.
const MAX_LIST: usize = 4096;

/// Parses one file. A syntax error makes the whole file unreadable (TOML
/// parsers cannot recover), so it yields one error and no sections.
pub(crate) fn parse_file(
    index: u32,
    source: &SourceFile,
    diags: &mut Diagnostics,
) -> Option<RawFile> {
    let doc = match ImDocument::parse(source.text.as_str()) {
        Ok(d) => d,
        Err(e) => {
            // Not `e.to_string()`: that quotes the whole offending line,
            // which for a hostile file can be a megabyte.
            let message = e
                .message()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            diags.at(Span::new(index, e.span()), ErrorKind::Syntax { message });
            return None;
        }
    };
    let mut w = Walker {
        file: index,
        text: &source.text,
        diags,
        broken: Vec::new(),
    };
    Some(w.file(doc.as_table()))
}

struct Walker<'d> {
    file: u32,
    text: &'d str,
    diags: &'d mut Diagnostics,
    /// A stack of broken keys; each table reader takes its own off the top.
    broken: Vec<String>,
}

impl Walker<'_> {
    fn span(&self, r: Option<std::ops::Range<usize>>) -> Span {
        Span::new(self.file, r)
    }

    fn key_span(&self, t: &dyn TableLike, key: &str) -> Span {
        self.span(t.key(key).and_then(|k| k.span()))
    }

    fn item_span(&self, t: &dyn TableLike, key: &str, item: &Item) -> Span {
        // Implicit tables (from dotted keys) have no span of their own.
        match item.span() {
            Some(r) => self.span(Some(r)),
            None => self.key_span(t, key),
        }
    }

    fn file(&mut self, top: &dyn TableLike) -> RawFile {
        let mark = self.broken.len();
        self.unknown_keys(top, "the top level of the policy", TOP_KEYS);
        let mut raw = RawFile::default();
        if let Some((span, gate)) = self.table(top, "gate", "the policy", "[gate]") {
            raw.gate = Some(self.gate(span, gate));
        }
        for (name, t) in self.named(top, "zones") {
            raw.zones.push(self.zone(name, t));
        }
        for (name, t) in self.named(top, "targets") {
            raw.targets.push(self.target(name, t));
        }
        for (name, t) in self.named(top, "roles") {
            raw.roles.push(self.role(name, t));
        }
        for (name, t) in self.named(top, "users") {
            raw.users.push(self.user(name, t));
        }
        raw.broken = self.broken.split_off(mark);
        raw
    }

    fn unknown_keys(&mut self, t: &dyn TableLike, context: &str, known: &[&str]) {
        for (key, _) in t.iter() {
            if !known.contains(&key) {
                let span = self.key_span(t, key);
                let suggestion = suggest(key, known.iter().copied());
                if let Some(s) = &suggestion {
                    self.broken.push(s.clone());
                }
                self.diags.at(
                    span,
                    ErrorKind::UnknownKey {
                        key: key.to_owned(),
                        context: context.to_owned(),
                        suggestion,
                        known: known.iter().map(|s| (*s).to_owned()).collect(),
                    },
                );
            }
        }
    }

    fn wrong_type(
        &mut self,
        span: Span,
        key: &str,
        context: &str,
        expected: &'static str,
        found: &'static str,
        example: &str,
    ) {
        self.broken.push(key.to_owned());
        self.diags.at(
            span,
            ErrorKind::WrongType {
                key: key.to_owned(),
                context: context.to_owned(),
                expected,
                found,
                example: example.to_owned(),
            },
        );
    }

    /// The entries of a `[section.NAME]` map, each of which must be a table.
    fn named<'t>(
        &mut self,
        top: &'t dyn TableLike,
        section: &'static str,
    ) -> Vec<(Sp<String>, &'t dyn TableLike)> {
        let example = format!("[{section}.NAME]");
        let Some((_, map)) = self.table(top, section, "the policy", &example) else {
            return Vec::new();
        };
        let context = format!("[{section}]");
        let mut out = Vec::new();
        for (name, item) in map.iter() {
            let span = self.key_span(map, name);
            match item.as_table_like() {
                Some(t) => out.push((
                    Sp {
                        value: name.to_owned(),
                        span,
                    },
                    t,
                )),
                None => {
                    let s = self.item_span(map, name, item);
                    self.wrong_type(
                        s,
                        name,
                        &context,
                        "a table",
                        item.type_name(),
                        &format!("[{section}.{name}]"),
                    );
                }
            }
        }
        out
    }

    /// A sub-table, written either as `[a.b]` or inline as `b = { ... }`.
    fn table<'t>(
        &mut self,
        t: &'t dyn TableLike,
        key: &str,
        context: &str,
        example: &str,
    ) -> Option<(Span, &'t dyn TableLike)> {
        let item = t.get(key)?;
        let span = self.key_span(t, key);
        match item.as_table_like() {
            Some(tt) => Some((span, tt)),
            None => {
                let s = self.item_span(t, key, item);
                self.wrong_type(s, key, context, "a table", item.type_name(), example);
                None
            }
        }
    }

    fn value<'t>(&mut self, t: &'t dyn TableLike, key: &str) -> Option<(Span, &'t Item)> {
        let item = t.get(key)?;
        Some((self.item_span(t, key, item), item))
    }

    fn string(
        &mut self,
        t: &dyn TableLike,
        key: &str,
        context: &str,
        example: &str,
    ) -> Option<Sp<String>> {
        let (span, item) = self.value(t, key)?;
        match item.as_str() {
            Some(s) => Some(Sp {
                value: s.to_owned(),
                span,
            }),
            None => {
                self.wrong_type(span, key, context, "a string", item.type_name(), example);
                None
            }
        }
    }

    fn boolean(
        &mut self,
        t: &dyn TableLike,
        key: &str,
        context: &str,
        example: &str,
    ) -> Option<Sp<bool>> {
        let (span, item) = self.value(t, key)?;
        match item.as_bool() {
            Some(b) => Some(Sp { value: b, span }),
            None => {
                self.wrong_type(
                    span,
                    key,
                    context,
                    "true or false",
                    item.type_name(),
                    example,
                );
                None
            }
        }
    }

    fn integer(
        &mut self,
        t: &dyn TableLike,
        key: &str,
        context: &str,
        example: &str,
    ) -> Option<Sp<i64>> {
        let (span, item) = self.value(t, key)?;
        match item.as_integer() {
            Some(i) => Some(Sp { value: i, span }),
            None => {
                self.wrong_type(span, key, context, "an integer", item.type_name(), example);
                None
            }
        }
    }

    fn scalar_of(value: &Value) -> Option<Scalar> {
        match value {
            Value::String(s) => Some(Scalar::Str(s.value().clone())),
            Value::Integer(i) => Some(Scalar::Int(*i.value())),
            _ => None,
        }
    }

    fn scalar(
        &mut self,
        t: &dyn TableLike,
        key: &str,
        context: &str,
        expected: &'static str,
        example: &str,
    ) -> Option<Sp<Scalar>> {
        let (span, item) = self.value(t, key)?;
        match item.as_value().and_then(Self::scalar_of) {
            Some(v) => Some(Sp { value: v, span }),
            None => {
                self.wrong_type(span, key, context, expected, item.type_name(), example);
                None
            }
        }
    }

    /// A list whose elements `elem` converts; a single element is accepted
    /// where `single` is set (`ports = 22`).
    #[expect(
        clippy::too_many_arguments,
        reason = "the same shape as the other readers, plus the element converter"
    )]
    fn list<T>(
        &mut self,
        t: &dyn TableLike,
        key: &str,
        context: &str,
        expected: &'static str,
        example: &str,
        single: bool,
        elem: impl Fn(&Value) -> Option<T>,
    ) -> Option<List<T>> {
        let (span, item) = self.value(t, key)?;
        let Some(value) = item.as_value() else {
            self.wrong_type(span, key, context, expected, item.type_name(), example);
            return None;
        };
        let arr = match value {
            Value::Array(a) => a,
            v if single => {
                return match elem(v) {
                    Some(x) => Some(Sp {
                        value: vec![Sp { value: x, span }],
                        span,
                    }),
                    None => {
                        self.wrong_type(span, key, context, expected, v.type_name(), example);
                        None
                    }
                };
            }
            v => {
                self.wrong_type(span, key, context, expected, v.type_name(), example);
                return None;
            }
        };
        if arr.len() > MAX_LIST {
            self.diags.at(
                span,
                ErrorKind::TooManyEntries {
                    key: key.to_owned(),
                    context: context.to_owned(),
                    count: arr.len(),
                    limit: MAX_LIST,
                },
            );
            return None;
        }
        let mut out = Vec::with_capacity(arr.len());
        for v in arr.iter() {
            let vspan = self.span(v.span());
            match elem(v) {
                Some(x) => out.push(Sp {
                    value: x,
                    span: vspan,
                }),
                None => self.wrong_type(vspan, key, context, expected, v.type_name(), example),
            }
        }
        Some(Sp { value: out, span })
    }

    fn string_list(
        &mut self,
        t: &dyn TableLike,
        key: &str,
        context: &str,
        example: &str,
    ) -> Option<List<String>> {
        self.list(t, key, context, "a list of strings", example, false, |v| {
            v.as_str().map(str::to_owned)
        })
    }

    /// A time of day: a string, or a TOML local time such as `08:00:00`.
    fn time(
        &mut self,
        t: &dyn TableLike,
        key: &str,
        context: &str,
        example: &str,
    ) -> Option<Sp<String>> {
        let (span, item) = self.value(t, key)?;
        match item.as_value() {
            Some(Value::String(s)) => Some(Sp {
                value: s.value().clone(),
                span,
            }),
            Some(Value::Datetime(d)) if d.value().date.is_none() && d.value().time.is_some() => {
                let time = d.value().time?;
                let text = if time.second == 0 && time.nanosecond == 0 {
                    format!("{:02}:{:02}", time.hour, time.minute)
                } else {
                    time.to_string()
                };
                Some(Sp { value: text, span })
            }
            _ => {
                self.wrong_type(
                    span,
                    key,
                    context,
                    "a time of day",
                    item.type_name(),
                    example,
                );
                None
            }
        }
    }

    fn gate(&mut self, span: Span, t: &dyn TableLike) -> RawGate {
        let c = "[gate]";
        let mark = self.broken.len();
        self.unknown_keys(t, c, GATE_KEYS);
        let api = self
            .table(t, "api", c, "[gate.api]")
            .map(|(_, api)| self.api(api));
        let mut gate = RawGate {
            broken: Vec::new(),
            span,
            interfaces: self.string_list(t, "interfaces", c, "interfaces = [\"eth0\"]"),
            attach_mode: self.string(t, "attach_mode", c, "attach_mode = \"auto\""),
            bpffs_dir: self.string(t, "bpffs_dir", c, "bpffs_dir = \"/sys/fs/bpf/jitgate\""),
            state_dir: self.string(t, "state_dir", c, "state_dir = \"/var/lib/jitgate\""),
            metrics_listen: self.string(
                t,
                "metrics_listen",
                c,
                "metrics_listen = \"127.0.0.1:9477\"",
            ),
            map_capacity: self.integer(t, "map_capacity", c, "map_capacity = 1048576"),
            pending_ttl: self.string(t, "pending_ttl", c, "pending_ttl = \"1h\""),
            host_tcp_idle: self.string(t, "host_tcp_idle", c, "host_tcp_idle = \"5m\""),
            host_udp_idle: self.string(t, "host_udp_idle", c, "host_udp_idle = \"30s\""),
            host_icmp_idle: self.string(t, "host_icmp_idle", c, "host_icmp_idle = \"10s\""),
            api,
        };
        gate.broken = self.broken.split_off(mark);
        gate
    }

    fn api(&mut self, t: &dyn TableLike) -> RawApi {
        let c = "[gate.api]";
        let mark = self.broken.len();
        self.unknown_keys(t, c, API_KEYS);
        let mode = self
            .scalar(t, "mode", c, "an octal integer", "mode = 0o660")
            .map(|sp| {
                let written = match &sp.value {
                    Scalar::Int(i) => self
                        .text
                        .get(sp.span.start..sp.span.end)
                        .map_or_else(|| i.to_string(), |s| s.trim().to_owned()),
                    Scalar::Str(s) => s.clone(),
                };
                Sp {
                    value: (sp.value, written),
                    span: sp.span,
                }
            });
        let mut api = RawApi {
            broken: Vec::new(),
            socket: self.string(t, "socket", c, "socket = \"/run/jitgate/api.sock\""),
            group: self.scalar(t, "group", c, "a group name or gid", "group = \"jitgate\""),
            mode,
        };
        api.broken = self.broken.split_off(mark);
        api
    }

    fn zone(&mut self, name: Sp<String>, t: &dyn TableLike) -> RawZone {
        let c = format!("zone `{}`", name.value);
        let mark = self.broken.len();
        self.unknown_keys(t, &c, ZONE_KEYS);
        let mut zone = RawZone {
            broken: Vec::new(),
            id: self.integer(t, "id", &c, "id = 1"),
            prefixes: self.string_list(t, "prefixes", &c, "prefixes = [\"10.20.0.0/16\"]"),
            host: self.boolean(t, "host", &c, "host = true"),
            name,
        };
        zone.broken = self.broken.split_off(mark);
        zone
    }

    fn target(&mut self, name: Sp<String>, t: &dyn TableLike) -> RawTarget {
        let c = format!("target `{}`", name.value);
        let mark = self.broken.len();
        self.unknown_keys(t, &c, TARGET_KEYS);
        let mut target = RawTarget {
            broken: Vec::new(),
            zone: self.string(t, "zone", &c, "zone = \"prod\""),
            prefixes: self.string_list(t, "prefixes", &c, "prefixes = [\"10.20.1.0/24\"]"),
            protocol: self.scalar(
                t,
                "protocol",
                &c,
                "a protocol name or number",
                "protocol = \"tcp\"",
            ),
            ports: self.list(
                t,
                "ports",
                &c,
                "a list of ports and port ranges",
                "ports = [22, \"8000-8100\"]",
                true,
                Self::scalar_of,
            ),
            name,
        };
        target.broken = self.broken.split_off(mark);
        target
    }

    fn role(&mut self, name: Sp<String>, t: &dyn TableLike) -> RawRole {
        let c = format!("role `{}`", name.value);
        let mark = self.broken.len();
        self.unknown_keys(t, &c, ROLE_KEYS);
        let approval = self
            .table(
                t,
                "approval",
                &c,
                "approval = { required = true, approver_roles = [\"leads\"] }",
            )
            .map(|(span, a)| self.approval(&name.value, span, a));
        let windows = self.windows(&name.value, t);
        let mut role = RawRole {
            broken: Vec::new(),
            targets: self.string_list(t, "targets", &c, "targets = [\"db-prod\"]"),
            max_duration: self.string(t, "max_duration", &c, "max_duration = \"2h\""),
            default_duration: self.string(t, "default_duration", &c, "default_duration = \"1h\""),
            reason_required: self.boolean(t, "reason_required", &c, "reason_required = true"),
            approval,
            windows,
            name,
        };
        role.broken = self.broken.split_off(mark);
        role
    }

    fn approval(&mut self, role: &str, span: Span, t: &dyn TableLike) -> RawApproval {
        let c = format!("the approval of role `{role}`");
        let mark = self.broken.len();
        self.unknown_keys(t, &c, APPROVAL_KEYS);
        let mut approval = RawApproval {
            broken: Vec::new(),
            span,
            required: self.boolean(t, "required", &c, "required = true"),
            approver_roles: self.string_list(
                t,
                "approver_roles",
                &c,
                "approver_roles = [\"leads\"]",
            ),
            approvals_needed: self.integer(t, "approvals_needed", &c, "approvals_needed = 1"),
        };
        approval.broken = self.broken.split_off(mark);
        approval
    }

    /// `windows = [{...}]` or `[[roles.NAME.windows]]`.
    fn windows(&mut self, role: &str, t: &dyn TableLike) -> Vec<RawWindow> {
        let Some(item) = t.get("windows") else {
            return Vec::new();
        };
        let example = "windows = [{ days = [\"mon\", \"tue\"], start = \"08:00\", end = \"18:00\", tz = \"Europe/Berlin\" }]";
        let role_c = format!("role `{role}`");
        let mut tables: Vec<(Span, &dyn TableLike)> = Vec::new();
        match item {
            Item::ArrayOfTables(a) => {
                for tt in a.iter() {
                    tables.push((self.span(tt.span()), tt as &dyn TableLike));
                }
            }
            Item::Value(Value::Array(a)) => {
                for v in a.iter() {
                    match v.as_inline_table() {
                        Some(it) => tables.push((self.span(v.span()), it as &dyn TableLike)),
                        None => {
                            let s = self.span(v.span());
                            self.wrong_type(
                                s,
                                "windows",
                                &role_c,
                                "a list of tables",
                                v.type_name(),
                                example,
                            );
                        }
                    }
                }
            }
            other => {
                let s = self.item_span(t, "windows", other);
                self.wrong_type(
                    s,
                    "windows",
                    &role_c,
                    "a list of tables",
                    other.type_name(),
                    example,
                );
            }
        }
        if tables.len() > MAX_LIST {
            let s = self.key_span(t, "windows");
            self.diags.at(
                s,
                ErrorKind::TooManyEntries {
                    key: "windows".into(),
                    context: role_c,
                    count: tables.len(),
                    limit: MAX_LIST,
                },
            );
            return Vec::new();
        }
        tables
            .into_iter()
            .enumerate()
            .map(|(i, (span, w))| {
                let c = format!("window {} of role `{role}`", i + 1);
                let mark = self.broken.len();
                self.unknown_keys(w, &c, WINDOW_KEYS);
                let mut window = RawWindow {
                    broken: Vec::new(),
                    span,
                    days: self.string_list(w, "days", &c, "days = [\"mon\", \"tue\"]"),
                    start: self.time(w, "start", &c, "start = \"08:00\""),
                    end: self.time(w, "end", &c, "end = \"18:00\""),
                    tz: self.string(w, "tz", &c, "tz = \"Europe/Berlin\""),
                    context: c,
                };
                window.broken = self.broken.split_off(mark);
                window
            })
            .collect()
    }

    fn user(&mut self, name: Sp<String>, t: &dyn TableLike) -> RawUser {
        let c = format!("user `{}`", name.value);
        let mark = self.broken.len();
        self.unknown_keys(t, &c, USER_KEYS);
        let mut user = RawUser {
            broken: Vec::new(),
            accounts: self.list(
                t,
                "accounts",
                &c,
                "a list of Unix user names or uids",
                "accounts = [\"alice\", 1001]",
                false,
                Self::scalar_of,
            ),
            roles: self.string_list(t, "roles", &c, "roles = [\"dba\"]"),
            source_prefixes: self.string_list(
                t,
                "source_prefixes",
                &c,
                "source_prefixes = [\"10.0.0.0/24\"]",
            ),
            admin: self.boolean(t, "admin", &c, "admin = true"),
            approver: self.boolean(t, "approver", &c, "approver = true"),
            name,
        };
        user.broken = self.broken.split_off(mark);
        user
    }
}
