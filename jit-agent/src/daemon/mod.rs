//! The agent daemon: wires policy, store, audit log, gate, API and metrics.
//!
//! One `Core` holds the state that must change together (engine, store,
//! audit log, gate); every operation locks it, runs on a blocking thread
//! (store commits fsync, map updates are syscalls) and follows one order:
//! kernel first for openings (rolled back if the store refuses), store first
//! for closings (so a failed commit leaves enforcement as it was).

pub mod core;
pub mod denied;
pub mod handler;
pub mod logging;
pub mod privileges;
pub mod startup;
pub mod views;

use std::{path::Path, sync::Arc};

use anyhow::Context as _;
use tracing::{error, info, warn};

pub use self::core::Shared;

/// `jit-agent run`.
pub fn run(policy_path: &Path, debug_bpf: bool) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run_async(
        policy_path,
        debug_bpf || logging::debug_enabled(),
    ))
}

async fn run_async(policy_path: &Path, debug_bpf: bool) -> anyhow::Result<()> {
    let shared = Arc::new(core::start(policy_path, debug_bpf)?);
    let policy = shared.policy_snapshot();
    let gate_cfg = policy.gate().clone();

    let group = startup::socket_group(&policy)?;
    let listener = crate::api::server::bind(
        &gate_cfg.api.socket,
        &crate::api::server::SocketOptions {
            mode: gate_cfg.api.mode,
            group,
        },
    )
    .with_context(|| format!("creating the API socket {}", gate_cfg.api.socket.display()))?;
    let metrics_listener = tokio::net::TcpListener::bind(gate_cfg.metrics_listen)
        .await
        .with_context(|| format!("listening for metrics on {}", gate_cfg.metrics_listen))?;
    let dropped = privileges::drop_after_startup().context("dropping privileges after start-up")?;
    info!(kept = %dropped.kept, threads = dropped.threads, "dropped every other capability and set no_new_privs");
    info!(
        socket = %gate_cfg.api.socket.display(),
        metrics = %gate_cfg.metrics_listen,
        "jit-agent ready"
    );

    tokio::spawn(crate::api::server::serve(listener, shared.clone()));
    {
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve_on(metrics_listener, shared).await {
                error!("the metrics server stopped: {e}");
            }
        });
    }
    tokio::spawn(core::expiry_loop(shared.clone()));
    if let Some(ring) = shared.take_denied_ring() {
        let shared = shared.clone();
        tokio::spawn(async move {
            let sink = shared.clone();
            if let Err(e) = denied::read_loop(ring, move |batch| sink.denied_batch(batch)).await {
                error!("reading denied attempts from the kernel stopped: {e}");
            }
        });
    }
    tokio::spawn(core::minute_loop(shared.clone()));
    tokio::spawn(core::watchdog_loop(shared.clone()));
    if let Some(logger) = shared.take_bpf_logger() {
        tokio::spawn(async move {
            if let Err(e) = denied::flush_bpf_log(logger).await {
                error!("reading the XDP program's diagnostics stopped: {e}");
            }
        });
    }

    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                let shared = shared.clone();
                let outcome = tokio::task::spawn_blocking(move || shared.reload_policy("SIGHUP")).await;
                match outcome {
                    Ok(Ok(summary)) => info!("policy reloaded on SIGHUP: {summary}"),
                    Ok(Err(e)) => warn!("policy reload on SIGHUP refused; the running policy stays in force: {e}"),
                    Err(e) => error!("policy reload panicked: {e}"),
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    info!("stopping; the gate stays attached and pinned, so grants keep their kernel expiry");
    let shared2 = shared.clone();
    let _ = tokio::task::spawn_blocking(move || shared2.flush_denied()).await;
    Ok(())
}

/// `jit-agent detach`.
pub fn detach(policy_path: &Path, pin_dir: Option<&Path>) -> anyhow::Result<()> {
    let dir = match pin_dir {
        Some(dir) => dir.to_owned(),
        None => startup::load_policy(policy_path)?.gate().bpffs_dir.clone(),
    };
    if !dir.exists() {
        println!("nothing to detach: {} does not exist", dir.display());
        return Ok(());
    }
    crate::gate::remove_pins(&dir)
        .with_context(|| format!("removing the gate pinned in {}", dir.display()))?;
    println!(
        "detached: removed the gate's links and maps under {}",
        dir.display()
    );
    Ok(())
}
