//! The command-line programs: `run`, `check`, `demo`. Errors leave as `anyhow` here, at
//! the binary's edge.

pub mod check;
pub mod demo;
pub mod queue;
pub mod run;

/// Resolves when the process is asked to stop (SIGTERM or Ctrl-C).
pub async fn stop_requested() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler succeeds once a runtime is up");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
