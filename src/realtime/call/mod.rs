//! Calls: the pure state machine ([`machine`]) and, around it, the call actor that performs its
//! effects.

pub mod ice;
pub mod machine;
