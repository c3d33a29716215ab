//! SIGHUP: the binary reads its configuration again and applies the password file and
//! the ACL; a broken file leaves the running ones in place.

use fieldbridge_mqtt::codec::{QoS, ReasonCode, SubscribeReturnCode};

use crate::support::{granted, login_packet, run, write_file, Client, Process, DEADLINE};

const BIN: &str = env!("CARGO_BIN_EXE_fieldbridge-broker");

async fn add_user(passwd: &std::path::Path, user: &str, password: &str) {
    let (ok, _, stderr) = run(
        BIN,
        &["passwd", "-b", passwd.to_str().unwrap(), user, password],
    )
    .await;
    assert!(ok, "{stderr}");
}

/// Waits until `user` is accepted (or, with `accepted` false, refused).
async fn wait_login(process: &Process, user: &str, password: &str, accepted: bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let code = Client::attempt(
            process.addr,
            login_packet(&format!("{user}-probe"), Some(user), Some(password)),
        )
        .await;
        if (code == ReasonCode::Success) == accepted {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{user}: still {code:?} after the reload"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn subscribe_shared(process: &Process) -> SubscribeReturnCode {
    let mut alice = Client::log_in(process.addr, "alice", Some("alice"), Some("pw-a")).await;
    let codes = alice.subscribe(&[("shared/#", QoS::AtLeastOnce)]).await;
    alice.disconnect().await;
    codes[0]
}

#[tokio::test]
async fn sighup_applies_new_users_and_acl_and_keeps_them_on_errors() {
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("passwd");
    add_user(&passwd, "alice", "pw-a").await;
    let acl = write_file(dir.path(), "acl", "user alice\ntopic readwrite alice/#\n");
    let config = write_file(
        dir.path(),
        "broker.yaml",
        "listeners: [{ bind: \"127.0.0.1:0\" }]\nallow_anonymous: false\nsys_interval: 0s\nauth: { password_file: passwd, acl_file: acl }\n",
    );
    let process = Process::spawn(&["--config", config.to_str().unwrap()]).await;
    wait_login(&process, "bob", "pw-b", false).await;
    assert_eq!(
        subscribe_shared(&process).await,
        SubscribeReturnCode::Failure(ReasonCode::UnspecifiedError)
    );

    add_user(&passwd, "bob", "pw-b").await;
    std::fs::write(
        &acl,
        "user alice\ntopic readwrite alice/#\ntopic read shared/#\n",
    )
    .unwrap();
    process.hang_up();
    wait_login(&process, "bob", "pw-b", true).await;
    assert_eq!(
        subscribe_shared(&process).await,
        granted(QoS::AtLeastOnce),
        "the new ACL applies"
    );

    // A broken ACL: nothing of the new configuration is applied, not even the passwords.
    add_user(&passwd, "carol", "pw-c").await;
    std::fs::write(
        &acl,
        "user alice\ntopic readwrite alice/#\nallow everything\n",
    )
    .unwrap();
    process.hang_up();
    process.wait_for_log("configuration not reloaded").await;
    wait_login(&process, "carol", "pw-c", false).await;
    wait_login(&process, "bob", "pw-b", true).await;
    assert_eq!(subscribe_shared(&process).await, granted(QoS::AtLeastOnce));
    assert!(
        process
            .stderr
            .lock()
            .iter()
            .any(|line| line.contains("acl:3")),
        "the error names the file and line: {:?}",
        process.stderr.lock()
    );
}
