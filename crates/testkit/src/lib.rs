//! The harness of integration tests that need something from outside the workspace
//! (Mosquitto, cargo-deb, qemu, root): each such test names what it needs, and where that
//! is missing the test is reported as ignored, with one line saying what is missing and how
//! to install it, and counted in the summary (`N ignored`). With `CI=true` nothing is
//! ignored: a test whose needs are missing fails, saying which.
//!
//! A test binary using it sets `harness = false` and ends its `main` with [`Suite::run`].
//!
//! Also what such tests share: a tmpfs to fill up ([`Tmpfs`]) and the captured log
//! ([`CapturedLogs`]).

mod logs;
mod tmpfs;

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::process::ExitCode;

use libtest_mimic::{Arguments, Failed, Trial};

pub use logs::CapturedLogs;
pub use tmpfs::{fill_file_system, Tmpfs};

/// Something a test needs from the machine.
#[derive(Debug, Clone)]
pub struct Need {
    /// What is missing, and how to get it, when it is.
    what: String,
    met: bool,
}

impl Need {
    /// A program on the `PATH` (or in an `sbin` directory, where Debian puts daemons).
    pub fn program(program: &str, install: &str) -> Need {
        Need {
            what: format!("{program} is not installed ({install})"),
            met: found(program),
        }
    }

    /// A file, such as a cross toolchain's C library.
    pub fn file(path: &str, install: &str) -> Need {
        Need {
            what: format!("{path} is missing ({install})"),
            met: Path::new(path).exists(),
        }
    }

    /// Any other condition, with what it means when it does not hold.
    pub fn condition(met: bool, what: &str) -> Need {
        Need {
            what: what.to_owned(),
            met,
        }
    }

    /// Mosquitto, the broker of the interoperability tests.
    pub fn mosquitto() -> Need {
        Need::program("mosquitto", "apt-get install mosquitto")
    }

    /// `mosquitto_pub` and `mosquitto_sub`.
    pub fn mosquitto_clients() -> Need {
        Need::program("mosquitto_sub", "apt-get install mosquitto-clients")
    }

    /// Mounting a [`Tmpfs`].
    pub fn tmpfs() -> Need {
        Need::condition(
            Tmpfs::can_mount(),
            "mounting a tmpfs needs root (CAP_SYS_ADMIN)",
        )
    }
}

/// Whether `program` is on the `PATH` or in `/usr/sbin` or `/sbin`.
pub fn found(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(Into::into))
        .any(|dir| dir.join(program).is_file())
}

/// `CI=true`: every test must run.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| value == "true")
}

/// The tests of one test binary.
#[derive(Default)]
pub struct Suite {
    trials: Vec<Trial>,
    /// Tests that cannot run here, and why.
    ignored: Vec<(String, String)>,
}

impl Suite {
    pub fn new() -> Suite {
        Suite::default()
    }

    /// A test that runs when `needs` are met.
    pub fn test(&mut self, name: &str, needs: &[Need], test: impl FnOnce() + Send + 'static) {
        let missing: Vec<String> = needs
            .iter()
            .filter(|need| !need.met)
            .map(|need| need.what.clone())
            .collect();
        let ignore = !missing.is_empty() && !in_ci();
        if ignore {
            self.ignored.push((name.to_owned(), missing.join("; ")));
        }
        let trial = Trial::test(name, move || {
            if !missing.is_empty() {
                return Err(
                    format!("CI=true requires this test, but {}", missing.join("; ")).into(),
                );
            }
            catch_unwind(AssertUnwindSafe(test))
                .map_err(|panic| Failed::from(panic_message(&panic)))
        });
        self.trials.push(trial.with_ignored_flag(ignore));
    }

    /// An asynchronous test, run on a two-worker runtime of its own.
    pub fn async_test<F, Fut>(&mut self, name: &str, needs: &[Need], test: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        self.test(name, needs, move || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a tokio runtime")
                .block_on(test())
        });
    }

    /// Runs the tests the command line selects, after one line for each test that
    /// cannot run here.
    pub fn run(self) -> ExitCode {
        for (name, why) in &self.ignored {
            eprintln!("ignored {name}: {why}");
        }
        libtest_mimic::run(&Arguments::from_args(), self.trials).exit_code()
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "the test panicked".to_owned())
}
