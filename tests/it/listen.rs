//! One process listening on several addresses (`LISTEN`), each with the dialect its apps speak:
//! a client that names no dialect gets its listener's, `?dialect=` still wins, every listener
//! serves the whole API, and bad `LISTEN` values are refused at start-up.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use crate::common::puppet::Puppet;
use crate::common::{TestDb, WsClient};
use serde_json::json;
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;
use switchboard::config::{Config, List};
use switchboard::realtime::dialect::Dialect;
use switchboard::realtime::registry::GetStats;

fn dialect(name: &str) -> &'static Dialect {
    Dialect::find(name).unwrap()
}

async fn sessions_by_dialect(running: &switchboard::server::Running) -> HashMap<String, usize> {
    let stats = running.state.engine.registry.send(GetStats).await.unwrap();
    stats
        .by_dialect
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
}

async fn wait_for(
    running: &switchboard::server::Running,
    want: &[(&str, usize)],
) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..100 {
        seen = sessions_by_dialect(running).await;
        if want
            .iter()
            .all(|(d, n)| seen.get(*d).copied().unwrap_or(0) == *n)
        {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("sessions by dialect: {seen:?}, wanted {want:?}");
}

#[actix_web::test]
async fn each_listener_gives_its_dialect_to_clients_that_name_none() {
    let db = TestDb::migrated();
    let config = common::test_config(&db);
    let bind = || TcpListener::bind("127.0.0.1:0").unwrap();
    let (canonical, aist, worldmates) = (bind(), bind(), bind());
    let addrs: Vec<SocketAddr> = [&canonical, &aist, &worldmates]
        .iter()
        .map(|l| l.local_addr().unwrap())
        .collect();
    let running = switchboard::server::start_listeners(
        config,
        vec![
            (canonical, dialect("canonical")),
            (aist, dialect("aist")),
            (worldmates, dialect("worldmates")),
        ],
    )
    .unwrap();
    let user = {
        let mut conn = db.conn();
        switchboard::auth::create_user(
            &mut conn,
            "Alice",
            None,
            Some("alice@example.com"),
            None,
            vec![],
        )
        .unwrap()
        .id
    };
    let token = running
        .state
        .auth
        .keys()
        .sign(user, None, &[], 3600)
        .unwrap();

    // Plain WebSockets, no `?dialect=`: the canonical and the AIST listener each give theirs.
    let _c = WsClient::try_connect(addrs[0], &format!("/ws?token={token}"))
        .await
        .unwrap();
    let _a = WsClient::try_connect(addrs[1], &format!("/ws?token={token}"))
        .await
        .unwrap();
    wait_for(&running, &[("canonical", 1), ("aist", 1)]).await;
    // `?dialect=` still wins over the listener's.
    let _over = WsClient::try_connect(addrs[1], &format!("/ws?token={token}&dialect=canonical"))
        .await
        .unwrap();
    wait_for(&running, &[("canonical", 2), ("aist", 1)]).await;

    // Socket.IO on the WorldMates listener, over both transports, naming no dialect.
    let mut p = Puppet::start(addrs[2]);
    p.connect(
        "ws",
        json!({"query": {"token": token}, "transports": ["websocket"]}),
    )
    .await;
    p.connect(
        "polling",
        json!({"query": {"token": token}, "transports": ["polling"]}),
    )
    .await;
    wait_for(
        &running,
        &[("worldmates", 2), ("canonical", 2), ("aist", 1)],
    )
    .await;

    // Every listener serves the whole API.
    let client = awc::Client::default();
    for addr in &addrs {
        let mut res = client
            .get(format!("http://{addr}/health"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{addr}");
        let _ = res.body().await;
        let res = client
            .get(format!("http://{addr}/api/users/me"))
            .insert_header(("Authorization", format!("Bearer {token}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{addr}");
    }
    running.handle.stop(false).await;
}

#[test]
fn listen_entries_are_parsed_and_bad_ones_refused() {
    let mut config = Config {
        listen: "0.0.0.0:449=worldmates, 0.0.0.0:666=lonestar,0.0.0.0:3001=aist,127.0.0.1:8080"
            .parse::<List>()
            .unwrap(),
        default_dialect: "astrology".parse().unwrap(),
        ..Config::default()
    };
    let got: Vec<(String, &str)> = config
        .listeners()
        .unwrap()
        .into_iter()
        .map(|(a, d)| (a, d.name))
        .collect();
    assert_eq!(
        got,
        vec![
            ("0.0.0.0:449".to_owned(), "worldmates"),
            ("0.0.0.0:666".to_owned(), "lonestar"),
            ("0.0.0.0:3001".to_owned(), "aist"),
            ("127.0.0.1:8080".to_owned(), "astrology"),
        ]
    );
    // Without LISTEN, BIND with DEFAULT_DIALECT.
    config.listen = List::default();
    config.bind = "127.0.0.1:9000".into();
    let got = config.listeners().unwrap();
    assert_eq!(
        (got[0].0.as_str(), got[0].1.name),
        ("127.0.0.1:9000", "astrology")
    );
    for bad in [
        "0.0.0.0:449=klingon",
        "nohostport=aist",
        "0.0.0.0:1=aist,0.0.0.0:1=aist",
    ] {
        config.listen = bad.parse().unwrap();
        assert!(config.listeners().is_err(), "{bad}");
    }
}
