//! Conformance mode: what the official Engine.IO and Socket.IO protocol test suites expect,
//! served through the production transport code. `switchboard conformance engineio` serves a
//! bare Engine.IO echo server at `/engine.io/` (text and binary echoed) with pingInterval 300 ms,
//! pingTimeout 200 ms and maxPayload 1 000 000.

use super::engine::{EioConfig, EioData, EioHandler, EioServer, EioSocket};
use actix_web::{web, App, HttpRequest, HttpServer};
use std::sync::Arc;
use std::time::Duration;

/// Settings the protocol suites assume.
pub fn suite_config() -> EioConfig {
    EioConfig {
        ping_interval: Duration::from_millis(300),
        ping_timeout: Duration::from_millis(200),
        max_payload: 1_000_000,
        queue: 1024,
    }
}

/// Echoes every message back on the same session.
#[derive(Debug, Default)]
pub struct Echo;

impl EioHandler for Echo {
    fn on_open(&self, _socket: &Arc<EioSocket>, _req: &HttpRequest) {}

    fn on_message(&self, socket: &Arc<EioSocket>, data: EioData) {
        socket.send(data);
    }

    fn on_close(&self, _socket: &Arc<EioSocket>, _reason: &str) {}
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
