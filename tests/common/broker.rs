//! A real MQTT broker per test: the workspace's own `fieldbridge-broker` binary, or
//! Mosquitto for the interoperability runs of the same tests. Both are configured alike
//! (listeners, password file, persistence, TLS), and what the tests read back from them
//! (connections, disconnects) is parsed out of each broker's own log.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fieldbridge_testkit::{Need, Suite};

use super::{free_port, signal, wait_exit, KillOnDrop, DEADLINE};

/// Which broker a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    Fieldbridge,
    Mosquitto,
}

impl BrokerKind {
    /// What the machine needs for tests against this broker.
    pub fn needs(self) -> Vec<Need> {
        match self {
            BrokerKind::Fieldbridge => Vec::new(),
            BrokerKind::Mosquitto => vec![
                Need::mosquitto(),
                Need::program("mosquitto_passwd", "apt-get install mosquitto"),
            ],
        }
    }

    fn name(self) -> &'static str {
        match self {
            BrokerKind::Fieldbridge => "fieldbridge_broker",
            BrokerKind::Mosquitto => "mosquitto",
        }
    }
}

/// Adds `test` to `suite` once per broker: `fieldbridge_broker::NAME` always, and
/// `mosquitto::NAME` where Mosquitto is installed (required with `CI=true`).
pub fn broker_test<F, Fut>(suite: &mut Suite, name: &str, test: F)
where
    F: Fn(BrokerKind) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()>,
{
    for kind in [BrokerKind::Fieldbridge, BrokerKind::Mosquitto] {
        let test = test.clone();
        suite.async_test(
            &format!("{}::{name}", kind.name()),
            &kind.needs(),
            move || test(kind),
        );
    }
}

/// `fieldbridge-broker` beside this test's directory (target/debug): `cargo test
/// --workspace` builds it with the tests.
pub fn broker_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let binary = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/debug/deps")
        .join("fieldbridge-broker");
    assert!(
        binary.is_file(),
        "{} is not built: run the tests with `cargo test --workspace` (or `cargo build -p fieldbridge-broker` first)",
        binary.display()
    );
    binary
}

/// Runs `fieldbridge-broker --config CONFIG` (listeners on port 0) and returns it with
/// the address of its first listener, read from its `listening on ADDR` start-up line.
pub fn spawn_broker(config: &Path) -> (KillOnDrop, SocketAddr) {
    let mut child = Command::new(broker_binary())
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("broker starts");
    let stderr = child.stderr.take().expect("stderr");
    let process = KillOnDrop(child);
    let (found, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("listening on ") {
                let _ = found.send(addr.trim().to_owned());
            }
        }
    });
    let addr = lines
        .recv_timeout(DEADLINE)
        .expect("the broker prints its address")
        .parse()
        .expect("an address");
    (process, addr)
}

/// A TLS listener that requires client certificates from `ca_file`'s CA on the broker's
/// port, and a plain listener on `plain_port` for the test's own clients.
#[derive(Debug, Clone)]
pub struct TlsListener {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub plain_port: u16,
}

/// How a broker is configured.
#[derive(Debug, Clone, Default)]
pub struct BrokerConfig {
    /// Keep sessions and queued messages across a graceful stop.
    pub persistence: bool,
    /// Users of the password file; empty means anonymous access.
    pub users: Vec<(String, String)>,
    pub tls: Option<TlsListener>,
    /// Log warnings and errors only (benchmarks); otherwise connections and
    /// disconnections too, which the tests read back.
    pub quiet: bool,
    /// Mosquitto's `set_tcp_nodelay` (fieldbridge-broker always sets TCP_NODELAY).
    pub tcp_nodelay: bool,
    /// An ACL in Mosquitto's `acl_file` syntax, which both brokers read.
    pub acl: Option<String>,
}

/// A client connection as the broker logged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connected {
    pub client_id: String,
    pub clean_session: bool,
    pub keepalive: u16,
    /// The user name, when the client sent one.
    pub username: Option<String>,
}

/// A broker process; killed when dropped.
pub struct TestBroker {
    pub kind: BrokerKind,
    pub port: u16,
    dir: PathBuf,
    config: BrokerConfig,
    child: Option<Child>,
}

impl TestBroker {
    /// Starts a broker on a free port; its files live in `dir`.
    pub fn start(kind: BrokerKind, dir: &Path, config: BrokerConfig) -> TestBroker {
        let mut last_error = String::new();
        for _ in 0..5 {
            let mut broker = TestBroker {
                kind,
                port: free_port(),
                dir: dir.to_owned(),
                config: config.clone(),
                child: None,
            };
            match broker.launch() {
                Ok(()) => return broker,
                Err(error) => last_error = error,
            }
        }
        panic!("{kind:?} broker did not start: {last_error}");
    }

    /// A Mosquitto that logs errors and warnings only, for benchmarks.
    pub fn quiet_mosquitto(dir: &Path) -> TestBroker {
        TestBroker::start(
            BrokerKind::Mosquitto,
            dir,
            BrokerConfig {
                quiet: true,
                ..BrokerConfig::default()
            },
        )
    }

    /// Starts the broker again on the same port with the same files.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the broker before restarting it");
        let deadline = Instant::now() + DEADLINE;
        loop {
            match self.launch() {
                Ok(()) => return,
                Err(error) if Instant::now() > deadline => panic!("broker restart: {error}"),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Graceful stop (SIGTERM): the broker saves what it persists.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, "TERM");
            wait_exit(&mut child);
        }
    }

    /// SIGKILL: nothing more is saved.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the broker keeps its sockets open but answers nothing.
    pub fn pause(&self) {
        signal(self.child.as_ref().expect("broker running"), "STOP");
    }

    /// Rewrites the password file; a running broker reloads it (SIGHUP).
    pub fn set_users(&mut self, users: &[(&str, &str)]) {
        self.config.users = users
            .iter()
            .map(|(u, p)| (u.to_string(), p.to_string()))
            .collect();
        self.write_password_file();
        if let Some(child) = &self.child {
            signal(child, "HUP");
        }
    }

    /// Process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// The broker's log so far (both runs, across restarts).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Every client connection the broker accepted so far, in order.
    pub fn connections(&self) -> Vec<Connected> {
        let log = self.log();
        match self.kind {
            BrokerKind::Mosquitto => log.lines().filter_map(mosquitto_connection).collect(),
            BrokerKind::Fieldbridge => log.lines().filter_map(fieldbridge_connection).collect(),
        }
    }

    /// Whether `client_id` ended a connection with DISCONNECT.
    pub fn saw_disconnect(&self, client_id: &str) -> bool {
        let log = self.log();
        match self.kind {
            BrokerKind::Mosquitto => {
                log.contains(&format!("Received DISCONNECT from {client_id}\n"))
            }
            BrokerKind::Fieldbridge => log.lines().any(|line| {
                line.contains("connection ended")
                    && field(line, "client_id") == Some(client_id)
                    && field(line, "reason") == Some("DISCONNECT")
            }),
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(match self.kind {
            BrokerKind::Mosquitto => "mosquitto.log",
            BrokerKind::Fieldbridge => "fieldbridge-broker.log",
        })
    }

    fn password_path(&self) -> PathBuf {
        self.dir.join("passwords")
    }

    /// Writes the ACL file, if there is one, and returns its path.
    fn acl_path(&self) -> Option<PathBuf> {
        let acl = self.config.acl.as_ref()?;
        let path = self.dir.join("acl");
        std::fs::write(&path, acl).unwrap();
        Some(path)
    }

    fn write_password_file(&self) {
        let path = self.password_path();
        std::fs::write(&path, "").unwrap();
        for (user, password) in &self.config.users {
            let mut command = match self.kind {
                BrokerKind::Mosquitto => Command::new("mosquitto_passwd"),
                BrokerKind::Fieldbridge => {
                    let mut command = Command::new(broker_binary());
                    command.arg("passwd");
                    command
                }
            };
            let status = command
                .arg("-b")
                .arg(&path)
                .arg(user)
                .arg(password)
                .stdin(Stdio::null())
                .status()
                .expect("the password tool runs");
            assert!(status.success(), "{command:?} failed");
        }
    }

    fn launch(&mut self) -> Result<(), String> {
        if !self.config.users.is_empty() {
            self.write_password_file();
        }
        let (mut command, config) = match self.kind {
            BrokerKind::Mosquitto => (Command::new("mosquitto"), self.mosquitto_config()),
            BrokerKind::Fieldbridge => (Command::new(broker_binary()), self.fieldbridge_config()),
        };
        let config_path = self.dir.join(match self.kind {
            BrokerKind::Mosquitto => "mosquitto.conf",
            BrokerKind::Fieldbridge => "fieldbridge-broker.yaml",
        });
        std::fs::write(&config_path, config).unwrap();
        // Mosquitto writes its log file itself; fieldbridge-broker logs to stderr.
        let stderr = match self.kind {
            BrokerKind::Mosquitto => Stdio::null(),
            BrokerKind::Fieldbridge => Stdio::from(append(&self.log_path())),
        };
        let mut child = command
            .arg("-c")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot run the {:?} broker: {e}", self.kind))?;
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("the broker exited with {status}: {}", self.log()));
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("the broker did not open its port".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn mosquitto_config(&self) -> String {
        let dir = self.dir.display();
        let mut lines = vec![
            format!("listener {} 127.0.0.1", self.port),
            "user root".to_owned(),
            format!("log_dest file {}", self.log_path().display()),
            "max_queued_messages 0".to_owned(),
            format!("persistence {}", self.config.persistence),
            format!("persistence_location {dir}/"),
        ];
        if self.config.quiet {
            lines.extend(["log_type error".to_owned(), "log_type warning".to_owned()]);
        } else {
            lines.push("log_type all".to_owned());
        }
        if self.config.tcp_nodelay {
            lines.push("set_tcp_nodelay true".to_owned());
        }
        if self.config.users.is_empty() {
            lines.push("allow_anonymous true".to_owned());
        } else {
            lines.push("allow_anonymous false".to_owned());
            lines.push(format!("password_file {}", self.password_path().display()));
        }
        if let Some(acl) = self.acl_path() {
            lines.push(format!("acl_file {}", acl.display()));
        }
        if let Some(tls) = &self.config.tls {
            lines.extend([
                format!("cafile {}", tls.ca_file.display()),
                format!("certfile {}", tls.cert_file.display()),
                format!("keyfile {}", tls.key_file.display()),
                "require_certificate true".to_owned(),
                format!("listener {} 127.0.0.1", tls.plain_port),
            ]);
        }
        lines.join("\n") + "\n"
    }

    fn fieldbridge_config(&self) -> String {
        let mut text = String::from("listeners:\n");
        match &self.config.tls {
            None => {
                text += &format!(
                    "  - {{ bind: \"127.0.0.1:{}\", protocol: mqtt }}\n",
                    self.port
                )
            }
            Some(tls) => {
                text += &format!(
                    "  - {{ bind: \"127.0.0.1:{}\", protocol: mqtts, cert_file: {:?}, key_file: {:?}, client_ca_file: {:?} }}\n",
                    self.port, tls.cert_file, tls.key_file, tls.ca_file
                );
                text += &format!(
                    "  - {{ bind: \"127.0.0.1:{}\", protocol: mqtt }}\n",
                    tls.plain_port
                );
            }
        }
        // Like Mosquitto's `max_queued_messages 0` above: the tests hold subscribers
        // back for long outages and count on nothing being dropped for them.
        text += "limits: { max_queued_messages: 1000000, max_queued_bytes: 1GiB }\n";
        text += "sys_interval: 0s\n";
        let acl = self.acl_path();
        if self.config.users.is_empty() {
            text += "allow_anonymous: true\n";
            if let Some(path) = &acl {
                text += &format!("auth: {{ acl_file: {path:?} }}\n");
            }
        } else {
            let acl = acl
                .map(|path| format!(", acl_file: {path:?}"))
                .unwrap_or_default();
            text += &format!(
                "allow_anonymous: false\nauth: {{ password_file: {:?}{acl} }}\n",
                self.password_path()
            );
        }
        if self.config.persistence {
            text += &format!(
                "persistence: {{ path: {:?} }}\n",
                self.dir.join("broker.db")
            );
        }
        let level = if self.config.quiet {
            "warn"
        } else {
            "fieldbridge_broker=debug,info"
        };
        text += &format!("log: {{ level: \"{level}\", target: stderr }}\n");
        text
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.kill();
    }
}

fn append(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("the broker's log file")
}

/// `New client connected from 127.0.0.1:43210 as ID (p2, c0, k30, u'user').`
fn mosquitto_connection(line: &str) -> Option<Connected> {
    let rest = line.split_once("New client connected from ")?.1;
    let (_, rest) = rest.split_once(" as ")?;
    let (client_id, flags) = rest.rsplit_once(" (")?;
    let flags = flags.trim_end_matches(").").trim_end_matches(')');
    let mut connected = Connected {
        client_id: client_id.to_owned(),
        clean_session: true,
        keepalive: 0,
        username: None,
    };
    for flag in flags.split(", ") {
        match flag.split_at(1) {
            ("c", value) => connected.clean_session = value == "1",
            ("k", value) => connected.keepalive = value.parse().ok()?,
            ("u", value) => connected.username = Some(value.trim_matches('\'').to_owned()),
            _ => {}
        }
    }
    Some(connected)
}

/// `... client connected peer=... client_id=ID clean_session=false keep_alive=30 user=NAME ...`
fn fieldbridge_connection(line: &str) -> Option<Connected> {
    if !line.contains("client connected") {
        return None;
    }
    Some(Connected {
        client_id: field(line, "client_id")?.to_owned(),
        clean_session: field(line, "clean_session")? == "true",
        keepalive: field(line, "keep_alive")?.parse().ok()?,
        username: field(line, "user")
            .filter(|user| !user.is_empty())
            .map(str::to_owned),
    })
}

/// The value of `key=value` in a log line (values of these fields have no spaces).
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split(' ')
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
}

/// Adds each test function to the suite once per broker (see [`broker_test`]).
#[allow(unused_macros)] // test binaries without a broker include this module too
macro_rules! broker_tests {
    ($suite:expr; $($test:ident),+ $(,)?) => {
        $( $crate::common::broker_test(&mut $suite, stringify!($test), $test); )+
    };
}
#[allow(unused_imports)]
pub(crate) use broker_tests;
