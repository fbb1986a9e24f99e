//! systemd's `sd_notify` protocol (`Type=notify` units), without libsystemd.
//!
//! systemd passes the address of a datagram socket in `NOTIFY_SOCKET`: a file system path, or a
//! Linux abstract socket name written with a leading `@`. The service sends newline-separated
//! `KEY=VALUE` assignments to it:
//!
//! - `READY=1` once migrations ran and the listener is bound (`systemctl start` returns then);
//! - `STOPPING=1` when shutdown begins;
//! - `WATCHDOG=1` periodically when the unit sets `WatchdogSec=` (systemd passes the interval in
//!   `WATCHDOG_USEC`, and `WATCHDOG_PID` names the process expected to ping);
//! - `STATUS=...`, a one-line text shown by `systemctl status`.
//!
//! Without `NOTIFY_SOCKET` (not under systemd, or another service type) every call is a no-op.
//! Sending never fails the caller: errors are logged at debug level.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// One assignment sent to the service manager.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// `READY=1`: start-up finished.
    Ready,
    /// `STOPPING=1`: shutdown began.
    Stopping,
    /// `WATCHDOG=1`: the service is alive.
    Watchdog,
    /// `STATUS=...`: free text for `systemctl status` (line breaks become spaces).
    Status(String),
}

impl State {
    fn write(&self, out: &mut String) {
        match self {
            Self::Ready => out.push_str("READY=1"),
            Self::Stopping => out.push_str("STOPPING=1"),
            Self::Watchdog => out.push_str("WATCHDOG=1"),
            Self::Status(text) => {
                out.push_str("STATUS=");
                out.extend(text.chars().map(|c| if c.is_control() { ' ' } else { c }));
            }
        }
    }
}

/// The datagram payload for `states`: one `KEY=VALUE` per line.
pub(crate) fn message(states: &[State]) -> String {
    let mut out = String::new();
    for (i, state) in states.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        state.write(&mut out);
    }
    out
}

/// The socket address named by a `NOTIFY_SOCKET` value: an absolute path, or `@name` for a Linux
/// abstract socket.
pub(crate) fn parse_address(value: &str) -> io::Result<SocketAddr> {
    if let Some(name) = value.strip_prefix('@') {
        abstract_address(name.as_bytes())
    } else if value.starts_with('/') {
        SocketAddr::from_pathname(value)
    } else {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("unsupported NOTIFY_SOCKET address `{value}`"),
        ))
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_address(name: &[u8]) -> io::Result<SocketAddr> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_address(_name: &[u8]) -> io::Result<SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract socket addresses exist only on Linux",
    ))
}

/// Half the watchdog interval systemd asks for, i.e. how often to send `WATCHDOG=1`; `None` when
/// no watchdog is configured for this process. `env` reads a variable (the process environment
/// in production); `pid` is this process's id. `WATCHDOG_PID`, when set, must equal `pid`.
pub(crate) fn watchdog_period(env: &dyn Fn(&str) -> Option<String>, pid: u32) -> Option<Duration> {
    let usec: u64 = env("WATCHDOG_USEC")?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Some(expected) = env("WATCHDOG_PID") {
        if expected.trim().parse::<u32>().ok()? != pid {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

/// A connection to the service manager's notification socket.
#[derive(Debug)]
pub(crate) struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
    stopping_sent: AtomicBool,
}

impl Notifier {
    /// The notifier named by `NOTIFY_SOCKET`; `None` when it is unset or unusable (logged at
    /// debug level).
    pub(crate) fn from_env() -> Option<Self> {
        let value = std::env::var("NOTIFY_SOCKET").ok()?;
        if value.is_empty() {
            return None;
        }
        match Self::connect(&value) {
            Ok(notifier) => Some(notifier),
            Err(error) => {
                tracing::debug!(%error, socket = %value, "NOTIFY_SOCKET is not usable");
                None
            }
        }
    }

    /// A notifier sending to `address`, written like `NOTIFY_SOCKET` (a path, or `@name`).
    pub(crate) fn connect(address: &str) -> io::Result<Self> {
        let addr = parse_address(address)?;
        let socket = UnixDatagram::unbound()?;
        Ok(Self {
            socket,
            addr,
            stopping_sent: AtomicBool::new(false),
        })
    }

    /// Sends `states` in one datagram.
    pub(crate) fn send(&self, states: &[State]) -> io::Result<()> {
        let payload = message(states);
        let sent = self.socket.send_to_addr(payload.as_bytes(), &self.addr)?;
        if sent == payload.len() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "notification datagram truncated",
            ))
        }
    }

    /// Sends `states`, logging a failure at debug level.
    pub(crate) fn notify(&self, states: &[State]) {
        if let Err(error) = self.send(states) {
            tracing::debug!(%error, message = %message(states), "sd_notify failed");
        }
    }

    /// `READY=1` with a status line.
    pub(crate) fn ready(&self, status: &str) {
        self.notify(&[State::Ready, State::Status(status.to_owned())]);
    }

    /// `STOPPING=1` with a status line, once (later calls do nothing).
    pub(crate) fn stopping(&self, status: &str) {
        if !self.stopping_sent.swap(true, Ordering::SeqCst) {
            self.notify(&[State::Stopping, State::Status(status.to_owned())]);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::path::PathBuf;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |key| map.get(key).cloned()
    }

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("sbnotify-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn receive(socket: &UnixDatagram) -> String {
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn messages_are_newline_separated_assignments() {
        assert_eq!(message(&[State::Ready]), "READY=1");
        assert_eq!(message(&[State::Stopping]), "STOPPING=1");
        assert_eq!(message(&[State::Watchdog]), "WATCHDOG=1");
        assert_eq!(
            message(&[
                State::Ready,
                State::Status("serving on 127.0.0.1:8080".into())
            ]),
            "READY=1\nSTATUS=serving on 127.0.0.1:8080"
        );
        assert_eq!(
            message(&[State::Status("two\nlines".into())]),
            "STATUS=two lines"
        );
        assert_eq!(message(&[]), "");
    }

    #[test]
    fn watchdog_period_is_half_the_interval_for_our_pid() {
        let pid = 4242;
        assert_eq!(watchdog_period(&env(&[]), pid), None);
        assert_eq!(
            watchdog_period(&env(&[("WATCHDOG_USEC", "30000000")]), pid),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            watchdog_period(
                &env(&[("WATCHDOG_USEC", "30000000"), ("WATCHDOG_PID", "4242")]),
                pid
            ),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            watchdog_period(
                &env(&[("WATCHDOG_USEC", "30000000"), ("WATCHDOG_PID", "1")]),
                pid
            ),
            None
        );
        assert_eq!(watchdog_period(&env(&[("WATCHDOG_USEC", "0")]), pid), None);
        assert_eq!(
            watchdog_period(&env(&[("WATCHDOG_USEC", "soon")]), pid),
            None
        );
    }

    #[test]
    fn addresses_are_paths_or_abstract_names() {
        let path = parse_address("/run/systemd/notify").unwrap();
        assert_eq!(
            path.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        assert!(parse_address("relative/socket").is_err());
        assert!(parse_address("vsock:2:1234").is_err());
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let abs = parse_address("@switchboard/notify").unwrap();
            assert_eq!(abs.as_abstract_name(), Some(&b"switchboard/notify"[..]));
        }
    }

    /// Sends to `socket_path` as if `NOTIFY_SOCKET` held it.
    fn notify_at(socket_path: &str, states: &[State]) {
        Notifier::connect(socket_path)
            .unwrap()
            .send(states)
            .unwrap();
    }

    #[test]
    fn datagrams_reach_a_path_socket() {
        let dir = TempDir::new("path");
        let path = dir.0.join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        notify_at(
            path.to_str().unwrap(),
            &[State::Ready, State::Status("ok".into())],
        );
        assert_eq!(receive(&listener), "READY=1\nSTATUS=ok");

        let notifier = Notifier::connect(path.to_str().unwrap()).unwrap();
        notifier.notify(&[State::Watchdog]);
        assert_eq!(receive(&listener), "WATCHDOG=1");
        notifier.stopping("bye");
        notifier.stopping("bye again");
        notifier.notify(&[State::Watchdog]);
        assert_eq!(receive(&listener), "STOPPING=1\nSTATUS=bye");
        assert_eq!(receive(&listener), "WATCHDOG=1", "STOPPING=1 is sent once");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn datagrams_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("switchboard-notify-test-{}", std::process::id());
        let listener =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        notify_at(&format!("@{name}"), &[State::Stopping]);
        assert_eq!(receive(&listener), "STOPPING=1");
    }

    #[test]
    fn sending_to_a_missing_socket_is_an_error_but_notify_is_silent() {
        let dir = TempDir::new("missing");
        let path = dir.0.join("absent.sock");
        let notifier = Notifier::connect(path.to_str().unwrap()).unwrap();
        assert!(notifier.send(&[State::Ready]).is_err());
        notifier.notify(&[State::Ready]);
    }
}
