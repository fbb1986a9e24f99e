//! Hostile authentication traffic over real HTTP and WebSockets against a real PostgreSQL:
//! password checks run outside database slots (a login burst does not starve message commits),
//! a full password queue answers `busy`, guessers are locked out per account and per address
//! (and audited) while everyone else still logs in, OTP checks share those limits, and code
//! sends are limited per address and in total. Client addresses come from `X-Forwarded-For`,
//! which the test server believes because the tests connect from a trusted proxy (127.0.0.1).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::{code, TestServer, WsClient};
use futures_util::future::{join, join_all};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// What a request from a given client address got back.
struct Answer {
    status: u16,
    body: Value,
    retry_after: Option<u64>,
}

/// POSTs JSON as if from `client` behind the (trusted) proxy.
async fn post_from(s: &TestServer, client: &str, path: &str, body: Value) -> Answer {
    let mut res = s
        .client
        .post(s.url(path))
        .insert_header(("X-Forwarded-For", client))
        .send_json(&body)
        .await
        .expect("request sent");
    let retry_after = res
        .headers()
        .get("Retry-After")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.parse().expect("Retry-After is a number of seconds"));
    let bytes = res.body().await.expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| json!({}));
    Answer {
        status: res.status().as_u16(),
        body,
        retry_after,
    }
}

async fn login_from(s: &TestServer, client: &str, email: &str, password: &str) -> Answer {
    post_from(
        s,
        client,
        "/auth/login",
        json!({"email": email, "password": password}),
    )
    .await
}

/// Asserts a 429 `rate_limited` whose header and body agree on a positive wait.
fn assert_rate_limited(a: &Answer, what: &str) -> u64 {
    assert_eq!(
        (a.status, code(&a.body)),
        (429, "rate_limited"),
        "{what}: {}",
        a.body
    );
    let secs = a.retry_after.expect("Retry-After header");
    assert!(secs >= 1, "{what}: Retry-After {secs}");
    assert_eq!(a.body["error"]["retryAfter"], secs, "{what}");
    secs
}

/// `(target_type, target_id, ip, details)` of every lockout in the audit log.
fn lockouts(s: &TestServer) -> Vec<(String, String, String, Value)> {
    use diesel::prelude::*;
    use switchboard::db::schema::audit_log::dsl::*;
    audit_log
        .filter(action.eq("auth.lockout"))
        .order(id.asc())
        .select((target_type, target_id, ip, details, actor_id))
        .load::<(String, Option<String>, Option<String>, Value, Option<i64>)>(&mut s.db.conn())
        .unwrap()
        .into_iter()
        .map(|(t, target, addr, d, actor)| {
            assert_eq!(actor, None, "the server, not a user, locks out");
            (t, target.unwrap(), addr.unwrap(), d)
        })
        .collect()
}

#[actix_web::test]
async fn a_burst_of_logins_leaves_message_commits_their_database_slots() {
    // Two connections and a short wait for one: logins that held a slot through PBKDF2 (80
    // hashes on two threads: seconds) would make commits time out with `unavailable`. The wait
    // leaves room for the logins' own queries on a machine busy with the rest of the suite.
    let s = TestServer::start_with(|c| {
        c.db_pool_size = 2;
        c.db_acquire_timeout = Duration::from_millis(1500);
        c.password_hash_threads = 2;
        c.password_hash_queue = 64;
    })
    .await;
    s.create_user("Crowd", "crowd@example.com", Some("crowd-password"), &[]);
    let alice = s.create_user("Alice", "alice@example.com", None, &[]);
    let bob = s.create_user("Bob", "bob@example.com", None, &[]);
    let conv = {
        let mut conn = s.db.conn();
        switchboard::db::conversations::create_group(&mut conn, alice, "team", &[bob], None)
            .unwrap()
            .id
    };
    let mut ws = WsClient::connect(&s, &s.token_for(alice)).await;
    ws.request(
        "conversation:join",
        json!({"conversationId": conv.to_string()}),
    )
    .await
    .unwrap();

    let logins_done = AtomicBool::new(false);
    // 40 clients at once, each logging in twice in a row.
    let logins = async {
        let clients: Vec<String> = (0..40)
            .map(|i| format!("198.51.100.{}", i % 4 + 1))
            .collect();
        let burst = clients.iter().map(|client| async {
            let mut answers = Vec::new();
            for _ in 0..2 {
                answers.push(login_from(&s, client, "crowd@example.com", "crowd-password").await);
            }
            answers
        });
        let answers: Vec<Answer> = join_all(burst).await.into_iter().flatten().collect();
        logins_done.store(true, Ordering::SeqCst);
        answers
    };
    let messages = async {
        let (mut acked, mut during_burst) = (0u32, 0u32);
        while !logins_done.load(Ordering::SeqCst) || acked < 5 {
            let reply = ws
                .request(
                    "message:send",
                    json!({
                        "conversationId": conv.to_string(),
                        "content": format!("message {acked}"),
                        "clientMessageId": format!("burst-{acked}"),
                    }),
                )
                .await;
            let ack = reply.unwrap_or_else(|e| panic!("message {acked} refused: {e}"));
            assert_eq!(ack["seq"], acked + 1);
            acked += 1;
            if !logins_done.load(Ordering::SeqCst) {
                during_burst += 1;
            }
        }
        (acked, during_burst)
    };
    let (answers, (acked, during_burst)) = join(logins, messages).await;
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a.status, 200, "login {i}: {}", a.body);
        assert!(a.body["accessToken"].is_string());
    }
    assert!(
        during_burst >= 3,
        "only {during_burst} of {acked} messages were committed while the logins ran"
    );
}

#[actix_web::test]
async fn a_full_password_queue_answers_busy_with_retry_after() {
    let s = TestServer::start_with(|c| {
        c.password_hash_threads = 1;
        c.password_hash_queue = 0;
    })
    .await;
    s.create_user("Dee", "dee@example.com", Some("dee-password"), &[]);
    let held = s.running.state.auth.hasher().reserve().unwrap();
    let a = login_from(&s, "198.51.100.7", "dee@example.com", "dee-password").await;
    assert_eq!((a.status, code(&a.body)), (503, "overloaded"), "{}", a.body);
    assert_eq!(a.retry_after, Some(1));
    assert_eq!(a.body["error"]["retryAfter"], 1);
    drop(held);
    let a = login_from(&s, "198.51.100.7", "dee@example.com", "dee-password").await;
    assert_eq!(a.status, 200, "{}", a.body);
}

#[actix_web::test]
async fn a_password_guesser_is_locked_out_of_one_account_while_others_log_in() {
    let s = TestServer::start_with(|c| {
        c.auth_account_max_failures = 3;
        c.auth_lockout = Duration::from_secs(60);
        c.auth_lockout_max = Duration::from_secs(600);
    })
    .await;
    s.create_user("Alice", "alice@example.com", Some("alice-password"), &[]);
    s.create_user("Bob", "bob@example.com", Some("bob-password"), &[]);
    let guesser = "203.0.113.10";
    for guess in ["123456", "password"] {
        let a = login_from(&s, guesser, "alice@example.com", guess).await;
        assert_eq!((a.status, code(&a.body)), (401, "invalid_credentials"));
    }
    // The third wrong password locks the account for AUTH_LOCKOUT_SECS.
    let a = login_from(&s, guesser, "Alice@Example.com", "qwerty").await;
    assert_eq!(assert_rate_limited(&a, "third guess"), 60);
    // Locked: even the right password waits, from anywhere.
    let a = login_from(&s, guesser, "alice@example.com", "alice-password").await;
    assert_rate_limited(&a, "right password while locked");
    let a = login_from(&s, "198.51.100.99", "alice@example.com", "alice-password").await;
    assert_rate_limited(&a, "the account from another address");

    // Someone else, from another address, logs in as usual.
    let a = login_from(&s, "198.51.100.20", "bob@example.com", "bob-password").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body["accessToken"].is_string());

    let logged = lockouts(&s);
    assert_eq!(logged.len(), 1, "{logged:?}");
    let (kind, target, ip, details) = &logged[0];
    assert_eq!(
        (kind.as_str(), target.as_str(), ip.as_str()),
        ("account", "alice@example.com", guesser)
    );
    assert_eq!(details["via"], "password");
    assert_eq!(details["failures"], 3);
    assert_eq!(details["lockoutSecs"], 60);
}

#[actix_web::test]
async fn one_address_guessing_many_accounts_is_locked_out_and_others_are_not() {
    let s = TestServer::start_with(|c| c.auth_address_max_failures = 4).await;
    s.create_user("Carol", "carol@example.com", Some("carol-password"), &[]);
    let guesser = "203.0.113.20";
    for account in ["a@example.com", "b@example.com", "carol@example.com"] {
        let a = login_from(&s, guesser, account, "letmein1").await;
        assert_eq!((a.status, code(&a.body)), (401, "invalid_credentials"));
    }
    let a = login_from(&s, guesser, "d@example.com", "letmein1").await;
    assert_rate_limited(&a, "fourth account");
    // The address is locked for any account, even with a right password.
    let a = login_from(&s, guesser, "carol@example.com", "carol-password").await;
    assert_rate_limited(&a, "right password from the locked address");
    // Carol herself, elsewhere, is not affected: one wrong guess did not lock her account.
    let a = login_from(&s, "198.51.100.30", "carol@example.com", "carol-password").await;
    assert_eq!(a.status, 200, "{}", a.body);
    // Another host behind the same proxy neither.
    let a = login_from(&s, "203.0.113.21", "carol@example.com", "carol-password").await;
    assert_eq!(a.status, 200, "{}", a.body);

    let logged = lockouts(&s);
    assert_eq!(logged.len(), 1, "{logged:?}");
    let (kind, target, ip, details) = &logged[0];
    assert_eq!(
        (kind.as_str(), target.as_str(), ip.as_str()),
        ("address", guesser, guesser)
    );
    assert_eq!(details["failures"], 4);
}

#[actix_web::test]
async fn wrong_codes_on_both_verify_routes_count_per_account_and_per_address() {
    let s = TestServer::start_with(|c| {
        c.auth_account_max_failures = 3;
        c.auth_address_max_failures = 5;
    })
    .await;
    let guesser = "203.0.113.40";
    let verify = |route: &'static str, client: &'static str, phone: &'static str| {
        let s = &s;
        async move {
            post_from(
                s,
                client,
                route,
                json!({"phone": phone, "otp": "000000", "name": "Guess"}),
            )
            .await
        }
    };
    // Three wrong codes for one phone lock that account.
    for _ in 0..2 {
        let a = verify("/auth/verify-otp-login", guesser, "+14155550101").await;
        assert_eq!(
            (a.status, code(&a.body)),
            (400, "otp_invalid"),
            "{}",
            a.body
        );
    }
    let a = verify("/auth/verify-otp-login", guesser, "+14155550101").await;
    assert_rate_limited(&a, "third code for one phone");
    let a = verify("/auth/verify-otp-register", "198.51.100.40", "+14155550101").await;
    assert_rate_limited(&a, "the locked phone from elsewhere");

    // Two more phones from the same address reach its limit of five.
    let a = verify("/auth/verify-otp-register", guesser, "+14155550102").await;
    assert_eq!(
        (a.status, code(&a.body)),
        (400, "otp_invalid"),
        "{}",
        a.body
    );
    let a = verify("/auth/verify-otp-register", guesser, "+14155550103").await;
    assert_rate_limited(&a, "fifth wrong code from one address");
    let a = verify("/auth/verify-otp-login", guesser, "+14155550104").await;
    assert_rate_limited(&a, "a fresh phone from the locked address");

    // Another client checking its own code is unaffected.
    let a = verify("/auth/verify-otp-register", "198.51.100.41", "+14155550105").await;
    assert_eq!(
        (a.status, code(&a.body)),
        (400, "otp_invalid"),
        "{}",
        a.body
    );

    let logged = lockouts(&s);
    let kinds: Vec<(&str, &str, &str)> = logged
        .iter()
        .map(|(k, t, _, d)| (k.as_str(), t.as_str(), d["via"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("account", "+14155550101", "otp_login"),
            ("address", guesser, "otp_register"),
        ]
    );
}

#[actix_web::test]
async fn code_sends_to_many_numbers_are_limited_per_address_and_in_total() {
    let s = TestServer::start_with(|c| {
        c.otp_sends_per_address_per_hour = 3;
        c.otp_sends_per_minute = 5;
    })
    .await;
    let sender = "203.0.113.50";
    for n in 0..3 {
        let a = post_from(
            &s,
            sender,
            "/auth/send-otp",
            json!({"phone": format!("+1415555020{n}")}),
        )
        .await;
        assert_eq!(a.status, 200, "send {n}: {}", a.body);
    }
    // A fourth number, on either send route, is refused: the limit is the address's.
    let a = post_from(
        &s,
        sender,
        "/auth/send-otp",
        json!({"phone": "+14155550210"}),
    )
    .await;
    let wait = assert_rate_limited(&a, "fourth number from one address");
    assert!(
        wait > 60,
        "one send per 20 minutes comes back, not {wait} s"
    );
    let a = post_from(
        &s,
        sender,
        "/auth/send-otp-login",
        json!({"phone": "+14155550211"}),
    )
    .await;
    assert_rate_limited(&a, "login code from the same address");

    // Other clients still get codes until the server-wide five per minute are used.
    for (client, phone) in [
        ("198.51.100.50", "+14155550220"),
        ("198.51.100.51", "+14155550221"),
    ] {
        let a = post_from(&s, client, "/auth/send-otp", json!({ "phone": phone })).await;
        assert_eq!(a.status, 200, "{client}: {}", a.body);
    }
    let a = post_from(
        &s,
        "198.51.100.52",
        "/auth/send-otp",
        json!({"phone": "+14155550222"}),
    )
    .await;
    assert_rate_limited(&a, "sixth code in a minute");
    let sent = {
        use diesel::prelude::*;
        use switchboard::db::schema::otp_codes::dsl::*;
        otp_codes
            .count()
            .get_result::<i64>(&mut s.db.conn())
            .unwrap()
    };
    assert_eq!(sent, 5);
}
