//! The command line: help text, configuration refusals, and `user add` validation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

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

#[test]
fn serve_marks_calls_left_open_by_a_previous_process_as_failed() {
    let db = common::TestDb::migrated();
    db.exec("INSERT INTO users (id, name, email) VALUES (1, 'A', 'a@example.com'), (2, 'B', 'b@example.com')");
    db.exec(
        "INSERT INTO calls (id, call_type, caller_id, status, answered_at) VALUES ('stale', 'audio', 1, 'ongoing', now())",
    );
    db.exec("INSERT INTO call_participants (call_id, user_id, role, status) VALUES ('stale', 1, 'caller', 'joined'), ('stale', 2, 'callee', 'joined')");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = switchboard()
        .arg("serve")
        .env("DATABASE_URL", &db.url)
        .env("JWT_SECRET", common::SECRET)
        .env("BIND", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut up = false;
    for _ in 0..100 {
        // Answers only once migrations and the start-up clean-up have run.
        if let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(2)));
            let _ = conn.write_all(b"GET /ping HTTP/1.0\r\n\r\n");
            let mut answer = String::new();
            let _ = conn.read_to_string(&mut answer);
            if answer.ends_with("pong") {
                up = true;
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(up, "server came up");
    use diesel::prelude::*;
    use switchboard::db::schema::{call_participants, calls};
    let (status, reason): (String, Option<String>) = calls::table
        .find("stale")
        .select((calls::status, calls::end_reason))
        .first(&mut db.conn())
        .unwrap();
    assert_eq!(
        (status.as_str(), reason.as_deref()),
        ("failed", Some("server_restart"))
    );
    let open: i64 = call_participants::table
        .filter(call_participants::status.eq("joined"))
        .count()
        .get_result(&mut db.conn())
        .unwrap();
    assert_eq!(open, 0);
}
