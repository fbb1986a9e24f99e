//! PostgreSQL crashing under load: a private cluster of this test is restarted with `pg_ctl
//! restart -m immediate` (every backend killed without a checkpoint, crash recovery on start)
//! several times while three members of a group send messages as fast as their acks come back,
//! each resending with the same `clientMessageId` whatever was refused or not answered, as an
//! app does. Every acknowledged message is stored once, seqs stay gap-free, every connected
//! device gets each message once and in seq order, and no socket is closed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

use crate::common::{TestDb, TestServer, WsClient};
use diesel::prelude::*;
use serde_json::{json, Value};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tokio::time::Instant;

/// Immediate restarts during the load.
const RESTARTS: usize = 3;
/// Load between the recovery from one restart and the next restart.
const LOAD_BETWEEN_RESTARTS: Duration = Duration::from_millis(400);
/// How long a sender waits for the answer to one attempt before it sends the message again.
const REPLY_WAIT: Duration = Duration::from_secs(5);
/// Pause of each sender before resending a message that was refused: apps back off by
/// different amounts, so resends of one failed batch come back in different batches.
const RESEND_PAUSES: [Duration; 3] = [
    Duration::from_millis(20),
    Duration::from_millis(150),
    Duration::from_millis(400),
];
/// A message not acknowledged within this long fails the test.
const SEND_GIVE_UP: Duration = Duration::from_secs(30);
/// How long the sends may take to work again after a restart.
const RECOVERY_WAIT: Duration = Duration::from_secs(30);
/// How long the devices may take to receive every message once the sends are over.
const DELIVERY_WAIT: Duration = Duration::from_secs(20);
/// Request ids of the senders' own frames start here, clear of `WsClient::request`'s.
const FIRST_REQUEST_ID: u64 = 1_000_000;

/// The PostgreSQL server programs and who runs them: this process, or the `postgres` OS user
/// through `runuser` when we are root (PostgreSQL refuses to run as root).
#[derive(Clone, Debug)]
struct Programs {
    bindir: PathBuf,
    as_postgres: bool,
}

impl Programs {
    /// Finds `initdb` and `pg_ctl` (the newest `/usr/lib/postgresql/<version>/bin` first, then
    /// `PATH`); fails the test saying what is missing.
    fn find() -> Self {
        let Some(bindir) = server_bindir() else {
            panic!(
                "PostgreSQL server programs (initdb, pg_ctl) were not found in \
                 /usr/lib/postgresql/<version>/bin or on PATH: this test starts and restarts its \
                 own cluster. Install them (scripts/test.sh does when run as root; on \
                 Debian/Ubuntu: apt-get install -y postgresql)"
            );
        };
        let as_postgres = running_as_root();
        if as_postgres {
            let user = Command::new("id").args(["-u", "postgres"]).output();
            assert!(
                user.is_ok_and(|o| o.status.success()),
                "running as root, the cluster must run as the `postgres` OS user, which does not \
                 exist (installing the postgresql package creates it)"
            );
            assert!(
                Command::new("runuser").arg("--help").output().is_ok(),
                "running as root, `runuser` (util-linux) is needed to run PostgreSQL as the \
                 `postgres` OS user"
            );
        }
        Self {
            bindir,
            as_postgres,
        }
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bindir.join(program);
        if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"])
                .arg(path)
                .current_dir("/");
            cmd
        } else {
            Command::new(path)
        }
    }

    /// Runs `program`; the error carries its output.
    fn run(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let out = self
            .command(program)
            .args(args)
            .output()
            .map_err(|e| format!("{program} could not be started: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{program} {args:?}: {}\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

fn server_bindir() -> Option<PathBuf> {
    let has_programs = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry
                .file_name()
                .to_str()?
                .split('.')
                .map(|part| part.parse().ok())
                .collect::<Option<Vec<u32>>>()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort();
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    versions
        .into_iter()
        .rev()
        .map(|(_, dir)| dir)
        .chain(on_path)
        .find(|dir| has_programs(dir))
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// What restarting and stopping a cluster needs (sent to a blocking thread).
#[derive(Clone, Debug)]
struct Ctl {
    programs: Programs,
    data: String,
    log: String,
    port: u16,
}

impl Ctl {
    fn start(&self) -> Result<(), String> {
        let port = format!("-p {}", self.port);
        self.programs.run(
            "pg_ctl",
            &[
                "-D", &self.data, "-l", &self.log, "-w", "-t", "60", "-o", &port, "start",
            ],
        )
    }

    /// Kills the server without a checkpoint and starts it again; returns once it accepts
    /// connections (after crash recovery).
    fn restart_immediate(&self) -> Result<(), String> {
        let port = format!("-p {}", self.port);
        self.programs.run(
            "pg_ctl",
            &[
                "-D",
                &self.data,
                "-l",
                &self.log,
                "-w",
                "-t",
                "60",
                "-m",
                "immediate",
                "-o",
                &port,
                "restart",
            ],
        )
    }

    fn stop(&self) -> Result<(), String> {
        self.programs.run(
            "pg_ctl",
            &[
                "-D",
                &self.data,
                "-w",
                "-t",
                "30",
                "-m",
                "immediate",
                "stop",
            ],
        )
    }
}

/// A private PostgreSQL cluster in a fresh temporary directory, listening on 127.0.0.1 only
/// with trust authentication and `fsync` on; stopped and removed when dropped, also when the
/// test fails.
struct Cluster {
    ctl: Ctl,
    root: PathBuf,
}

impl Cluster {
    fn start() -> Self {
        let programs = Programs::find();
        let root = std::env::temp_dir().join(format!(
            "switchboard-pg-restart-{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
        ));
        std::fs::create_dir(&root).expect("create the cluster's temporary directory");
        // From here on the directory is removed whatever happens.
        let data = root.join("data");
        let log = root.join("postgresql.log");
        let mut cluster = Self {
            ctl: Ctl {
                programs: programs.clone(),
                data: data.to_str().expect("UTF-8 temporary path").to_owned(),
                log: log.to_str().expect("UTF-8 temporary path").to_owned(),
                port: 0,
            },
            root,
        };
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&cluster.root, std::fs::Permissions::from_mode(0o700))
                .unwrap();
        }
        if programs.as_postgres {
            let owned = Command::new("chown")
                .arg("postgres:postgres")
                .arg(&cluster.root)
                .status();
            assert!(
                owned.is_ok_and(|s| s.success()),
                "chown postgres {}",
                cluster.root.display()
            );
        }
        // `--no-sync` only skips initdb's own flush of the new files: the machine does not
        // crash here, the server does, and the server runs with `fsync = on`.
        programs
            .run(
                "initdb",
                &[
                    "-D",
                    &cluster.ctl.data,
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
            )
            .unwrap_or_else(|e| panic!("initdb failed: {e}"));
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .expect("open postgresql.conf");
        writeln!(
            conf,
            "\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n\
             fsync = on\nsynchronous_commit = on\nmax_connections = 50"
        )
        .unwrap();
        drop(conf);
        // A port free a moment ago may be taken by the time the server binds it: try a few.
        let mut failures = Vec::new();
        for _ in 0..3 {
            cluster.ctl.port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            match cluster.ctl.start() {
                Ok(()) => return cluster,
                Err(e) => failures.push(e),
            }
        }
        panic!(
            "the private PostgreSQL cluster did not start: {failures:#?}\n{}",
            cluster.log_tail()
        );
    }

    fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.ctl.port)
    }

    /// The server's log so far.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.ctl.log).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("PostgreSQL log (last lines):\n{}", self.log_tail());
        }
        let _ = self.ctl.stop();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Answers and refusals the senders saw.
#[derive(Debug, Default)]
struct Tally {
    unavailable: usize,
    unanswered: usize,
    other_errors: Vec<String>,
}

/// One connected device and every `message:new` it received.
struct Device {
    label: String,
    user: i64,
    ws: WsClient,
    /// Pause before resending a refused message.
    resend_pause: Duration,
    next_id: u64,
    /// `(seq, message id)` of each `message:new`, in arrival order.
    got: Vec<(i64, String)>,
    /// The message (client message id) each request id was sent for.
    asked: HashMap<u64, String>,
    /// Answers that came after their message was acknowledged: `(client message id, frame)`.
    late: Vec<(String, Value)>,
}

impl Device {
    async fn connect(s: &TestServer, label: String, user: i64, resend_pause: Duration) -> Self {
        Self {
            label,
            user,
            ws: WsClient::connect(s, &s.token_for(user)).await,
            resend_pause,
            next_id: FIRST_REQUEST_ID,
            got: Vec::new(),
            asked: HashMap::new(),
            late: Vec::new(),
        }
    }

    /// Reads frames for up to `wait`, recording `message:new`; answers the first frame that
    /// answers a request. Fails the test when the server closed the socket.
    async fn next_answer(&mut self, wait: Duration) -> Option<Value> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let Some(frame) = self.ws.next_frame(left).await else {
                assert!(
                    self.ws.closed.is_none(),
                    "{}: the server closed the socket: {:?}",
                    self.label,
                    self.ws.closed
                );
                assert!(
                    Instant::now() + Duration::from_millis(20) >= deadline,
                    "{}: the socket ended",
                    self.label
                );
                return None;
            };
            if frame["event"] == "message:new" {
                let m = &frame["payload"];
                self.got.push((
                    m["seq"].as_i64().unwrap(),
                    m["id"].as_str().unwrap().to_owned(),
                ));
            } else if !frame["id"].is_null() {
                return Some(frame);
            }
        }
    }

    /// Sends a message until it is acknowledged, always with the same client message id: again
    /// a resend pause after a refusal (`unavailable`; anything else is also counted, and fails
    /// the test), and again after [`REPLY_WAIT`] without an answer.
    async fn send_until_acked(
        &mut self,
        payload: Value,
        key: &str,
        tally: &RefCell<Tally>,
    ) -> Value {
        let started = Instant::now();
        let mut attempts: Vec<u64> = Vec::new();
        let mut resend_at = Instant::now();
        let mut awaiting = false;
        loop {
            if Instant::now() >= resend_at {
                assert!(
                    started.elapsed() < SEND_GIVE_UP,
                    "{}: {key} not acknowledged within {SEND_GIVE_UP:?}: {:?}",
                    self.label,
                    tally.borrow()
                );
                let id = self.next_id;
                self.next_id += 1;
                attempts.push(id);
                self.asked.insert(id, key.to_owned());
                let frame = json!({"event": "message:send", "payload": payload, "id": id});
                assert!(
                    self.ws.try_send_text(frame.to_string()).await,
                    "{}: the socket is gone",
                    self.label
                );
                resend_at = Instant::now() + REPLY_WAIT;
                awaiting = true;
            }
            let left = resend_at.saturating_duration_since(Instant::now());
            let Some(frame) = self.next_answer(left).await else {
                if awaiting {
                    tally.borrow_mut().unanswered += 1;
                }
                continue;
            };
            let id = frame["id"].as_u64();
            if !id.is_some_and(|id| attempts.contains(&id)) {
                let of = id
                    .and_then(|id| self.asked.get(&id))
                    .cloned()
                    .unwrap_or_default();
                self.late.push((of, frame));
                continue;
            }
            if frame["event"] == "ack" {
                return frame["payload"].clone();
            }
            match frame["payload"]["code"].as_str() {
                Some("unavailable") => tally.borrow_mut().unavailable += 1,
                _ => tally
                    .borrow_mut()
                    .other_errors
                    .push(format!("{key}: {frame}")),
            }
            if id == attempts.last().copied() {
                resend_at = Instant::now() + self.resend_pause;
                awaiting = false;
            }
        }
    }
}

#[actix_web::test]
async fn acked_messages_are_stored_once_and_reach_every_device_once_in_seq_order_across_immediate_postgres_restarts(
) {
    let began = Instant::now();
    let cluster = Cluster::start();
    let s = TestServer::start_on(TestDb::migrated_on(&cluster.admin_url()), |c| {
        c.db_acquire_timeout = Duration::from_millis(250);
    })
    .await;
    let users: Vec<i64> = (0..6)
        .map(|i| s.create_user(&format!("M{i}"), &format!("m{i}@example.com"), None, &[]))
        .collect();
    let conv = {
        let mut conn = s.db.conn();
        switchboard::db::conversations::create_group(&mut conn, users[0], "g", &users[1..], None)
            .unwrap()
            .id
    };
    let conv_id = conv.to_string();
    // Three senders, each with a second device; three members who only read.
    let mut senders = Vec::new();
    let mut readers = Vec::new();
    for (i, user) in users.iter().enumerate() {
        if i < 3 {
            senders.push(Device::connect(&s, format!("sender {i}"), *user, RESEND_PAUSES[i]).await);
            let label = format!("sender {i}'s other device");
            readers.push(Device::connect(&s, label, *user, Duration::ZERO).await);
        } else {
            readers.push(Device::connect(&s, format!("member {i}"), *user, Duration::ZERO).await);
        }
    }

    let tally = RefCell::new(Tally::default());
    let acks = Cell::new(0usize);
    let stop = Cell::new(false);
    let senders_done = Cell::new(0usize);
    let sender_count = senders.len();
    let sending = senders.iter_mut().map(|dev| {
        let (conv_id, tally, acks, stop, senders_done) =
            (&conv_id, &tally, &acks, &stop, &senders_done);
        async move {
            let mut acked = Vec::new();
            let mut n = 0;
            while !stop.get() {
                let key = format!("{}-{n}", dev.user);
                let payload = json!({
                    "conversationId": conv_id,
                    "content": format!("{} #{n}", dev.label),
                    "clientMessageId": key,
                });
                let ack = dev.send_until_acked(payload, &key, tally).await;
                acks.set(acks.get() + 1);
                acked.push((key, ack));
                n += 1;
            }
            senders_done.set(senders_done.get() + 1);
            acked
        }
    });
    let reading = readers.iter_mut().map(|dev| {
        let senders_done = &senders_done;
        async move {
            while senders_done.get() < sender_count {
                dev.next_answer(Duration::from_millis(100)).await;
            }
        }
    });
    let restarting = async {
        for restart in 1..=RESTARTS {
            // The sends work (again), and go on for a while before the next crash.
            let before = acks.get();
            let waiting = Instant::now();
            while acks.get() == before {
                assert!(
                    waiting.elapsed() < RECOVERY_WAIT,
                    "no message acknowledged within {RECOVERY_WAIT:?} before restart {restart}: {:?}",
                    tally.borrow()
                );
                actix_web::rt::time::sleep(Duration::from_millis(10)).await;
            }
            actix_web::rt::time::sleep(LOAD_BETWEEN_RESTARTS).await;
            let ctl = cluster.ctl.clone();
            actix_web::rt::task::spawn_blocking(move || ctl.restart_immediate())
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("restart {restart}: {e}"));
        }
        let before = acks.get();
        let waiting = Instant::now();
        while acks.get() == before {
            assert!(
                waiting.elapsed() < RECOVERY_WAIT,
                "no message acknowledged within {RECOVERY_WAIT:?} after the last restart: {:?}",
                tally.borrow()
            );
            actix_web::rt::time::sleep(Duration::from_millis(10)).await;
        }
        actix_web::rt::time::sleep(LOAD_BETWEEN_RESTARTS).await;
        stop.set(true);
    };
    let (acked, _, ()) = futures_util::future::join3(
        futures_util::future::join_all(sending),
        futures_util::future::join_all(reading),
        restarting,
    )
    .await;
    let tally = tally.into_inner();
    assert_eq!(
        cluster
            .log()
            .matches("not properly shut down; automatic recovery in progress")
            .count(),
        RESTARTS,
        "each restart killed the server and recovered from its WAL"
    );
    assert!(
        tally.other_errors.is_empty(),
        "sends were refused with something else than `unavailable`: {:#?}",
        tally.other_errors
    );

    // What was acknowledged: seq → (message id, sender, client message id).
    let mut by_seq: BTreeMap<i64, (String, i64, String)> = BTreeMap::new();
    let mut by_key: HashMap<String, (i64, String)> = HashMap::new();
    for (dev, acked) in senders.iter().zip(&acked) {
        for (key, ack) in acked {
            let seq = ack["seq"].as_i64().unwrap();
            let id = ack["id"].as_str().unwrap().to_owned();
            assert_eq!(ack["clientMessageId"], json!(key), "{ack}");
            assert_eq!(ack["senderId"], json!(dev.user.to_string()), "{ack}");
            let clash = by_seq.insert(seq, (id.clone(), dev.user, key.clone()));
            assert!(clash.is_none(), "seq {seq} acknowledged for two messages");
            by_key.insert(key.clone(), (seq, id));
        }
    }
    let total = by_seq.len();
    // An answer to an earlier attempt that arrived after the ack says the same.
    for dev in &senders {
        for (key, frame) in &dev.late {
            if frame["event"] == "ack" {
                let (seq, id) = &by_key[key];
                assert_eq!(
                    (
                        frame["payload"]["seq"].as_i64(),
                        frame["payload"]["id"].as_str()
                    ),
                    (Some(*seq), Some(id.as_str())),
                    "{}: a late ack of {key} names another message",
                    dev.label
                );
            }
        }
    }

    // Stored exactly once each, seqs gap-free.
    {
        use switchboard::db::schema::{conversations, messages};
        let mut conn = s.db.conn();
        let rows: Vec<(i64, i64, Option<i64>, Option<String>)> = messages::table
            .filter(messages::conversation_id.eq(conv))
            .select((
                messages::seq,
                messages::id,
                messages::sender_id,
                messages::client_message_id,
            ))
            .order(messages::seq)
            .load(&mut conn)
            .unwrap();
        let seqs: Vec<i64> = rows.iter().map(|r| r.0).collect();
        assert_eq!(
            seqs,
            (1..=rows.len() as i64).collect::<Vec<_>>(),
            "seqs are gap-free"
        );
        let mut keys: Vec<(Option<i64>, Option<&str>)> =
            rows.iter().map(|r| (r.2, r.3.as_deref())).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), rows.len(), "no message stored twice");
        assert_eq!(
            rows.len(),
            total,
            "every stored message was acknowledged and every acknowledged one stored"
        );
        for (seq, id, sender, key) in &rows {
            let (acked_id, acked_sender, acked_key) = &by_seq[seq];
            assert_eq!(
                (id.to_string(), *sender, key.as_deref()),
                (
                    acked_id.clone(),
                    Some(*acked_sender),
                    Some(acked_key.as_str())
                ),
                "the row at seq {seq} is the message acknowledged with it"
            );
        }
        let last_seq: i64 = conversations::table
            .find(conv)
            .select(conversations::last_seq)
            .get_result(&mut conn)
            .unwrap();
        assert_eq!(last_seq, total as i64, "the conversation's last seq");
    }

    // Every device gets every message once, in seq order; a sending device gets the others'
    // messages (its own come back as acks, or as `message:new` when a send it was told failed
    // had been stored after all).
    let required = |dev: &Device, sending: bool| -> Vec<i64> {
        by_seq
            .iter()
            .filter(|(_, (_, sender, _))| !sending || *sender != dev.user)
            .map(|(seq, _)| *seq)
            .collect()
    };
    let collecting = senders
        .iter_mut()
        .map(|d| (d, true))
        .chain(readers.iter_mut().map(|d| (d, false)))
        .map(|(dev, sending)| {
            let required = required(dev, sending);
            async move {
                let deadline = Instant::now() + DELIVERY_WAIT;
                while Instant::now() < deadline {
                    let mut seqs: Vec<i64> = dev.got.iter().map(|(seq, _)| *seq).collect();
                    seqs.sort_unstable();
                    if required.iter().all(|r| seqs.binary_search(r).is_ok()) {
                        break;
                    }
                    dev.next_answer(Duration::from_millis(100)).await;
                }
                // Anything still on its way would be a duplicate.
                dev.next_answer(Duration::from_millis(200)).await;
                (dev, sending, required)
            }
        });
    let mut deliveries = 0;
    // A sending device gets its own message as `message:new` only when it was told the send
    // failed and the conversation found the row stored by then.
    let mut stored_after_refusal = 0;
    for (dev, sending, required) in futures_util::future::join_all(collecting).await {
        let seqs: Vec<i64> = dev.got.iter().map(|(seq, _)| *seq).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{}: message:new once each and in seq order, got {seqs:?}",
            dev.label
        );
        let missing: Vec<i64> = required
            .iter()
            .copied()
            .filter(|r| !seqs.contains(r))
            .collect();
        assert!(
            missing.is_empty(),
            "{}: message:new missing for seqs {missing:?} of {total}",
            dev.label
        );
        for (seq, id) in &dev.got {
            let (acked_id, _, _) = by_seq
                .get(seq)
                .unwrap_or_else(|| panic!("{}: message:new for unknown seq {seq}", dev.label));
            assert_eq!(id, acked_id, "{}: the message at seq {seq}", dev.label);
        }
        deliveries += seqs.len();
        if sending {
            stored_after_refusal += seqs.iter().filter(|q| by_seq[q].1 == dev.user).count();
        }
        // The socket is still open and answers.
        dev.ws
            .request("ping", json!({}))
            .await
            .unwrap_or_else(|e| panic!("{}: ping refused: {e}", dev.label));
        assert!(
            dev.ws.take_buffered("message:new").is_empty(),
            "{}: a message:new arrived twice",
            dev.label
        );
        assert!(dev.ws.closed.is_none(), "{}: closed", dev.label);
    }
    eprintln!(
        "{total} messages acknowledged ({:?} per sender), {RESTARTS} immediate restarts, \
         {} `unavailable` answers and {} unanswered attempts resent, {stored_after_refusal} \
         refused sends found stored, {deliveries} message:new checked on {} devices, {:.1?}",
        acked.iter().map(Vec::len).collect::<Vec<_>>(),
        tally.unavailable,
        tally.unanswered,
        senders.len() + readers.len(),
        began.elapsed()
    );
}
