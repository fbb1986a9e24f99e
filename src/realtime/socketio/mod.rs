//! Socket.IO v4 (Engine.IO protocol v4, Socket.IO protocol v5) transport.

pub mod conformance;
pub mod engine;
pub mod packet;
pub(crate) mod recovery;
pub(crate) mod sio;

use crate::auth::Auth;
use crate::config::Config;
use crate::realtime::Engine;
use crate::state::AppState;
use actix_web::{web, HttpRequest, HttpResponse};
use std::sync::Arc;

/// The production Socket.IO server: the default namespace bridges to session actors.
pub(crate) fn production_server(
    config: &Config,
    auth: Auth,
    engine: Engine,
    keeper: Arc<recovery::Keeper>,
) -> Arc<engine::EioServer> {
    let handler = sio::SioHandler::new(
        sio::SioApp::Production(Box::new(sio::Production {
            auth,
            engine: engine.clone(),
            keeper,
        })),
        config.socketio_connect_timeout,
    );
    engine::EioServer::new(
        engine::EioConfig {
            ping_interval: config.socketio_ping_interval,
            ping_timeout: config.socketio_ping_timeout,
            max_payload: config.socketio_max_payload,
            queue: config.outbound_queue,
            ceiling: Arc::clone(&engine.ceiling),
            close_grace: config.socket_close_grace,
        },
        handler,
    )
}

/// `GET|POST /socket.io/`.
pub(crate) async fn route(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    Arc::clone(&state.socketio).handle(req, body).await
}
