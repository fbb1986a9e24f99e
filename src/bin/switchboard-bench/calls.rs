//! The calls scenario: caller/callee pairs. Each pair's two sockets live in one task, so the
//! time from writing `call:initiate` on the caller's socket to reading `call:incoming` on the
//! callee's is measured on one clock without any cross-task hand-off.
//!
//! A pair makes calls one after the other until `--calls` have been handed out over all pairs:
//! `call:initiate {to, callType: "audio"}`, wait for the caller's ack (with the `callId`) and
//! the callee's `call:incoming`, then `call:end {callId}` and wait for its ack and for the
//! callee to hear the call is over (`call:cancelled`, `call:ended` or `call:missed`), so the
//! next call never finds the callee still busy. `--callers 1` gives sequential calls.

use super::client::{self, Ctx, Phase, Recv, Socket};
use super::protocol::{self, CallInbound, Target};
use super::setup::ClientSpec;
use awc::ws::Message;
use futures_util::{SinkExt, StreamExt};
use std::rc::Rc;
use std::sync::atomic::Ordering;

/// A caller and the callee it calls.
#[derive(Debug)]
pub struct Pair {
    /// Calls.
    pub caller: ClientSpec,
    /// Is called.
    pub callee: ClientSpec,
}

/// Why a call did not complete.
enum Failure {
    /// The call failed; the pair carries on with the next one.
    Call(String),
    /// A socket is gone; the pair stops.
    Socket(String),
}

/// Events that tell the callee a call is over.
const CALL_OVER: [&str; 3] = ["call:cancelled", "call:ended", "call:missed"];

/// One pair's task: connect both, wait for the run, call until the calls are handed out, then
/// hold the sockets until told to stop.
pub(super) async fn pair(ctx: Rc<Ctx>, pair: Pair) {
    let counters = &ctx.shared.counters;
    let Some((mut a, mut next_id)) = client::connect(&ctx, &pair.caller).await else {
        // The callee is not even tried: count it with the caller.
        counters.connect_failed.fetch_add(1, Ordering::Relaxed);
        *ctx.stats
            .borrow_mut()
            .connect_failures
            .entry("pair_caller_failed".to_owned())
            .or_default() += 1;
        counters.pairs_finished.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let Some((mut b, _)) = client::connect(&ctx, &pair.callee).await else {
        counters.pairs_finished.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let result = calls(&ctx, &pair, &mut a, &mut b, &mut next_id).await;
    counters.pairs_finished.fetch_add(1, Ordering::Relaxed);
    let result = match result {
        Ok(()) => hold(&ctx, &mut a, &mut b).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => {
            for (side, socket) in [("caller", &mut a), ("callee", &mut b)] {
                if let Err(e) = socket.send(Message::Close(None)).await {
                    tracing::debug!(caller = pair.caller.index, side, error = %e, "close frame not sent");
                }
            }
        }
        Err(reason) => {
            ctx.error(&client::short_reason(&reason));
            tracing::debug!(caller = pair.caller.index, %reason, "pair stopped");
        }
    }
}

/// Answers a ping-like frame; returns the frame's text when it has one to look at.
async fn text_of<S: Socket>(
    io: &mut S,
    frame: Option<Result<awc::ws::Frame, awc::error::WsProtocolError>>,
) -> Result<Option<String>, String> {
    match client::classify(frame)? {
        Recv::Text(text) => Ok(Some(text)),
        Recv::Ping(data) => {
            io.send(Message::Pong(data.into()))
                .await
                .map_err(|e| format!("send: {e}"))?;
            Ok(None)
        }
        Recv::Closed(code) => Err(client::closed_reason(code)),
        Recv::Ignore => Ok(None),
    }
}

/// Reads one frame of `io`: `None` for pings (answered) and frames of no interest.
async fn read<S: Socket>(
    target: Target,
    io: &mut S,
    frame: Option<Result<awc::ws::Frame, awc::error::WsProtocolError>>,
) -> Result<Option<CallInbound>, String> {
    let Some(text) = text_of(io, frame).await? else {
        return Ok(None);
    };
    match protocol::call_inbound(target, &text)? {
        CallInbound::Ping => {
            client::send_text(io, protocol::EIO_PONG.to_owned()).await?;
            Ok(None)
        }
        CallInbound::Disconnect => Err("disconnected".into()),
        other => Ok(Some(other)),
    }
}

/// Keeps both sockets answered until the phase is `Stop`.
async fn hold<A: Socket, B: Socket>(ctx: &Ctx, a: &mut A, b: &mut B) -> Result<(), String> {
    let target = ctx.shared.target;
    let mut phase = ctx.shared.phase.clone();
    loop {
        if *phase.borrow_and_update() == Phase::Stop {
            return Ok(());
        }
        tokio::select! {
            changed = phase.changed() => if changed.is_err() { return Ok(()) },
            f = a.next() => { read(target, a, f).await?; }
            f = b.next() => { read(target, b, f).await?; }
        }
    }
}

/// Waits for the run, then makes calls until none are left to hand out or the run ends.
async fn calls<A: Socket, B: Socket>(
    ctx: &Ctx,
    pair: &Pair,
    a: &mut A,
    b: &mut B,
    next_id: &mut u64,
) -> Result<(), String> {
    let shared = &ctx.shared;
    let counters = &shared.counters;
    let target = shared.target;
    let mut phase = shared.phase.clone();
    // Until the run starts (all pairs together, at `start_ns`), keep both sockets answered.
    let mut start_at: Option<tokio::time::Instant> = None;
    loop {
        match *phase.borrow_and_update() {
            Phase::Connect => {}
            Phase::Run { start_ns, .. } => {
                if shared.now_ns() >= start_ns {
                    break;
                }
                start_at = Some(shared.at(start_ns));
            }
            Phase::Drain | Phase::Stop => return Ok(()),
        }
        tokio::select! {
            changed = phase.changed() => if changed.is_err() { return Ok(()) },
            f = a.next() => { read(target, a, f).await?; }
            f = b.next() => { read(target, b, f).await?; }
            () = client::sleep_until(start_at), if start_at.is_some() => {}
        }
    }
    loop {
        if !matches!(*phase.borrow_and_update(), Phase::Run { .. }) {
            return Ok(());
        }
        if counters.calls_claimed.fetch_add(1, Ordering::Relaxed) >= shared.calls {
            return Ok(());
        }
        let result = call(ctx, &pair.callee.user, a, b, next_id).await;
        counters
            .calls_last_end_ns
            .fetch_max(shared.now_ns(), Ordering::Relaxed);
        match result {
            Ok(()) => {
                counters.calls_done.fetch_add(1, Ordering::Relaxed);
            }
            Err(Failure::Call(code)) => {
                counters.calls_failed.fetch_add(1, Ordering::Relaxed);
                ctx.error(&code);
            }
            Err(Failure::Socket(reason)) => {
                counters.calls_failed.fetch_add(1, Ordering::Relaxed);
                return Err(reason);
            }
        }
    }
}

/// One call: initiate, wait for the ack and the callee's `call:incoming`, end it, wait until
/// both sides know.
async fn call<A: Socket, B: Socket>(
    ctx: &Ctx,
    callee: &str,
    a: &mut A,
    b: &mut B,
    next_id: &mut u64,
) -> Result<(), Failure> {
    let shared = &ctx.shared;
    let target = shared.target;
    let id = *next_id;
    *next_id += 1;
    let frame = protocol::encode_request(
        target,
        "call:initiate",
        id,
        &protocol::CallInitiate {
            to: callee,
            call_type: "audio",
        },
    )
    .map_err(Failure::Socket)?;
    let t0 = shared.now_ns();
    client::send_text(a, frame).await.map_err(Failure::Socket)?;
    let deadline = tokio::time::Instant::now() + shared.call_timeout;

    let mut call_id: Option<String> = None;
    let mut acked_at: Option<u64> = None;
    // When `call:incoming` came, and the call id it named (it may beat the ack).
    let mut incoming: Option<(u64, Option<String>)> = None;
    let mut refused: Option<String> = None;
    while acked_at.is_none() || incoming.is_none() {
        tokio::select! {
            f = a.next() => {
                let got = read(target, a, f).await.map_err(Failure::Socket)?;
                if let Some(CallInbound::Reply { id: got, ok, code, call_id: cid, status }) = got {
                    if got != id {
                        continue;
                    }
                    if !ok {
                        return Err(Failure::Call(format!(
                            "initiate_{}",
                            code.unwrap_or_else(|| "refused".into())
                        )));
                    }
                    acked_at = Some(shared.now_ns());
                    call_id = cid;
                    if let Some(s) = status.filter(|s| s != "ringing") {
                        refused = Some(format!("initiate_status_{s}"));
                        break;
                    }
                    // An incoming for another call (a late one) does not count.
                    if let (Some((_, Some(seen))), Some(mine)) = (&incoming, &call_id) {
                        if seen != mine {
                            incoming = None;
                        }
                    }
                }
            }
            f = b.next() => {
                let got = read(target, b, f).await.map_err(Failure::Socket)?;
                if let Some(CallInbound::Event { name, call_id: cid }) = got {
                    let mine = match (&call_id, &cid) {
                        (Some(mine), Some(seen)) => mine == seen,
                        _ => true,
                    };
                    if name == "call:incoming" && mine && incoming.is_none() {
                        incoming = Some((shared.now_ns(), cid));
                    }
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                refused = Some(if acked_at.is_none() {
                    "timeout_initiate_ack".to_owned()
                } else {
                    "timeout_call_incoming".to_owned()
                });
                break;
            }
        }
    }
    if let Some(at) = acked_at {
        ctx.stats
            .borrow_mut()
            .call_ack
            .saturating_record(at.saturating_sub(t0) / 1000);
    }
    let setup_ok = refused.is_none();
    if let (true, Some((at, _))) = (setup_ok, incoming.as_ref()) {
        ctx.stats
            .borrow_mut()
            .call_setup
            .saturating_record(at.saturating_sub(t0) / 1000);
    }
    let Some(call_id) = call_id else {
        return Err(Failure::Call(
            refused.unwrap_or_else(|| "initiate_no_call_id".to_owned()),
        ));
    };

    // End it, and wait until the caller's reply and the callee's notice are both in.
    let end_id = *next_id;
    *next_id += 1;
    let frame = protocol::encode_request(
        target,
        "call:end",
        end_id,
        &protocol::CallEnd { call_id: &call_id },
    )
    .map_err(Failure::Socket)?;
    let t_end = shared.now_ns();
    client::send_text(a, frame).await.map_err(Failure::Socket)?;
    let deadline = tokio::time::Instant::now() + shared.call_timeout;
    let mut ended = false;
    // A callee that never rang hears nothing when the call ends.
    let mut callee_knows = incoming.is_none();
    let mut end_error: Option<String> = None;
    while !(ended && callee_knows) {
        tokio::select! {
            f = a.next() => {
                let got = read(target, a, f).await.map_err(Failure::Socket)?;
                if let Some(CallInbound::Reply { id: got, ok, code, .. }) = got {
                    if got == end_id {
                        ended = true;
                        if !ok {
                            end_error = Some(format!(
                                "end_{}",
                                code.unwrap_or_else(|| "refused".into())
                            ));
                            // A refused end tells the callee nothing.
                            callee_knows = true;
                        }
                    }
                }
            }
            f = b.next() => {
                let got = read(target, b, f).await.map_err(Failure::Socket)?;
                if let Some(CallInbound::Event { name, call_id: cid }) = got {
                    if CALL_OVER.contains(&name.as_str())
                        && cid.as_deref().is_none_or(|c| c == call_id)
                    {
                        callee_knows = true;
                    }
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                end_error.get_or_insert_with(|| if ended {
                    "timeout_callee_end".to_owned()
                } else {
                    "timeout_end_ack".to_owned()
                });
                break;
            }
        }
    }
    if end_error.is_none() {
        ctx.stats
            .borrow_mut()
            .call_end
            .saturating_record(shared.now_ns().saturating_sub(t_end) / 1000);
    }
    match (refused, end_error) {
        (Some(code), _) | (None, Some(code)) => Err(Failure::Call(code)),
        (None, None) => Ok(()),
    }
}
