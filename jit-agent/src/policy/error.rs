//! Policy errors: what is wrong, where (file, line, column) and what to do.
//!
//! Validation collects every error it finds instead of stopping at the first,
//! so that `jitctl policy check` shows an operator the whole list in one go.

use std::fmt;
use std::path::{Path, PathBuf};

use super::source::{SourceFile, Span};

/// At most this many errors are kept; a hostile file could otherwise produce
/// millions. The rest are only counted.
pub(crate) const MAX_REPORTED_ERRORS: usize = 200;

/// A position in a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file, as it was named to [`Policy::load`](super::Policy::load).
    pub file: PathBuf,
    /// 1-based line and column (in characters), when the error has a position.
    pub pos: Option<LineCol>,
}

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineCol {
    /// Line number, from 1.
    pub line: usize,
    /// Column in characters, from 1.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pos {
            Some(p) => write!(f, "{}:{}:{}", self.file.display(), p.line, p.column),
            None => write!(f, "{}", self.file.display()),
        }
    }
}

/// The source line an error points into, for display.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snippet {
    line: usize,
    text: String,
    /// 0-based character offset of the caret within `text`.
    caret_at: usize,
    caret_len: usize,
}

/// One problem in a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// Where the problem is.
    pub location: Location,
    /// What the problem is.
    pub kind: ErrorKind,
    /// A second place involved, e.g. the first definition of a duplicate.
    pub related: Option<Location>,
    snippet: Option<Snippet>,
}

impl PolicyError {
    pub(crate) fn without_position(file: &Path, kind: ErrorKind) -> PolicyError {
        PolicyError {
            location: Location {
                file: file.to_owned(),
                pos: None,
            },
            kind,
            related: None,
            snippet: None,
        }
    }

    /// What the operator can do about it.
    pub fn hint(&self) -> String {
        self.kind.hint()
    }
}

/// Every problem found in a policy; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyErrors {
    errors: Vec<PolicyError>,
    /// Errors found beyond [`MAX_REPORTED_ERRORS`].
    not_shown: usize,
}

impl PolicyErrors {
    /// The errors, in file order.
    pub fn errors(&self) -> &[PolicyError] {
        &self.errors
    }

    /// How many errors were found in all, including those not kept.
    pub fn total(&self) -> usize {
        self.errors.len() + self.not_shown
    }

    pub(crate) fn from_vec(errors: Vec<PolicyError>, not_shown: usize) -> Self {
        debug_assert!(!errors.is_empty());
        PolicyErrors { errors, not_shown }
    }
}

impl std::error::Error for PolicyErrors {}

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.errors {
            writeln!(f, "{e}")?;
        }
        if self.not_shown > 0 {
            writeln!(f, "({} more errors not shown)", self.not_shown)?;
        }
        let n = self.total();
        write!(
            f,
            "policy is invalid: {n} error{}; nothing was loaded",
            if n == 1 { "" } else { "s" }
        )
    }
}

impl std::error::Error for PolicyError {}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .snippet
            .as_ref()
            .map_or(1, |s| s.line.to_string().len());
        let pad = " ".repeat(width);
        writeln!(f, "error: {}", self.kind)?;
        writeln!(f, "{pad}--> {}", self.location)?;
        if let Some(s) = &self.snippet {
            writeln!(f, "{pad} |")?;
            writeln!(f, "{} | {}", s.line, s.text)?;
            writeln!(
                f,
                "{pad} | {}{}",
                " ".repeat(s.caret_at),
                "^".repeat(s.caret_len.max(1))
            )?;
        }
        if let Some(r) = &self.related {
            writeln!(f, "{pad} = note: {} at {r}", self.kind.related_note())?;
        }
        write!(f, "{pad} = help: {}", self.hint())
    }
}

/// What is wrong. Messages are lowercase and name the offending item;
/// [`ErrorKind::hint`] says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    /// The policy path or one of its files could not be read.
    #[error("cannot read policy: {message}")]
    Io {
        /// The operating system's description.
        message: String,
    },
    /// The path is neither a regular file nor a directory.
    #[error("policy path is not a regular file or directory")]
    NotAFile,
    /// A file is larger than the per-file limit.
    #[error("policy file is {size} bytes, more than the limit of {limit} bytes")]
    FileTooLarge {
        /// Size found.
        size: u64,
        /// Limit.
        limit: u64,
    },
    /// The files of a directory are larger than the total limit together.
    #[error("policy files add up to more than the limit of {limit} bytes")]
    TotalTooLarge {
        /// Limit.
        limit: u64,
    },
    /// A directory has too many policy files.
    #[error("policy directory has {count} `.toml` files, more than the limit of {limit}")]
    TooManyFiles {
        /// Files found.
        count: usize,
        /// Limit.
        limit: usize,
    },
    /// A directory holds no `*.toml` file.
    #[error("policy directory has no `.toml` files")]
    EmptyDirectory,
    /// A file is not UTF-8.
    #[error("policy file is not valid UTF-8")]
    NotUtf8,
    /// The TOML itself is malformed.
    #[error("invalid TOML: {message}")]
    Syntax {
        /// The parser's description.
        message: String,
    },
    /// A key that the policy format does not have.
    #[error("unknown key `{key}` in {context}")]
    UnknownKey {
        /// The key as written.
        key: String,
        /// Where it was found, e.g. "role `dba`".
        context: String,
        /// The closest known key, if one is close.
        suggestion: Option<String>,
        /// The keys allowed here.
        known: Vec<String>,
    },
    /// A value of the wrong TOML type.
    #[error("`{key}` in {context} must be {expected}, not {found}")]
    WrongType {
        /// The key.
        key: String,
        /// Where.
        context: String,
        /// What it must be, e.g. "a string".
        expected: &'static str,
        /// The TOML type found.
        found: &'static str,
        /// A correct example line.
        example: String,
    },
    /// A required key is absent.
    #[error("{context} has no `{key}`")]
    MissingKey {
        /// The key.
        key: String,
        /// Where.
        context: String,
        /// A correct example line.
        example: String,
    },
    /// A list that must not be empty is.
    #[error("`{key}` in {context} is empty")]
    EmptyList {
        /// The key.
        key: String,
        /// Where.
        context: String,
        /// A correct example line.
        example: String,
    },
    /// The same entry appears twice in a list.
    #[error("`{value}` is listed twice in `{key}` of {context}")]
    DuplicateEntry {
        /// The repeated value.
        value: String,
        /// The key.
        key: String,
        /// Where.
        context: String,
    },
    /// A name (zone, target, role, user) is defined twice, maybe in two files.
    #[error("{what} `{name}` is defined twice")]
    Duplicate {
        /// "zone", "role", ... or "section".
        what: &'static str,
        /// The name.
        name: String,
    },
    /// A name uses characters that would break the CLI, logs or metrics.
    #[error("{what} name `{name}` is not allowed")]
    InvalidName {
        /// "zone", "role", ...
        what: &'static str,
        /// The name, possibly shortened.
        name: String,
    },
    /// A value that must be one of a fixed set is not.
    #[error("`{key}` in {context} is `{value}`, which is not one of {}", allowed.join(", "))]
    UnknownValue {
        /// The key.
        key: String,
        /// Where.
        context: String,
        /// The value as written.
        value: String,
        /// The allowed values.
        allowed: Vec<String>,
        /// The closest allowed value, if one is close.
        suggestion: Option<String>,
    },
    /// A number outside its allowed range.
    #[error("`{key}` in {context} is {value}, outside {min}..={max}")]
    OutOfRange {
        /// The key.
        key: String,
        /// Where.
        context: String,
        /// The value as written.
        value: String,
        /// Smallest allowed.
        min: String,
        /// Largest allowed.
        max: String,
        /// Why the range is what it is.
        why: &'static str,
    },
    /// The policy has no `[gate]` section.
    #[error("the policy has no [gate] section")]
    NoGate,
    /// The policy has no zones, so the gate would protect nothing.
    #[error("the policy defines no zones, so the gate would protect nothing")]
    NoZones,
    /// An interface name the kernel cannot have.
    #[error("interface name `{name}` is invalid: {reason}")]
    InvalidInterface {
        /// The name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A path that must be absolute is not.
    #[error("`{key}` in {context} must be an absolute path, not `{value}`")]
    RelativePath {
        /// The key.
        key: String,
        /// Where.
        context: String,
        /// The value.
        value: String,
    },
    /// A listen address that is not `address:port`.
    #[error("`{key}` in {context} is `{value}`, which is not an address:port")]
    InvalidSocketAddr {
        /// The key.
        key: String,
        /// Where.
        context: String,
        /// The value.
        value: String,
    },
    /// A socket mode that is not an octal permission mode.
    #[error("socket mode {value} is not a permission mode between 0o000 and 0o777")]
    InvalidMode {
        /// The value as written.
        value: String,
        /// Whether it looks like octal digits written as a decimal number.
        looks_decimal: bool,
    },
    /// A socket mode that lets every local user connect.
    #[error("socket mode {mode:#o} lets every local user connect to the API")]
    ModeTooOpen {
        /// The mode.
        mode: u32,
    },
    /// A group that is neither a name nor a gid.
    #[error("`group` in [gate.api] is `{value}`, which is not a group name or gid")]
    InvalidGroup {
        /// The value.
        value: String,
    },
    /// A duration that does not parse or is out of range.
    #[error("`{key}` in {context} is `{value}`: {problem}")]
    InvalidDuration {
        /// The key.
        key: String,
        /// Where.
        context: String,
        /// The value.
        value: String,
        /// What is wrong.
        problem: String,
    },
    /// A default duration above the maximum.
    #[error("default_duration {default} of role `{role}` is longer than its max_duration {max}")]
    DefaultExceedsMax {
        /// The role.
        role: String,
        /// The default, formatted.
        default: String,
        /// The maximum, formatted.
        max: String,
    },
    /// Not an IP prefix.
    #[error("`{value}` in {context} is not an IP prefix: {reason}")]
    InvalidPrefix {
        /// The value.
        value: String,
        /// Where.
        context: String,
        /// The parser's complaint.
        reason: String,
    },
    /// A prefix with bits set after its length.
    #[error("prefix `{value}` in {context} has host bits set")]
    HostBitsSet {
        /// The value.
        value: String,
        /// Where.
        context: String,
        /// The network address the operator probably meant.
        network: String,
        /// The single-host prefix of the address.
        host: String,
    },
    /// Two zones overlap, so an address would belong to two zones.
    #[error(
        "prefix {prefix} of zone `{zone}` overlaps prefix {other_prefix} of zone `{other_zone}`"
    )]
    ZonesOverlap {
        /// This zone.
        zone: String,
        /// Its prefix.
        prefix: String,
        /// The other zone.
        other_zone: String,
        /// Its prefix.
        other_prefix: String,
    },
    /// The same prefix twice in one zone, or two overlapping ones.
    #[error("prefix {prefix} of zone `{zone}` overlaps its prefix {other_prefix}")]
    ZonePrefixesOverlap {
        /// The zone.
        zone: String,
        /// One prefix.
        prefix: String,
        /// The other.
        other_prefix: String,
    },
    /// Two zones with the same explicit id.
    #[error("zone `{zone}` has id {id}, which zone `{other}` already has")]
    DuplicateZoneId {
        /// This zone.
        zone: String,
        /// The id.
        id: u8,
        /// The zone that has it.
        other: String,
    },
    /// More zones than the kernel's 8-bit zone id allows.
    #[error("the policy defines {count} zones, more than the 255 the gate can count")]
    TooManyZones {
        /// Zones defined.
        count: usize,
    },
    /// A reference to a name that is not defined.
    #[error("{context} refers to undefined {what} `{name}`")]
    Undefined {
        /// "zone", "target", "role".
        what: &'static str,
        /// The missing name.
        name: String,
        /// Where.
        context: String,
        /// The closest defined name, if one is close.
        suggestion: Option<String>,
    },
    /// A target with neither `zone` nor `prefixes`.
    #[error("target `{target}` has neither `zone` nor `prefixes`")]
    TargetWithoutDestination {
        /// The target.
        target: String,
    },
    /// A target prefix outside every zone: the gate would never enforce it.
    #[error("prefix {prefix} of target `{target}` lies outside every zone")]
    PrefixOutsideZones {
        /// The target.
        target: String,
        /// The prefix.
        prefix: String,
    },
    /// A target prefix outside the zone the target names.
    #[error("prefix {prefix} of target `{target}` lies outside its zone `{zone}`")]
    PrefixOutsideZone {
        /// The target.
        target: String,
        /// The prefix.
        prefix: String,
        /// The zone named by the target.
        zone: String,
    },
    /// A target prefix wider than the zone prefixes it overlaps.
    #[error("prefix {prefix} of target `{target}` is wider than the zone prefix {zone_prefix} it overlaps")]
    PrefixSpansZones {
        /// The target.
        target: String,
        /// The prefix.
        prefix: String,
        /// A zone prefix inside it.
        zone_prefix: String,
    },
    /// Ports on a protocol without ports.
    #[error("target `{target}` lists ports, but protocol {protocol} has no ports")]
    PortsNotAllowed {
        /// The target.
        target: String,
        /// The protocol.
        protocol: String,
    },
    /// A port-based protocol without ports; there is no implicit "all ports".
    #[error("target `{target}` uses protocol {protocol} but lists no ports")]
    PortsRequired {
        /// The target.
        target: String,
        /// The protocol.
        protocol: String,
    },
    /// A port or range that does not parse or is out of range.
    #[error("port `{value}` in target `{target}` is invalid: {problem}")]
    InvalidPort {
        /// The value as written.
        value: String,
        /// The target.
        target: String,
        /// What is wrong.
        problem: PortProblem,
    },
    /// ICMP for IPv6 prefixes or ICMPv6 for IPv4 ones.
    #[error("target `{target}` uses protocol {protocol}, which does not apply to {family} prefix {prefix}")]
    ProtocolFamilyMismatch {
        /// The target.
        target: String,
        /// The protocol.
        protocol: String,
        /// "IPv4" or "IPv6".
        family: &'static str,
        /// The prefix.
        prefix: String,
    },
    /// A target expands to more kernel rules than one grant may carry.
    #[error("target `{target}` expands to {count} rules (prefixes x port ranges), more than the limit of {limit}")]
    TooManyRules {
        /// The target.
        target: String,
        /// Rules it would have.
        count: usize,
        /// Limit.
        limit: usize,
    },
    /// A list longer than its limit.
    #[error("`{key}` in {context} has {count} entries, more than the limit of {limit}")]
    TooManyEntries {
        /// The key.
        key: String,
        /// Where.
        context: String,
        /// Entries found.
        count: usize,
        /// Limit.
        limit: usize,
    },
    /// Approval required, but no role may give it.
    #[error("role `{role}` requires approval but names no approver_roles")]
    ApprovalWithoutApprovers {
        /// The role.
        role: String,
    },
    /// Approver settings on a role that needs no approval.
    #[error("role `{role}` sets `{key}` but its approval is not required")]
    ApproverSettingsWithoutApproval {
        /// The role.
        role: String,
        /// The key that was set.
        key: String,
    },
    /// Fewer possible approvers than approvals needed.
    #[error("role `{role}` needs {} but {}", approvals(*.needed), who_can_approve(.approvers, ""))]
    NotEnoughApprovers {
        /// The role.
        role: String,
        /// Approvals needed.
        needed: u32,
        /// Users who can approve.
        approvers: Vec<String>,
        /// The approver roles.
        approver_roles: Vec<String>,
    },
    /// A holder of a role who could never collect enough approvals, because
    /// they cannot approve their own request.
    #[error("user `{user}` holds role `{role}`, which needs {}, but {}", approvals(*.needed), who_can_approve(.others, "other "))]
    RequesterCannotBeApproved {
        /// The user.
        user: String,
        /// The role.
        role: String,
        /// Approvals needed.
        needed: u32,
        /// The other users who can approve.
        others: Vec<String>,
    },
    /// A role that gives access to nothing and approves nothing.
    #[error("role `{role}` has no targets and no role names it in approver_roles")]
    RoleGrantsNothing {
        /// The role.
        role: String,
    },
    /// A time of day that is not `HH:MM`.
    #[error("`{key}` in {context} is `{value}`, which is not a time of day")]
    InvalidTimeOfDay {
        /// The key.
        key: String,
        /// Where.
        context: String,
        /// The value.
        value: String,
    },
    /// A window that starts when it ends.
    #[error("{context} starts and ends at {time}, so it is empty")]
    EmptyWindow {
        /// Where.
        context: String,
        /// The time.
        time: String,
    },
    /// A time zone that is not in the IANA database.
    #[error("`tz` in {context} is `{value}`, which is not a known time zone")]
    UnknownTimeZone {
        /// Where.
        context: String,
        /// The value.
        value: String,
        /// The closest known name, if one is close.
        suggestion: Option<String>,
    },
    /// A user without roles.
    #[error("user `{user}` has no roles")]
    UserWithoutRoles {
        /// The user.
        user: String,
    },
    /// A user holding reachable targets but with nowhere to connect from.
    #[error("user `{user}` holds roles with targets but has no source_prefixes")]
    NoSourcePrefixes {
        /// The user.
        user: String,
    },
    /// An account that is not a valid Unix user name or uid.
    #[error("unix account `{value}` of user `{user}` is invalid: {reason}")]
    InvalidAccount {
        /// The value.
        value: String,
        /// The user.
        user: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// One Unix account mapped to two policy users.
    #[error("unix account `{account}` identifies both user `{user}` and user `{other}`")]
    AccountClaimedTwice {
        /// The account.
        account: String,
        /// This user.
        user: String,
        /// The user who listed it first.
        other: String,
    },
    /// `approver = true` on a user who holds no approving role.
    #[error("user `{user}` is marked approver but holds no role that approves anything")]
    ApproverWithoutApprovingRole {
        /// The user.
        user: String,
        /// Roles named in some approver_roles.
        approving_roles: Vec<String>,
    },
}

/// What is wrong with a port entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortProblem {
    /// Not a number or `start-end`.
    NotAPort,
    /// Port 0 cannot be connected to.
    Zero,
    /// Above 65535.
    TooLarge,
    /// `start-end` with start after end.
    Reversed,
}

impl fmt::Display for PortProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PortProblem::NotAPort => "not a port number or a range like \"8000-8100\"",
            PortProblem::Zero => "port 0 is not a port anything can listen on",
            PortProblem::TooLarge => "ports go up to 65535",
            PortProblem::Reversed => "the range starts after it ends",
        })
    }
}

fn approvals(n: u32) -> String {
    if n == 1 {
        "1 approval".to_owned()
    } else {
        format!("{n} distinct approvals")
    }
}

fn who_can_approve(names: &[String], other: &str) -> String {
    match names.len() {
        0 => format!("no {other}user can approve it"),
        1 => format!("only 1 {other}user can approve it ({})", names[0]),
        n => format!(
            "only {n} {other}users can approve it ({})",
            names.join(", ")
        ),
    }
}

fn quoted_list(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl ErrorKind {
    /// What the operator can do about it.
    pub fn hint(&self) -> String {
        use ErrorKind::*;
        match self {
            Io { .. } => "check that the path exists and that the agent may read it".into(),
            NotAFile => "pass a policy file or a directory of `.toml` files".into(),
            FileTooLarge { .. } => {
                "split the policy into several files of a directory, each under the limit".into()
            }
            TotalTooLarge { .. } | TooManyFiles { .. } => {
                "merge or remove policy files; a policy this large is almost certainly a mistake"
                    .into()
            }
            EmptyDirectory => {
                "put policy files whose names end in `.toml` into it, or pass a file".into()
            }
            NotUtf8 => "save the file as UTF-8".into(),
            Syntax { .. } => "fix the TOML syntax at this position (see https://toml.io)".into(),
            UnknownKey {
                suggestion, known, ..
            } => match suggestion {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("the keys allowed here are {}", quoted_list(known)),
            },
            WrongType { example, .. } => format!("write it like `{example}`"),
            MissingKey { key, example, .. } => format!("add `{key}`, e.g. `{example}`"),
            EmptyList { example, .. } => format!("list at least one entry, e.g. `{example}`"),
            DuplicateEntry { .. } => "remove the repeated entry".into(),
            Duplicate { .. } => {
                "rename or remove one of the two definitions; names are global across all policy files"
                    .into()
            }
            InvalidName { .. } => {
                "use 1 to 64 characters: letters, digits, `-`, `_` and `.`, starting with a letter or digit"
                    .into()
            }
            UnknownValue {
                suggestion,
                allowed,
                ..
            } => match suggestion {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("use one of {}", quoted_list(allowed)),
            },
            OutOfRange { min, max, why, .. } => format!("use a value from {min} to {max}; {why}"),
            NoGate => {
                "add a [gate] section naming the interfaces to protect, e.g. `interfaces = [\"eth0\"]`"
                    .into()
            }
            NoZones => {
                "add a [zones.NAME] section listing the prefixes to protect, e.g. `prefixes = [\"10.20.0.0/16\"]`"
                    .into()
            }
            InvalidInterface { .. } => {
                "use the name shown by `ip link`: 1 to 15 characters, no `/`, `:` or spaces".into()
            }
            RelativePath { key, .. } => {
                format!("start `{key}` with `/`; the agent does not depend on its working directory")
            }
            InvalidSocketAddr { .. } => {
                "write an IP address and a port, e.g. \"127.0.0.1:9477\" or \"[::1]:9477\"".into()
            }
            InvalidMode { looks_decimal, value } => {
                if *looks_decimal {
                    format!("TOML reads {value} as a decimal number; write it in octal, e.g. `mode = 0o660`")
                } else {
                    "write an octal mode, e.g. `mode = 0o660`".into()
                }
            }
            ModeTooOpen { .. } => {
                "drop the bits for others, e.g. `mode = 0o660`, and name the group allowed to connect with `group`"
                    .into()
            }
            InvalidGroup { .. } => "write a group name, e.g. `group = \"jitgate\"`, or a numeric gid".into(),
            InvalidDuration { .. } => {
                "write a duration of whole seconds from 1s to 366d, e.g. \"30m\", \"2h\" or \"1h30m\" (units: s, m, h, d)"
                    .into()
            }
            DefaultExceedsMax { .. } => "shorten default_duration or raise max_duration".into(),
            InvalidPrefix { .. } => {
                "write an IPv4 or IPv6 prefix, e.g. \"10.20.0.0/16\" or \"2001:db8::/48\"".into()
            }
            HostBitsSet { network, host, .. } => {
                format!("did you mean `{network}`? For the single address write `{host}`")
            }
            ZonesOverlap { .. } => {
                "make the zones disjoint, so that every address belongs to at most one zone".into()
            }
            ZonePrefixesOverlap { .. } => "remove the prefix that is covered by the other".into(),
            DuplicateZoneId { .. } => {
                "give each zone its own id, or drop `id` to have one assigned".into()
            }
            TooManyZones { .. } => "merge zones; the kernel counts per zone in 8 bits".into(),
            Undefined {
                what,
                name,
                suggestion,
                ..
            } => match suggestion {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("define [{what}s.{name}] or fix the name"),
            },
            TargetWithoutDestination { .. } => {
                "add `zone = \"NAME\"` for a whole zone, or `prefixes = [...]` inside a zone".into()
            }
            PrefixOutsideZones { .. } => {
                "the gate only guards addresses inside a zone; add the prefix to a zone or fix the target"
                    .into()
            }
            PrefixOutsideZone { zone, .. } => {
                format!("use a prefix inside zone `{zone}`, or drop `zone` to let the prefix pick its zone")
            }
            PrefixSpansZones { .. } => {
                "split the prefix into parts that each lie inside one zone prefix".into()
            }
            PortsNotAllowed { .. } => "remove `ports`, or use protocol tcp, udp or sctp".into(),
            PortsRequired { .. } => {
                "list the ports, e.g. `ports = [22, \"8000-8100\"]`; to allow every port write `ports = [\"1-65535\"]`"
                    .into()
            }
            InvalidPort { problem, .. } => match problem {
                PortProblem::Reversed => "write the lower port first, e.g. \"8000-8100\"".into(),
                _ => "write a port from 1 to 65535, e.g. 22, or a range, e.g. \"8000-8100\"".into(),
            },
            ProtocolFamilyMismatch { .. } => {
                "use icmp for IPv4 and icmpv6 for IPv6, with one target per family".into()
            }
            TooManyRules { .. } => {
                "use fewer, wider prefixes or port ranges, or split the target".into()
            }
            TooManyEntries { .. } => "shorten the list; a list this long is almost certainly a mistake".into(),
            ApprovalWithoutApprovers { .. } => {
                "add `approver_roles = [\"ROLE\"]` naming the roles whose holders may approve".into()
            }
            ApproverSettingsWithoutApproval { .. } => {
                "set `required = true` in the role's approval, or remove the setting".into()
            }
            NotEnoughApprovers {
                approver_roles, ..
            } => format!(
                "give `approver = true` and one of the roles {} to more users, or lower approvals_needed",
                quoted_list(approver_roles)
            ),
            RequesterCannotBeApproved { .. } => {
                "nobody may approve their own request: add approvers or lower approvals_needed".into()
            }
            RoleGrantsNothing { role } => format!(
                "add `targets = [...]`, name `{role}` in some role's approver_roles, or remove the role"
            ),
            InvalidTimeOfDay { .. } => {
                "write a 24-hour time as \"HH:MM\", e.g. \"08:00\"; \"24:00\" may end a window".into()
            }
            EmptyWindow { .. } => {
                "give different start and end times; a window may cross midnight, e.g. start = \"22:00\", end = \"06:00\""
                    .into()
            }
            UnknownTimeZone { suggestion, .. } => match suggestion {
                Some(s) => format!("did you mean `{s}`?"),
                None => "use an IANA time zone name, e.g. \"Europe/Berlin\" or \"UTC\"".into(),
            },
            UserWithoutRoles { .. } => {
                "add `roles = [\"ROLE\"]`; only admins may have no roles".into()
            }
            NoSourcePrefixes { .. } => {
                "add `source_prefixes = [\"10.0.0.0/24\"]` listing where the user connects from".into()
            }
            InvalidAccount { .. } => {
                "write a Unix user name, e.g. \"alice\", or a numeric uid, e.g. 1001".into()
            }
            AccountClaimedTwice { .. } => {
                "each Unix account must identify exactly one user; remove it from one of them".into()
            }
            ApproverWithoutApprovingRole {
                approving_roles, ..
            } => {
                if approving_roles.is_empty() {
                    "no role names approver_roles yet; remove `approver = true` or add approval to a role"
                        .into()
                } else {
                    format!(
                        "give the user one of the roles {}, or remove `approver = true`",
                        quoted_list(approving_roles)
                    )
                }
            }
        }
    }

    /// What the related location is, for errors that have one.
    fn related_note(&self) -> &'static str {
        match self {
            ErrorKind::Duplicate { .. } => "first defined",
            ErrorKind::AccountClaimedTwice { .. } => "first claimed",
            ErrorKind::ZonesOverlap { .. } | ErrorKind::ZonePrefixesOverlap { .. } => {
                "the other prefix is"
            }
            ErrorKind::DuplicateZoneId { .. } => "the other zone is",
            _ => "see also",
        }
    }
}

/// Collects errors during parsing and validation, resolving spans to
/// locations at the end.
#[derive(Default)]
pub(crate) struct Diagnostics {
    items: Vec<Unresolved>,
    dropped: usize,
}

/// An error whose position is still a byte span.
struct Unresolved {
    span: Option<Span>,
    /// For errors about a whole file.
    path: Option<PathBuf>,
    kind: ErrorKind,
    related: Option<Span>,
}

impl Diagnostics {
    /// An error at a span.
    pub(crate) fn at(&mut self, span: Span, kind: ErrorKind) {
        self.push(Some(span), None, kind, None);
    }

    /// An error at a span with a related second span.
    pub(crate) fn at_with(&mut self, span: Span, kind: ErrorKind, related: Span) {
        self.push(Some(span), None, kind, Some(related));
    }

    /// An error about a whole file or path.
    pub(crate) fn on_path(&mut self, path: &Path, kind: ErrorKind) {
        self.push(None, Some(path.to_owned()), kind, None);
    }

    fn push(
        &mut self,
        span: Option<Span>,
        path: Option<PathBuf>,
        kind: ErrorKind,
        related: Option<Span>,
    ) {
        if self.items.len() >= MAX_REPORTED_ERRORS {
            self.dropped += 1;
        } else {
            self.items.push(Unresolved {
                span,
                path,
                kind,
                related,
            });
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty() && self.dropped == 0
    }

    /// Whether more errors would still be kept; expensive suggestions are
    /// skipped once they would be thrown away.
    pub(crate) fn wants_more(&self) -> bool {
        self.items.len() < MAX_REPORTED_ERRORS
    }

    pub(crate) fn finish(self, files: &[SourceFile], root: &Path) -> Option<PolicyErrors> {
        if self.is_empty() {
            return None;
        }
        let mut errors: Vec<(usize, usize, PolicyError)> = self
            .items
            .into_iter()
            .map(
                |Unresolved {
                     span,
                     path,
                     kind,
                     related,
                 }| {
                    let order = span.map_or((0, 0), |s| (s.file as usize, s.start));
                    let (location, snippet) = match (span, path) {
                        (Some(s), _) => locate(files, s),
                        (None, Some(p)) => (Location { file: p, pos: None }, None),
                        (None, None) => (
                            Location {
                                file: root.to_owned(),
                                pos: None,
                            },
                            None,
                        ),
                    };
                    let related = related.map(|r| locate(files, r).0);
                    (
                        order.0,
                        order.1,
                        PolicyError {
                            location,
                            kind,
                            related,
                            snippet,
                        },
                    )
                },
            )
            .collect();
        // Stable sort: errors without a span (about whole files) come first,
        // the rest in file order, so the output reads top to bottom.
        errors.sort_by_key(|(file, start, e)| (e.location.pos.is_some(), *file, *start));
        Some(PolicyErrors::from_vec(
            errors.into_iter().map(|(_, _, e)| e).collect(),
            self.dropped,
        ))
    }
}

/// Lines longer than this are shown as an excerpt around the error.
const SNIPPET_CHARS: usize = 100;

fn locate(files: &[SourceFile], span: Span) -> (Location, Option<Snippet>) {
    let Some(file) = files.get(span.file as usize) else {
        return (
            Location {
                file: PathBuf::from("<unknown>"),
                pos: None,
            },
            None,
        );
    };
    let (line, column) = file.line_col(span.start);
    let text = file.line_text(line);
    let chars: Vec<char> = text.chars().collect();
    let col0 = column - 1;
    let span_chars = file.text[span.start.min(file.text.len())..span.end.min(file.text.len())]
        .chars()
        .take_while(|c| *c != '\n')
        .count();
    let caret_len = span_chars.clamp(1, chars.len().saturating_sub(col0).max(1));
    let (from, lead) = if chars.len() > SNIPPET_CHARS && col0 > SNIPPET_CHARS / 3 {
        (col0 - SNIPPET_CHARS / 3, "…")
    } else {
        (0, "")
    };
    let to = (from + SNIPPET_CHARS).min(chars.len());
    let tail = if to < chars.len() { "…" } else { "" };
    let shown: String = chars[from..to]
        .iter()
        .map(|c| if c.is_control() { ' ' } else { *c })
        .collect();
    let caret_at = col0 - from + lead.chars().count();
    let caret_len = caret_len.min((to + 1).saturating_sub(col0).max(1));
    (
        Location {
            file: file.path.clone(),
            pos: Some(LineCol { line, column }),
        },
        Some(Snippet {
            line,
            text: format!("{lead}{shown}{tail}"),
            caret_at,
            caret_len,
        }),
    )
}

/// The closest candidate to `word` by edit distance, if it is close enough to
/// be a plausible typo.
pub(crate) fn suggest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let word_lower = word.to_lowercase();
    let wlen = word_lower.chars().count();
    if wlen > 64 {
        return None;
    }
    let limit = (wlen / 3).clamp(1, 3);
    let mut best: Option<(usize, &str)> = None;
    for (seen, c) in candidates.into_iter().enumerate() {
        // Suggestions are a courtesy; a huge candidate set is not worth the time.
        if seen > 2000 {
            break;
        }
        let clen = c.chars().count();
        let c_lower = c.to_lowercase();
        // Scores are doubled so that a truncated or extended word (`sock`,
        // `thurs`) ranks just below every real typo.
        let typo = (clen.abs_diff(wlen) <= limit)
            .then(|| edit_distance(&word_lower, &c_lower))
            .filter(|d| *d <= limit);
        let score = match typo {
            Some(d) => 2 * d,
            None if wlen >= 3
                && clen >= 3
                && (c_lower.starts_with(&word_lower) || word_lower.starts_with(&c_lower)) =>
            {
                2 * limit + 1
            }
            None => continue,
        };
        if best.is_none_or(|(bs, _)| score < bs) {
            best = Some((score, c));
        }
    }
    best.map(|(_, c)| c.to_owned())
}

/// Optimal string alignment distance: insertions, deletions, substitutions
/// and swaps of neighbours (`duraiton`) each count as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let w = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * w];
    for i in 0..=a.len() {
        d[i * w] = i;
    }
    for (j, cell) in d.iter_mut().enumerate().take(w) {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[(i - 1) * w + j] + 1)
                .min(d[i * w + j - 1] + 1)
                .min(d[(i - 1) * w + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[(i - 2) * w + j - 2] + 1);
            }
            d[i * w + j] = v;
        }
    }
    d[a.len() * w + b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_keys_only() {
        let keys = ["max_duration", "default_duration", "targets"];
        assert_eq!(
            suggest("max_duraton", keys).as_deref(),
            Some("max_duration")
        );
        assert_eq!(suggest("target", keys).as_deref(), Some("targets"));
        assert_eq!(suggest("colour", keys), None);
        assert_eq!(
            suggest("sock", ["socket", "group"]).as_deref(),
            Some("socket")
        );
        assert_eq!(
            suggest("dba-lead", ["dba", "dba-leads"]).as_deref(),
            Some("dba-leads")
        );
    }

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
        assert_eq!(edit_distance("duraiton", "duration"), 1);
    }
}
