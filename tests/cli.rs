//! The command line: help text, configuration refusals, and `user add` validation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

fn switchboard() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    for var in [
        "DATABASE_URL",
        "JWT_SECRET",
        "SWITCHBOARD_DEV",
        "SWITCHBOARD_CONFIG",
        "BIND",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

#[test]
fn help_documents_every_subcommand() {
    let out = switchboard().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for sub in ["serve", "migrate", "user", "token"] {
        assert!(text.contains(sub), "{sub} missing from:\n{text}");
    }
    let out = switchboard()
        .args(["user", "add", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in ["--name", "--phone", "--email", "--password", "--role"] {
        assert!(text.contains(flag), "{flag} missing from:\n{text}");
    }
}

#[test]
fn serve_refuses_a_short_jwt_secret_outside_dev_mode() {
    let out = switchboard()
        .arg("serve")
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/x")
        .env("JWT_SECRET", "too-short")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("JWT_SECRET") && err.contains("at least 32"),
        "{err}"
    );
}

#[test]
fn serve_refuses_to_start_without_a_database_url() {
    let out = switchboard()
        .arg("serve")
        .env("JWT_SECRET", common::SECRET)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DATABASE_URL"));
}

#[test]
fn user_add_requires_a_contact_and_rejects_duplicates() {
    let db = common::TestDb::migrated();
    let out = switchboard()
        .args(["user", "add", "--name", "No Contact"])
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(!out.status.success());

    let add = |phone: &str| {
        switchboard()
            .args(["user", "add", "--name", "Pat", "--phone", phone])
            .env("DATABASE_URL", &db.url)
            .output()
            .unwrap()
    };
    let first = add("+4915112345678");
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let created: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(created["phone"], "+4915112345678");
    let second = add("+49 151 1234 5678");
    assert_eq!(second.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&second.stderr).contains("phone_taken"));
}

#[test]
fn ensure_admin_creates_one_admin_once() {
    let db = common::TestDb::migrated();
    let run = || {
        let out = switchboard()
            .args(["user", "ensure-admin"])
            .env("DATABASE_URL", &db.url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let first = run();
    assert_eq!(first["created"], true);
    assert!(first["password"].as_str().unwrap().len() >= 16);
    assert_eq!(run()["created"], false);
}
