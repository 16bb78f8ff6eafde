//! Minimal SIP user agents over UDP, so that the demo and the tests can place calls where sipp is not installed.
//! The UAS answers every INVITE (180, then 200 with SDP), every re-INVITE, UPDATE and BYE with 200, always to the
//! top Via (§18.2.2), so it keeps working when another B2BUA node carries the call on. The UAC places a call, holds
//! it, optionally re-INVITEs, and hangs up; it can be told to send its in-dialog requests to another node.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::sip::dialog::Dialog;
use crate::sip::message::Message;
use crate::sip::transaction::Transport;

const SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";

static COUNTER: AtomicU64 = AtomicU64::new(1);

fn fresh(what: &str) -> String {
    format!("{what}{}x{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

fn via(local: SocketAddr) -> String {
    format!("SIP/2.0/UDP {local};branch={};rport", fresh("z9hG4bKua"))
}

fn with_sdp(m: &mut Message) {
    m.body = bytes::Bytes::from_static(SDP.as_bytes());
    m.set("Content-Type", "application/sdp");
}

/// What a UAS has seen.
#[derive(Debug, Default)]
pub struct UasCounters {
    /// INVITEs answered 200 (initial).
    pub answered: AtomicU64,
    /// re-INVITEs and UPDATEs answered.
    pub refreshed: AtomicU64,
    /// BYEs received.
    pub byes: AtomicU64,
    /// The highest CSeq number of an in-dialog request (after a failover, the adopter's are the stored ones plus
    /// its gap).
    pub highest_cseq: AtomicU64,
    /// In-dialog requests refused 500 for a CSeq below the dialog's last (RFC 3261 §12.2.2).
    pub out_of_order: AtomicU64,
}

/// Runs a UAS on `socket` until the task is aborted.
pub async fn run_uas(socket: UdpSocket, counters: Arc<UasCounters>) {
    let local = socket.local_addr().expect("bound");
    let mut buf = vec![0u8; 65536];
    let mut tags: HashMap<String, String> = HashMap::new();
    let mut remote_cseq: HashMap<String, u32> = HashMap::new();
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else { continue };
        let Ok(m) = Message::parse(&buf[..n]) else { continue };
        if !m.is_request() || m.method() == "ACK" {
            continue;
        }
        let dest = m
            .top_via()
            .map(|v| v.response_target())
            .and_then(|(h, p)| format!("{h}:{p}").parse::<SocketAddr>().ok())
            .unwrap_or(from);
        let tag = tags.entry(m.call_id().to_string()).or_insert_with(|| fresh("uas")).clone();
        let reply = |code: u16, reason: &str, sdp: bool| {
            let mut r = m.response(code, reason, Some(&tag));
            if matches!(m.method(), "INVITE" | "UPDATE") && code < 300 {
                r.push("Contact", format!("<sip:uas@{local}>"));
                if sdp {
                    with_sdp(&mut r);
                }
            }
            let _ = socket.try_send_to(&r.to_bytes(), dest);
        };
        let cseq = m.cseq().map_or(0, |(n, _)| n);
        if m.to_tag().is_some() {
            // §12.2.2: a request with a CSeq below the dialog's remote sequence number is out of order.
            let last = remote_cseq.entry(m.call_id().to_string()).or_insert(0);
            if cseq < *last {
                counters.out_of_order.fetch_add(1, Ordering::Relaxed);
                reply(500, "Server Internal Error", false);
                continue;
            }
            *last = cseq;
            counters.highest_cseq.fetch_max(u64::from(cseq), Ordering::Relaxed);
        } else {
            remote_cseq.insert(m.call_id().to_string(), cseq);
        }
        match m.method() {
            "INVITE" if m.to_tag().is_none() => {
                reply(180, "Ringing", false);
                reply(200, "OK", true);
                counters.answered.fetch_add(1, Ordering::Relaxed);
            }
            "INVITE" | "UPDATE" => {
                reply(200, "OK", true);
                counters.refreshed.fetch_add(1, Ordering::Relaxed);
            }
            "BYE" => {
                reply(200, "OK", false);
                counters.byes.fetch_add(1, Ordering::Relaxed);
                tags.remove(m.call_id());
                remote_cseq.remove(m.call_id());
            }
            _ => reply(200, "OK", false),
        }
    }
}

/// A UAC: many calls over one socket.
#[derive(Clone)]
pub struct Uac {
    socket: Arc<UdpSocket>,
    calls: Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Message>>>>,
}

/// How one call went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallReport {
    /// The final response to the INVITE.
    pub invite: u16,
    /// The final response to the re-INVITE, if one was sent.
    pub reinvite: Option<u16>,
    /// The final response to the BYE (or a BYE received from the network: 0).
    pub bye: Option<u16>,
}

/// What a call does.
#[derive(Clone, Debug)]
pub struct CallPlan {
    /// Request-URI.
    pub uri: String,
    /// Where the INVITE goes (the B2BUA).
    pub via: SocketAddr,
    /// How long the call lasts once answered.
    pub hold: Duration,
    /// Send a re-INVITE halfway.
    pub reinvite: bool,
    /// Where in-dialog requests after the ACK go (another node of the cluster, as a load balancer would send
    /// them after a failure); `None`: the remote target.
    pub in_dialog_to: Option<SocketAddr>,
}

impl Uac {
    /// A UAC on a new loopback socket.
    pub async fn bind() -> std::io::Result<Uac> {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let calls: Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Message>>>> = Arc::default();
        let (s, c) = (socket.clone(), calls.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            loop {
                let Ok((n, from)) = s.recv_from(&mut buf).await else { continue };
                let Ok(m) = Message::parse(&buf[..n]) else { continue };
                if m.is_request() {
                    // A BYE from the network (the B2BUA hung up): answer it, tell the call.
                    let r = m.response(200, "OK", None);
                    let _ = s.try_send_to(&r.to_bytes(), from);
                }
                let tx = c.lock().expect("lock").get(m.call_id()).cloned();
                if let Some(tx) = tx {
                    let _ = tx.send(m);
                }
            }
        });
        Ok(Uac { socket, calls })
    }

    /// The local address.
    pub fn local_addr(&self) -> SocketAddr {
        self.socket.local_addr().expect("bound")
    }

    async fn transact(
        &self,
        rx: &mut mpsc::UnboundedReceiver<Message>,
        m: &Message,
        to: SocketAddr,
    ) -> Option<Message> {
        let bytes = m.to_bytes();
        let (n, method) = m.cseq()?;
        let mut wait = Duration::from_millis(500);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(32);
        let _ = self.socket.send_to(&bytes, to).await;
        loop {
            let next = (tokio::time::Instant::now() + wait).min(deadline);
            match tokio::time::timeout_at(next, rx.recv()).await {
                Ok(Some(r)) if !r.is_request() && r.cseq() == Some((n, method.clone())) && r.code() >= 200 => {
                    return Some(r);
                }
                Ok(Some(r)) if r.is_request() && r.method() == "BYE" => return None,
                Ok(Some(_)) => {}
                Ok(None) => return None,
                Err(_) if tokio::time::Instant::now() >= deadline => return None,
                Err(_) => {
                    let _ = self.socket.send_to(&bytes, to).await;
                    wait = (wait * 2).min(Duration::from_secs(4));
                }
            }
        }
    }

    /// Places one call and waits until it ends.
    pub async fn call(&self, plan: &CallPlan) -> CallReport {
        let local = self.local_addr();
        let call_id = format!("{}@uac", fresh("c"));
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.calls.lock().expect("lock").insert(call_id.clone(), tx);
        let mut d = Dialog::uac(
            &call_id,
            &fresh("uac"),
            &format!("<sip:caller@{local}>"),
            &format!("<{}>", plan.uri),
            &plan.uri,
            Vec::new(),
            &format!("sip:caller@{local}"),
            Transport::Udp,
        );
        let mut inv = d.request("INVITE", None);
        inv.push_front("Via", via(local));
        with_sdp(&mut inv);
        let mut report = CallReport { invite: 408, reinvite: None, bye: None };
        let Some(r) = self.transact(&mut rx, &inv, plan.via).await else {
            self.calls.lock().expect("lock").remove(&call_id);
            return report;
        };
        report.invite = r.code();
        if !(200..300).contains(&r.code()) {
            self.calls.lock().expect("lock").remove(&call_id);
            return report;
        }
        d.on_response(&r);
        let target = |d: &Dialog| {
            plan.in_dialog_to.unwrap_or_else(|| {
                let (h, p) = crate::sip::message::uri_host_port(d.next_hop()).unwrap_or_default();
                format!("{h}:{}", p.unwrap_or(5060)).parse().unwrap_or(plan.via)
            })
        };
        let mut ack = d.request("ACK", Some(d.local_cseq));
        ack.push_front("Via", via(local));
        let first_hop = {
            let (h, p) = crate::sip::message::uri_host_port(d.next_hop()).unwrap_or_default();
            format!("{h}:{}", p.unwrap_or(5060)).parse().unwrap_or(plan.via)
        };
        let _ = self.socket.send_to(&ack.to_bytes(), first_hop).await;
        let half = plan.hold / 2;
        // A BYE from the network during the hold ends the call early.
        let ended = |m: &Message| m.is_request() && m.method() == "BYE";
        if plan.reinvite {
            if let Ok(Some(m)) = tokio::time::timeout(half, recv_until(&mut rx, ended)).await {
                let _ = m;
                report.bye = Some(0);
                self.calls.lock().expect("lock").remove(&call_id);
                return report;
            }
            let mut re = d.request("INVITE", None);
            re.push_front("Via", via(local));
            with_sdp(&mut re);
            let to = target(&d);
            match self.transact(&mut rx, &re, to).await {
                Some(r) => {
                    report.reinvite = Some(r.code());
                    if (200..300).contains(&r.code()) {
                        d.refresh_target(&r);
                        let mut ack = d.request("ACK", Some(d.local_cseq));
                        ack.push_front("Via", via(local));
                        let _ = self.socket.send_to(&ack.to_bytes(), to).await;
                    }
                }
                None => report.reinvite = Some(408),
            }
        }
        let rest = if plan.reinvite { plan.hold - half } else { plan.hold };
        if let Ok(Some(_)) = tokio::time::timeout(rest, recv_until(&mut rx, ended)).await {
            report.bye = Some(0);
            self.calls.lock().expect("lock").remove(&call_id);
            return report;
        }
        let mut bye = d.request("BYE", None);
        bye.push_front("Via", via(local));
        report.bye = Some(self.transact(&mut rx, &bye, target(&d)).await.map_or(408, |r| r.code()));
        self.calls.lock().expect("lock").remove(&call_id);
        report
    }
}

async fn recv_until(rx: &mut mpsc::UnboundedReceiver<Message>, pred: impl Fn(&Message) -> bool) -> Option<Message> {
    while let Some(m) = rx.recv().await {
        if pred(&m) {
            return Some(m);
        }
    }
    None
}
