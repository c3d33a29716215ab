//! Prometheus text exposition and a minimal HTTP endpoint (`GET /metrics`) that
//! serves whatever the caller renders.

use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// A metric family whose value is read from a `T`.
pub struct Family<T> {
    pub name: &'static str,
    pub kind: &'static str,
    pub help: &'static str,
    pub read: fn(&T) -> f64,
}

/// Text exposition format, built metric by metric.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    /// Starts a metric family.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample with a `device` label (ids are `[A-Za-z0-9._-]`, safe unescaped).
    pub fn sample(&mut self, name: &str, device: Option<&str>, value: f64) {
        match device {
            Some(device) => {
                let _ = writeln!(self.text, "{name}{{device=\"{device}\"}} {value}");
            }
            None => {
                let _ = writeln!(self.text, "{name} {value}");
            }
        }
    }

    /// Every family, with one sample per device.
    pub fn per_device<'a, T: 'a>(
        &mut self,
        families: &[Family<T>],
        devices: impl Iterator<Item = (&'a str, &'a T)> + Clone,
    ) {
        for family in families {
            self.family(family.name, family.kind, family.help);
            for (device, value) in devices.clone() {
                self.sample(family.name, Some(device), (family.read)(value));
            }
        }
    }

    /// Every family, with one unlabelled sample read from `value`.
    pub fn single<T>(&mut self, families: &[Family<T>], value: &T) {
        for family in families {
            self.family(family.name, family.kind, family.help);
            self.sample(family.name, None, (family.read)(value));
        }
    }

    pub fn into_text(self) -> String {
        self.text
    }
}

/// Requests served at once; more wait for a free slot.
const MAX_CONCURRENT: usize = 8;
/// Largest request head read.
const MAX_REQUEST: usize = 8 * 1024;
/// Deadline to read a request and write the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `GET /metrics` on `listener` until `shutdown`, rendering with `render`.
pub async fn serve<F, Fut>(listener: TcpListener, render: F, shutdown: CancellationToken)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = String> + Send,
{
    let render = Arc::new(render);
    let slots = Arc::new(Semaphore::new(MAX_CONCURRENT));
    loop {
        let (mut stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::debug!("metrics accept failed: {e}");
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let render = render.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _ = tokio::time::timeout(IO_TIMEOUT, async {
                let mut head = Vec::with_capacity(512);
                let mut buf = [0u8; 512];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let response = if head.starts_with(b"GET /metrics ") || head.starts_with(b"GET / ") {
                    let body = render().await;
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
                };
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            })
            .await;
        });
    }
}

/// Binds the metrics listener, warning when it is reachable from other hosts.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "metrics are served to the network without authentication");
    }
    TcpListener::bind(addr).await
}
