//! The line format and the hash chain.
//!
//! A record is one line:
//!
//! ```text
//! {"seq":1,"time":"2026-12-03T15:11:40.123456Z","prev":"<hex>","event":{..},"hash":"<hex>"}
//! ```
//!
//! - `hash` is the SHA-256 of the same line without its `,"hash":".."` part,
//!   byte for byte as written: `{"seq":..,"time":..,"prev":..,"event":..}`.
//!   Hashing the written bytes, not a re-serialization, means verification
//!   never depends on how a JSON library orders keys or prints numbers.
//! - `prev` is the SHA-256 of the previous line's exact bytes (without its
//!   newline), or of [`GENESIS_SEED`] for the first record. So a record can be
//!   neither edited nor moved without breaking the link to the next one.

use chrono::DateTime;
use serde::de::IgnoredAny;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// What the first record's `prev` is the hash of.
pub const GENESIS_SEED: &[u8] = b"jitgate audit log v1";

const HASH_KEY: &[u8] = b",\"hash\":\"";
const HEX_LEN: usize = 64;
/// `,"hash":"` + 64 hex digits + `"}`.
const SUFFIX_LEN: usize = HASH_KEY.len() + HEX_LEN + 2;

/// The `prev` of the first record.
pub fn genesis_prev() -> String {
    hex::encode(Sha256::digest(GENESIS_SEED))
}

/// The hash of a line's exact bytes: what the next record's `prev` must be.
pub(crate) fn line_digest(line: &[u8]) -> String {
    hex::encode(Sha256::digest(line))
}

/// Builds a record line (without newline) and returns it with its hash.
/// `time` and `prev` never need JSON escaping (RFC 3339, hex); `event_json`
/// is compact JSON, which never contains a raw newline.
pub(crate) fn encode_line(seq: u64, time: &str, prev: &str, event_json: &str) -> (String, String) {
    let body = format!(r#"{{"seq":{seq},"time":"{time}","prev":"{prev}","event":{event_json}}}"#);
    let hash = hex::encode(Sha256::digest(body.as_bytes()));
    let mut line = body;
    line.pop();
    line.push_str(r#","hash":""#);
    line.push_str(&hash);
    line.push_str(r#""}"#);
    (line, hash)
}

/// The chain fields of a record that parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    pub seq: u64,
    pub prev: String,
    pub hash: String,
}

/// Why a line is not a valid record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LineProblem {
    /// Not in the record format at all.
    Malformed(String),
    /// In the format, but the hash does not match the content.
    HashMismatch(Header),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    seq: u64,
    time: String,
    prev: String,
    #[expect(
        dead_code,
        reason = "only its presence and well-formedness are checked"
    )]
    event: IgnoredAny,
}

fn is_hex(s: &[u8]) -> bool {
    s.len() == HEX_LEN && s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Checks one line (without its newline): format, then hash.
pub(crate) fn check(line: &[u8]) -> Result<Header, LineProblem> {
    let malformed = |why: &str| LineProblem::Malformed(why.to_string());
    if line.len() < SUFFIX_LEN + 2 || !line.ends_with(b"\"}") {
        return Err(malformed("it does not end with a hash field"));
    }
    let split = line.len() - SUFFIX_LEN;
    let (head, suffix) = line.split_at(split);
    if !suffix.starts_with(HASH_KEY) {
        return Err(malformed("it does not end with a hash field"));
    }
    let stored = &suffix[HASH_KEY.len()..HASH_KEY.len() + HEX_LEN];
    if !is_hex(stored) {
        return Err(malformed("the hash is not 64 lowercase hex digits"));
    }
    let mut body_bytes = Vec::with_capacity(head.len() + 1);
    body_bytes.extend_from_slice(head);
    body_bytes.push(b'}');
    let body: Body = serde_json::from_slice(&body_bytes)
        .map_err(|e| LineProblem::Malformed(format!("invalid record JSON: {e}")))?;
    if DateTime::parse_from_rfc3339(&body.time).is_err() {
        return Err(malformed("time is not an RFC 3339 timestamp"));
    }
    if !is_hex(body.prev.as_bytes()) {
        return Err(malformed("prev is not 64 lowercase hex digits"));
    }
    let header = Header {
        seq: body.seq,
        prev: body.prev,
        hash: String::from_utf8_lossy(stored).into_owned(),
    };
    if hex::encode(Sha256::digest(&body_bytes)) != header.hash {
        return Err(LineProblem::HashMismatch(header));
    }
    Ok(header)
}

/// The seq of a line, if it has one, whatever else is wrong with it.
pub(crate) fn seq_of(line: &[u8]) -> Option<u64> {
    match check(line) {
        Ok(h) | Err(LineProblem::HashMismatch(h)) => Some(h.seq),
        Err(LineProblem::Malformed(_)) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIME: &str = "2026-12-03T15:11:40.123456Z";

    #[test]
    fn an_encoded_line_checks_and_is_valid_json() {
        let prev = genesis_prev();
        let (line, hash) = encode_line(1, TIME, &prev, r#"{"type":"grant","id":7}"#);
        let header = check(line.as_bytes()).unwrap();
        assert_eq!(
            header,
            Header {
                seq: 1,
                prev,
                hash: hash.clone()
            }
        );
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["hash"], hash.as_str());
        assert_eq!(value["event"]["id"], 7);
    }

    #[test]
    fn the_hash_covers_every_field() {
        let prev = genesis_prev();
        let (line, _) = encode_line(5, TIME, &prev, r#"{"user":"alice"}"#);
        for (from, to) in [
            ("\"seq\":5", "\"seq\":6"),
            ("15:11:40", "15:11:41"),
            ("alice", "mallory"),
            (&prev[..8], "00000000"),
        ] {
            let edited = line.replacen(from, to, 1);
            assert_ne!(edited, line);
            assert!(
                matches!(check(edited.as_bytes()), Err(LineProblem::HashMismatch(_))),
                "editing {from} went unnoticed"
            );
        }
    }

    #[test]
    fn lines_outside_the_format_are_malformed() {
        let prev = genesis_prev();
        let (line, hash) = encode_line(1, TIME, &prev, "{}");
        let cases = [
            String::new(),
            "not json".to_string(),
            line[..line.len() - 1].to_string(),
            line.replace(&hash, &hash.to_uppercase()),
            line.replacen("{\"seq\"", "{\"extra\":1,\"seq\"", 1),
            line.replacen(TIME, "yesterday", 1),
            line.replacen("\"event\":{}", "\"events\":{}", 1),
        ];
        for case in cases {
            assert!(
                matches!(check(case.as_bytes()), Err(LineProblem::Malformed(_))),
                "{case:?} was accepted"
            );
        }
    }

    #[test]
    fn genesis_is_fixed() {
        assert_eq!(
            genesis_prev(),
            hex::encode(Sha256::digest(b"jitgate audit log v1"))
        );
        assert_eq!(line_digest(b"abc").len(), 64);
    }
}
