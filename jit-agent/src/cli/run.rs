//! Executes a parsed jitctl command and returns its exit code.

use std::io::Write as _;

use clap::CommandFactory as _;

use super::{
    args::{AuditCommand, Cli, Command, PolicyCommand},
    exit, render,
};
use crate::api::{
    client,
    proto::{ApiRequest, ApiResponse, GrantItem, MAX_BATCH_GRANTS, MAX_REQUEST_BYTES},
    view::{AccessView, StatusView},
};

/// Runs one command; errors are printed here, so the caller only exits.
pub fn run(cli: Cli) -> u8 {
    let request = match &cli.command {
        Command::GrantBatch { file } => match batch_request(file) {
            Ok(request) => request,
            Err(message) => {
                eprintln!("jitctl: {message}");
                return exit::USAGE;
            }
        },
        command => match command.clone_request() {
            Some(request) => request,
            None => return run_local(command),
        },
    };
    if let ApiRequest::Watch = request {
        return watch(&cli);
    }
    match client::call(&cli.socket, &request) {
        Err(e) => {
            eprintln!("jitctl: {e}");
            exit::UNREACHABLE
        }
        Ok(response) => print_response(&cli, &request, response),
    }
}

/// Commands that need no agent.
fn run_local(command: &Command) -> u8 {
    match command {
        Command::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "jitctl",
                &mut std::io::stdout(),
            );
            exit::OK
        }
        Command::Policy {
            command: PolicyCommand::Check { path },
        } => super::local::policy_check(path),
        Command::Audit {
            command: AuditCommand::Verify { file: Some(file) },
        } => super::local::audit_verify(file),
        _ => unreachable!("every other command is an API request"),
    }
}

/// Reads a grant batch file (`-`: standard input) and checks it against
/// the agent's limits before anything is sent.
fn batch_request(file: &std::path::Path) -> Result<ApiRequest, String> {
    use std::io::Read as _;
    let shown = file.display();
    let mut text = String::new();
    let read = if file.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut text)
    } else {
        std::fs::File::open(file).and_then(|mut f| f.read_to_string(&mut text))
    };
    read.map_err(|e| format!("cannot read the batch file {shown}: {e}"))?;
    let grants: Vec<GrantItem> = serde_json::from_str(&text).map_err(|e| {
        format!(
            "{shown}:{}:{}: {e} (expected a JSON array of {{\"user\", \"target\", \"source\", \"duration\", \"reason\"}})",
            e.line(),
            e.column()
        )
    })?;
    if grants.is_empty() || grants.len() > MAX_BATCH_GRANTS {
        return Err(format!(
            "{shown} holds {} grants; a batch holds 1 to {MAX_BATCH_GRANTS}: split the file",
            grants.len()
        ));
    }
    let request = ApiRequest::GrantBatch { grants };
    let size = serde_json::to_vec(&request).map_or(0, |v| v.len());
    if size >= MAX_REQUEST_BYTES {
        return Err(format!(
            "{shown} makes a {size}-byte request; the agent reads at most {MAX_REQUEST_BYTES} bytes: split the file"
        ));
    }
    Ok(request)
}

impl Command {
    fn clone_request(&self) -> Option<ApiRequest> {
        Some(match self {
            Command::Status => ApiRequest::Status,
            Command::Request {
                target,
                duration,
                source,
                reason,
            } => ApiRequest::Request {
                target: target.clone(),
                source: source.clone(),
                duration: duration.clone(),
                reason: reason.clone(),
            },
            Command::Approve { id, reason } => ApiRequest::Approve {
                id: *id,
                reason: reason.clone(),
            },
            Command::Deny { id, reason } => ApiRequest::Deny {
                id: *id,
                reason: reason.clone(),
            },
            Command::Cancel { id } => ApiRequest::Cancel { id: *id },
            Command::Grant {
                user,
                target,
                duration,
                source,
                reason,
            } => ApiRequest::Grant {
                user: user.clone(),
                target: target.clone(),
                source: source.clone(),
                duration: duration.clone(),
                reason: reason.clone(),
            },
            Command::Revoke { id, reason } => ApiRequest::Revoke {
                id: *id,
                reason: reason.clone(),
            },
            Command::Release { id } => ApiRequest::Release { id: *id },
            Command::Extend { id, by, reason } => ApiRequest::Extend {
                id: *id,
                by: by.clone(),
                reason: reason.clone(),
            },
            Command::List { all, history } => ApiRequest::List {
                all: *all,
                history: *history,
            },
            Command::Show { id } => ApiRequest::Show { id: *id },
            Command::Watch => ApiRequest::Watch,
            Command::Policy { command } => match command {
                PolicyCommand::Check { .. } => return None,
                PolicyCommand::Reload => ApiRequest::PolicyReload,
                PolicyCommand::Show => ApiRequest::PolicyShow,
            },
            Command::Audit { command } => match command {
                AuditCommand::Tail { lines } => ApiRequest::AuditTail { lines: *lines },
                AuditCommand::Verify { file: None } => ApiRequest::AuditVerify,
                AuditCommand::Verify { file: Some(_) } => return None,
            },
            Command::Completions { .. } | Command::GrantBatch { .. } => return None,
        })
    }
}

fn print_json(value: &impl serde::Serialize) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer_pretty(&mut out, value);
    let _ = writeln!(out);
}

fn print_response(cli: &Cli, request: &ApiRequest, response: ApiResponse) -> u8 {
    if let Some(error) = &response.error {
        if cli.json {
            print_json(&response);
        } else {
            eprintln!("jitctl: {}", error.message);
        }
        return exit::for_kind(error.kind);
    }
    if cli.json {
        print_json(&response);
        return audit_code(request, &response);
    }
    if let Some(message) = &response.message {
        println!("{message}");
    }
    match request {
        ApiRequest::List { .. } | ApiRequest::GrantBatch { .. } => {
            match serde_json::from_value::<Vec<AccessView>>(response.data.clone()) {
                Ok(items) => print!("{}", render::table(&items)),
                Err(e) => eprintln!("jitctl: unexpected list from the agent: {e}"),
            }
        }
        ApiRequest::Status => match serde_json::from_value::<StatusView>(response.data.clone()) {
            Ok(s) => {
                println!("jit-agent {} on {}", s.version, s.interfaces.join(", "));
                println!("  policy          {}", s.policy);
                println!("  zones           {}", s.zones);
                println!("  active grants   {}", s.active_grants);
                println!("  pending         {}", s.pending_requests);
                println!(
                    "  kernel entries  {} of {} grant slots",
                    s.flow_entries, s.grant_capacity
                );
                let role = match (s.caller_is_admin, s.caller_is_approver) {
                    (true, _) => " (admin)",
                    (false, true) => " (approver)",
                    _ => "",
                };
                println!("  you are         {}{role}", s.caller);
            }
            Err(e) => eprintln!("jitctl: unexpected status from the agent: {e}"),
        },
        ApiRequest::AuditVerify => {}
        ApiRequest::AuditTail { .. } | ApiRequest::PolicyShow => match &response.data {
            serde_json::Value::String(text) => print!("{text}"),
            serde_json::Value::Array(lines) => {
                for line in lines {
                    match line.as_str() {
                        Some(text) => println!("{text}"),
                        None => println!("{line}"),
                    }
                }
            }
            serde_json::Value::Null => {}
            other => print_json(other),
        },
        _ => {
            if let Ok(view) = serde_json::from_value::<AccessView>(response.data.clone()) {
                print!("{}", render::detail(&view));
            }
        }
    }
    audit_code(request, &response)
}

fn audit_code(request: &ApiRequest, response: &ApiResponse) -> u8 {
    if matches!(request, ApiRequest::AuditVerify)
        && response.data.get("valid").and_then(|v| v.as_bool()) == Some(false)
    {
        return exit::INVALID;
    }
    exit::OK
}

fn watch(cli: &Cli) -> u8 {
    let json = cli.json;
    let result = client::watch(&cli.socket, |event| {
        if json {
            println!("{event}");
        } else {
            let kind = event
                .get("event")
                .and_then(|v| v.as_str())
                .unwrap_or("event");
            let time = event.get("time").and_then(|v| v.as_str()).unwrap_or("");
            let summary = event
                .get("summary")
                .and_then(|v| v.as_str())
                .map(str::to_owned)
                .unwrap_or_else(|| event.to_string());
            println!("{time} {kind:<16} {summary}");
        }
        std::io::stdout().flush().is_ok()
    });
    match result {
        Err(e) => {
            eprintln!("jitctl: {e}");
            exit::UNREACHABLE
        }
        Ok(first) if !first.ok => {
            let error = first.error.expect("refusals carry an error");
            eprintln!("jitctl: {}", error.message);
            exit::for_kind(error.kind)
        }
        Ok(_) => exit::OK,
    }
}
