//! Switchboard: chat and WebRTC call signaling for mobile and desktop apps.
//!
//! # Layout
//! - [`config`]: every setting, from a TOML file and the environment.
//! - [`error`]: the one error type, every error code clients see ([`error::ErrorCode`]) and
//!   the HTTP mapping.
//! - [`db`]: pool, blocking-work helper, migrations, queries per table.
//! - [`auth`]: passwords (checked on a bounded pool of their own), OTP, device sessions, access
//!   and refresh tokens, and the limits on guessing credentials and sending codes.
//! - [`http`]: REST handlers grouped by resource.
//! - [`import`]: `switchboard import`, bringing a legacy backend's exported data over.
//! - [`legacy`]: the ids imported users, conversations and chat requests had in their legacy
//!   backends, resolved from and shown to those backends' apps.
//! - [`policy`]: who may contact whom (`open`, `request`, `roles`).
//! - [`realtime`]: the actor engine (registry, sessions, conversations, group commit) and
//!   its transports; every event name is in [`realtime::events`].
//! - [`metrics`]: counters, gauges and histograms for `GET /metrics` (Prometheus text).
//! - [`server`]: the actix-web server around [`state::AppState`].
//! - [`shutdown`]: the graceful shutdown sequence on SIGTERM/SIGINT.
//! - [`notify`]: systemd readiness, stop and watchdog notifications (`Type=notify`).

pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod db;
pub mod error;
pub mod http;
pub mod import;
pub mod legacy;
pub mod media;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod realtime;
pub mod server;
pub mod shutdown;
pub mod state;
pub mod telemetry;
