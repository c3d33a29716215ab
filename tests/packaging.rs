//! The Debian packages as an administrator meets them. `packaging/build-packages.sh`
//! builds the amd64 packages (a release build: slow the first time, then reused from
//! target/release); dpkg installs them into a throwaway root, running the maintainer
//! scripts against it through DPKG_ROOT, and then removes and purges them. With
//! CI=true the packages are also installed on this machine with `dpkg -i` and purged.
//!
//! Where cargo-deb, systemd-analyze or root are missing, the tests are reported as ignored
//! (with CI=true they fail instead).

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

use fieldbridge_testkit::{in_ci, Need, Suite};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const MAX_EXPOSURE: f64 = 2.5;
const GATEWAY_CONFIG: &str = "etc/fieldbridge/gateway.yaml";
const BROKER_CONFIG: &str = "etc/fieldbridge-broker/broker.yaml";

/// One package: its name is also its binary, service user, unit and state directory.
const PACKAGES: [&str; 2] = ["fieldbridge", "fieldbridge-broker"];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a command to completion and returns its output; a failure panics with it.
fn run(command: &mut Command) -> Output {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout_of(command: &mut Command) -> String {
    String::from_utf8_lossy(&run(command).stdout).into_owned()
}

/// What the packaging tests need from this machine.
fn needs() -> Vec<Need> {
    vec![
        Need::condition(
            cfg!(all(target_os = "linux", target_arch = "x86_64")),
            "the packaging test builds amd64 packages on an x86_64 Linux host",
        ),
        Need::program("cargo-deb", "cargo install cargo-deb --locked"),
        Need::program("systemd-analyze", "apt-get install systemd"),
        Need::condition(is_root(), "installing packages with dpkg needs root"),
    ]
}

fn is_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

/// Builds the amd64 packages once for every test in this file.
fn packages() -> &'static [PathBuf; 2] {
    static PACKAGES_BUILT: OnceLock<(tempfile::TempDir, [PathBuf; 2])> = OnceLock::new();
    let (_, debs) = PACKAGES_BUILT.get_or_init(|| {
        let out = tempfile::tempdir().expect("temporary directory");
        run(Command::new(repo().join("packaging/build-packages.sh"))
            .args(["--arch", "amd64", "--out"])
            .arg(out.path())
            .current_dir(repo()));
        let debs = PACKAGES.map(|package| {
            let path = out.path().join(format!("{package}_{VERSION}-1_amd64.deb"));
            assert!(path.is_file(), "{} was not built", path.display());
            path
        });
        (out, debs)
    });
    debs
}

fn dpkg_field(deb: &Path, field: &str) -> String {
    stdout_of(Command::new("dpkg-deb").arg("--field").arg(deb).arg(field))
        .trim()
        .to_owned()
}

/// A dpkg database and policy in an empty directory: dpkg --root installs there, and
/// the maintainer scripts run outside it with DPKG_ROOT pointing at it.
struct ThrowawayRoot {
    dir: tempfile::TempDir,
}

impl ThrowawayRoot {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let dpkg = dir.path().join("var/lib/dpkg");
        for sub in ["info", "updates", "triggers"] {
            fs::create_dir_all(dpkg.join(sub)).unwrap();
        }
        fs::write(dpkg.join("status"), "").unwrap();
        fs::write(dpkg.join("available"), "").unwrap();
        // deb-systemd-invoke asks the root's policy: never start anything on this host.
        let policy = dir.path().join("usr/sbin/policy-rc.d");
        fs::create_dir_all(policy.parent().unwrap()).unwrap();
        fs::write(&policy, "#!/bin/sh\nexit 101\n").unwrap();
        fs::set_permissions(&policy, fs::Permissions::from_mode(0o755)).unwrap();
        Self { dir }
    }

    fn path(&self, inside: &str) -> PathBuf {
        self.dir.path().join(inside.trim_start_matches('/'))
    }

    /// Runs dpkg on this root: `action` with package files or names.
    fn dpkg<I: AsRef<std::ffi::OsStr>>(&self, action: &str, operands: impl IntoIterator<Item = I>) {
        run(Command::new("dpkg")
            .arg(format!("--root={}", self.dir.path().display()))
            .arg(format!("--log={}", self.path("dpkg.log").display()))
            // Dependencies are the host's business; the scripts honour DPKG_ROOT.
            .args(["--force-depends", "--force-script-chrootless", action])
            .args(operands));
    }

    /// The `passwd` entry of a user created in this root: uid, gid, home, shell.
    fn user(&self, name: &str) -> Option<(u32, u32, String, String)> {
        passwd_entry(&fs::read_to_string(self.path("etc/passwd")).ok()?, name)
    }
}

fn passwd_entry(passwd: &str, name: &str) -> Option<(u32, u32, String, String)> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() == 7 && fields[0] == name).then(|| {
            (
                fields[2].parse().expect("numeric uid"),
                fields[3].parse().expect("numeric gid"),
                fields[5].to_owned(),
                fields[6].to_owned(),
            )
        })
    })
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .mode()
        & 0o7777
}

/// `systemd-analyze verify` has nothing to say about the unit, and `security` rates
/// its exposure at most MAX_EXPOSURE. `root` holds the binaries under usr/bin when
/// they are not installed on this machine.
fn check_unit(unit: &Path, root: Option<&Path>) {
    let name = unit.file_name().unwrap().to_string_lossy().into_owned();
    let scratch = tempfile::tempdir().unwrap();
    let verified = match root {
        Some(root) => {
            let text = fs::read_to_string(unit).unwrap();
            let exec = format!("ExecStart={}/", root.join("usr/bin").display());
            let copy = scratch.path().join(&name);
            fs::write(&copy, text.replace("ExecStart=/usr/bin/", &exec)).unwrap();
            copy
        }
        None => unit.to_owned(),
    };
    let verify = run(Command::new("systemd-analyze").arg("verify").arg(&verified));
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(
        complaints.trim().is_empty(),
        "systemd-analyze verify {name}:\n{complaints}"
    );

    let security = stdout_of(
        Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(unit),
    );
    let exposure: f64 = security
        .lines()
        .find_map(|line| {
            line.split_once("Overall exposure level for ")?
                .1
                .split_once(": ")
        })
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level for {name} in:\n{security}"));
    eprintln!("{name}: systemd-analyze security exposure {exposure}");
    assert!(
        exposure <= MAX_EXPOSURE,
        "{name}: exposure {exposure} above {MAX_EXPOSURE}:\n{security}"
    );
}

/// `link` (a multi-user.target.wants entry under `root`) leads to the installed `unit`,
/// through /lib or /usr/lib.
fn assert_enabled(link: &Path, root: &Path, unit: &Path) {
    let target = fs::read_link(link)
        .unwrap_or_else(|e| panic!("{} (unit not enabled on install): {e}", link.display()));
    let resolved = root.join(target.strip_prefix("/").unwrap_or(&target));
    assert_eq!(
        fs::canonicalize(&resolved).ok(),
        fs::canonicalize(unit).ok(),
        "{} -> {}",
        link.display(),
        target.display()
    );
}

/// `fieldbridge check` accepts the installed configuration.
fn check_gateway_config(binary: &Path, config: &Path, as_user: Option<&str>) {
    let mut command = as_service_user(binary, as_user);
    command.arg("check").arg("--config").arg(config);
    let output = stdout_of(&mut command);
    assert!(
        output.contains("ok: "),
        "unexpected check output:\n{output}"
    );
}

fn as_service_user(binary: &Path, user: Option<&str>) -> Command {
    match user {
        Some(user) => {
            let mut command = Command::new("setpriv");
            command
                .args([format!("--reuid={user}"), format!("--regid={user}")])
                .args(["--init-groups", "--"])
                .arg(binary);
            command
        }
        None => Command::new(binary),
    }
}

/// The broker starts on the installed configuration, with its listener moved to a free
/// port and, when `persistence` is given, its database moved there.
fn check_broker_starts(
    binary: &Path,
    config: &Path,
    persistence: Option<&Path>,
    as_user: Option<&str>,
) {
    let scratch = tempfile::tempdir().unwrap();
    fs::set_permissions(scratch.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let mut text = fs::read_to_string(config).unwrap();
    assert!(
        text.contains("\"127.0.0.1:1883\""),
        "listener not found in:\n{text}"
    );
    text = text.replace("\"127.0.0.1:1883\"", "\"127.0.0.1:0\"");
    if let Some(database) = persistence {
        text = text.replace(
            "/var/lib/fieldbridge-broker/broker.db",
            &database.display().to_string(),
        );
    }
    let copy = scratch.path().join("broker.yaml");
    fs::write(&copy, text).unwrap();
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o644)).unwrap();

    let mut child = as_service_user(binary, as_user)
        .arg("--config")
        .arg(&copy)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the broker");
    let stderr = child.stderr.take().unwrap();
    let (lines_tx, lines_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let listening = loop {
        match lines_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line.starts_with("listening on ") => break true,
            Ok(line) => seen.push(line),
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(listening, "the broker did not start:\n{}", seen.join("\n"));
}

fn packages_declare_depends_conffiles_and_files() {
    for (package, deb) in PACKAGES.iter().zip(packages()) {
        assert_eq!(dpkg_field(deb, "Package"), *package);
        assert_eq!(dpkg_field(deb, "Architecture"), "amd64");
        let depends = dpkg_field(deb, "Depends");
        assert!(
            depends.contains("libc6 (>= 2.36)"),
            "{package} Depends: {depends}"
        );
        let control = tempfile::tempdir().unwrap();
        run(Command::new("dpkg-deb")
            .arg("--control")
            .arg(deb)
            .arg(control.path()));
        let conffiles = fs::read_to_string(control.path().join("conffiles")).unwrap();
        let config = if *package == "fieldbridge" {
            GATEWAY_CONFIG
        } else {
            BROKER_CONFIG
        };
        assert!(
            conffiles.lines().any(|line| line == format!("/{config}")),
            "{package} conffiles:\n{conffiles}"
        );
    }
}

fn packages_install_remove_and_purge_in_a_throwaway_root() {
    let debs = packages();
    let root = ThrowawayRoot::new();
    root.dpkg("--install", debs);

    for package in PACKAGES {
        let binary = root.path(&format!("usr/bin/{package}"));
        assert_eq!(mode_of(&binary), 0o755, "{}", binary.display());
        let version = stdout_of(Command::new(&binary).arg("--version"));
        assert_eq!(version.trim(), format!("{package} {VERSION}"));

        let (uid, gid, home, shell) = root
            .user(package)
            .unwrap_or_else(|| panic!("no user {package} in the root's /etc/passwd"));
        assert_eq!(home, format!("/var/lib/{package}"));
        assert!(
            shell.ends_with("nologin"),
            "{package} has the shell {shell}"
        );
        let state = root.path(&home);
        let meta = fs::metadata(&state).expect("state directory created on install");
        assert_eq!(
            (meta.uid(), meta.gid()),
            (uid, gid),
            "{} owner",
            state.display()
        );
        assert_eq!(mode_of(&state), 0o750, "{}", state.display());

        let unit = root.path(&format!("usr/lib/systemd/system/{package}.service"));
        let enabled = root.path(&format!(
            "etc/systemd/system/multi-user.target.wants/{package}.service"
        ));
        assert_enabled(&enabled, root.dir.path(), &unit);
        check_unit(&unit, Some(root.dir.path()));
        for doc in ["copyright", "README.md"] {
            assert!(root
                .path(&format!("usr/share/doc/{package}/{doc}"))
                .is_file());
        }
    }
    assert_eq!(
        mode_of(&root.path("etc/fieldbridge/fieldbridge.env")),
        0o600
    );
    check_gateway_config(
        &root.path("usr/bin/fieldbridge"),
        &root.path(GATEWAY_CONFIG),
        None,
    );
    let database = root.path("var/lib/fieldbridge-broker/broker.db");
    check_broker_starts(
        &root.path("usr/bin/fieldbridge-broker"),
        &root.path(BROKER_CONFIG),
        Some(&database),
        None,
    );
    assert!(
        database.is_file(),
        "the broker created no database in its state directory"
    );

    root.dpkg("--remove", PACKAGES);
    for package in PACKAGES {
        assert!(!root.path(&format!("usr/bin/{package}")).exists());
        let state = root.path(&format!("var/lib/{package}"));
        assert!(state.is_dir(), "{package}: state deleted on remove");
    }
    assert!(database.is_file(), "broker data deleted on remove");
    assert!(
        root.path(GATEWAY_CONFIG).is_file(),
        "conffiles deleted on remove"
    );

    root.dpkg("--purge", PACKAGES);
    for package in PACKAGES {
        for gone in [
            format!("var/lib/{package}"),
            format!("etc/{package}"),
            format!("etc/systemd/system/multi-user.target.wants/{package}.service"),
        ] {
            assert!(!root.path(&gone).exists(), "{gone} left after purge");
        }
    }
}

/// Purges the packages from this machine when dropped, also after a failed check.
struct HostPackages;

impl Drop for HostPackages {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").arg("--purge").args(PACKAGES).status();
    }
}

fn host_user(name: &str) -> Option<(u32, u32, String, String)> {
    let output = Command::new("getent")
        .args(["passwd", name])
        .output()
        .ok()?;
    passwd_entry(&String::from_utf8_lossy(&output.stdout), name)
}

fn packages_install_on_this_machine_in_ci() {
    let debs = packages();
    run(Command::new("dpkg").arg("--purge").args(PACKAGES));
    let _purge = HostPackages;
    run(Command::new("dpkg").arg("--install").args(debs));

    for package in PACKAGES {
        let binary = Path::new("/usr/bin").join(package);
        assert_eq!(mode_of(&binary), 0o755);
        let (uid, gid, home, shell) =
            host_user(package).unwrap_or_else(|| panic!("no user {package}"));
        assert_eq!(home, format!("/var/lib/{package}"));
        assert!(
            shell.ends_with("nologin"),
            "{package} has the shell {shell}"
        );
        let meta = fs::metadata(&home).expect("state directory created on install");
        assert_eq!((meta.uid(), meta.gid()), (uid, gid), "{home} owner");
        assert_eq!(mode_of(Path::new(&home)), 0o750, "{home}");
        let unit = Path::new("/usr/lib/systemd/system").join(format!("{package}.service"));
        let enabled = format!("/etc/systemd/system/multi-user.target.wants/{package}.service");
        assert_enabled(Path::new(&enabled), Path::new("/"), &unit);
        check_unit(&unit, None);
    }
    let gateway = Path::new("/usr/bin/fieldbridge");
    let gateway_config = Path::new("/").join(GATEWAY_CONFIG);
    check_gateway_config(gateway, &gateway_config, None);
    check_gateway_config(gateway, &gateway_config, Some("fieldbridge"));
    // The service user can write its state directory (the gateway's SQLite queue).
    run(
        as_service_user(Path::new("/usr/bin/touch"), Some("fieldbridge"))
            .arg("/var/lib/fieldbridge/written-by-the-service-user"),
    );
    check_broker_starts(
        Path::new("/usr/bin/fieldbridge-broker"),
        &Path::new("/").join(BROKER_CONFIG),
        None,
        Some("fieldbridge-broker"),
    );
    assert!(Path::new("/var/lib/fieldbridge-broker/broker.db").is_file());

    run(Command::new("dpkg").arg("--remove").args(PACKAGES));
    for package in PACKAGES {
        assert!(!Path::new("/usr/bin").join(package).exists());
        assert!(
            Path::new("/var/lib").join(package).is_dir(),
            "{package}: state deleted on remove"
        );
    }
    assert!(Path::new("/var/lib/fieldbridge/written-by-the-service-user").is_file());
    assert!(gateway_config.is_file(), "conffiles deleted on remove");

    run(Command::new("dpkg").arg("--purge").args(PACKAGES));
    for package in PACKAGES {
        assert!(
            !Path::new("/var/lib").join(package).exists(),
            "{package}: state left after purge"
        );
        assert!(
            !Path::new("/etc").join(package).exists(),
            "{package}: configuration left after purge"
        );
        // System users stay: files they owned must not pass to a later user with their id.
        assert!(host_user(package).is_some());
    }
}

fn main() -> std::process::ExitCode {
    let mut suite = Suite::new();
    suite.test(
        "packages_declare_depends_conffiles_and_files",
        &needs(),
        packages_declare_depends_conffiles_and_files,
    );
    suite.test(
        "packages_install_remove_and_purge_in_a_throwaway_root",
        &needs(),
        packages_install_remove_and_purge_in_a_throwaway_root,
    );
    let mut host = needs();
    host.push(Need::condition(
        in_ci(),
        "the host install runs with CI=true only (it installs and purges the packages on this machine)",
    ));
    suite.test(
        "packages_install_on_this_machine_in_ci",
        &host,
        packages_install_on_this_machine_in_ci,
    );
    suite.run()
}
