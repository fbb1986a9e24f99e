//! Every integration test, in one binary: the suite links actix-web, Diesel and the server once.
//!
//! Each module holds the tests of one area and is named after it (`cargo test --test it hostile::`
//! runs one area). Shared support (a private database per test, the server started in-process,
//! a small WebSocket client) is in `common`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

mod admin;
mod agora;
mod auth;
mod auth_limits;
mod calls;
mod calls_rest;
mod chat_requests;
mod cli;
mod cluster;
mod cluster_faults;
mod dialects;
mod faults;
mod hostile;
mod http_basics;
mod idempotency_plan;
mod import;
mod legacy_auth;
mod legacy_ids;
mod listen;
mod listener;
mod logs;
mod matrix;
mod media;
mod media_s3;
mod messaging;
mod metrics;
mod migrations;
mod nul_text;
mod openapi;
mod outage;
mod pg_restart;
mod policy;
mod recovery;
mod rest_conversations;
mod seed_000;
mod seed_001;
mod seed_002;
mod seed_003;
mod seed_004;
mod shutdown;
mod socketio;
