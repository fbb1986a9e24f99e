//! Drives the real `socket.io-client` (tests/clients/sio-puppet.js) from a test: connect
//! clients with any options, emit events (with or without an ack), and wait for what each
//! client receives.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use std::io::{BufRead, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;
use tokio::sync::mpsc;

/// How long any expected event may take.
pub const WAIT: Duration = Duration::from_secs(15);

/// One Node process holding any number of named Socket.IO clients.
pub struct Puppet {
    child: Child,
    stdin: ChildStdin,
    rx: mpsc::UnboundedReceiver<Value>,
    seen: Vec<Value>,
    url: String,
    next_tag: u64,
}

impl Puppet {
    /// Starts the driver for a server at `http://addr`.
    pub fn start(addr: std::net::SocketAddr) -> Self {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
        assert!(
            dir.join("node_modules/socket.io-client").exists(),
            "socket.io-client is not installed: run `npm ci` in tests/clients (scripts/test.sh does)"
        );
        let mut child = Command::new("node")
            .arg("sio-puppet.js")
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("node");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        Self {
            child,
            stdin,
            rx,
            seen: Vec::new(),
            url: format!("http://{addr}"),
            next_tag: 0,
        }
    }

    fn send(&mut self, cmd: Value) {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// Connects client `name` with socket.io-client options (`auth`, `query`, `transports`...).
    /// `"ackEvents": false` in `opts` leaves server emits that ask for an ack unanswered.
    pub fn open(&mut self, name: &str, opts: Value) {
        let url = self.url.clone();
        self.open_url(name, url, opts);
    }

    /// Like [`Puppet::open`], to the server at `http://addr` (another listener).
    pub fn open_at(&mut self, name: &str, addr: std::net::SocketAddr, opts: Value) {
        self.open_url(name, format!("http://{addr}"), opts);
    }

    fn open_url(&mut self, name: &str, url: String, mut opts: Value) {
        let ack_events = opts
            .as_object_mut()
            .and_then(|o| o.remove("ackEvents"))
            .unwrap_or(Value::Bool(true));
        self.send(json!({"op": "connect", "name": name, "url": url, "opts": opts, "ackEvents": ack_events}));
    }

    /// Connects and waits for `connect`.
    pub async fn connect(&mut self, name: &str, opts: Value) -> Value {
        self.open(name, opts);
        self.connected(name).await
    }

    /// Like [`Puppet::connect`], to the server at `http://addr` (another listener).
    pub async fn connect_at(
        &mut self,
        name: &str,
        addr: std::net::SocketAddr,
        opts: Value,
    ) -> Value {
        self.open_at(name, addr, opts);
        self.connected(name).await
    }

    async fn connected(&mut self, name: &str) -> Value {
        let got = self
            .wait(|v| v["name"] == name && (v["type"] == "connect" || v["type"] == "connect_error"))
            .await;
        assert_eq!(got["type"], "connect", "{name} could not connect: {got}");
        got
    }

    /// Emits without an ack.
    pub fn emit(&mut self, name: &str, event: &str, args: Value) {
        self.send(json!({"op": "emit", "name": name, "event": event, "args": args}));
    }

    /// Emits with an ack and waits for its arguments.
    pub async fn call(&mut self, name: &str, event: &str, args: Value) -> Vec<Value> {
        self.next_tag += 1;
        let tag = self.next_tag;
        self.send(json!({"op": "emit", "name": name, "event": event, "args": args, "ack": true, "tag": tag}));
        let got = self.wait(|v| v["type"] == "ack" && v["tag"] == tag).await;
        assert_ne!(got["timeout"], true, "{event} was never acknowledged");
        got["args"].as_array().cloned().unwrap_or_default()
    }

    /// Closes client `name`'s transport (its engine) without a DISCONNECT: a dropped
    /// connection, as a tunnel or a Wi-Fi hand-over makes it.
    pub fn drop_transport(&mut self, name: &str) {
        self.send(json!({"op": "drop", "name": name}));
    }

    /// Connects client `name` again (the same socket: a kept session is named) and waits for
    /// `connect`.
    pub async fn reconnect(&mut self, name: &str) -> Value {
        self.send(json!({"op": "reconnect", "name": name}));
        self.connected(name).await
    }

    /// Like [`Puppet::reconnect`], to the server at `http://addr` (another node).
    pub async fn reconnect_to(&mut self, name: &str, addr: std::net::SocketAddr) -> Value {
        self.send(json!({"op": "reconnect", "name": name, "url": format!("http://{addr}")}));
        self.connected(name).await
    }

    /// Starts connecting client `name` again without waiting (the answer may be an error).
    pub fn start_reconnect(&mut self, name: &str) {
        self.send(json!({"op": "reconnect", "name": name}));
    }

    /// Makes client `name` name another private session id on its next reconnect.
    pub fn forge_pid(&mut self, name: &str, pid: &str) {
        self.send(json!({"op": "forge", "name": name, "pid": pid}));
    }

    /// Closes client `name`.
    pub fn close(&mut self, name: &str) {
        self.send(json!({"op": "close", "name": name}));
    }

    /// Waits for an output line matching `pred` (lines seen earlier and not consumed count).
    pub async fn wait(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        self.try_wait(&pred, WAIT)
            .await
            .unwrap_or_else(|| panic!("timed out; seen so far: {:#?}", self.seen))
    }

    /// Like [`Puppet::wait`] with a deadline; `None` when nothing matched.
    pub async fn try_wait(
        &mut self,
        pred: &dyn Fn(&Value) -> bool,
        wait: Duration,
    ) -> Option<Value> {
        if let Some(i) = self.seen.iter().position(pred) {
            return Some(self.seen.remove(i));
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(v)) if pred(&v) => return Some(v),
                Ok(Some(v)) => self.seen.push(v),
                _ => return None,
            }
        }
    }

    /// Waits for event `event` on client `name`; returns its first argument.
    pub async fn event(&mut self, name: &str, event: &str) -> Value {
        let got = self
            .wait(|v| v["name"] == name && v["type"] == "event" && v["event"] == event)
            .await;
        got["args"][0].clone()
    }

    /// Like [`Puppet::event`], but the whole line (arguments, whether an ack was asked).
    pub async fn event_line(&mut self, name: &str, event: &str) -> Value {
        self.wait(|v| v["name"] == name && v["type"] == "event" && v["event"] == event)
            .await
    }

    /// Whether client `name` receives `event` within `wait`.
    pub async fn gets(&mut self, name: &str, event: &str, wait: Duration) -> Option<Value> {
        self.try_wait(
            &|v: &Value| v["name"] == name && v["type"] == "event" && v["event"] == event,
            wait,
        )
        .await
        .map(|v| v["args"][0].clone())
    }

    /// Names of the events client `name` received so far and that no wait consumed.
    pub fn unconsumed(&self, name: &str) -> Vec<String> {
        self.seen
            .iter()
            .filter(|v| v["name"] == name && v["type"] == "event")
            .filter_map(|v| v["event"].as_str().map(str::to_owned))
            .collect()
    }
}

impl Drop for Puppet {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"op": "exit"}));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
