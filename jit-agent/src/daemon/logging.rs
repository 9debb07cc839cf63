//! tracing set-up, with aya-log's `log` records routed into it.

use tracing_subscriber::{fmt, EnvFilter};

/// Logs to stderr; `RUST_LOG` (default `info`) selects levels.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Whether debug records would be shown, which decides if the XDP
/// program's diagnostics are compiled in at load.
pub fn debug_enabled() -> bool {
    tracing::enabled!(tracing::Level::DEBUG)
}
