//! The JSON protocol between `jitctl` and the agent: one request line in,
//! one response line out (or a stream of event lines for `watch`).

use serde::{Deserialize, Serialize};

/// Largest request line the agent reads; anything longer is refused.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Most grants one `grant_batch` call may make.
pub const MAX_BATCH_GRANTS: usize = 1000;
/// Largest response line jitctl reads.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// What a caller asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ApiRequest {
    Status,
    /// Ask for access to a target for the caller.
    Request {
        target: String,
        /// Source address the grant is for; defaults to the caller's only
        /// single-address source prefix.
        #[serde(default)]
        source: Option<String>,
        #[serde(default)]
        duration: Option<String>,
        #[serde(default)]
        reason: Option<String>,
    },
    Approve {
        id: u64,
        #[serde(default)]
        reason: Option<String>,
    },
    Deny {
        id: u64,
        #[serde(default)]
        reason: Option<String>,
    },
    Cancel {
        id: u64,
    },
    /// Admin: activate access for a user directly.
    Grant {
        user: String,
        target: String,
        #[serde(default)]
        source: Option<String>,
        #[serde(default)]
        duration: Option<String>,
        #[serde(default)]
        reason: Option<String>,
    },
    /// Admin: several direct grants in one call, made all or none.
    GrantBatch {
        grants: Vec<GrantItem>,
    },
    Revoke {
        id: u64,
        #[serde(default)]
        reason: Option<String>,
    },
    Release {
        id: u64,
    },
    Extend {
        id: u64,
        by: String,
        #[serde(default)]
        reason: Option<String>,
    },
    List {
        /// All users' requests and grants (admins and approvers only).
        #[serde(default)]
        all: bool,
        /// Include ended grants and closed requests.
        #[serde(default)]
        history: bool,
    },
    Show {
        id: u64,
    },
    Watch,
    PolicyReload,
    PolicyShow,
    AuditTail {
        lines: usize,
    },
    AuditVerify,
}

/// One grant of a [`ApiRequest::GrantBatch`]; the fields of
/// [`ApiRequest::Grant`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantItem {
    pub user: String,
    pub target: String,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub duration: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// Why a request was refused; jitctl maps each to an exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The message was not understood.
    BadRequest,
    /// The caller is not allowed to do this.
    Forbidden,
    /// The policy does not allow it (duration, window, target, source).
    Policy,
    /// No such request or grant.
    NotFound,
    /// The request is in a state that does not allow this.
    Conflict,
    /// The agent failed (store, kernel); nothing was changed.
    Internal,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

/// The agent's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiResponse {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
    /// A human-readable one-line outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default)]
    pub data: serde_json::Value,
}

impl ApiResponse {
    pub fn ok(message: impl Into<String>, data: serde_json::Value) -> Self {
        ApiResponse {
            ok: true,
            error: None,
            message: Some(message.into()),
            data,
        }
    }

    pub fn data(data: serde_json::Value) -> Self {
        ApiResponse {
            ok: true,
            error: None,
            message: None,
            data,
        }
    }

    pub fn err(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiResponse {
            ok: false,
            error: Some(ApiError {
                kind,
                message: message.into(),
            }),
            message: None,
            data: serde_json::Value::Null,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_reject_unknown_fields() {
        let req = ApiRequest::Extend {
            id: 7,
            by: "30m".into(),
            reason: None,
        };
        let line = serde_json::to_string(&req).unwrap();
        assert_eq!(serde_json::from_str::<ApiRequest>(&line).unwrap(), req);
        let bad = r#"{"op":"release","id":1,"force":true}"#;
        assert!(serde_json::from_str::<ApiRequest>(bad).is_err());
    }
}
