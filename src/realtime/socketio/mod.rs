//! Socket.IO v4 (Engine.IO protocol v4, Socket.IO protocol v5) transport.

pub mod conformance;
pub mod engine;
pub mod packet;
pub mod sio;
