//! Every app calls every app (itself included, and a canonical client besides), each connected
//! as the app connects: to its own listener, naming no dialect, in its own transport. The callee
//! hears the ring in its own event and types, accepts in its own words, the caller hears the
//! answer in its own; both trade an ICE candidate and each receives it in the shape its app
//! reads; one side hangs up and the other sees its own end event. The apps with chat (seed 002,
//! seed 003 and canonical clients) also message each other and see the reader's receipt in their
//! own shape.
//!
//! What each app sends and expects is written once, in the driver functions of [`Row`] (connect,
//! initiate, expect_ring, accept, expect_answer, send_ice, expect_ice, hang_up, expect_end;
//! send_message, expect_message, mark_read, expect_read), each a match on [`App`]; the matrix is
//! a loop over pairs. Each caller app's row has its own Socket.IO driver, and the rows run side
//! by side. A failing pair does not stop the others: the report names every one.
//!
//! Readings where the seeds are silent: the astrology app (seed 002) joins calls only through
//! Agora (no SDP, no ICE) and the other seed apps only through WebRTC, so a call between the
//! astrology app and one of those could never connect: its caller hears `media_unsupported` in
//! its own error event and the callee is not rung. A canonical client takes either provider: its
//! calls with the astrology app go through Agora and skip the ICE step. Seed 004 names no call
//! type: its calls are audio.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::puppet::Puppet;
use crate::common::{TestServer, WsClient, SECRET};
use serde_json::{json, Value};
use switchboard::config::Secret;

/// The apps (seeds 000–004) and a canonical client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum App {
    Canonical,
    Lonestar,
    WorldMates,
    Astrology,
    Backend2,
    Aist,
}

const APPS: [App; 6] = [
    App::Canonical,
    App::Lonestar,
    App::WorldMates,
    App::Astrology,
    App::Backend2,
    App::Aist,
];

/// The apps that have conversations on the socket.
const CHAT_APPS: [App; 3] = [App::Canonical, App::Astrology, App::Backend2];

const OFFER: &str = "v=0 offer";
const ANSWER: &str = "v=0 answer";

fn offer() -> Value {
    json!({"type": "offer", "sdp": OFFER})
}

fn answer() -> Value {
    json!({"type": "answer", "sdp": ANSWER})
}

/// A number not used before in this process (room names).
fn next_room() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn s(id: i64) -> String {
    id.to_string()
}

/// A token as the AIST backend minted it: `jwt.sign({ userId }, JWT_SECRET)`, a numeric id.
fn aist_token(user_id: i64) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"userId": user_id, "exp": chrono::Utc::now().timestamp() + 600}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn time(v: &Value) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a date: {v}")))
        .unwrap()
}

/// How one end is connected: a Socket.IO client of the row's driver, or a plain `/ws` socket.
enum Conn {
    Sio,
    Ws(Box<WsClient>),
}

/// One user of one app, connected.
struct Peer {
    app: App,
    id: i64,
    /// The user's display name (and the driver's name for a Socket.IO client).
    name: String,
    conn: Conn,
    /// The call this end knows of, once it knows.
    call: Option<String>,
}

impl Peer {
    fn call_id(&self) -> String {
        self.call
            .clone()
            .unwrap_or_else(|| panic!("{} knows no call", self.name))
    }
}

/// One caller app's share of the matrix: the server and a Socket.IO driver of its own.
struct Row<'a> {
    srv: &'a TestServer,
    p: Puppet,
}

impl Row<'_> {
    async fn emit(&mut self, peer: &mut Peer, event: &str, payload: Value) {
        match &mut peer.conn {
            Conn::Sio => self.p.emit(&peer.name, event, json!([payload])),
            Conn::Ws(ws) => ws.emit(event, payload).await,
        }
    }

    /// Sends and waits for the acknowledgement (its first argument).
    async fn ask(&mut self, peer: &mut Peer, event: &str, payload: Value) -> Value {
        match &mut peer.conn {
            Conn::Sio => {
                let ack = self.p.call(&peer.name, event, json!([payload])).await;
                assert!(ack[0].get("error").is_none(), "{event}: {ack:?}");
                ack[0].clone()
            }
            Conn::Ws(ws) => ws
                .request(event, payload)
                .await
                .unwrap_or_else(|e| panic!("{event}: {e}")),
        }
    }

    async fn event(&mut self, peer: &mut Peer, event: &str) -> Value {
        match &mut peer.conn {
            Conn::Sio => self.p.event(&peer.name, event).await,
            Conn::Ws(ws) => ws.expect_event(event).await,
        }
    }

    async fn close(&mut self, peer: Peer) {
        match peer.conn {
            Conn::Sio => self.p.close(&peer.name),
            Conn::Ws(ws) => ws.close().await,
        }
    }

    /// A new user of `app`, connected as that app connects (`transport` for Socket.IO apps).
    async fn connect(&mut self, app: App, name: String, transport: &str) -> Peer {
        let id = self
            .srv
            .create_user(&name, &format!("{name}@example.com"), None, &[]);
        let token = self.srv.token_for(id);
        let addr = self.srv.addr_of(dialect(app));
        let conn = match app {
            App::Canonical | App::Aist => {
                let token = if app == App::Aist {
                    aist_token(id)
                } else {
                    token
                };
                let mut ws = WsClient::try_connect(addr, &format!("/ws?token={token}"))
                    .await
                    .unwrap();
                // A ping with an id proves the session is up (seed 004's frames carry none).
                ws.request("ping", json!({})).await.unwrap();
                Conn::Ws(Box::new(ws))
            }
            App::Lonestar => {
                // No token in the handshake: the app sends `authenticate` first.
                self.p
                    .connect_at(&name, addr, json!({"transports": [transport]}))
                    .await;
                let ack = self.p.call(&name, "authenticate", json!([token])).await;
                assert_eq!(ack[0]["userId"], s(id), "{ack:?}");
                Conn::Sio
            }
            App::WorldMates => {
                self.p
                    .connect_at(
                        &name,
                        addr,
                        json!({"query": {"token": token}, "transports": [transport]}),
                    )
                    .await;
                let ack = self.p.call(&name, "user:join", json!([id])).await;
                assert!(ack[0].get("pong").is_some(), "{ack:?}");
                Conn::Sio
            }
            App::Astrology => {
                self.p
                    .connect_at(
                        &name,
                        addr,
                        json!({"auth": {"token": token}, "transports": [transport]}),
                    )
                    .await;
                Conn::Sio
            }
            App::Backend2 => {
                self.p
                    .connect_at(
                        &name,
                        addr,
                        json!({"query": {"token": token}, "transports": [transport]}),
                    )
                    .await;
                Conn::Sio
            }
        };
        Peer {
            app,
            id,
            name,
            conn,
            call: None,
        }
    }

    /// `x` calls `y` (video, with an SDP offer when its app makes one).
    /// The event and payload with which `x`'s app calls `y` (video, with an SDP offer when the
    /// app makes one). Seed 001's app names each call's room; a room name is used once.
    fn call_request(x: &Peer, y: &Peer) -> (&'static str, Value) {
        match x.app {
            App::Canonical => (
                "call:initiate",
                json!({"to": s(y.id), "callType": "video", "sdpOffer": offer()}),
            ),
            App::Lonestar => (
                "start_call",
                json!({"to": y.id, "isVideo": true, "sdp": offer()}),
            ),
            App::WorldMates => {
                let room = format!("room_{}_{}_{}", x.id, y.id, next_room());
                (
                    "call:initiate",
                    json!({"fromId": x.id, "toId": y.id, "callType": "video", "roomName": room, "sdpOffer": offer()}),
                )
            }
            App::Astrology => (
                "call:initiate",
                json!({"calleeId": s(y.id), "callType": "video"}),
            ),
            App::Backend2 => (
                "call:invite",
                json!({"to": s(y.id), "isVideo": true, "offer": offer()}),
            ),
            App::Aist => ("call:offer", json!({"sdp": offer(), "userId": y.id})),
        }
    }

    /// `x` calls `y` in its app's words and learns the call id where its app does.
    async fn initiate(&mut self, x: &mut Peer, y: &Peer) {
        let (event, payload) = Self::call_request(x, y);
        match x.app {
            App::Canonical | App::Backend2 => {
                let ack = self.ask(x, event, payload).await;
                // Named no provider: the call goes through the one the callee's app joins.
                if x.app == App::Canonical && y.app == App::Astrology {
                    assert!(ack["agoraToken"].is_string(), "{ack}");
                    assert!(ack["channelName"].is_string(), "{ack}");
                }
                x.call = Some(ack["callId"].as_str().unwrap().to_owned());
            }
            App::WorldMates => {
                let room = payload["roomName"].as_str().unwrap().to_owned();
                self.emit(x, event, payload).await;
                x.call = Some(room);
            }
            App::Astrology => {
                self.emit(x, event, payload).await;
                let started = self.event(x, "call:initiated").await;
                assert!(started["agoraToken"].is_string(), "{started}");
                assert!(started["channelName"].is_string(), "{started}");
                x.call = Some(started["callId"].as_str().unwrap().to_owned());
            }
            // The call id reaches seed 000's caller with `call_accepted`; seed 004 has none
            // (the connection follows its one call).
            App::Lonestar | App::Aist => self.emit(x, event, payload).await,
        }
    }

    /// `x` calls `y`, whose app joins no call `x`'s app can make: `x` hears the refusal in its
    /// own error event, with the stable code, and no call is recorded.
    async fn initiate_refused(&mut self, x: &mut Peer, y: &Peer) {
        const CODE: &str = "media_unsupported";
        let ctx = format!("{:?} -> {:?}", x.app, y.app);
        let (event, payload) = Self::call_request(x, y);
        if x.app == App::Backend2 {
            // Its invite asks for an ack: the refusal comes there and as its hang-up.
            let Conn::Sio = x.conn else {
                unreachable!("seed 003 speaks Socket.IO")
            };
            let ack = self.p.call(&x.name, event, json!([payload])).await;
            assert_eq!(ack[0]["error"]["code"], CODE, "{ctx}: {ack:?}");
        } else {
            self.emit(x, event, payload).await;
        }
        let (name, field) = match x.app {
            App::Canonical => unreachable!("{ctx}: a canonical client joins either provider"),
            App::Lonestar => ("error", "code"),
            App::WorldMates => ("call:rejected", "reason"),
            App::Astrology => ("call:error", "code"),
            App::Backend2 | App::Aist => ("call:hangup", "reason"),
        };
        let got = self.event(x, name).await;
        assert_eq!(got[field], CODE, "{ctx}: {got}");
        if matches!(x.app, App::Lonestar | App::Astrology) {
            assert!(got["message"].is_string(), "{ctx}: {got}");
        }
        use diesel::prelude::*;
        use switchboard::db::schema::calls;
        let recorded: i64 = calls::table
            .filter(calls::caller_id.eq(x.id))
            .count()
            .get_result(&mut self.srv.db.conn())
            .unwrap();
        assert_eq!(recorded, 0, "{ctx}: a refused call was recorded");
    }

    /// `y` hears `x` ringing in its own event, with its own field names and id types.
    async fn expect_ring(&mut self, y: &mut Peer, x: &Peer) {
        // Seed 002 places Agora calls and sends no SDP. Seed 004's offer is `{sdp, userId}`
        // and names no call type: its calls read as audio, the canonical default (the SDP
        // says which media flow).
        let sdp = x.app != App::Astrology;
        let video = x.app != App::Aist;
        let call_type = if video { "video" } else { "audio" };
        let ctx = format!("{:?} -> {:?}", x.app, y.app);
        let call_id = match y.app {
            App::Canonical => {
                let ring = self.event(y, "call:incoming").await;
                assert_eq!(ring["from"], json!(s(x.id)), "{ctx}: {ring}");
                assert_eq!(ring["fromName"], json!(x.name), "{ctx}: {ring}");
                assert_eq!(ring["callType"], call_type, "{ctx}: {ring}");
                if sdp {
                    assert_eq!(ring["sdpOffer"], offer(), "{ctx}: {ring}");
                }
                ring["callId"].clone()
            }
            // `incoming_call{callId, from, isVideo, sdp}`; `from` is the id the token names
            // (a string in Switchboard's tokens).
            App::Lonestar => {
                let ring = self.event(y, "incoming_call").await;
                assert_eq!(ring["from"], json!(s(x.id)), "{ctx}: {ring}");
                assert_eq!(ring["isVideo"], video, "{ctx}: {ring}");
                if sdp {
                    assert_eq!(ring["sdp"], offer(), "{ctx}: {ring}");
                }
                ring["callId"].clone()
            }
            // Numeric ids; `roomName` is the call id.
            App::WorldMates => {
                let ring = self.event(y, "call:incoming").await;
                assert_eq!(ring["fromId"], json!(x.id), "{ctx}: {ring}");
                assert!(ring["fromId"].is_i64(), "{ctx}: {ring}");
                assert_eq!(ring["fromName"], json!(x.name), "{ctx}: {ring}");
                assert_eq!(ring["callType"], call_type, "{ctx}: {ring}");
                assert_eq!(ring["roomName"], ring["callId"], "{ctx}: {ring}");
                assert!(ring["iceServers"].is_array(), "{ctx}: {ring}");
                if sdp {
                    assert_eq!(ring["sdpOffer"], offer(), "{ctx}: {ring}");
                }
                ring["roomName"].clone()
            }
            // `callerId` etc.; the call goes through Agora (the only provider this app joins)
            // and carries a token for uid 0 and its channel.
            App::Astrology => {
                let ring = self.event(y, "call:incoming").await;
                assert_eq!(ring["callerId"], json!(s(x.id)), "{ctx}: {ring}");
                assert_eq!(ring["callerName"], json!(x.name), "{ctx}: {ring}");
                assert_eq!(ring["callerType"], "user", "{ctx}: {ring}");
                let its_type = if video { "video" } else { "voice" };
                assert_eq!(ring["callType"], its_type, "{ctx}: {ring}");
                assert_eq!(ring["callerPhone"], Value::Null, "{ctx}: {ring}");
                if matches!(x.app, App::Astrology | App::Canonical) {
                    assert!(ring["agoraToken"].is_string(), "{ctx}: {ring}");
                    assert!(ring["channelName"].is_string(), "{ctx}: {ring}");
                }
                ring["callId"].clone()
            }
            App::Backend2 => {
                let ring = self.event(y, "call:invite").await;
                assert_eq!(ring["from"], json!(s(x.id)), "{ctx}: {ring}");
                assert_eq!(ring["isVideo"], video, "{ctx}: {ring}");
                if sdp {
                    assert_eq!(ring["offer"], offer(), "{ctx}: {ring}");
                }
                ring["callId"].clone()
            }
            // `fromUserId` in the type of this app's token claim (a number here), whatever app
            // the caller uses.
            App::Aist => {
                let ring = self.event(y, "call:offer").await;
                assert_eq!(ring["fromUserId"], json!(x.id), "{ctx}: {ring}");
                if sdp {
                    assert_eq!(ring["sdp"], offer(), "{ctx}: {ring}");
                }
                ring["callId"].clone()
            }
        };
        let call_id = call_id
            .as_str()
            .unwrap_or_else(|| panic!("{ctx}: no call id"))
            .to_owned();
        if let Some(known) = &x.call {
            assert_eq!(known, &call_id, "{ctx}");
        }
        y.call = Some(call_id);
    }

    /// `y` accepts in its own words (with an SDP answer when its app makes one).
    async fn accept(&mut self, y: &mut Peer, x: &Peer) {
        let call = y.call_id();
        match y.app {
            App::Canonical => {
                self.ask(
                    y,
                    "call:accept",
                    json!({"callId": call, "sdpAnswer": answer()}),
                )
                .await;
            }
            // Seed 000 accepts, then sends its answer on its own.
            App::Lonestar => {
                self.emit(y, "accept_call", json!({ "callId": call })).await;
                self.emit(y, "sdp_answer", json!({"callId": call, "sdp": answer()}))
                    .await;
            }
            App::WorldMates => {
                self.emit(
                    y,
                    "call:accept",
                    json!({"roomName": call, "fromId": x.id, "sdpAnswer": answer()}),
                )
                .await;
            }
            App::Astrology => {
                self.emit(y, "call:accept", json!({ "callId": call })).await;
            }
            App::Backend2 => {
                self.emit(
                    y,
                    "call:answer",
                    json!({"callId": call, "answer": answer()}),
                )
                .await;
            }
            App::Aist => {
                self.emit(y, "call:answer", json!({ "sdp": answer() }))
                    .await;
            }
        }
    }

    /// `x` hears that `y` answered, in its own event.
    async fn expect_answer(&mut self, x: &mut Peer, y: &Peer) {
        let sdp = y.app != App::Astrology;
        let ctx = format!("{:?} -> {:?}", x.app, y.app);
        let call = y.call_id();
        match x.app {
            App::Canonical => {
                let accepted = self.event(x, "call:accepted").await;
                assert_eq!(accepted["callId"], json!(call), "{ctx}: {accepted}");
                assert_eq!(accepted["by"], json!(s(y.id)), "{ctx}: {accepted}");
                if y.app == App::Lonestar {
                    let relayed = self.event(x, "call:answer").await;
                    assert_eq!(relayed["sdp"], answer(), "{ctx}: {relayed}");
                } else if sdp {
                    assert_eq!(accepted["sdpAnswer"], answer(), "{ctx}: {accepted}");
                }
            }
            App::Lonestar => {
                let accepted = self.event(x, "call_accepted").await;
                assert_eq!(accepted["callId"], json!(call), "{ctx}: {accepted}");
                assert_eq!(accepted["userId"], json!(s(y.id)), "{ctx}: {accepted}");
                x.call = Some(call.clone());
                if sdp {
                    let got = self.event(x, "sdp_answer").await;
                    assert_eq!(got["callId"], json!(call), "{ctx}: {got}");
                    assert_eq!(got["sdp"], answer(), "{ctx}: {got}");
                }
            }
            // These apps learn of the answer from its SDP; the astrology app answers none (its
            // media go through Agora), so a call it accepts is not announced to them: the seeds
            // have no event for an answer without SDP.
            App::WorldMates if sdp => {
                let got = self.event(x, "call:answer").await;
                assert_eq!(got["sdpAnswer"], answer(), "{ctx}: {got}");
                assert_eq!(got["roomName"], json!(call), "{ctx}: {got}");
                assert_eq!(got["fromId"], json!(y.id), "{ctx}: {got}");
                assert!(got["fromId"].is_i64(), "{ctx}: {got}");
            }
            App::Backend2 if sdp => {
                let got = self.event(x, "call:answer").await;
                assert_eq!(got["answer"], answer(), "{ctx}: {got}");
                assert_eq!(got["callId"], json!(call), "{ctx}: {got}");
            }
            App::Aist if sdp => {
                let got = self.event(x, "call:answer").await;
                assert_eq!(got["sdp"], answer(), "{ctx}: {got}");
                assert_eq!(got["fromUserId"], json!(y.id), "{ctx}: {got}");
            }
            App::WorldMates | App::Backend2 | App::Aist => {
                unreachable!("{ctx}: a call between these apps is refused at set-up")
            }
            App::Astrology => {
                let accepted = self.event(x, "call:accepted").await;
                assert_eq!(accepted["callId"], json!(call), "{ctx}: {accepted}");
            }
        }
    }

    /// `peer` sends one ICE candidate in its app's shape.
    async fn send_ice(&mut self, peer: &mut Peer, candidate: &str) {
        let init = json!({"candidate": candidate, "sdpMid": "0", "sdpMLineIndex": 0});
        let call = peer.call_id();
        let (event, payload) = match peer.app {
            // Canonical clients send what the browser handed them: an RTCIceCandidateInit.
            App::Canonical => ("call:ice", json!({"callId": call, "candidate": init})),
            App::Lonestar => (
                "ice_candidate",
                json!({"callId": call, "candidate": candidate, "sdpMid": "0", "sdpMLineIndex": 0}),
            ),
            App::WorldMates => (
                "ice:candidate",
                json!({"roomName": call, "candidate": candidate, "sdpMid": "0", "sdpMLineIndex": 0}),
            ),
            App::Backend2 => ("call:candidate", json!({"callId": call, "candidate": init})),
            App::Aist => ("call:ice", json!({ "candidate": init })),
            App::Astrology => unreachable!("the astrology app exchanges no ICE"),
        };
        self.emit(peer, event, payload).await;
    }

    /// `peer` receives `from`'s candidate in the shape its app reads.
    async fn expect_ice(&mut self, peer: &mut Peer, from: &Peer, candidate: &str) {
        let ctx = format!("{:?} -> {:?}", from.app, peer.app);
        let init = json!({"candidate": candidate, "sdpMid": "0", "sdpMLineIndex": 0});
        let call = peer.call_id();
        match peer.app {
            // The canonical protocol relays a candidate as the sending app wrote it: an object
            // or flat fields (no document fixes one shape for it).
            App::Canonical => {
                let got = self.event(peer, "call:ice").await;
                assert_eq!(got["callId"], json!(call), "{ctx}: {got}");
                assert_eq!(got["from"], json!(s(from.id)), "{ctx}: {got}");
                let text = if got["candidate"].is_string() {
                    &got["candidate"]
                } else {
                    &got["candidate"]["candidate"]
                };
                assert_eq!(text, candidate, "{ctx}: {got}");
            }
            // Flat, as seed 000 relays `{callId, candidate, sdpMid, sdpMLineIndex}`.
            App::Lonestar => {
                let got = self.event(peer, "ice_candidate").await;
                assert_eq!(got["callId"], json!(call), "{ctx}: {got}");
                assert_eq!(got["candidate"], candidate, "{ctx}: {got}");
                assert_eq!(got["sdpMid"], "0", "{ctx}: {got}");
                assert_eq!(got["sdpMLineIndex"], 0, "{ctx}: {got}");
            }
            App::WorldMates => {
                let got = self.event(peer, "ice:candidate").await;
                assert_eq!(got["roomName"], json!(call), "{ctx}: {got}");
                assert_eq!(got["candidate"], candidate, "{ctx}: {got}");
                assert_eq!(got["sdpMid"], "0", "{ctx}: {got}");
                assert_eq!(got["sdpMLineIndex"], 0, "{ctx}: {got}");
                assert_eq!(got["fromId"], json!(from.id), "{ctx}: {got}");
            }
            App::Backend2 => {
                let got = self.event(peer, "call:candidate").await;
                assert_eq!(got["callId"], json!(call), "{ctx}: {got}");
                assert_eq!(got["candidate"], init, "{ctx}: {got}");
            }
            App::Aist => {
                let got = self.event(peer, "call:ice").await;
                assert_eq!(got["candidate"], init, "{ctx}: {got}");
                assert_eq!(got["fromUserId"], json!(from.id), "{ctx}: {got}");
            }
            App::Astrology => unreachable!("the astrology app exchanges no ICE"),
        }
    }

    /// `peer` hangs up in its own words.
    async fn hang_up(&mut self, peer: &mut Peer) {
        let call = peer.call_id();
        let (event, payload) = match peer.app {
            App::Canonical => ("call:end", json!({ "callId": call })),
            App::Lonestar => ("end_call", json!({ "callId": call })),
            App::WorldMates => ("call:end", json!({"roomName": call, "reason": "hangup"})),
            App::Astrology => ("call:end", json!({ "callId": call })),
            App::Backend2 => ("call:hangup", json!({ "callId": call })),
            App::Aist => ("call:hangup", Value::Null),
        };
        self.emit(peer, event, payload).await;
    }

    /// `peer` sees the call end (`by` hung up) in its own event.
    async fn expect_end(&mut self, peer: &mut Peer, by: &Peer) {
        let ctx = format!("{:?} hung up on {:?}", by.app, peer.app);
        let call = peer.call_id();
        match peer.app {
            App::Canonical => {
                let got = self.event(peer, "call:ended").await;
                assert_eq!(got["callId"], json!(call), "{ctx}: {got}");
                assert_eq!(got["endedBy"], json!(s(by.id)), "{ctx}: {got}");
            }
            App::Lonestar => {
                let got = self.event(peer, "call_ended").await;
                assert_eq!(got["callId"], json!(call), "{ctx}: {got}");
                assert!(got["duration"].is_i64(), "{ctx}: {got}");
            }
            App::WorldMates => {
                let got = self.event(peer, "call:ended").await;
                assert_eq!(got["roomName"], json!(call), "{ctx}: {got}");
                assert_eq!(got["endedBy"], json!(by.id), "{ctx}: {got}");
            }
            // A hang-up is `completed`, whichever app hung up.
            App::Astrology => {
                let got = self.event(peer, "call:ended").await;
                assert_eq!(got["callId"], json!(call), "{ctx}: {got}");
                assert_eq!(got["endReason"], "completed", "{ctx}: {got}");
            }
            App::Backend2 => {
                let got = self.event(peer, "call:hangup").await;
                assert_eq!(got["callId"], json!(call), "{ctx}: {got}");
            }
            App::Aist => {
                self.event(peer, "call:hangup").await;
            }
        }
    }

    /// `y` declines the ringing call in its own words.
    async fn reject(&mut self, y: &mut Peer) {
        let call = y.call_id();
        let (event, payload) = match y.app {
            App::Canonical => ("call:reject", json!({ "callId": call })),
            App::Lonestar => ("reject_call", json!({ "callId": call })),
            App::WorldMates => ("call:reject", json!({ "roomName": call })),
            App::Astrology => ("call:reject", json!({ "callId": call })),
            // Hanging up a call that rings declines it: the apps have no other word for it.
            App::Backend2 => ("call:hangup", json!({ "callId": call })),
            App::Aist => ("call:hangup", Value::Null),
        };
        self.emit(y, event, payload).await;
    }

    /// `x` hears that the call was declined by user `by` of app `by_app`, in its own event.
    async fn expect_rejected(&mut self, x: &mut Peer, by_app: App, by: i64, call: &str) {
        let ctx = format!("{by_app:?} declined, {:?} hears", x.app);
        match x.app {
            App::Canonical => {
                let got = self.event(x, "call:rejected").await;
                assert_eq!(got["callId"], json!(call), "{ctx}: {got}");
                assert_eq!(got["by"], json!(s(by)), "{ctx}: {got}");
            }
            App::Lonestar => {
                let got = self.event(x, "call_rejected").await;
                assert_eq!(got["callId"], json!(call), "{ctx}: {got}");
            }
            App::WorldMates => {
                let got = self.event(x, "call:rejected").await;
                assert_eq!(got["roomName"], json!(call), "{ctx}: {got}");
                assert_eq!(got["by"], json!(by), "{ctx}: {got}");
                assert!(got["by"].is_i64(), "{ctx}: {got}");
            }
            App::Astrology => {
                let got = self.event(x, "call:rejected").await;
                assert_eq!(got["callId"], json!(call), "{ctx}: {got}");
                assert_eq!(got["endReason"], "rejected", "{ctx}: {got}");
            }
            App::Backend2 => {
                let got = self.event(x, "call:hangup").await;
                assert_eq!(got["callId"], json!(call), "{ctx}: {got}");
                assert_eq!(got["reason"], "rejected", "{ctx}: {got}");
            }
            App::Aist => {
                self.event(x, "call:hangup").await;
            }
        }
    }

    /// `w` called `y`, who is in another call: `w` hears it busy in its own event.
    async fn expect_busy(&mut self, w: &mut Peer, y: &Peer) {
        let ctx = format!("{:?} busy for {:?}", y.app, w.app);
        match w.app {
            App::Canonical => {
                let got = self.event(w, "call:busy").await;
                assert_eq!(got["to"], json!([s(y.id)]), "{ctx}: {got}");
            }
            App::Lonestar => {
                let got = self.event(w, "call_rejected").await;
                assert_eq!(got["reason"], "busy", "{ctx}: {got}");
                assert!(got["callId"].is_string(), "{ctx}: {got}");
            }
            App::WorldMates => {
                let got = self.event(w, "call:rejected").await;
                assert_eq!(got["reason"], "busy", "{ctx}: {got}");
                assert_eq!(got["to"], json!([y.id]), "{ctx}: {got}");
                assert!(got["roomName"].is_string(), "{ctx}: {got}");
            }
            App::Astrology => {
                let got = self.event(w, "call:rejected").await;
                assert_eq!(got["reason"], "busy", "{ctx}: {got}");
                assert_eq!(got["endReason"], "rejected", "{ctx}: {got}");
            }
            App::Backend2 => {
                let got = self.event(w, "call:hangup").await;
                assert_eq!(got["reason"], "busy", "{ctx}: {got}");
            }
            App::Aist => {
                self.event(w, "call:hangup").await;
            }
        }
    }

    /// `x` gives up its ringing call: in its own words, or (seed 000, whose caller learns no
    /// call id before an answer) by closing the app, which ends what it had in progress.
    async fn cancel(&mut self, x: Peer) {
        let mut x = x;
        if x.app != App::Lonestar {
            self.hang_up(&mut x).await;
        }
        self.close(x).await;
    }

    /// `y` hears that the caller gave up before an answer, in its own event.
    async fn expect_cancelled(&mut self, y: &mut Peer, x_app: App) {
        let ctx = format!("{x_app:?} gave up calling {:?}", y.app);
        let call = y.call_id();
        match y.app {
            App::Canonical => {
                let got = self.event(y, "call:cancelled").await;
                assert_eq!(got["callId"], json!(call), "{ctx}: {got}");
            }
            App::Lonestar => {
                let got = self.event(y, "call_ended").await;
                assert_eq!(got["callId"], json!(call), "{ctx}: {got}");
                assert_eq!(got["duration"], 0, "{ctx}: {got}");
            }
            App::WorldMates => {
                let got = self.event(y, "call:ended").await;
                assert_eq!(got["roomName"], json!(call), "{ctx}: {got}");
                assert_eq!(got["reason"], "cancelled", "{ctx}: {got}");
            }
            App::Astrology => {
                let got = self.event(y, "call:ended").await;
                assert_eq!(got["callId"], json!(call), "{ctx}: {got}");
                assert_eq!(got["endReason"], "cancelled", "{ctx}: {got}");
                assert_eq!(got["duration"], 0, "{ctx}: {got}");
            }
            App::Backend2 => {
                let got = self.event(y, "call:hangup").await;
                assert_eq!(got["callId"], json!(call), "{ctx}: {got}");
                assert_eq!(got["reason"], "cancelled", "{ctx}: {got}");
            }
            App::Aist => {
                self.event(y, "call:hangup").await;
            }
        }
    }

    /// Nobody answered within the ring timeout: `peer` (either end) hears it in its own event.
    async fn expect_missed(&mut self, peer: &mut Peer) {
        let ctx = format!("{:?} missed", peer.app);
        let call = peer.call.clone();
        let same_call = |got: &Value, key: &str| {
            if let Some(call) = &call {
                assert_eq!(got[key], json!(call), "{ctx}: {got}");
            }
        };
        match peer.app {
            App::Canonical => {
                let got = self.event(peer, "call:missed").await;
                same_call(&got, "callId");
            }
            App::Lonestar => {
                let got = self.event(peer, "call_ended").await;
                same_call(&got, "callId");
                assert_eq!(got["reason"], "missed", "{ctx}: {got}");
                assert_eq!(got["duration"], 0, "{ctx}: {got}");
            }
            App::WorldMates => {
                let got = self.event(peer, "call:ended").await;
                same_call(&got, "roomName");
                assert_eq!(got["reason"], "missed", "{ctx}: {got}");
            }
            App::Astrology => {
                let got = self.event(peer, "call:missed").await;
                same_call(&got, "callId");
                assert_eq!(got["endReason"], "no_answer", "{ctx}: {got}");
            }
            App::Backend2 => {
                let got = self.event(peer, "call:hangup").await;
                same_call(&got, "callId");
                assert_eq!(got["reason"], "missed", "{ctx}: {got}");
            }
            App::Aist => {
                self.event(peer, "call:hangup").await;
            }
        }
    }

    /// The calls of an `x` user to a `y` user that do not connect: declined; busy for a
    /// second caller of `x`'s app while it rings; given up by the caller; not answered.
    async fn unanswered_pair(&mut self, x_app: App, y_app: App, n: usize) {
        let (tx, ty) = if n.is_multiple_of(2) {
            ("websocket", "polling")
        } else {
            ("polling", "websocket")
        };
        let mut x = self
            .connect(x_app, format!("{x_app:?}Dialer{}", y_app as u8), tx)
            .await;
        let mut y = self
            .connect(y_app, format!("{y_app:?}Decliner{}", x_app as u8), ty)
            .await;
        let mut w = self
            .connect(x_app, format!("{x_app:?}Second{}", y_app as u8), ty)
            .await;

        // Declined, after a second caller found the callee busy.
        self.initiate(&mut x, &y).await;
        self.expect_ring(&mut y, &x).await;
        self.initiate(&mut w, &y).await;
        self.expect_busy(&mut w, &y).await;
        self.reject(&mut y).await;
        let call = y.call_id();
        self.expect_rejected(&mut x, y.app, y.id, &call).await;
        // The decliner's app hears it too (the call leaves every screen of both users), but
        // seed 004's connection that declined does not get its own hang-up back, as in its seed.
        if y_app != App::Aist {
            let decliner = y.id;
            self.expect_rejected(&mut y, y_app, decliner, &call).await;
        }
        self.close(w).await;

        // Not answered: both ends hear it once the ring timeout passes.
        x.call = None;
        self.initiate(&mut x, &y).await;
        self.expect_ring(&mut y, &x).await;
        if x.call.is_none() {
            x.call = y.call.clone();
        }
        self.expect_missed(&mut y).await;
        self.expect_missed(&mut x).await;

        // Given up by the caller before an answer.
        x.call = None;
        self.initiate(&mut x, &y).await;
        self.expect_ring(&mut y, &x).await;
        if x.call.is_none() {
            x.call = y.call.clone();
        }
        self.cancel(x).await;
        self.expect_cancelled(&mut y, x_app).await;
        self.close(y).await;
    }

    /// `x` rings the group conversation `group` (whose other members are `members`), with an
    /// SDP offer the members answer.
    async fn initiate_group(&mut self, x: &mut Peer, group: i64, members: &[i64]) {
        match x.app {
            App::Canonical => {
                let ack = self
                    .ask(
                        x,
                        "call:initiate",
                        json!({"conversationId": s(group), "callType": "video", "sdpOffer": offer()}),
                    )
                    .await;
                x.call = Some(ack["callId"].as_str().unwrap().to_owned());
            }
            App::WorldMates => {
                let room = format!("group_room_{}_{}", x.id, next_room());
                self.emit(
                    x,
                    "group_call:initiate",
                    json!({"groupId": group, "initiatedBy": x.id, "callType": "video", "roomName": room, "memberIds": members, "sdpOffer": offer()}),
                )
                .await;
                x.call = Some(room);
            }
            _ => unreachable!("{:?} places no group calls", x.app),
        }
    }

    /// `x` hears that `m` left the group call, in its own event.
    async fn expect_left(&mut self, x: &mut Peer, m: &Peer) {
        let ctx = format!("{:?} left {:?}'s group call", m.app, x.app);
        let got = self.event(x, "call:participant_left").await;
        match x.app {
            App::Canonical => assert_eq!(got["userId"], json!(s(m.id)), "{ctx}: {got}"),
            App::WorldMates => assert_eq!(got["userId"], json!(m.id), "{ctx}: {got}"),
            _ => unreachable!("{ctx}: this app places no group calls"),
        }
    }

    /// The group call ended once fewer than two were left in it: `x` hears it in its own event.
    async fn expect_group_end(&mut self, x: &mut Peer) {
        let call = x.call_id();
        match x.app {
            App::Canonical => {
                let got = self.event(x, "call:ended").await;
                assert_eq!(got["callId"], json!(call), "{got}");
                assert_eq!(got["reason"], "everyone_left", "{got}");
            }
            App::WorldMates => {
                let got = self.event(x, "call:ended").await;
                assert_eq!(got["roomName"], json!(call), "{got}");
                assert_eq!(got["reason"], "everyone_left", "{got}");
            }
            _ => unreachable!("{:?} places no group calls", x.app),
        }
    }

    /// An `x` user rings a group with a member of every app: each member whose app can join the
    /// call hears it ring in its own words and accepts, and `x` hears each answer in its own;
    /// the astrology member (Agora only) is not rung. The members then leave one by one, and
    /// `x` hears the call end when it is left alone.
    async fn group_row(&mut self, x_app: App) {
        let mut x = self
            .connect(x_app, format!("{x_app:?}GroupHost"), "websocket")
            .await;
        let mut members = Vec::new();
        for (k, &app) in APPS.iter().enumerate() {
            let transport = if k % 2 == 0 { "polling" } else { "websocket" };
            members.push(
                self.connect(app, format!("{app:?}In{x_app:?}Group"), transport)
                    .await,
            );
        }
        let ids: Vec<i64> = members.iter().map(|m| m.id).collect();
        let group = switchboard::db::conversations::create_group(
            &mut self.srv.db.conn(),
            x.id,
            "matrix group",
            &ids,
            None,
        )
        .unwrap()
        .id;
        self.initiate_group(&mut x, group, &ids).await;
        let call = x.call_id();
        let mut rung = Vec::new();
        for mut m in members {
            if m.app == App::Astrology {
                self.close(m).await;
                continue;
            }
            self.expect_ring(&mut m, &x).await;
            self.accept(&mut m, &x).await;
            self.expect_answer(&mut x, &m).await;
            rung.push(m);
        }

        // The call's rows are written behind its ring (bounded wait).
        use diesel::prelude::*;
        use switchboard::db::schema::call_participants as cp;
        let astrology = ids[APPS.iter().position(|&a| a == App::Astrology).unwrap()];
        let mut invited: Vec<i64> = Vec::new();
        for _ in 0..200 {
            invited = cp::table
                .filter(cp::call_id.eq(&call))
                .select(cp::user_id)
                .load(&mut self.srv.db.conn())
                .unwrap();
            if invited.len() > rung.len() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        assert!(!invited.contains(&astrology), "{invited:?}");
        assert_eq!(invited.len(), 1 + rung.len(), "{invited:?}");

        let last = rung.len() - 1;
        for (k, mut m) in rung.into_iter().enumerate() {
            self.hang_up(&mut m).await;
            if k < last {
                self.expect_left(&mut x, &m).await;
            }
            self.close(m).await;
        }
        self.expect_group_end(&mut x).await;
        self.close(x).await;
    }

    /// One call from an `x` user to a `y` user, from ring to hang-up.
    async fn call_pair(&mut self, x_app: App, y_app: App, n: usize) {
        // Alternate the transports, and who hangs up.
        let (tx, ty) = if n.is_multiple_of(2) {
            ("websocket", "polling")
        } else {
            ("polling", "websocket")
        };
        let mut x = self
            .connect(x_app, format!("{x_app:?}Caller{}", y_app as u8), tx)
            .await;
        let mut y = self
            .connect(y_app, format!("{y_app:?}Callee{}", x_app as u8), ty)
            .await;
        if !joinable(x_app, y_app) {
            self.initiate_refused(&mut x, &y).await;
            self.close(x).await;
            self.close(y).await;
            return;
        }
        self.initiate(&mut x, &y).await;
        self.expect_ring(&mut y, &x).await;
        self.accept(&mut y, &x).await;
        self.expect_answer(&mut x, &y).await;
        if x.call.is_none() {
            // An app that learns no call id from the answer still knows its call by the ring.
            x.call = y.call.clone();
        }
        // The astrology app's media go through Agora: it exchanges no ICE.
        if x_app != App::Astrology && y_app != App::Astrology {
            self.send_ice(&mut x, "candidate:1 1 udp 1 10.0.0.1 9 typ host")
                .await;
            self.expect_ice(&mut y, &x, "candidate:1 1 udp 1 10.0.0.1 9 typ host")
                .await;
            self.send_ice(&mut y, "candidate:2 1 udp 1 10.0.0.2 9 typ host")
                .await;
            self.expect_ice(&mut x, &y, "candidate:2 1 udp 1 10.0.0.2 9 typ host")
                .await;
        }
        if n.is_multiple_of(2) {
            self.hang_up(&mut x).await;
            self.expect_end(&mut y, &x).await;
        } else {
            self.hang_up(&mut y).await;
            self.expect_end(&mut x, &y).await;
        }
        self.close(x).await;
        self.close(y).await;
    }

    /// `x` sends `text` to the conversation `conv` in its own words.
    async fn send_message(&mut self, x: &mut Peer, conv: i64, text: &str) {
        match x.app {
            App::Canonical => {
                self.ask(
                    x,
                    "message:send",
                    json!({"conversationId": s(conv), "content": text}),
                )
                .await;
            }
            // The sender's own copy comes back, as seed 002 emits to the whole room.
            App::Astrology => {
                self.emit(
                    x,
                    "dm:send_message",
                    json!({"conversationId": s(conv), "content": text}),
                )
                .await;
                let own = self.event(x, "dm:message_received").await;
                assert_eq!(own["content"], text, "{own}");
            }
            App::Backend2 => {
                let ack = self
                    .ask(x, "message", json!({"conversation": s(conv), "text": text}))
                    .await;
                assert!(ack["id"].is_string(), "{ack}");
            }
            _ => unreachable!("{:?} has no chat", x.app),
        }
    }

    /// `y` receives `x`'s message in its own shape; returns it.
    async fn expect_message(&mut self, y: &mut Peer, x: &Peer, conv: i64, text: &str) -> Value {
        let ctx = format!("{:?} -> {:?}", x.app, y.app);
        match y.app {
            App::Canonical => {
                let m = self.event(y, "message:new").await;
                assert_eq!(m["content"], text, "{ctx}: {m}");
                assert_eq!(m["senderId"], json!(s(x.id)), "{ctx}: {m}");
                assert_eq!(m["conversationId"], json!(s(conv)), "{ctx}: {m}");
                assert!(m["seq"].is_i64(), "{ctx}: {m}");
                m
            }
            // Seed 002's DirectMessage.
            App::Astrology => {
                let m = self.event(y, "dm:message_received").await;
                assert_eq!(m["content"], text, "{ctx}: {m}");
                assert_eq!(m["senderId"], json!(s(x.id)), "{ctx}: {m}");
                assert_eq!(m["conversationId"], json!(s(conv)), "{ctx}: {m}");
                assert_eq!(m["recipientId"], json!(s(y.id)), "{ctx}: {m}");
                assert_eq!(m["messageType"], "text", "{ctx}: {m}");
                assert_eq!(m["status"], "sent", "{ctx}: {m}");
                assert!(m["_id"].is_string(), "{ctx}: {m}");
                m
            }
            App::Backend2 => {
                let m = self.event(y, "message").await;
                assert_eq!(m["text"], text, "{ctx}: {m}");
                assert_eq!(m["from"], json!(s(x.id)), "{ctx}: {m}");
                assert_eq!(m["conversation"], json!(s(conv)), "{ctx}: {m}");
                assert!(m["_id"].is_string(), "{ctx}: {m}");
                time(&m["createdAt"]);
                m
            }
            _ => unreachable!("{:?} has no chat", y.app),
        }
    }

    /// `y` marks message `m` read in its own words.
    async fn mark_read(&mut self, y: &mut Peer, conv: i64, m: &Value) {
        match y.app {
            App::Canonical => {
                self.ask(
                    y,
                    "receipt:read",
                    json!({"conversationId": s(conv), "upTo": m["seq"]}),
                )
                .await;
            }
            App::Astrology => {
                self.emit(
                    y,
                    "dm:mark_read",
                    json!({"conversationId": s(conv), "messageIds": [m["_id"]]}),
                )
                .await;
            }
            App::Backend2 => {
                self.emit(
                    y,
                    "read_up_to",
                    json!({"conversationId": s(conv), "readUpTo": m["createdAt"]}),
                )
                .await;
            }
            _ => unreachable!("{:?} has no chat", y.app),
        }
    }

    /// `x` sees `y`'s read receipt for message `m` in its own shape.
    async fn expect_read(&mut self, x: &mut Peer, y: &Peer, conv: i64, m: &Value) {
        let ctx = format!("{:?} read {:?}'s message", y.app, x.app);
        match x.app {
            App::Canonical => {
                let r = self.event(x, "receipt:read").await;
                assert_eq!(r["conversationId"], json!(s(conv)), "{ctx}: {r}");
                assert_eq!(r["userId"], json!(s(y.id)), "{ctx}: {r}");
                assert_eq!(r["upTo"], m["seq"], "{ctx}: {r}");
                assert_eq!(r["messageIds"], json!([m["id"]]), "{ctx}: {r}");
            }
            App::Astrology => {
                let r = self.event(x, "dm:messages_read").await;
                assert_eq!(r["messageIds"], json!([m["id"]]), "{ctx}: {r}");
                assert_eq!(r["readBy"], json!(s(y.id)), "{ctx}: {r}");
            }
            App::Backend2 => {
                let r = self.event(x, "read_up_to").await;
                assert_eq!(time(&r["readUpTo"]), time(&m["createdAt"]), "{ctx}: {r}");
                assert_eq!(r["userId"], json!(s(y.id)), "{ctx}: {r}");
            }
            _ => unreachable!("{:?} has no chat", x.app),
        }
    }

    /// An `x` user writes to a `y` user, who reads it; `x` sees the receipt.
    async fn chat_pair(&mut self, x_app: App, y_app: App, n: usize) {
        let (tx, ty) = if n.is_multiple_of(2) {
            ("polling", "websocket")
        } else {
            ("websocket", "polling")
        };
        let mut x = self
            .connect(x_app, format!("{x_app:?}Writer{}", y_app as u8), tx)
            .await;
        let mut y = self
            .connect(y_app, format!("{y_app:?}Reader{}", x_app as u8), ty)
            .await;
        let conv = self.srv.direct(x.id, y.id);
        let text = format!("from {x_app:?} to {y_app:?}");
        self.send_message(&mut x, conv, &text).await;
        let m = self.expect_message(&mut y, &x, conv, &text).await;
        self.mark_read(&mut y, conv, &m).await;
        self.expect_read(&mut x, &y, conv, &m).await;
        self.close(x).await;
        self.close(y).await;
    }
}

/// Whether a call between the two apps can connect: the astrology app joins only Agora
/// calls, the other seed apps only WebRTC calls, a canonical client either.
fn joinable(x: App, y: App) -> bool {
    let agora_only = |a| a == App::Astrology;
    let webrtc_only = |a| !matches!(a, App::Astrology | App::Canonical);
    !(agora_only(x) && webrtc_only(y) || webrtc_only(x) && agora_only(y))
}

fn dialect(app: App) -> &'static str {
    match app {
        App::Canonical => "canonical",
        App::Lonestar => "lonestar",
        App::WorldMates => "worldmates",
        App::Astrology => "astrology",
        App::Backend2 => "backend2",
        App::Aist => "aist",
    }
}

/// Whether one pair's run finished without a failed assertion (its panic message is printed
/// as it happens); the other pairs still run, so one report names every failing pair.
async fn passes(pair: impl std::future::Future<Output = ()>) -> bool {
    use futures_util::FutureExt;
    std::panic::AssertUnwindSafe(pair)
        .catch_unwind()
        .await
        .is_ok()
}

/// Every app on its listener, Agora on (the astrology app's calls), and TURN. Six rows of
/// calls run side by side, each connecting, ringing, persisting and posting call logs: the pool
/// and its wait are sized for that on a loaded machine, so no step is refused `unavailable`.
async fn apps_server() -> TestServer {
    TestServer::start_apps(|c| {
        c.db_pool_size = 16;
        c.db_acquire_timeout = std::time::Duration::from_secs(15);
        c.agora_app_id = "970CA35de60c44645bbae8a215061b33".into();
        c.agora_app_certificate = Secret::new("5CFd2fd1755d40ecb72977518be15d3b");
        c.turn_urls = switchboard::config::List(vec!["turn:turn.example.com:3478".into()]);
        c.turn_secret = Secret::new("turn-shared-secret");
    })
    .await
}

#[actix_web::test]
async fn every_app_calls_every_app_in_its_own_words() {
    let srv = apps_server().await;
    let rows = APPS.iter().enumerate().map(|(i, &x)| {
        let srv = &srv;
        async move {
            let mut row = Row {
                srv,
                p: Puppet::start(srv.addr()),
            };
            let mut failed = Vec::new();
            for (j, &y) in APPS.iter().enumerate() {
                if !passes(row.call_pair(x, y, i + j)).await {
                    failed.push(format!("{x:?} calls {y:?}"));
                }
            }
            failed
        }
    });
    let failed: Vec<String> = futures_util::future::join_all(rows).await.concat();
    assert!(failed.is_empty(), "failed pairs: {failed:#?}");
}

/// The pairs for the calls that do not connect: every app calls, and is called by, the next
/// app (in [`APPS`]' order, wrapping) whose calls it can join.
fn unanswered_pairs() -> Vec<(App, App)> {
    let mut pairs = Vec::new();
    for (i, &a) in APPS.iter().enumerate() {
        let mut after = (1..APPS.len()).map(|k| APPS[(i + k) % APPS.len()]);
        if let Some(b) = after.find(|&b| joinable(a, b)) {
            if !pairs.contains(&(a, b)) {
                pairs.push((a, b));
            }
        }
        let mut before = (1..APPS.len()).map(|k| APPS[(i + APPS.len() - k) % APPS.len()]);
        if let Some(b) = before.find(|&b| joinable(b, a)) {
            if !pairs.contains(&(b, a)) {
                pairs.push((b, a));
            }
        }
    }
    pairs
}

#[actix_web::test]
async fn every_app_declines_misses_cancels_and_hears_busy_in_its_own_words() {
    let srv = TestServer::start_apps(|c| {
        c.db_pool_size = 16;
        c.db_acquire_timeout = std::time::Duration::from_secs(15);
        c.agora_app_id = "970CA35de60c44645bbae8a215061b33".into();
        c.agora_app_certificate = Secret::new("5CFd2fd1755d40ecb72977518be15d3b");
        // Long enough for the declining steps on a loaded machine, short enough to wait for.
        c.ring_timeout = std::time::Duration::from_secs(4);
    })
    .await;
    let pairs = unanswered_pairs();
    // Every app is a caller and a callee at least once.
    for app in APPS {
        assert!(pairs.iter().any(|p| p.0 == app), "{app:?} never calls");
        assert!(pairs.iter().any(|p| p.1 == app), "{app:?} is never called");
    }
    let rows = pairs.chunks(2).enumerate().map(|(i, chunk)| {
        let srv = &srv;
        async move {
            let mut row = Row {
                srv,
                p: Puppet::start(srv.addr()),
            };
            let mut failed = Vec::new();
            for (j, &(x, y)) in chunk.iter().enumerate() {
                if !passes(row.unanswered_pair(x, y, i + j)).await {
                    failed.push(format!("{x:?} calls {y:?}"));
                }
            }
            failed
        }
    });
    let failed: Vec<String> = futures_util::future::join_all(rows).await.concat();
    assert!(failed.is_empty(), "failed pairs: {failed:#?}");
}

#[actix_web::test]
async fn group_calls_ring_every_app_that_can_join_in_its_own_words() {
    let srv = apps_server().await;
    let rows = [App::Canonical, App::WorldMates].map(|x| {
        let srv = &srv;
        async move {
            let mut row = Row {
                srv,
                p: Puppet::start(srv.addr()),
            };
            if passes(row.group_row(x)).await {
                Vec::new()
            } else {
                vec![format!("{x:?} rings a group")]
            }
        }
    });
    let failed: Vec<String> = futures_util::future::join_all(rows).await.concat();
    assert!(failed.is_empty(), "failed rows: {failed:#?}");
}

#[actix_web::test]
async fn every_chat_app_messages_every_chat_app_and_sees_its_read_receipt() {
    let srv = apps_server().await;
    let rows = CHAT_APPS.iter().enumerate().map(|(i, &x)| {
        let srv = &srv;
        async move {
            let mut row = Row {
                srv,
                p: Puppet::start(srv.addr()),
            };
            let mut failed = Vec::new();
            for (j, &y) in CHAT_APPS.iter().enumerate() {
                if !passes(row.chat_pair(x, y, i + j)).await {
                    failed.push(format!("{x:?} writes to {y:?}"));
                }
            }
            failed
        }
    });
    let failed: Vec<String> = futures_util::future::join_all(rows).await.concat();
    assert!(failed.is_empty(), "failed pairs: {failed:#?}");
}
