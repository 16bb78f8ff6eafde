//! What an adopter needs of a session (ARCHITECTURE "Ownership and replication"): the FSM state, the next
//! CC-Request-Number, quotas and their timers as absolute wall-clock deadlines (so a survivor re-arms them), CCFH,
//! DDFH and CC-Session-Failover as the server last set them, the destination, the request in flight, the queued
//! service requests, the stored event request. Messages are kept as their encoded bytes.
//!
//! Monotonic instants do not travel between processes: a snapshot converts each deadline with the pair
//! (`now`, `wall_ms`) the driver passes in, and a restore converts back with its own pair.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{CcConfig, CcSession, CcState, Ccfh, Ddfh, FinalUnit, Queued, Quota, RequestedAction};
use crate::codec::{AppId, Avp, Message};
use crate::units::Units;

/// The newest snapshot format this release writes and reads.
pub const SNAPSHOT_FORMAT: u32 = 2;

/// The format of snapshots that need none of format 2's additions, so a release that reads only format 1 can still
/// adopt them during a rolling upgrade. Format 2 adds the service reporting its own usage and the report it owes
/// (`service_reports`, `owed`): a release that ignored them would never send an owed CCR-T, so it must refuse them.
const FORMAT_1: u32 = 1;

/// A quota with absolute deadlines.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaSnapshot {
    rating_group: Option<u32>,
    granted: Units,
    used: Units,
    final_unit: Option<FinalUnit>,
    validity_deadline_ms: Option<u64>,
    holding_time_ms: Option<u64>,
    holding_deadline_ms: Option<u64>,
}

/// A queued service request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum QueuedSnapshot {
    Update { used: Vec<(Option<u32>, Units)>, requested: Vec<Option<u32>>, reason: Option<i32>, extra: Vec<Encoded> },
    Terminate { used: Vec<(Option<u32>, Units)>, extra: Vec<Encoded> },
}

/// Encoded Diameter bytes: raw in a binary record, base64 text in a JSON one (a JSON array of numbers would triple a
/// snapshot's size and its encoding time).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded(Bytes);

impl Serialize for Encoded {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_encoded(&self.0, s)
    }
}

/// Diameter bytes as [`Encoded`] writes them.
fn serialize_encoded<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    use base64::Engine;
    if !s.is_human_readable() {
        return s.serialize_bytes(bytes);
    }
    // Base64 never needs escaping in JSON: the quoted text goes out as is, instead of through serde_json's
    // byte-by-byte escape scan. Other human-readable serializers see the raw value's own representation.
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut quoted = String::with_capacity(bytes.len().div_ceil(3) * 4 + 2);
    quoted.push('"');
    b64.encode_string(bytes, &mut quoted);
    quoted.push('"');
    match serde_json::value::RawValue::from_string(quoted) {
        Ok(raw) => raw.serialize(s),
        Err(_) => s.serialize_str(&b64.encode(bytes)),
    }
}

/// A message serialized as the [`Encoded`] bytes of its encoding, without keeping them: they are made in a buffer
/// each thread reuses (and lets go of after a message larger than [`SCRATCH_KEPT`]).
struct EncodedMessage<'a>(&'a Message);

/// The largest scratch buffer a thread keeps between messages: a request is a few hundred octets, and one outsized
/// message (up to the 1 MiB decode limit) must not pin its size for the thread's life.
const SCRATCH_KEPT: usize = 64 * 1024;

impl Serialize for EncodedMessage<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        thread_local! {
            static SCRATCH: std::cell::RefCell<bytes::BytesMut> = std::cell::RefCell::new(bytes::BytesMut::new());
        }
        SCRATCH.with_borrow_mut(|buf| {
            buf.clear();
            // As `enc`: a message too long to encode is kept as no bytes (it was never sent either).
            if self.0.encode_into(buf).is_err() {
                buf.clear();
            }
            let out = serialize_encoded(buf, s);
            if buf.capacity() > SCRATCH_KEPT {
                *buf = bytes::BytesMut::new();
            }
            out
        })
    }
}

impl<'de> Deserialize<'de> for Encoded {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use base64::Engine;
        if !d.is_human_readable() {
            return crate::replication::byte_buf(d).map(|v| Encoded(v.into()));
        }
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let b64 = base64::engine::general_purpose::STANDARD;
        b64.decode(text.as_bytes()).map(|v| Encoded(v.into())).map_err(serde::de::Error::custom)
    }
}

/// A session, ready to be stored and adopted. The configuration's names are shared with the session, not copied
/// (serde writes an `Arc<str>` as the `str` it holds).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CcSnapshot {
    format: u32,
    session_id: String,
    application: u32,
    origin_host: Arc<str>,
    origin_realm: Arc<str>,
    destination_realm: Arc<str>,
    destination_host: Option<String>,
    service_context_id: Arc<str>,
    tx_ms: u64,
    configured_ccfh: Ccfh,
    configured_ddfh: Ddfh,
    subscription: Option<(i32, String)>,
    state: CcState,
    next_number: u32,
    outstanding: Option<Encoded>,
    tx_deadline_ms: Option<u64>,
    ccfh: Ccfh,
    ddfh: Ddfh,
    failover_supported: bool,
    granted_without_answer: bool,
    retried_alternate: bool,
    quotas: Vec<QuotaSnapshot>,
    queue: Vec<QueuedSnapshot>,
    stored: Option<Encoded>,
    event_action: Option<RequestedAction>,
    last_event: Option<Encoded>,
    /// Absent from records written before it existed: false, none.
    #[serde(default)]
    service_reports: bool,
    #[serde(default)]
    owed: Option<(u64, super::OwedReport)>,
}

/// A session serialized where it is, without building a [`CcSnapshot`]: the same fields in the same order, so the
/// same bytes in either encoding (a test holds the two to that), and none of the snapshot's copies. This is what
/// the write-ahead of every request encodes.
#[derive(Serialize)]
#[serde(rename = "CcSnapshot")]
pub struct SnapshotView<'a> {
    format: u32,
    session_id: &'a str,
    application: u32,
    origin_host: &'a str,
    origin_realm: &'a str,
    destination_realm: &'a str,
    destination_host: Option<&'a str>,
    service_context_id: &'a str,
    tx_ms: u64,
    configured_ccfh: Ccfh,
    configured_ddfh: Ddfh,
    subscription: Option<(i32, &'a str)>,
    state: CcState,
    next_number: u32,
    outstanding: Option<EncodedMessage<'a>>,
    tx_deadline_ms: Option<u64>,
    ccfh: Ccfh,
    ddfh: Ddfh,
    failover_supported: bool,
    granted_without_answer: bool,
    retried_alternate: bool,
    quotas: Snapshots<'a, Quota>,
    queue: Snapshots<'a, Queued>,
    stored: Option<EncodedMessage<'a>>,
    event_action: Option<RequestedAction>,
    last_event: Option<EncodedMessage<'a>>,
    service_reports: bool,
    owed: Option<(u64, &'a super::OwedReport)>,
}

/// A sequence (a `VecDeque`'s two slices) serialized as each element's snapshot, made as it goes; deadlines are
/// converted with (`now`, `wall_ms`).
struct Snapshots<'a, T> {
    items: (&'a [T], &'a [T]),
    now: Instant,
    wall_ms: u64,
}

impl<T> Snapshots<'_, T> {
    fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.0.iter().chain(self.items.1)
    }
}

impl Serialize for Snapshots<'_, Quota> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter().map(|q| q.snapshot(self.now, self.wall_ms)))
    }
}

impl Serialize for Snapshots<'_, Queued> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter().map(Queued::snapshot))
    }
}

/// Why a snapshot cannot be restored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// Written by a newer release.
    #[error("session snapshot format {0} is newer than this release reads ({SNAPSHOT_FORMAT})")]
    TooNew(u32),
    /// A message inside does not decode.
    #[error("session snapshot holds an undecodable message: {0}")]
    BadMessage(String),
}

fn to_ms(t: Option<Instant>, now: Instant, wall_ms: u64) -> Option<u64> {
    t.map(|t| wall_ms + t.saturating_duration_since(now).as_millis() as u64)
}

fn from_ms(ms: Option<u64>, now: Instant, wall_ms: u64) -> Option<Instant> {
    // A deadline already past on this node's clock fires at once.
    ms.map(|ms| now + Duration::from_millis(ms.saturating_sub(wall_ms)))
}

fn enc(m: &Message) -> Encoded {
    Encoded(m.encode().unwrap_or_default())
}

fn dec(b: &Encoded) -> Result<Message, SnapshotError> {
    Message::decode(b.0.clone()).map_err(|e| SnapshotError::BadMessage(e.to_string()))
}

fn enc_avps(avps: &[Avp]) -> Vec<Encoded> {
    avps.iter()
        .map(|a| {
            let mut b = bytes::BytesMut::new();
            a.encode_into(&mut b);
            Encoded(b.freeze())
        })
        .collect()
}

fn dec_avps(list: &[Encoded]) -> Result<Vec<Avp>, SnapshotError> {
    list.iter()
        .map(|b| {
            // A wrapper whose payload is the AVP's bytes lets the bounded Grouped parser read it back.
            let wrapper = Avp::mandatory(0, b.0.clone());
            wrapper
                .grouped_avps()
                .map_err(|e| SnapshotError::BadMessage(e.to_string()))?
                .pop()
                .ok_or_else(|| SnapshotError::BadMessage("empty AVP".into()))
        })
        .collect()
}

impl Quota {
    fn snapshot(&self, now: Instant, wall_ms: u64) -> QuotaSnapshot {
        QuotaSnapshot {
            rating_group: self.rating_group,
            granted: self.granted,
            used: self.used,
            final_unit: self.final_unit.clone(),
            validity_deadline_ms: to_ms(self.validity_deadline, now, wall_ms),
            holding_time_ms: self.holding_time.map(|d| d.as_millis() as u64),
            holding_deadline_ms: to_ms(self.holding_deadline, now, wall_ms),
        }
    }

    fn restore(s: &QuotaSnapshot, now: Instant, wall_ms: u64) -> Quota {
        Quota {
            rating_group: s.rating_group,
            granted: s.granted,
            used: s.used,
            final_unit: s.final_unit.clone(),
            validity_deadline: from_ms(s.validity_deadline_ms, now, wall_ms),
            holding_time: s.holding_time_ms.map(Duration::from_millis),
            holding_deadline: from_ms(s.holding_deadline_ms, now, wall_ms),
        }
    }
}

impl Queued {
    fn snapshot(&self) -> QueuedSnapshot {
        match self {
            Queued::Update { used, requested, reason, extra, .. } => QueuedSnapshot::Update {
                used: used.clone(),
                requested: requested.clone(),
                reason: *reason,
                extra: enc_avps(extra),
            },
            Queued::Terminate { used, extra, .. } => {
                QueuedSnapshot::Terminate { used: used.clone(), extra: enc_avps(extra) }
            }
        }
    }
}

impl CcSession {
    /// The session as an adopter needs it; deadlines become wall-clock times through (`now`, `wall_ms`).
    pub fn snapshot(&self, now: Instant, wall_ms: u64) -> CcSnapshot {
        let c = &self.config;
        CcSnapshot {
            format: self.snapshot_format(),
            session_id: self.session_id.clone(),
            application: c.application.0,
            origin_host: c.origin_host.clone(),
            origin_realm: c.origin_realm.clone(),
            destination_realm: c.destination_realm.clone(),
            destination_host: c.destination_host.clone(),
            service_context_id: c.service_context_id.clone(),
            tx_ms: c.tx.as_millis() as u64,
            configured_ccfh: c.ccfh,
            configured_ddfh: c.ddfh,
            subscription: c.subscription.clone(),
            state: self.state,
            next_number: self.next_number,
            outstanding: self.outstanding.as_ref().map(enc),
            tx_deadline_ms: to_ms(self.tx_deadline, now, wall_ms),
            ccfh: self.ccfh,
            ddfh: self.ddfh,
            failover_supported: self.failover_supported,
            granted_without_answer: self.granted_without_answer,
            retried_alternate: self.retried_alternate,
            quotas: self.quotas.iter().map(|q| q.snapshot(now, wall_ms)).collect(),
            queue: self.queue.iter().map(Queued::snapshot).collect(),
            stored: self.stored.as_ref().map(enc),
            event_action: self.event_action,
            last_event: self.last_event.as_ref().map(enc),
            service_reports: self.service_reports,
            owed: self.owed.as_ref().and_then(|(t, r)| Some((to_ms(Some(*t), now, wall_ms)?, r.clone()))),
        }
    }

    /// The oldest snapshot format that says all this session needs (see [`FORMAT_1`]).
    fn snapshot_format(&self) -> u32 {
        if self.service_reports || self.owed.is_some() { SNAPSHOT_FORMAT } else { FORMAT_1 }
    }

    /// What [`CcSession::snapshot`] holds, to be serialized in place ([`SnapshotView`]).
    pub fn snapshot_view(&self, now: Instant, wall_ms: u64) -> SnapshotView<'_> {
        let c = &self.config;
        SnapshotView {
            format: self.snapshot_format(),
            session_id: &self.session_id,
            application: c.application.0,
            origin_host: &c.origin_host,
            origin_realm: &c.origin_realm,
            destination_realm: &c.destination_realm,
            destination_host: c.destination_host.as_deref(),
            service_context_id: &c.service_context_id,
            tx_ms: c.tx.as_millis() as u64,
            configured_ccfh: c.ccfh,
            configured_ddfh: c.ddfh,
            subscription: c.subscription.as_ref().map(|(kind, id)| (*kind, id.as_str())),
            state: self.state,
            next_number: self.next_number,
            outstanding: self.outstanding.as_ref().map(EncodedMessage),
            tx_deadline_ms: to_ms(self.tx_deadline, now, wall_ms),
            ccfh: self.ccfh,
            ddfh: self.ddfh,
            failover_supported: self.failover_supported,
            granted_without_answer: self.granted_without_answer,
            retried_alternate: self.retried_alternate,
            quotas: Snapshots { items: (&self.quotas, &[]), now, wall_ms },
            queue: Snapshots { items: self.queue.as_slices(), now, wall_ms },
            stored: self.stored.as_ref().map(EncodedMessage),
            event_action: self.event_action,
            last_event: self.last_event.as_ref().map(EncodedMessage),
            service_reports: self.service_reports,
            owed: self.owed.as_ref().and_then(|(t, r)| Some((to_ms(Some(*t), now, wall_ms)?, r))),
        }
    }

    /// A session rebuilt from a snapshot on this node: timers re-armed from their absolute deadlines, with the
    /// given Origin-Host (an adopter speaks with its own identity). Call [`CcSession::resume`] next.
    pub fn restore(s: &CcSnapshot, origin_host: &str, now: Instant, wall_ms: u64) -> Result<CcSession, SnapshotError> {
        if s.format > SNAPSHOT_FORMAT {
            return Err(SnapshotError::TooNew(s.format));
        }
        let config = CcConfig {
            application: AppId(s.application),
            origin_host: origin_host.into(),
            origin_realm: s.origin_realm.clone(),
            destination_realm: s.destination_realm.clone(),
            destination_host: s.destination_host.clone(),
            service_context_id: s.service_context_id.clone(),
            tx: Duration::from_millis(s.tx_ms),
            ccfh: s.configured_ccfh,
            ddfh: s.configured_ddfh,
            subscription: s.subscription.clone(),
        };
        let mut cc = CcSession::new(config, s.session_id.clone());
        cc.state = s.state;
        cc.next_number = s.next_number;
        cc.outstanding = s.outstanding.as_ref().map(dec).transpose()?;
        cc.tx_deadline = from_ms(s.tx_deadline_ms, now, wall_ms);
        cc.ccfh = s.ccfh;
        cc.ddfh = s.ddfh;
        cc.failover_supported = s.failover_supported;
        cc.granted_without_answer = s.granted_without_answer;
        cc.retried_alternate = s.retried_alternate;
        cc.quotas = s.quotas.iter().map(|q| Quota::restore(q, now, wall_ms)).collect();
        cc.queue = s
            .queue
            .iter()
            .map(|q| {
                Ok(match q {
                    QueuedSnapshot::Update { used, requested, reason, extra } => Queued::Update {
                        used: used.clone(),
                        requested: requested.clone(),
                        reason: *reason,
                        tag: None,
                        extra: dec_avps(extra)?,
                    },
                    QueuedSnapshot::Terminate { used, extra } => {
                        Queued::Terminate { used: used.clone(), tag: None, extra: dec_avps(extra)? }
                    }
                })
            })
            .collect::<Result<VecDeque<_>, SnapshotError>>()?;
        cc.stored = s.stored.as_ref().map(dec).transpose()?;
        cc.event_action = s.event_action;
        cc.last_event = s.last_event.as_ref().map(dec).transpose()?;
        cc.service_reports = s.service_reports;
        cc.owed = s.owed.as_ref().and_then(|(ms, r)| Some((from_ms(Some(*ms), now, wall_ms)?, r.clone())));
        Ok(cc)
    }

    /// After adoption: a request that was sent and not answered goes again with the T flag and the same
    /// CC-Request-Number, now from this node (its Origin-Host); Tx starts again. The OCS answers it once
    /// (RFC 4006 §5.1: a retransmission). Does nothing when no request was in flight.
    pub fn resume(&mut self, now: Instant) {
        let Some(mut m) = self.outstanding.take() else { return };
        m.header.flags = crate::codec::CommandFlags(m.header.flags.0 | crate::codec::CommandFlags::RETRANSMIT);
        for a in &mut m.avps {
            if a.is(crate::codec::code::ORIGIN_HOST, 0) {
                *a = Avp::utf8(crate::codec::code::ORIGIN_HOST, &self.config.origin_host);
            }
        }
        // Fresh identifiers from this node's router. The End-to-End Identifier is unique per Origin-Host
        // (RFC 6733 §3), and the Origin-Host has changed, so the old one could collide with this node's own
        // sequence. The OCS recognises the retransmission by Session-Id and CC-Request-Number instead
        // (RFC 4006 §5.1, the T flag).
        m.header.hop_by_hop = crate::codec::HopByHopId(0);
        m.header.end_to_end = crate::codec::EndToEndId(0);
        self.outstanding = Some(m.clone());
        self.tx_deadline = Some(now + self.config.tx);
        self.out.push_back(super::CcOutput::Send(m));
    }
}
