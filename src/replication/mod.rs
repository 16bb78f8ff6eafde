//! Ownership and adoption, as pure decisions (no store calls, no clock): the record formats, their keys, and the
//! rule a node applies when an event arrives for a session it holds no state for.
//!
//! ```text
//! conv/<convergence>              owner node, its incarnation, epoch      written at creation, CAS on adoption
//! proto/diameter/<Session-Id>     associated = <convergence>              when replication starts
//! proto/sip/<Call-ID>/<tag>/<tag> associated = <convergence>              when the dialog is confirmed
//! state/<convergence>/<protocol>  snapshot, written_by_epoch              write-behind, conditional on the epoch
//! node/<node>                     incarnation, URIs, lease expiry         heartbeat
//! ```
//!
//! Every key is namespaced by the cluster id. Records carry a format version so that two releases can share a
//! store during a rolling upgrade: a reader accepts formats up to its own and refuses newer ones clearly.

use serde::{Deserialize, Serialize};

/// The record format this release writes (and the newest it reads).
pub const FORMAT: u32 = 1;

/// A node as the cluster knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// Node id, unique in the cluster.
    pub node: String,
    /// Changes at every start: a restarted node is a new incarnation and does not own its old self's sessions.
    pub incarnation: u64,
    /// Internal Diameter URI for proxying (`aaa://node1.cluster.local:3869`).
    pub diameter_uri: String,
    /// HTTP front, if any.
    pub http: Option<String>,
    /// SIP address (`host:port`) of the node's B2BUA, if it runs one: where other nodes forward a mid-dialog
    /// request for a call this node owns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sip: Option<String>,
    /// The newest binary state-record layout the node reads ([`BINARY_LAYOUT`]); 0 when it reads JSON only, as
    /// releases before binary records (whose leases lack the field) do. A node writes binary state only while every
    /// live node reads it.
    #[serde(default)]
    pub state_layout: u8,
}

/// `conv/<convergence>`: who owns a call or session group, since which epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvergenceRecord {
    /// Record format.
    pub format: u32,
    /// The owner's node id.
    pub owner: String,
    /// The owner's incarnation when it took ownership.
    pub incarnation: u64,
    /// The owner's internal Diameter URI.
    pub owner_uri: String,
    /// +1 at every adoption; state writes are conditional on it (fencing).
    pub epoch: u64,
}

/// `proto/diameter/<Session-Id>` or `proto/sip/…`: a protocol session linked to its convergence name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtocolRecord {
    /// Record format.
    pub format: u32,
    /// The convergence name (the `associated` attribute).
    pub associated: String,
    /// The owner's internal URI when written (a hint; the convergence record decides).
    pub owner_uri: String,
}

/// `node/<node>`: a node's lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLease {
    /// Record format.
    pub format: u32,
    /// The node.
    pub identity: NodeIdentity,
    /// The lease runs until this wall-clock time (ms since the Unix epoch).
    pub expires_at_ms: u64,
}

/// `state/<convergence>/<protocol key>`: a protocol session's snapshot, stamped with the epoch of the node that
/// wrote it (fencing: [`accept_state`]). A writer may borrow the node id (`W = &str`): the bytes are the same.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateRecord<T, W = String> {
    /// Record format.
    pub format: u32,
    /// The writer's epoch of the convergence record.
    pub written_by_epoch: u64,
    /// The writer's node id (for logs: who wrote what an adopter loads).
    pub written_by: W,
    /// The snapshot.
    pub state: T,
}

/// Record keys, namespaced by cluster. Built by concatenation: `format!` cost 3% of the engine's time with
/// replication on, for a key or two per write.
pub mod keys {
    /// The convergence record.
    pub fn convergence(cluster: &str, convergence: &str) -> String {
        [cluster, "/conv/", convergence].concat()
    }
    /// A Diameter session's protocol record.
    pub fn diameter(cluster: &str, session_id: &str) -> String {
        [cluster, "/proto/diameter/", session_id].concat()
    }
    /// A SIP dialog leg's protocol record.
    pub fn sip(cluster: &str, call_id: &str, local_tag: &str, remote_tag: &str) -> String {
        [cluster, "/proto/sip/", call_id, "/", local_tag, "/", remote_tag].concat()
    }
    /// A protocol session's state snapshot.
    pub fn state(cluster: &str, convergence: &str, protocol_key: &str) -> String {
        [cluster, "/state/", convergence, "/", protocol_key].concat()
    }
    /// A Diameter session's state snapshot: [`state`] with the protocol key `diameter/<Session-Id>`, built in one
    /// allocation (it is made for every write-ahead).
    pub fn diameter_state(cluster: &str, convergence: &str, session_id: &str) -> String {
        [cluster, "/state/", convergence, "/diameter/", session_id].concat()
    }
    /// A node's lease.
    pub fn node(cluster: &str, node: &str) -> String {
        [cluster, "/node/", node].concat()
    }
    /// The earliest timer deadline of a session owned by `node` (a hint for survivors: redundantly armed timers).
    pub fn deadline(cluster: &str, node: &str, session_id: &str) -> String {
        [cluster, "/deadline/", node, "/", session_id].concat()
    }
}

/// Convergence names for sessions whose service chose none: UUIDv7 (RFC 9562 §5.7), ordered by creation time, whose
/// 74 random bits come from a generator seeded once. `uuid::Uuid::now_v7` asks the kernel for new random bytes for
/// every name, a `getrandom` system call per session. The bits only have to keep names of the cluster's processes
/// apart (they are no secret): SplitMix64 over a seed the caller draws from the operating system once. Sans I/O like
/// the rest of this module: the caller gives the seed and each name's time.
#[derive(Debug)]
pub struct NameGenerator {
    state: u64,
}

impl NameGenerator {
    /// A generator from `seed` (the engine takes the 62 random bits of one UUIDv7 made the usual way).
    pub fn new(seed: u64) -> NameGenerator {
        NameGenerator { state: seed }
    }

    /// SplitMix64 (Steele, Lea and Flood, 2014).
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// The next name, made at `unix_ms` (milliseconds since the Unix epoch), in the hyphenated form.
    pub fn next_name(&mut self, unix_ms: u64) -> String {
        let mut random = [0u8; 10];
        random[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        random[8..].copy_from_slice(&self.next_u64().to_le_bytes()[..2]);
        uuid::Builder::from_unix_timestamp_millis(unix_ms, &random).into_uuid().hyphenated().to_string()
    }
}

/// Which live node arms a dead node's timer for a session: the one with the highest rendezvous hash of
/// (session, node), so that every survivor picks the same one without talking to the others, and a node leaving
/// moves only its own share. `None` when no node is live.
pub fn timer_owner<'a>(session_id: &str, live: &'a [String]) -> Option<&'a str> {
    fn fnv(parts: [&str; 2]) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for (i, p) in parts.iter().enumerate() {
            for b in p.bytes().chain([0xff - i as u8]) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        // FNV-1a alone spreads short, similar keys badly: a 64-bit finalizer (MurmurHash3's fmix64) mixes it.
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
    live.iter().max_by_key(|n| (fnv([session_id, n]), n.as_str())).map(String::as_str)
}

/// Why a record cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Not a record of ours.
    #[error("record unreadable: {0}")]
    Unreadable(String),
    /// Written by a newer release.
    #[error("record format {found} is newer than this release reads ({FORMAT}); upgrade this node")]
    TooNew {
        /// The format found.
        found: u32,
    },
    /// A binary record written by a newer release.
    #[error("binary record layout {found} is newer than this release reads ({BINARY_LAYOUT}); upgrade this node")]
    TooNewLayout {
        /// The layout found.
        found: u8,
    },
}

/// Encodes a record as JSON: readable in the store, tolerant of added fields across releases. Every record but a
/// credit-control session's state is written so; that one is the hot path's ([`encode_state`]).
pub fn encode<T: Serialize>(record: &T) -> bytes::Bytes {
    bytes::Bytes::from(serde_json::to_vec(record).expect("records serialize"))
}

/// How state records are written (`[replication] state_encoding`). Readers take both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateEncoding {
    /// Positional binary: [`BINARY_MARKER`], [`BINARY_LAYOUT`], then the record in postcard's wire format (stable
    /// since postcard 1.0). About half the size of JSON and a fraction of its encoding time: no field names, no
    /// escaping, messages as raw bytes instead of base64. Written only while every live node's lease says it reads
    /// this layout ([`NodeIdentity::state_layout`]); JSON otherwise.
    #[default]
    Binary,
    /// JSON, readable with `sqlite3`, and all that releases before binary state records read: set it on every node
    /// before rolling back to one.
    Json,
}

/// The first byte of a binary record. No JSON text starts with it (JSON starts with `{` or whitespace), so a reader
/// tells the two apart from the first byte.
pub const BINARY_MARKER: u8 = 0xB7;

/// The layout of binary records this release writes, and the newest it reads: the record's types as this release
/// defines them, field by field in order. Binary records have no field names, so adding, removing or reordering a
/// field anywhere inside a state record is a new layout, and a reader refuses layouts newer than its own.
pub const BINARY_LAYOUT: u8 = 1;

/// Encodes a state record the given way.
pub fn encode_state<T: Serialize, W: Serialize>(record: &StateRecord<T, W>, encoding: StateEncoding) -> bytes::Bytes {
    match encoding {
        StateEncoding::Json => encode(record),
        StateEncoding::Binary => {
            // A session with a request in flight is 500-600 octets: one allocation, no regrowth.
            let mut out = Vec::with_capacity(1024);
            out.extend_from_slice(&[BINARY_MARKER, BINARY_LAYOUT]);
            bytes::Bytes::from(postcard::to_extend(record, out).expect("records serialize"))
        }
    }
}

/// The binary body of a record, after its marker and layout; `None` for JSON.
fn binary_body(bytes: &[u8]) -> Result<Option<&[u8]>, RecordError> {
    match bytes {
        // Only the layout this release writes: a positional layout cannot be read with another's types.
        [BINARY_MARKER, BINARY_LAYOUT, body @ ..] => Ok(Some(body)),
        [BINARY_MARKER, layout, ..] if *layout > BINARY_LAYOUT => Err(RecordError::TooNewLayout { found: *layout }),
        [BINARY_MARKER, layout, ..] => Err(RecordError::Unreadable(format!("binary record layout {layout}"))),
        [BINARY_MARKER] => Err(RecordError::Unreadable("a binary record with no layout".into())),
        _ => Ok(None),
    }
}

/// Decodes a record, JSON or binary, and checks its format.
pub fn decode<T: for<'de> Deserialize<'de> + Formatted>(bytes: &[u8]) -> Result<T, RecordError> {
    parse(bytes, false)
}

/// Decodes a record, or with `prefix` only its first fields (a binary record's rest is left unread; JSON ignores
/// fields `T` does not name), and checks its format.
fn parse<T: for<'de> Deserialize<'de> + Formatted>(bytes: &[u8], prefix: bool) -> Result<T, RecordError> {
    let r: T = match binary_body(bytes)? {
        Some(body) => match postcard::take_from_bytes(body) {
            Ok((r, rest)) if rest.is_empty() || prefix => r,
            Ok((_, rest)) => {
                return Err(RecordError::Unreadable(format!("binary record: {} octets left over", rest.len())));
            }
            Err(e) => return Err(RecordError::Unreadable(format!("binary record: {e}"))),
        },
        None => serde_json::from_slice(bytes).map_err(|e| RecordError::Unreadable(e.to_string()))?,
    };
    if r.format() > FORMAT {
        return Err(RecordError::TooNew { found: r.format() });
    }
    Ok(r)
}

/// What every state record starts with: who wrote it, at which epoch. Read without the snapshot (which may be of a
/// protocol this node does not know).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct StateHeader {
    /// Record format.
    pub format: u32,
    /// The writer's epoch of the convergence record.
    pub written_by_epoch: u64,
    /// The writer's node id.
    pub written_by: String,
}

/// Reads the header of a state record, JSON or binary: its fields are the record's first three, in order.
pub fn decode_state_header(bytes: &[u8]) -> Result<StateHeader, RecordError> {
    parse(bytes, true)
}

/// For a field whose type writes JSON its own way (fields left out when empty, which a positional format cannot
/// read back): JSON text inside a binary record, the type as is in a JSON one.
pub mod json_in_binary {
    use serde::{Deserializer, Serialize, Serializer, de::DeserializeOwned};

    /// Serializes `v`.
    pub fn serialize<T: Serialize, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            v.serialize(s)
        } else {
            s.serialize_bytes(&serde_json::to_vec(v).map_err(serde::ser::Error::custom)?)
        }
    }

    /// Deserializes what [`serialize`] wrote.
    pub fn deserialize<'de, T: DeserializeOwned, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
        if d.is_human_readable() {
            T::deserialize(d)
        } else {
            serde_json::from_slice(&super::byte_buf(d)?).map_err(serde::de::Error::custom)
        }
    }
}

/// Reads bytes a binary serializer wrote with `serialize_bytes`, in one piece (serde reads a `Vec<u8>` as a
/// sequence of numbers, one call per byte).
pub fn byte_buf<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    struct Buf;
    impl<'de> serde::de::Visitor<'de> for Buf {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("bytes")
        }
        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(b) = seq.next_element()? {
                v.push(b);
            }
            Ok(v)
        }
    }
    d.deserialize_byte_buf(Buf)
}

/// Records with a format field.
pub trait Formatted {
    /// The record's format.
    fn format(&self) -> u32;
}

impl Formatted for ConvergenceRecord {
    fn format(&self) -> u32 {
        self.format
    }
}
impl Formatted for ProtocolRecord {
    fn format(&self) -> u32 {
        self.format
    }
}
impl Formatted for StateHeader {
    fn format(&self) -> u32 {
        self.format
    }
}
impl<T> Formatted for StateRecord<T> {
    fn format(&self) -> u32 {
        self.format
    }
}
impl Formatted for NodeLease {
    fn format(&self) -> u32 {
        self.format
    }
}

/// What a node does with an event for a session it holds no state for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Adoption {
    /// No such replicated session: answer as for an unknown session (5002 / 481).
    Unknown,
    /// This node (this incarnation) owns it: load the state and process.
    Local {
        /// The epoch to write state under.
        epoch: u64,
    },
    /// A live node owns it: forward the event there.
    Proxy {
        /// The owner.
        owner: String,
        /// Its internal URI.
        uri: String,
        /// Its HTTP front, from its lease.
        http: Option<String>,
    },
    /// The owner is dead: try to take the session over with this compare-and-set.
    TakeOver {
        /// The convergence record's version to expect.
        expect_version: u64,
        /// The record to write.
        record: ConvergenceRecord,
    },
}

/// The adoption rule (ARCHITECTURE "Adoption"): protocol record → convergence record → owner alive, self or dead.
/// `lease` is the owner's lease record, if any; `now_ms` the wall clock.
pub fn decide(
    me: &NodeIdentity,
    protocol: Option<&ProtocolRecord>,
    convergence: Option<(&ConvergenceRecord, u64)>,
    lease: Option<&NodeLease>,
    now_ms: u64,
) -> Adoption {
    let (Some(_), Some((conv, version))) = (protocol, convergence) else { return Adoption::Unknown };
    if conv.owner == me.node && conv.incarnation == me.incarnation {
        return Adoption::Local { epoch: conv.epoch };
    }
    // Alive: a lease of the same incarnation that has not run out. A restarted owner (new incarnation) does not
    // get its old sessions back: they are adopted like a dead node's.
    let alive = lease.is_some_and(|l| {
        l.identity.node == conv.owner && l.identity.incarnation == conv.incarnation && l.expires_at_ms > now_ms
    });
    if alive {
        let http = lease.and_then(|l| l.identity.http.clone());
        return Adoption::Proxy { owner: conv.owner.clone(), uri: conv.owner_uri.clone(), http };
    }
    Adoption::TakeOver {
        expect_version: version,
        record: ConvergenceRecord {
            format: FORMAT,
            owner: me.node.clone(),
            incarnation: me.incarnation,
            owner_uri: me.diameter_uri.clone(),
            epoch: conv.epoch + 1,
        },
    }
}

/// Fencing on load: state written under a newer epoch than ours means another node has adopted the session since
/// (we are the stale owner): refuse it, drop our copy.
pub fn accept_state(written_by_epoch: u64, my_epoch: u64) -> bool {
    written_by_epoch <= my_epoch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diameter_session_s_state_key_is_the_state_key_of_its_protocol_key() {
        let want = keys::state("c1", "conv-9", "diameter/as1;1;2");
        assert_eq!(keys::diameter_state("c1", "conv-9", "as1;1;2"), want);
        assert_eq!(want, "c1/state/conv-9/diameter/as1;1;2");
    }

    fn node(n: &str, inc: u64) -> NodeIdentity {
        NodeIdentity {
            node: n.into(),
            incarnation: inc,
            diameter_uri: format!("aaa://{n}.cluster:3869"),
            http: None,
            sip: None,
            state_layout: BINARY_LAYOUT,
        }
    }

    fn conv(owner: &str, inc: u64, epoch: u64) -> ConvergenceRecord {
        ConvergenceRecord {
            format: FORMAT,
            owner: owner.into(),
            incarnation: inc,
            owner_uri: format!("aaa://{owner}.cluster:3869"),
            epoch,
        }
    }

    fn lease(n: &str, inc: u64, until: u64) -> NodeLease {
        NodeLease { format: FORMAT, identity: node(n, inc), expires_at_ms: until }
    }

    const P: ProtocolRecord = ProtocolRecord { format: FORMAT, associated: String::new(), owner_uri: String::new() };

    #[test]
    fn every_branch_of_the_adoption_rule() {
        let me = node("n2", 7);
        // Record missing: unknown session.
        assert_eq!(decide(&me, None, None, None, 1000), Adoption::Unknown);
        assert_eq!(decide(&me, Some(&P), None, None, 1000), Adoption::Unknown);
        // Owner is this incarnation: local.
        assert_eq!(decide(&me, Some(&P), Some((&conv("n2", 7, 3), 40)), None, 1000), Adoption::Local { epoch: 3 });
        // Owner alive: proxy.
        let c = conv("n1", 5, 3);
        assert_eq!(
            decide(&me, Some(&P), Some((&c, 40)), Some(&lease("n1", 5, 2000)), 1000),
            Adoption::Proxy { owner: "n1".into(), uri: "aaa://n1.cluster:3869".into(), http: None }
        );
        // Owner dead (lease expired, or no lease at all): take over with CAS on the version, epoch + 1.
        for l in [Some(lease("n1", 5, 999)), None] {
            match decide(&me, Some(&P), Some((&c, 40)), l.as_ref(), 1000) {
                Adoption::TakeOver { expect_version, record } => {
                    assert_eq!(expect_version, 40);
                    assert_eq!((record.owner.as_str(), record.incarnation, record.epoch), ("n2", 7, 4));
                }
                other => panic!("{other:?}"),
            }
        }
        // The owner restarted (new incarnation): its old sessions are adopted, not handed back.
        assert!(matches!(
            decide(&me, Some(&P), Some((&c, 40)), Some(&lease("n1", 6, 2000)), 1000),
            Adoption::TakeOver { .. }
        ));
        // This node restarted: its previous incarnation's sessions are taken over like any dead node's.
        assert!(matches!(decide(&me, Some(&P), Some((&conv("n2", 6, 1), 9)), None, 1000), Adoption::TakeOver { .. }));
    }

    #[test]
    fn generated_convergence_names_are_distinct_time_ordered_uuid_v7s() {
        let (mut a, mut b) = (NameGenerator::new(0x1234_5678_9abc_def0), NameGenerator::new(0x0fed_cba9_8765_4321));
        let start = 1_798_000_000_000u64;
        // Two names per millisecond from each generator, the clock going forward.
        let names: Vec<(u64, String)> = (0..20_000u64)
            .map(|i| {
                let ms = start + i / 4;
                (ms, if i % 2 == 0 { a.next_name(ms) } else { b.next_name(ms) })
            })
            .collect();
        let distinct: std::collections::HashSet<&String> = names.iter().map(|(_, n)| n).collect();
        assert_eq!(distinct.len(), names.len(), "a name came twice");
        for (ms, n) in &names {
            let u = uuid::Uuid::parse_str(n).unwrap();
            assert_eq!(u.get_version_num(), 7, "{n}");
            assert_eq!(u.get_variant(), uuid::Variant::RFC4122, "{n}");
            let (secs, nanos) = u.get_timestamp().unwrap().to_unix();
            assert_eq!(secs * 1000 + u64::from(nanos) / 1_000_000, *ms, "{n}");
        }
        // Names sort by the time they were made (UUIDv7's point), whatever their random bits.
        assert!(names.windows(2).all(|w| w[0].0 == w[1].0 || w[0].1 < w[1].1));
        // Random bits, not a counter: about half of them differ between consecutive names of one generator.
        let bits = |n: &str| uuid::Uuid::parse_str(n).unwrap().as_u128() & ((1u128 << 74) - 1);
        let flips: u32 = names.windows(3).step_by(2).map(|w| (bits(&w[0].1) ^ bits(&w[2].1)).count_ones()).sum();
        let mean = f64::from(flips) / (names.len() / 2 - 1) as f64;
        assert!((30.0..44.0).contains(&mean), "mean differing bits {mean}");
    }

    #[test]
    fn timers_go_to_one_survivor_the_same_for_everyone() {
        let live: Vec<String> = ["n2", "n3", "n4"].map(String::from).to_vec();
        let mut share = std::collections::HashMap::new();
        for i in 0..3000 {
            let sid = format!("n1;1;{i}");
            let a = timer_owner(&sid, &live).unwrap();
            // The order the survivors list each other in does not matter.
            let mut other = live.clone();
            other.reverse();
            assert_eq!(timer_owner(&sid, &other), Some(a));
            *share.entry(a.to_string()).or_insert(0) += 1;
        }
        // Spread over the survivors (each gets roughly a third).
        assert!(share.values().all(|&n| (700..1300).contains(&n)), "{share:?}");
        // n3 leaving moves only the sessions it had.
        let fewer: Vec<String> = ["n2", "n4"].map(String::from).to_vec();
        for i in 0..500 {
            let sid = format!("n1;1;{i}");
            let before = timer_owner(&sid, &live).unwrap();
            if before != "n3" {
                assert_eq!(timer_owner(&sid, &fewer), Some(before));
            }
        }
        assert_eq!(timer_owner("x", &[]), None);
    }

    #[test]
    fn a_lost_race_becomes_a_proxy_to_the_winner() {
        // n2 and n3 both saw n1 dead; n3 won the CAS. n2 re-reads and finds n3 alive.
        let me = node("n2", 7);
        let won = conv("n3", 2, 4);
        assert_eq!(
            decide(&me, Some(&P), Some((&won, 41)), Some(&lease("n3", 2, 5000)), 1000),
            Adoption::Proxy { owner: "n3".into(), uri: "aaa://n3.cluster:3869".into(), http: None }
        );
    }

    #[test]
    fn fencing_refuses_newer_state_and_records_check_their_format() {
        assert!(accept_state(4, 4));
        assert!(accept_state(3, 4));
        assert!(!accept_state(5, 4), "state written by a later adopter: we are stale");
        let c = conv("n1", 1, 1);
        assert_eq!(decode::<ConvergenceRecord>(&encode(&c)).unwrap(), c);
        let mut newer = c.clone();
        newer.format = FORMAT + 1;
        assert_eq!(decode::<ConvergenceRecord>(&encode(&newer)), Err(RecordError::TooNew { found: FORMAT + 1 }));
        assert!(matches!(decode::<ConvergenceRecord>(b"not json"), Err(RecordError::Unreadable(_))));
        assert_eq!(keys::diameter("c1", "as1;1;2"), "c1/proto/diameter/as1;1;2");
    }
}
