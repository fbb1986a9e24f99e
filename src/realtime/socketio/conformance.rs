//! Conformance mode: what the official Engine.IO and Socket.IO protocol test suites expect,
//! served through the production transport code, with pingInterval 300 ms, pingTimeout 200 ms
//! and maxPayload 1 000 000. `switchboard conformance engineio` serves a bare Engine.IO echo
//! server at `/engine.io/` (text and binary echoed); `switchboard conformance socketio` serves
//! namespaces `/` and `/custom` at `/socket.io/`: on connect the server emits `auth` with the
//! CONNECT payload, `message` is answered with `message-back` and the same arguments, and
//! `message-with-ack` is acknowledged with the same arguments.

use super::engine::{EioConfig, EioData, EioHandler, EioServer, EioSocket};
use actix_web::{web, App, HttpRequest, HttpServer};
use std::sync::Arc;
use std::time::Duration;

/// Settings the protocol suites assume.
pub(crate) fn suite_config() -> EioConfig {
    EioConfig {
        ping_interval: Duration::from_millis(300),
        ping_timeout: Duration::from_millis(200),
        max_payload: 1_000_000,
        queue: 1024,
        ceiling: crate::realtime::conn::Ceiling::new(
            usize::MAX,
            crate::realtime::OVER_CAPACITY_RETRY_AFTER_SECS,
            Arc::new(crate::metrics::Metrics::new()),
        ),
        close_grace: Duration::from_secs(5),
    }
}

/// Echoes every message back on the same session.
#[derive(Debug, Default)]
pub(crate) struct Echo;

impl EioHandler for Echo {
    fn on_open(&self, _socket: &Arc<EioSocket>, _req: &HttpRequest) {}

    fn on_message(&self, socket: &Arc<EioSocket>, data: EioData) {
        socket.send(data);
    }

    fn on_close(&self, _socket: &Arc<EioSocket>, _reason: &str) {}
}

/// Serves the Socket.IO echo namespaces on `bind` until interrupted.
pub async fn serve_socketio(bind: &str) -> std::io::Result<()> {
    let handler =
        super::sio::SioHandler::new(super::sio::SioApp::Conformance, Duration::from_millis(1500));
    let server = EioServer::new(suite_config(), handler);
    HttpServer::new(move || {
        let server = Arc::clone(&server);
        App::new().route(
            "/socket.io/",
            web::route().to(move |req: HttpRequest, body: web::Payload| {
                Arc::clone(&server).handle(req, body)
            }),
        )
    })
    .bind(bind)?
    .run()
    .await
}

/// Serves the Engine.IO echo server on `bind` until interrupted.
pub async fn serve_engineio(bind: &str) -> std::io::Result<()> {
    let server = EioServer::new(suite_config(), Arc::new(Echo));
    HttpServer::new(move || {
        let server = Arc::clone(&server);
        App::new().route(
            "/engine.io/",
            web::route().to(move |req: HttpRequest, body: web::Payload| {
                Arc::clone(&server).handle(req, body)
            }),
        )
    })
    .bind(bind)?
    .run()
    .await
}
