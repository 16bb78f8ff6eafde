//! A Diameter-aware fault-injection proxy: it sits between a node and a server, frames the messages in both
//! directions and applies rules to them — drop, delay, reset the connection, or answer a request itself with a
//! Result-Code — by command, request or answer, CC-Request-Type, CC-Request-Number, and the Nth match.
//! Everything else is forwarded byte for byte.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use charging_ra::codec::{Avp, CommandFlags, Message, code};

/// Which way a message travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the node (the connecting side) to the server.
    ToServer,
    /// From the server to the node.
    ToClient,
}

/// What a rule does to a message it matches.
#[derive(Clone, Debug)]
pub enum Action {
    /// The message is lost.
    Drop,
    /// The message arrives this much later (the connection's later messages wait behind it).
    Delay(Duration),
    /// Both connections are closed at once, the message lost.
    Reset,
    /// A request is not forwarded: the proxy answers it with this Result-Code (E bit for 3xxx), as a relay would.
    Answer(u32),
}

/// A rule: every field that is set must match.
#[derive(Clone, Debug)]
pub struct Rule {
    /// Direction.
    pub direction: Option<Direction>,
    /// Command code (272 CCR/CCA, 280 DWR/DWA, 257 CER/CEA, 282 DPR/DPA, 258 RAR/RAA, 274 ASR/ASA).
    pub command: Option<u32>,
    /// Requests (true) or answers (false).
    pub request: Option<bool>,
    /// CC-Request-Type (1 initial, 2 update, 3 termination, 4 event).
    pub request_type: Option<i32>,
    /// CC-Request-Number.
    pub request_number: Option<u32>,
    /// Act on the Nth matching message only (1-based).
    pub nth: Option<u32>,
    /// Act this many times at most.
    pub times: Option<u32>,
    /// What to do.
    pub action: Action,
}

impl Rule {
    /// A rule matching everything, doing `action`; narrow it with the builder methods.
    pub fn new(action: Action) -> Rule {
        Rule {
            direction: None,
            command: None,
            request: None,
            request_type: None,
            request_number: None,
            nth: None,
            times: None,
            action,
        }
    }
    /// Only this command's requests.
    pub fn requests(mut self, command: u32) -> Rule {
        self.command = Some(command);
        self.request = Some(true);
        self
    }
    /// Only this command's answers.
    pub fn answers(mut self, command: u32) -> Rule {
        self.command = Some(command);
        self.request = Some(false);
        self
    }
    /// Only this CC-Request-Type.
    pub fn request_type(mut self, t: i32) -> Rule {
        self.request_type = Some(t);
        self
    }
    /// At most `n` times.
    pub fn times(mut self, n: u32) -> Rule {
        self.times = Some(n);
        self
    }
}

struct Armed {
    rule: Rule,
    seen: u32,
    fired: u32,
}

/// A running proxy; dropping it does not stop it (it lives as long as the runtime it was started on).
#[derive(Clone)]
pub struct Proxy {
    /// Where nodes connect.
    pub addr: SocketAddr,
    rules: Arc<Mutex<Vec<Armed>>>,
    /// Messages it acted on.
    pub fired: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    /// Starts a proxy towards `upstream` on `rt`.
    pub fn start(rt: &tokio::runtime::Runtime, upstream: SocketAddr) -> Result<Proxy, String> {
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let proxy = Proxy { addr, rules: Arc::new(Mutex::new(Vec::new())), fired: Arc::new(Mutex::new(Vec::new())) };
        let p = proxy.clone();
        rt.spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let p = p.clone();
                tokio::spawn(async move {
                    if let Ok(up) = TcpStream::connect(upstream).await {
                        p.pipe(down, up).await;
                    }
                });
            }
        });
        Ok(proxy)
    }

    /// Adds a rule.
    pub fn add(&self, rule: Rule) {
        self.rules.lock().expect("rules").push(Armed { rule, seen: 0, fired: 0 });
    }

    /// Removes every rule.
    pub fn clear(&self) {
        self.rules.lock().expect("rules").clear();
    }

    fn decide(&self, dir: Direction, m: &Message) -> Option<Action> {
        let flags = m.header.flags;
        let rt = m.find(code::CC_REQUEST_TYPE, 0).and_then(|a| a.as_i32().ok());
        let rn = m.find(code::CC_REQUEST_NUMBER, 0).and_then(|a| a.as_u32().ok());
        let mut rules = self.rules.lock().expect("rules");
        for a in rules.iter_mut() {
            let r = &a.rule;
            let matches = r.direction.is_none_or(|d| d == dir)
                && r.command.is_none_or(|c| c == m.header.code.0)
                && r.request.is_none_or(|q| q == flags.is_request())
                && r.request_type.is_none_or(|t| Some(t) == rt)
                && r.request_number.is_none_or(|n| Some(n) == rn);
            if !matches {
                continue;
            }
            a.seen += 1;
            if r.nth.is_some_and(|n| n != a.seen) || r.times.is_some_and(|t| a.fired >= t) {
                continue;
            }
            a.fired += 1;
            self.fired.lock().expect("fired").push(format!(
                "{:?} {}{} {:?}",
                dir,
                m.header.code.0,
                if flags.is_request() { "R" } else { "A" },
                r.action
            ));
            return Some(r.action.clone());
        }
        None
    }

    async fn pipe(&self, down: TcpStream, up: TcpStream) {
        let (mut dr, dw) = down.into_split();
        let (mut ur, uw) = up.into_split();
        // One writer task per side, so a delayed message holds back only its own direction, in order.
        let (to_up, up_rx) = mpsc::unbounded_channel::<Option<(Duration, Bytes)>>();
        let (to_down, down_rx) = mpsc::unbounded_channel::<Option<(Duration, Bytes)>>();
        tokio::spawn(writer(uw, up_rx));
        tokio::spawn(writer(dw, down_rx));
        let a = {
            let (p, to_up, to_down) = (self.clone(), to_up.clone(), to_down.clone());
            async move { p.read_side(&mut dr, Direction::ToServer, &to_up, &to_down).await }
        };
        let b = {
            let (p, to_up, to_down) = (self.clone(), to_up.clone(), to_down.clone());
            async move { p.read_side(&mut ur, Direction::ToClient, &to_down, &to_up).await }
        };
        tokio::select! { _ = a => {}, _ = b => {} }
        // Either side closed (or a reset): close both.
        let _ = to_up.send(None);
        let _ = to_down.send(None);
    }

    /// Reads messages from one side; `forward` goes on, `back` returns to the sender (the proxy's own answers).
    async fn read_side(
        &self,
        r: &mut tokio::net::tcp::OwnedReadHalf,
        dir: Direction,
        forward: &mpsc::UnboundedSender<Option<(Duration, Bytes)>>,
        back: &mpsc::UnboundedSender<Option<(Duration, Bytes)>>,
    ) {
        loop {
            let mut head = [0u8; 20];
            if r.read_exact(&mut head).await.is_err() {
                return;
            }
            let len = u32::from_be_bytes([0, head[1], head[2], head[3]]) as usize;
            if !(20..=1 << 24).contains(&len) {
                // Not Diameter framing: pass what came and stop inspecting (the peer will close).
                let _ = forward.send(Some((Duration::ZERO, Bytes::copy_from_slice(&head))));
                return;
            }
            let mut buf = BytesMut::with_capacity(len);
            buf.extend_from_slice(&head);
            buf.resize(len, 0);
            if r.read_exact(&mut buf[20..]).await.is_err() {
                return;
            }
            let bytes = buf.freeze();
            let action = Message::decode(bytes.clone()).ok().and_then(|m| self.decide(dir, &m).map(|a| (a, m)));
            match action {
                None => {
                    let _ = forward.send(Some((Duration::ZERO, bytes)));
                }
                Some((Action::Drop, _)) => {}
                Some((Action::Delay(d), _)) => {
                    let _ = forward.send(Some((d, bytes)));
                }
                Some((Action::Reset, _)) => return,
                Some((Action::Answer(rc), m)) if m.header.flags.is_request() => {
                    let mut a = Message::answer_to(&m);
                    a.header.flags = a.header.flags.with(CommandFlags::ERROR, (3000..4000).contains(&rc));
                    a.push(Avp::utf8(code::ORIGIN_HOST, "proxy.conformance.localdomain"))
                        .push(Avp::utf8(code::ORIGIN_REALM, "conformance.localdomain"))
                        .push(Avp::u32(code::RESULT_CODE, rc));
                    if let Ok(b) = a.encode() {
                        let _ = back.send(Some((Duration::ZERO, b)));
                    }
                }
                Some((Action::Answer(_), _)) => {
                    let _ = forward.send(Some((Duration::ZERO, bytes)));
                }
            }
        }
    }
}

async fn writer(mut w: tokio::net::tcp::OwnedWriteHalf, mut rx: mpsc::UnboundedReceiver<Option<(Duration, Bytes)>>) {
    while let Some(Some((delay, b))) = rx.recv().await {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if w.write_all(&b).await.is_err() {
            break;
        }
    }
    let _ = w.shutdown().await;
}
