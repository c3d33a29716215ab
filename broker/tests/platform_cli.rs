//! `fieldbridge-broker device|app add|remove|list`: tokens printed once on the last line,
//! only their hashes stored, and the printed credentials accepted by the running broker.

mod support;

use std::process::{Command, Output, Stdio};

use fieldbridge_broker::Config;
use fieldbridge_mqtt::codec::ReasonCode;
use support::{login_packet, Client};

const BIN: &str = env!("CARGO_BIN_EXE_fieldbridge-broker");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("fieldbridge-broker runs")
}

fn last_line(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .last()
        .expect("output")
        .to_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn devices_and_applications_from_the_command_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("broker.yaml");
    std::fs::write(
        &config,
        "listeners: [{ bind: \"127.0.0.1:0\" }]\nsys_interval: 0\nplatform: { org: acme, registry: platform/registry.db }\n",
    )
    .expect("config");
    std::fs::create_dir(dir.path().join("platform")).expect("dir");
    let config_arg = config.to_str().expect("UTF-8");

    let token = last_line(&run(&[
        "device",
        "add",
        "--config",
        config_arg,
        "--type",
        "boiler",
        "--id",
        "b1",
        "--metadata",
        r#"{"site":"cellar"}"#,
    ]));
    assert_eq!(token.len(), 24, "{token}");
    assert!(token.chars().all(|c| c.is_ascii_alphanumeric()), "{token}");
    let app = last_line(&run(&[
        "app", "add", "--config", config_arg, "--id", "dash",
    ]));
    let (api_key, app_token) = app.split_once(' ').expect("<api key> <token>");
    assert!(api_key.starts_with("a-acme-"), "{api_key}");

    // Only hashes are stored (relative registry path taken from the config's directory).
    let mut database = Vec::new();
    for entry in std::fs::read_dir(dir.path().join("platform")).expect("registry dir") {
        database.extend(std::fs::read(entry.expect("entry").path()).expect("registry file"));
    }
    let stored = String::from_utf8_lossy(&database);
    assert!(stored.contains("$argon2id$"));
    assert!(!stored.contains(&token) && !stored.contains(app_token));

    // Refusals: an existing device, a bad id, a config without a platform section.
    let again = run(&[
        "device", "add", "--config", config_arg, "--type", "boiler", "--id", "b1",
    ]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already registered"));
    let bad = run(&[
        "device", "add", "-c", config_arg, "--type", "boiler", "--id", "b:1",
    ]);
    assert!(!bad.status.success());
    let plain = dir.path().join("plain.yaml");
    std::fs::write(&plain, "sys_interval: 0\n").expect("config");
    let no_platform = run(&["device", "list", "--config", plain.to_str().expect("UTF-8")]);
    assert!(!no_platform.status.success());
    assert!(String::from_utf8_lossy(&no_platform.stderr).contains("platform"));

    let listed = stdout(&run(&["device", "list", "--config", config_arg]));
    assert!(listed.starts_with("boiler\tb1\t"), "{listed}");
    assert!(listed.contains(r#"{"site":"cellar"}"#), "{listed}");
    let apps = stdout(&run(&["app", "list", "--config", config_arg]));
    assert!(apps.starts_with(&format!("dash\t{api_key}\t")), "{apps}");

    // The broker accepts what the commands printed.
    let broker = support::start(Config::load(&config).expect("config loads")).await;
    let addr = broker.local_addr();
    Client::log_in(
        addr,
        "d:acme:boiler:b1",
        Some("use-token-auth"),
        Some(&token),
    )
    .await
    .disconnect()
    .await;
    Client::log_in(addr, "a:acme:dash", Some(api_key), Some(app_token))
        .await
        .disconnect()
        .await;

    // Removed: refused from then on, also while the broker runs.
    assert!(
        run(&["device", "remove", "--config", config_arg, "--type", "boiler", "--id", "b1"])
            .status
            .success()
    );
    assert!(
        run(&["app", "remove", "--config", config_arg, "--id", "dash"])
            .status
            .success()
    );
    let gone = run(&["app", "remove", "--config", config_arg, "--id", "dash"]);
    assert!(!gone.status.success());
    assert_eq!(
        stdout(&run(&["device", "list", "--config", config_arg])),
        ""
    );
    assert_eq!(
        Client::attempt(
            addr,
            login_packet("d:acme:boiler:b1", Some("use-token-auth"), Some(&token))
        )
        .await,
        ReasonCode::BadUserNameOrPassword,
        "an unknown device is answered like a bad token"
    );
    assert_eq!(
        Client::attempt(
            addr,
            login_packet("a:acme:dash", Some(api_key), Some(app_token))
        )
        .await,
        ReasonCode::BadUserNameOrPassword
    );
}
