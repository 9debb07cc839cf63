//! The API's permissions and dispatch: who may do what, mapped onto the
//! core's operations.

use std::sync::Arc;

use tokio::sync::broadcast;

use super::core::{pick_source, OpError, Shared};
use crate::{
    api::{
        proto::{ApiRequest, ApiResponse, ErrorKind, GrantItem, MAX_BATCH_GRANTS},
        server::{Caller, Handler},
        view::{AccessView, StatusView},
    },
    lifecycle::{AccessRequest, ListFilter, RefusalKind},
    policy::{parse_duration, Policy, User},
};

impl Handler for Shared {
    async fn handle(self: Arc<Self>, caller: Caller, request: ApiRequest) -> ApiResponse {
        // Store commits fsync and map updates are syscalls: off the runtime.
        tokio::task::spawn_blocking(move || self.dispatch(caller, request))
            .await
            .unwrap_or_else(|e| {
                ApiResponse::err(ErrorKind::Internal, format!("the operation panicked: {e}"))
            })
    }

    fn subscribe(&self) -> broadcast::Receiver<serde_json::Value> {
        self.events.subscribe()
    }
}

fn refusal(e: OpError) -> ApiResponse {
    ApiResponse::err(error_kind(&e), e.to_string())
}

fn error_kind(e: &OpError) -> ErrorKind {
    match e {
        OpError::Refused(r) => match r.kind() {
            RefusalKind::NotFound => ErrorKind::NotFound,
            RefusalKind::Forbidden => ErrorKind::Forbidden,
            RefusalKind::Invalid | RefusalKind::NotNow => ErrorKind::Policy,
            RefusalKind::Conflict => ErrorKind::Conflict,
        },
        OpError::Internal(_) => ErrorKind::Internal,
        OpError::Item { error, .. } => error_kind(error),
    }
}

/// The access request of an admin's direct grant, or the answer refusing it.
fn admin_grant(policy: &Policy, item: GrantItem) -> Result<AccessRequest, ApiResponse> {
    let Some(holder) = policy.user(&item.user) else {
        return Err(ApiResponse::err(
            ErrorKind::NotFound,
            format!("`{}` is not a user in the policy", item.user),
        ));
    };
    let source = pick_source(holder, item.source.as_deref())
        .map_err(|m| ApiResponse::err(ErrorKind::Policy, m))?;
    let duration = parse_dur(item.duration.as_deref())?;
    Ok(AccessRequest {
        user: item.user,
        target: item.target,
        source,
        duration,
        role: None,
        reason: item.reason,
    })
}

fn bad(message: impl Into<String>) -> ApiResponse {
    ApiResponse::err(ErrorKind::BadRequest, message)
}

fn parse_dur(text: Option<&str>) -> Result<Option<std::time::Duration>, ApiResponse> {
    match text {
        None => Ok(None),
        Some(t) => parse_duration(t).map(Some).map_err(|e| {
            bad(format!(
                "invalid duration `{t}`: {e} (use e.g. 30m, 2h, 1h30m)"
            ))
        }),
    }
}

impl Shared {
    fn dispatch(&self, caller: Caller, request: ApiRequest) -> ApiResponse {
        let policy = self.policy_snapshot();
        let login = nix::unistd::User::from_uid(caller.uid.into())
            .ok()
            .flatten()
            .map(|u| u.name);
        let Some(user) = policy.user_for_peer(caller.uid, login.as_deref()).cloned() else {
            return ApiResponse::err(
                ErrorKind::Forbidden,
                format!(
                    "uid {}{} is not a user in the jitgate policy; ask an admin to add it under [users]",
                    caller.uid,
                    login.map(|l| format!(" ({l})")).unwrap_or_default()
                ),
            );
        };
        let response = self.dispatch_user(&user, request);
        if response.ok {
            let core = self.lock();
            self.refresh_counts(&core);
        }
        response
    }

    fn transition(&self, outcome: &str) {
        self.metrics.transition(outcome);
    }

    fn dispatch_user(&self, user: &User, request: ApiRequest) -> ApiResponse {
        let name = user.name.as_str();
        let done = |r: Result<(String, serde_json::Value), OpError>, outcome: &str| match r {
            Ok((message, data)) => {
                self.transition(outcome);
                self.deadline_changed.notify_one();
                ApiResponse::ok(message, data)
            }
            Err(e) => refusal(e),
        };
        match request {
            ApiRequest::Status => self.status(user),
            ApiRequest::Request {
                target,
                source,
                duration,
                reason,
            } => {
                let source = match pick_source(user, source.as_deref()) {
                    Ok(s) => s,
                    Err(m) => return ApiResponse::err(ErrorKind::Policy, m),
                };
                let duration = match parse_dur(duration.as_deref()) {
                    Ok(d) => d,
                    Err(r) => return r,
                };
                let result = self.lock().request(AccessRequest {
                    user: name.into(),
                    target,
                    source,
                    duration,
                    role: None,
                    reason,
                });
                let outcome = match &result {
                    Ok((_, v)) if v.get("state").and_then(|s| s.as_str()) == Some("pending") => {
                        "requested"
                    }
                    _ => "activated",
                };
                done(result, outcome)
            }
            ApiRequest::Approve { id, reason } => {
                let result = self.lock().approve(id, name, reason);
                done(result, "approved")
            }
            ApiRequest::Deny { id, reason } => {
                let mut core = self.lock();
                let result = core
                    .engine
                    .deny(id, name, reason)
                    .map_err(OpError::from)
                    .and_then(|out| core.close_request(out, "denied"));
                done(result, "denied")
            }
            ApiRequest::Cancel { id } => {
                let mut core = self.lock();
                let result = core
                    .engine
                    .cancel(id, name, None)
                    .map_err(OpError::from)
                    .and_then(|out| core.close_request(out, "cancelled"));
                done(result, "cancelled")
            }
            ApiRequest::Grant {
                user: holder,
                target,
                source,
                duration,
                reason,
            } => {
                if !user.admin {
                    return ApiResponse::err(
                        ErrorKind::Forbidden,
                        format!("only admins may grant access directly, and {name} is not one; use `jitctl request`"),
                    );
                }
                let item = GrantItem {
                    user: holder,
                    target,
                    source,
                    duration,
                    reason,
                };
                let req = match admin_grant(&self.policy_snapshot(), item) {
                    Ok(req) => req,
                    Err(r) => return r,
                };
                let result = self.lock().grant(name, req);
                done(result, "activated")
            }
            ApiRequest::GrantBatch { grants } => {
                if !user.admin {
                    return ApiResponse::err(
                        ErrorKind::Forbidden,
                        format!("only admins may grant access directly, and {name} is not one; use `jitctl request`"),
                    );
                }
                if grants.is_empty() || grants.len() > MAX_BATCH_GRANTS {
                    return bad(format!(
                        "a batch holds 1 to {MAX_BATCH_GRANTS} grants, not {}; split it",
                        grants.len()
                    ));
                }
                let policy = self.policy_snapshot();
                let mut reqs = Vec::with_capacity(grants.len());
                for (n, item) in grants.into_iter().enumerate() {
                    match admin_grant(&policy, item) {
                        Ok(req) => reqs.push(req),
                        Err(mut r) => {
                            if let Some(e) = r.error.as_mut() {
                                e.message = format!(
                                    "grant {} of the batch: {}; no grant of the batch was made",
                                    n + 1,
                                    e.message
                                );
                            }
                            return r;
                        }
                    }
                }
                let mut core = self.lock();
                match core.grant_batch(name, reqs) {
                    Ok(made) => {
                        for _ in &made {
                            self.transition("activated");
                        }
                        self.deadline_changed.notify_one();
                        // No traffic yet: the views need no kernel reads.
                        let views: Vec<serde_json::Value> = made
                            .iter()
                            .map(|g| {
                                serde_json::to_value(super::views::grant_view(g, None, None))
                                    .unwrap_or_default()
                            })
                            .collect();
                        ApiResponse::ok(
                            format!("{} grants are active", made.len()),
                            serde_json::Value::Array(views),
                        )
                    }
                    Err(e) => refusal(e),
                }
            }
            ApiRequest::Revoke { id, reason } => {
                let mut core = self.lock();
                let pending = core
                    .engine
                    .request_by_id(id)
                    .is_some_and(|r| r.state == crate::lifecycle::RequestState::Pending);
                if pending && user.admin {
                    let result = core
                        .engine
                        .deny(id, name, reason)
                        .map_err(OpError::from)
                        .and_then(|out| core.close_request(out, "refused"));
                    return done(result, "denied");
                }
                let result = core
                    .engine
                    .revoke(id, name, reason)
                    .map_err(OpError::from)
                    .and_then(|out| core.end(out, "revoked"));
                done(result, "revoked")
            }
            ApiRequest::Release { id } => {
                let mut core = self.lock();
                let result = core
                    .engine
                    .release(id, name)
                    .map_err(OpError::from)
                    .and_then(|out| core.end(out, "released"));
                done(result, "released")
            }
            ApiRequest::Extend { id, by, reason } => {
                let by = match parse_dur(Some(&by)) {
                    Ok(Some(d)) => d,
                    Ok(None) => unreachable!("a duration was given"),
                    Err(r) => return r,
                };
                let mut core = self.lock();
                let result = core
                    .engine
                    .extend(id, name, by, reason)
                    .map_err(OpError::from)
                    .and_then(|out| core.extend(out));
                done(result, "extended")
            }
            ApiRequest::List { all, history } => {
                if all && !(user.admin || user.approver) {
                    return ApiResponse::err(
                        ErrorKind::Forbidden,
                        "only approvers and admins may list everyone's access; drop --all to see your own",
                    );
                }
                let core = self.lock();
                let listing = core.engine.list(&ListFilter {
                    user: (!all).then(|| name.to_owned()),
                    include_closed: history,
                });
                let mut ids: Vec<u64> = listing
                    .requests
                    .iter()
                    .filter(|r| r.state != crate::lifecycle::RequestState::Approved)
                    .map(|r| r.id)
                    .chain(listing.grants.iter().map(|g| g.id))
                    .collect();
                ids.sort_unstable();
                ids.dedup();
                let views: Vec<serde_json::Value> =
                    ids.iter().map(|id| core.view_of(*id)).collect();
                ApiResponse::data(serde_json::Value::Array(views))
            }
            ApiRequest::Show { id } => {
                let core = self.lock();
                let view = core.view_of(id);
                let Ok(parsed) = serde_json::from_value::<AccessView>(view.clone()) else {
                    return ApiResponse::err(
                        ErrorKind::NotFound,
                        format!("there is no request or grant #{id}"),
                    );
                };
                if parsed.user != name && !(user.admin || user.approver) {
                    return ApiResponse::err(
                        ErrorKind::Forbidden,
                        format!(
                            "#{id} belongs to {}; only its holder, approvers and admins may see it",
                            parsed.user
                        ),
                    );
                }
                ApiResponse::data(view)
            }
            ApiRequest::Watch => ApiResponse::data(serde_json::Value::Null),
            ApiRequest::PolicyReload => {
                if !user.admin {
                    return ApiResponse::err(
                        ErrorKind::Forbidden,
                        format!("only admins may reload the policy, and {name} is not one"),
                    );
                }
                match self.reload_policy(&format!("jitctl by {name}")) {
                    Ok(summary) => ApiResponse::ok(summary, serde_json::Value::Null),
                    Err(errors) => ApiResponse::err(ErrorKind::Policy, errors),
                }
            }
            ApiRequest::PolicyShow => {
                let policy = self.policy_snapshot();
                ApiResponse::data(serde_json::to_value(&*policy).unwrap_or_default())
            }
            ApiRequest::AuditTail { lines } => {
                if !(user.admin || user.approver) {
                    return ApiResponse::err(
                        ErrorKind::Forbidden,
                        "only approvers and admins may read the audit log",
                    );
                }
                let core = self.lock();
                match core.audit.tail(lines.min(10_000)) {
                    Ok(records) => ApiResponse::data(
                        serde_json::to_value(
                            records
                                .iter()
                                .map(|r| serde_json::to_string(r).unwrap_or_default())
                                .collect::<Vec<_>>(),
                        )
                        .unwrap_or_default(),
                    ),
                    Err(e) => ApiResponse::err(
                        ErrorKind::Internal,
                        format!("reading the audit log failed: {e}"),
                    ),
                }
            }
            ApiRequest::AuditVerify => {
                if !(user.admin || user.approver) {
                    return ApiResponse::err(
                        ErrorKind::Forbidden,
                        "only approvers and admins may verify the audit log",
                    );
                }
                let core = self.lock();
                let anchor = core.audit.head();
                let path = core.audit.path().to_owned();
                drop(core);
                match crate::audit::verify_with_anchor(&path, anchor.as_ref()) {
                    Ok(report) => ApiResponse::ok(
                        format!(
                            "{}: {} records, hash chain intact",
                            path.display(),
                            report.records
                        ),
                        serde_json::json!({"valid": true, "records": report.records}),
                    ),
                    Err(e) => ApiResponse {
                        ok: true,
                        error: None,
                        message: Some(format!("{}: VERIFICATION FAILED: {e}", path.display())),
                        data: serde_json::json!({"valid": false, "problem": e.to_string()}),
                    },
                }
            }
        }
    }

    fn status(&self, user: &User) -> ApiResponse {
        let core = self.lock();
        let view = StatusView {
            version: env!("CARGO_PKG_VERSION").into(),
            interfaces: self.interfaces.clone(),
            pin_dir: core.policy.gate().bpffs_dir.display().to_string(),
            policy: core.policy_path.display().to_string(),
            zones: core.policy.zones().len(),
            active_grants: core.engine.active_count() as u64,
            pending_requests: core.engine.pending_count() as u64,
            grant_capacity: core.gate.capacity(),
            flow_entries: core.gate.flow_count() as u64,
            caller: user.name.clone(),
            caller_is_admin: user.admin,
            caller_is_approver: user.approver,
        };
        ApiResponse::data(serde_json::to_value(view).unwrap_or_default())
    }
}

impl crate::metrics::Refresh for Shared {
    async fn refresh(self: Arc<Self>) {
        let _ = tokio::task::spawn_blocking(move || self.refresh_kernel_metrics()).await;
    }

    fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }
}

impl Shared {
    fn refresh_kernel_metrics(&self) {
        use crate::metrics::{MapLabels, Metrics, PacketLabels};
        let core = self.lock();
        self.refresh_counts(&core);
        let zone_ids: Vec<u32> = core
            .policy
            .zones()
            .iter()
            .map(|z| z.id.get() as u32)
            .collect();
        if let Ok(totals) = core.gate.counters(&zone_ids) {
            for t in totals {
                let zone = if t.zone_id == 0 {
                    "none".to_owned()
                } else {
                    core.policy
                        .zones()
                        .iter()
                        .find(|z| z.id.get() as u32 == t.zone_id)
                        .map_or_else(|| t.zone_id.to_string(), |z| z.name.clone())
                };
                let labels = PacketLabels {
                    verdict: if t.reason.is_pass() { "pass" } else { "drop" },
                    reason: t.reason.name(),
                    zone,
                };
                Metrics::set_counter(&self.metrics.packets.get_or_create(&labels), t.packets);
                Metrics::set_counter(&self.metrics.bytes.get_or_create(&labels), t.bytes);
            }
        }
        if let Ok(n) = core.gate.suppressed_events() {
            Metrics::set_counter(&self.metrics.denied_suppressed, n);
        }
        self.metrics
            .map_entries
            .get_or_create(&MapLabels { map: "grants" })
            .set(core.gate.flow_count() as i64);
        self.metrics
            .map_entries
            .get_or_create(&MapLabels { map: "grant_stats" })
            .set(core.gate.grant_count() as i64);
        let prefixes: usize = core.policy.zones().iter().map(|z| z.prefixes.len()).sum();
        self.metrics
            .map_entries
            .get_or_create(&MapLabels { map: "zones" })
            .set(prefixes as i64);
    }
}
