//! Human-readable output: tables and durations.

use chrono::Utc;

use crate::api::view::{human_secs, AccessView};

fn remaining(view: &AccessView) -> String {
    match (view.state.as_str(), view.expires_at) {
        ("active", Some(at)) => {
            let left = (at - Utc::now()).num_seconds().max(0) as u64;
            format!("{} left", human_secs(left))
        }
        ("pending", _) => format!(
            "{}/{} approvals, for {}",
            view.approvals.len(),
            view.approvals_needed,
            human_secs(view.duration_secs)
        ),
        (_, _) => view
            .ended_at
            .map(|t| format!("ended {}", t.format("%Y-%m-%d %H:%M:%S")))
            .unwrap_or_default(),
    }
}

/// A table of access items, columns padded to their widest cell.
pub fn table(items: &[AccessView]) -> String {
    if items.is_empty() {
        return "no requests or grants\n".into();
    }
    let header = ["ID", "STATE", "USER", "TARGET", "SOURCE", "WHEN"];
    let rows: Vec<[String; 6]> = items
        .iter()
        .map(|v| {
            [
                format!("#{}", v.id),
                v.state.clone(),
                v.user.clone(),
                v.target.clone(),
                v.source.clone(),
                remaining(v),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// One item in full.
pub fn detail(v: &AccessView) -> String {
    let mut out = format!(
        "#{} {} — {} → {} from {}\n",
        v.id, v.state, v.user, v.target, v.source
    );
    let at = |t: Option<chrono::DateTime<Utc>>| {
        t.map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_else(|| "-".into())
    };
    out.push_str(&format!("  requested  {}\n", at(Some(v.created_at))));
    out.push_str(&format!("  duration   {}\n", human_secs(v.duration_secs)));
    out.push_str(&format!("  activated  {}\n", at(v.activated_at)));
    out.push_str(&format!("  expires    {}\n", at(v.expires_at)));
    if v.ended_at.is_some() {
        out.push_str(&format!("  ended      {}\n", at(v.ended_at)));
    }
    out.push_str(&format!("  status     {}\n", remaining(v)));
    if v.approvals_needed > 0 {
        out.push_str(&format!(
            "  approvals  {}/{} {}\n",
            v.approvals.len(),
            v.approvals_needed,
            v.approvals.join(", ")
        ));
    }
    if let Some(reason) = &v.reason {
        out.push_str(&format!("  reason     {reason}\n"));
    }
    for rule in &v.rules {
        out.push_str(&format!("  opens      {rule}\n"));
    }
    if let Some(t) = &v.traffic {
        out.push_str(&format!(
            "  traffic    {} packets, {} bytes, first {}, last {}\n",
            t.packets,
            t.bytes,
            at(t.first_seen),
            at(t.last_seen)
        ));
    }
    out
}
