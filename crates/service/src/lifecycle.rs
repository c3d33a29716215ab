//! The main loop both programs run under systemd: ready once started, reload on SIGHUP,
//! feed the watchdog, stop on SIGTERM or SIGINT.

use std::future::Future;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

use crate::notify;

/// What a running program does when systemd or an operator asks.
pub trait Service {
    /// What ends the service.
    type Error: From<std::io::Error>;

    /// One line for `systemctl status`: what is running.
    fn status(&self) -> String;

    /// Reads the configuration again and applies it. A configuration that cannot be
    /// applied is logged and the running one stays; an error is for a service that can run
    /// neither, and ends it.
    fn reload(&mut self) -> impl Future<Output = Result<(), Self::Error>>;

    /// Checked before each watchdog feed: a service that is stuck never returns from
    /// it, so the feeds stop and systemd restarts the process.
    fn check_alive(&self) {}
}

/// Tells systemd the service is ready, then serves signals until SIGTERM or SIGINT, and
/// tells systemd the service is stopping. Stopping the service is the caller's.
pub async fn run_until_stopped<S: Service>(service: &mut S) -> Result<(), S::Error> {
    let mut hangup = signal(SignalKind::hangup())?;
    let stop = stop_requested()?;
    tokio::pin!(stop);
    let watchdog = notify::watchdog_interval();
    let mut watchdog_tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    notify::ready(&service.status());
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = hangup.recv() => {
                notify::reloading();
                service.reload().await?;
                notify::ready(&service.status());
            }
            _ = watchdog_tick.tick(), if watchdog.is_some() => {
                service.check_alive();
                notify::watchdog();
            }
        }
    }
    tracing::info!("stopping");
    notify::stopping();
    Ok(())
}

/// Resolves when the process is asked to stop: SIGTERM (systemd) or SIGINT (Ctrl-C).
pub fn stop_requested() -> std::io::Result<impl Future<Output = ()>> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}
