//! The configuration file (TOML): serde model with `deny_unknown_fields`, so a misspelt key is an error that
//! names it. `config.example.toml` documents every option with its default; a test parses it and finds the defaults.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::codec::DecodeLimits;
use crate::dict::{DictError, Dictionary};

/// The whole file.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node: identity and listening addresses (for `charging-ra node`).
    #[serde(default)]
    pub node: NodeSection,
    /// The OCS / PCRF peers, in priority order.
    #[serde(default)]
    pub peers: Vec<PeerSection>,
    /// Ro and Gx defaults.
    #[serde(default)]
    pub applications: ApplicationsSection,
    /// The other nodes of the cluster, which this node proxies RAR/ASR to and accepts them from.
    #[serde(default)]
    pub cluster: ClusterSection,
    /// Codec limits.
    #[serde(default)]
    pub codec: CodecConfig,
    /// Dictionary files beyond the shipped ones.
    #[serde(default)]
    pub dictionaries: DictionariesConfig,
    /// Session replication.
    #[serde(default)]
    pub replication: ReplicationSection,
    /// The replication store.
    #[serde(default)]
    pub store: StoreSection,
    /// The SIP B2BUA.
    #[serde(default)]
    pub sip: SipSection,
    /// Logging.
    #[serde(default)]
    pub log: LogSection,
    /// What the node takes on at most before it refuses new work.
    #[serde(default)]
    pub limits: LimitsSection,
    /// TLS for Diameter (RFC 6733 §13): this node's certificate and key, and the CA its peers' certificates must
    /// chain to. Needed by `[node] diameter_tls_listen` and by `[[peers]]` with `tls = true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::transport::tls::TlsConfig>,
}

/// `[limits]`: bounds beyond which a node refuses new work clearly instead of growing until it dies.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Credit-control sessions held at most; beyond it a new session is refused (HTTP 503, SIP 503,
    /// `ChargingError::Overloaded`). Sessions adopted from a failed node are taken regardless.
    pub max_sessions: usize,
    /// Requests from peers (RAR, ASR, proxied requests) being processed at once at most; beyond it a new one is
    /// answered 3004 DIAMETER_TOO_BUSY (RFC 6733 §7.1.3).
    pub max_incoming: usize,
    /// Requests this node has sent and awaits answers for, at most; beyond it a new one fails at once with 3004.
    pub max_pending: usize,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection { max_sessions: 1_000_000, max_incoming: 10_000, max_pending: 100_000 }
    }
}

/// `[log]`: how a node logs (to standard error).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// `text` (human-readable lines) or `json` (one JSON object per line); `--log-json` forces `json`.
    pub format: LogFormat,
    /// A `tracing` filter (`info`, `charging_ra=debug,info`…); the `RUST_LOG` environment variable overrides it.
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection { format: LogFormat::Text, level: "info".into() }
    }
}

/// `[log] format`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// JSON lines.
    Json,
}

/// `[sip]`: the B2BUA (docs/sip.md). `CHARGING_RA_SIP_LISTEN` overrides `listen`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SipSection {
    /// Run the B2BUA.
    pub enabled: bool,
    /// UDP and TCP listening address.
    pub listen: std::net::SocketAddr,
    /// Host (or host:port) written in Via and Contact when `listen` is a wildcard address.
    pub advertise: Option<String>,
    /// Where leg B goes (outbound proxy or callee); unset: the Request-URI's host.
    pub next_hop: Option<std::net::SocketAddr>,
    /// Transport toward the next hop: udp or tcp.
    pub next_hop_transport: crate::sip::Transport,
    /// Which dialogs are replicated: confirmed-dialog, confirmed-dialog-no-application-data or off.
    pub replication: crate::sip::DialogReplication,
    /// Charge calls on Ro (CCR-I at INVITE, CCR-U when the granted time is used, CCR-T at BYE).
    pub charging: bool,
    /// Service-Context-Id of the call's Ro session.
    pub service_context: String,
    /// Rating group the call's time is charged in.
    pub rating_group: u32,
    /// Time asked for in each CCR-I / CCR-U.
    #[serde(with = "humantime_serde")]
    pub quota: std::time::Duration,
    /// How far each leg's local CSeq jumps when another node adopts a call.
    pub cseq_gap: u32,
    /// Expiry of a call's records, refreshed by every write.
    #[serde(with = "humantime_serde")]
    pub record_ttl: std::time::Duration,
    /// RFC 3261 T1 (RTT estimate).
    #[serde(with = "humantime_serde")]
    pub t1: std::time::Duration,
    /// RFC 3261 T2 (longest retransmit interval).
    #[serde(with = "humantime_serde")]
    pub t2: std::time::Duration,
    /// RFC 3261 T4 (longest time a message stays in the network).
    #[serde(with = "humantime_serde")]
    pub t4: std::time::Duration,
}

impl Default for SipSection {
    fn default() -> Self {
        let b = crate::b2bua::B2buaConfig::new(([127, 0, 0, 1], 5060).into());
        let c = crate::b2bua::ChargingSettings::default();
        SipSection {
            enabled: false,
            listen: b.listen,
            advertise: None,
            next_hop: None,
            next_hop_transport: b.next_hop_transport,
            replication: b.replication,
            charging: true,
            service_context: c.service_context,
            rating_group: c.rating_group,
            quota: c.quota,
            cseq_gap: b.cseq_gap,
            record_ttl: b.record_ttl,
            t1: b.timers.t1,
            t2: b.timers.t2,
            t4: b.timers.t4,
        }
    }
}

impl SipSection {
    /// The B2BUA's settings; `replicate` is whether the node replicates at all (`[replication] enabled` and
    /// `replicate_by_default.sip`).
    pub fn b2bua_config(&self, replicate: bool) -> crate::b2bua::B2buaConfig {
        crate::b2bua::B2buaConfig {
            listen: self.listen,
            advertise: self.advertise.clone(),
            next_hop: self.next_hop,
            next_hop_transport: self.next_hop_transport,
            replication: if replicate { self.replication } else { crate::sip::DialogReplication::Off },
            charging: self.charging.then(|| crate::b2bua::ChargingSettings {
                service_context: self.service_context.clone(),
                rating_group: self.rating_group,
                quota: self.quota,
            }),
            cseq_gap: self.cseq_gap,
            record_ttl: self.record_ttl,
            timers: crate::sip::Timers { t1: self.t1, t2: self.t2, t4: self.t4 },
        }
    }
}

/// `[node]`: who this node is and where it listens. `CHARGING_RA_NODE_ID`, `CHARGING_RA_ORIGIN_HOST`,
/// `CHARGING_RA_DIAMETER_LISTEN` and `CHARGING_RA_HTTP_LISTEN` override the values of the same name, so that the
/// nodes of a cluster can share one file; `CHARGING_RA_HTTP_TOKEN` sets `http_token`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSection {
    /// Node id, unique in the cluster.
    pub id: String,
    /// Origin-Host (each node has its own, RFC 6733 §6.3).
    pub origin_host: String,
    /// Origin-Realm.
    pub origin_realm: String,
    /// Diameter listening address: RAR/ASR from the OCS and requests proxied by other nodes arrive here.
    pub diameter_listen: Option<std::net::SocketAddr>,
    /// Diameter over TLS listening address (RFC 6733 §2.1: TLS from the first octet); needs `[tls]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diameter_tls_listen: Option<std::net::SocketAddr>,
    /// The HTTP JSON front.
    pub http_listen: Option<std::net::SocketAddr>,
    /// Device-Watchdog interval Tw (RFC 3539; at least 6 s in production).
    #[serde(with = "humantime_serde")]
    pub watchdog: std::time::Duration,
    /// Identities accepted in a CER besides `[[peers]]` and `[[cluster.members]]`, like freeDiameter's acl_wl:
    /// `host.realm`, `*.realm` (any identity under it) or `*` (anyone). Empty: configured peers only.
    pub accept_peers: Vec<String>,
    /// A bearer token the HTTP front requires (`Authorization: Bearer …`) on every route; none by default, since
    /// the front binds to loopback. `CHARGING_RA_HTTP_TOKEN` sets it without writing it in a file.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "redacted")]
    pub http_token: Option<String>,
    /// Worker threads of the node's runtime; none: one per CPU. The engine's work is a chain of tasks that wake one
    /// another; on a machine shared with other busy processes, fewer threads than CPUs saves cross-thread wake-ups
    /// (BENCHMARKS.md, "threads").
    pub worker_threads: Option<usize>,
}

const TOKEN_RULE: &str = "must be at least 16 characters, without spaces";

/// A bearer token long enough not to be guessed, and one that fits an `Authorization` header.
fn token_ok(t: &str) -> bool {
    t.len() >= 16 && !t.contains(char::is_whitespace) && t.is_ascii()
}

/// Secrets are printed (by `check-config`) as set or not, never in clear.
fn redacted<S: serde::Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("<set, not shown>"),
        None => s.serialize_none(),
    }
}

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            id: "node1".into(),
            origin_host: "node1.charging.localdomain".into(),
            origin_realm: "charging.localdomain".into(),
            diameter_listen: None,
            diameter_tls_listen: None,
            http_listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 8080))),
            watchdog: std::time::Duration::from_secs(30),
            accept_peers: Vec::new(),
            http_token: None,
            worker_threads: None,
        }
    }
}

/// `[[peers]]`: a server this node connects to.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PeerSection {
    /// Its Diameter identity (checked against its CEA's Origin-Host).
    pub host: String,
    /// Its realm: requests for this realm are routed to it.
    pub realm: String,
    /// Where to connect.
    pub address: std::net::SocketAddr,
    /// Lower is preferred; peers of equal priority share the load.
    #[serde(default = "one")]
    pub priority: u32,
    /// Connect with TLS from the first octet (RFC 6733 §2.1; the peer's TLS port, 5658 by convention); its
    /// certificate is verified against `[tls] ca`.
    #[serde(default)]
    pub tls: bool,
    /// The name its certificate must carry (default: `host`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

fn one() -> u32 {
    1
}

/// `[cluster]`: every node of the cluster (this one included: it is skipped by its id), so that one file can serve
/// them all. Each node connects to the others over Diameter; a RAR or ASR addressed to a node (Destination-Host)
/// that reaches another is delivered to that node's engine, which proxies it to the session's owner or adopts the
/// session when the owner is dead.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// The members.
    pub members: Vec<ClusterMember>,
}

/// `[[cluster.members]]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterMember {
    /// Its node id.
    pub id: String,
    /// Its Origin-Host.
    pub origin_host: String,
    /// Its Diameter listening address (`[node] diameter_listen` on it).
    pub address: std::net::SocketAddr,
}

/// `[applications]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ApplicationsSection {
    /// Ro (online charging, application 4).
    pub ro: ApplicationSection,
    /// Gx (policy, application 16777238).
    pub gx: ApplicationSection,
}

/// `[applications.ro]`, `[applications.gx]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ApplicationSection {
    /// Destination-Realm of its requests.
    pub destination_realm: String,
    /// Destination-Host, when requests must go to one server.
    pub destination_host: Option<String>,
    /// Service-Context-Id (Ro: 32260@3gpp.org IMS, 32251@3gpp.org PS, 32274@3gpp.org SMS).
    pub service_context_id: String,
    /// Tx (RFC 4006 §13).
    #[serde(with = "humantime_serde")]
    pub tx: std::time::Duration,
    /// CCFH until the server says otherwise: TERMINATE, CONTINUE, RETRY_AND_TERMINATE.
    pub ccfh: crate::cc::Ccfh,
    /// DDFH until the server says otherwise: TERMINATE_OR_BUFFER, CONTINUE.
    pub ddfh: crate::cc::Ddfh,
}

impl Default for ApplicationSection {
    fn default() -> Self {
        ApplicationSection {
            destination_realm: "ocs.localdomain".into(),
            destination_host: None,
            service_context_id: "32260@3gpp.org".into(),
            tx: std::time::Duration::from_secs(10),
            ccfh: crate::cc::Ccfh::Terminate,
            ddfh: crate::cc::Ddfh::TerminateOrBuffer,
        }
    }
}

impl ApplicationSection {
    fn settings(&self) -> crate::api::AppSettings {
        let mut a = crate::api::AppSettings::new(&self.destination_realm);
        a.destination_host = self.destination_host.clone();
        a.service_context_id = self.service_context_id.clone();
        a.tx = self.tx;
        a.ccfh = self.ccfh;
        a.ddfh = self.ddfh;
        a
    }
}

/// `[replication]`: how sessions are written to the shared store (docs/replication.md).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationSection {
    /// Replicate at all; off keeps every session in its node only.
    pub enabled: bool,
    /// Cluster id: every key in the store is namespaced by it.
    pub cluster: String,
    /// How long a change that sends nothing may wait to be written with later ones.
    #[serde(with = "humantime_serde")]
    pub write_delay: std::time::Duration,
    /// How long a request waits for its write-ahead before it goes anyway (docs/replication.md, "When the store
    /// is unreachable").
    #[serde(with = "humantime_serde")]
    pub write_ahead_wait: std::time::Duration,
    /// Lease renewal period.
    #[serde(with = "humantime_serde")]
    pub lease_period: std::time::Duration,
    /// Lease lifetime: a node is dead this long after its last renewal.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: std::time::Duration,
    /// Expiry of a session's records, refreshed while it lives.
    #[serde(with = "humantime_serde")]
    pub record_ttl: std::time::Duration,
    /// Most sessions waiting to be written while the store is unreachable.
    pub backlog_limit: usize,
    /// How credit-control session state is written: `binary` (the default, while every live node reads it) or
    /// `json` (docs/replication.md, "Rolling upgrades").
    pub state_encoding: crate::replication::StateEncoding,
    /// Group commits in flight at once (1–8; docs/replication.md, "When").
    pub batches_in_flight: usize,
    /// Per application: replicate sessions from creation (else only after `start_replicating`).
    pub replicate_by_default: ReplicateByDefault,
}

/// `[replication.replicate_by_default]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicateByDefault {
    /// Ro sessions.
    pub ro: bool,
    /// Gx sessions.
    pub gx: bool,
    /// SIP dialogs (confirmed ones; see the SIP module).
    pub sip: bool,
}

impl Default for ReplicateByDefault {
    fn default() -> Self {
        ReplicateByDefault { ro: true, gx: true, sip: true }
    }
}

impl ReplicationSection {
    /// Sets an engine up to replicate as this section says: its replication settings and each application's
    /// `replicate_by_default`. Nothing changes when `enabled` is false.
    pub fn apply(
        &self,
        engine: &mut crate::api::EngineConfig,
        store: crate::store::AnyStore,
        node_id: &str,
        diameter_uri: &str,
    ) {
        if !self.enabled {
            return;
        }
        engine.replication = Some(self.engine_config(store, node_id, diameter_uri));
        engine.ro.replicate_by_default = self.replicate_by_default.ro;
        engine.gx.replicate_by_default = self.replicate_by_default.gx;
    }

    /// The engine's replication settings for node `node_id` (reached by other nodes at `diameter_uri`) on `store`.
    pub fn engine_config(
        &self,
        store: crate::store::AnyStore,
        node_id: &str,
        diameter_uri: &str,
    ) -> crate::api::ReplicationConfig {
        let mut r = crate::api::ReplicationConfig::new(store, &self.cluster, node_id, diameter_uri);
        r.write_delay = self.write_delay;
        r.write_ahead_wait = self.write_ahead_wait;
        r.lease_period = self.lease_period;
        r.lease_ttl = self.lease_ttl;
        r.record_ttl = self.record_ttl;
        r.backlog_limit = self.backlog_limit;
        r.state_encoding = self.state_encoding;
        r.batches_in_flight = self.batches_in_flight;
        r
    }
}

impl Default for ReplicationSection {
    fn default() -> Self {
        ReplicationSection {
            enabled: false,
            cluster: "default".into(),
            write_delay: std::time::Duration::from_millis(100),
            write_ahead_wait: std::time::Duration::from_secs(1),
            lease_period: std::time::Duration::from_millis(500),
            lease_ttl: std::time::Duration::from_secs(2),
            record_ttl: std::time::Duration::from_secs(7 * 24 * 3600),
            backlog_limit: 100_000,
            state_encoding: crate::replication::StateEncoding::default(),
            batches_in_flight: 1,
            replicate_by_default: ReplicateByDefault::default(),
        }
    }
}

/// Which store backend.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreType {
    /// One SQLite file shared by the node processes of a host (the default).
    Sqlite,
    /// In-process only (tests; nothing survives the process).
    Memory,
    /// ScyllaDB (build with the `scylla` feature).
    Scylla,
}

/// `[store]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// `sqlite`, `memory` or `scylla`.
    #[serde(rename = "type")]
    pub kind: StoreType,
    /// SQLite: the database file (relative to the config file), shared by every node process of the host.
    pub path: PathBuf,
    /// SQLite: how long a write waits for another process's lock before the store counts as unavailable.
    #[serde(with = "humantime_serde")]
    pub busy_timeout: std::time::Duration,
    /// SQLite: how often expired records are deleted.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: std::time::Duration,
    /// ScyllaDB settings.
    pub scylla: crate::store::ScyllaConfig,
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            kind: StoreType::Sqlite,
            path: PathBuf::from("charging-ra.db"),
            busy_timeout: std::time::Duration::from_secs(2),
            sweep_interval: std::time::Duration::from_secs(60),
            scylla: crate::store::ScyllaConfig::default(),
        }
    }
}

/// `[codec]`: what the decoder accepts.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CodecConfig {
    /// Largest Diameter message accepted, in octets (RFC 6733 allows 16 MiB; CCRs are a few hundred octets).
    pub max_message_size: usize,
    /// Deepest nesting of Grouped AVPs that validation descends into.
    pub max_depth: usize,
}

impl Default for CodecConfig {
    fn default() -> Self {
        let d = DecodeLimits::default();
        CodecConfig { max_message_size: d.max_message_size, max_depth: d.max_depth }
    }
}

impl CodecConfig {
    /// The limits for the decoder.
    pub fn limits(&self) -> DecodeLimits {
        DecodeLimits { max_message_size: self.max_message_size, max_depth: self.max_depth }
    }
}

/// `[dictionaries]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DictionariesConfig {
    /// XML files loaded after the shipped ones; their definitions replace shipped ones with the same code.
    #[serde(default)]
    pub files: Vec<PathBuf>,
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML is invalid or has an unknown key (the message names it and its line).
    #[error("config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A value is out of range.
    #[error("config {path}: {key}: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key.
        key: &'static str,
        /// What is allowed.
        why: String,
    },
    /// A dictionary file is wrong.
    #[error(transparent)]
    Dictionary(#[from] DictError),
}

impl Config {
    /// Parses TOML text; `path` names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })?;
        let invalid = |key, why: &str| ConfigError::Invalid { path: path.into(), key, why: why.into() };
        if !(20..=crate::codec::MAX_LENGTH).contains(&config.codec.max_message_size) {
            return Err(invalid("codec.max_message_size", "must be 20 to 16777215 octets"));
        }
        if !(1..=64).contains(&config.codec.max_depth) {
            return Err(invalid("codec.max_depth", "must be 1 to 64"));
        }
        if config.node.id.is_empty() || config.node.id.contains('/') {
            return Err(invalid("node.id", "must be a non-empty name without '/'"));
        }
        if config.node.watchdog < std::time::Duration::from_secs(1) {
            return Err(invalid("node.watchdog", "must be at least 1s (RFC 3539 recommends 30s, at least 6s)"));
        }
        if config.node.worker_threads == Some(0) {
            return Err(invalid("node.worker_threads", "must be at least 1 (or left out: one per CPU)"));
        }
        for p in &config.node.accept_peers {
            let name = p.strip_prefix("*.").unwrap_or(p);
            let ok = p == "*"
                || (!name.is_empty()
                    && name.split('.').all(|l| !l.is_empty())
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')));
            if !ok {
                return Err(invalid(
                    "node.accept_peers",
                    "each entry must be a DiameterIdentity (host.realm), *.realm or *",
                ));
            }
        }
        if config.node.http_token.as_deref().is_some_and(|t| !token_ok(t)) {
            return Err(invalid("node.http_token", TOKEN_RULE));
        }
        let l = &config.limits;
        if l.max_sessions == 0 || l.max_incoming == 0 || l.max_pending == 0 {
            return Err(invalid("limits", "max_sessions, max_incoming and max_pending must be at least 1"));
        }
        let r = &config.replication;
        if r.lease_period.is_zero() || r.lease_ttl < r.lease_period * 2 {
            return Err(invalid(
                "replication.lease_ttl",
                "must be at least twice replication.lease_period (which must not be zero), so one lost renewal does not kill a node",
            ));
        }
        if r.write_delay > std::time::Duration::from_secs(10) {
            return Err(invalid("replication.write_delay", "must be at most 10s"));
        }
        if !(std::time::Duration::from_millis(10)..=std::time::Duration::from_secs(30)).contains(&r.write_ahead_wait) {
            return Err(invalid("replication.write_ahead_wait", "must be from 10ms to 30s"));
        }
        if !(1..=crate::api::MAX_BATCHES_IN_FLIGHT).contains(&r.batches_in_flight) {
            return Err(invalid("replication.batches_in_flight", "must be from 1 to 8"));
        }
        if r.record_ttl < std::time::Duration::from_secs(1) || r.record_ttl < r.lease_ttl {
            return Err(invalid(
                "replication.record_ttl",
                "must be at least 1s and at least replication.lease_ttl (it bounds what a crash leaves; make it longer than any session's idle time)",
            ));
        }
        if r.cluster.is_empty() || r.cluster.contains('/') {
            return Err(invalid("replication.cluster", "must be a non-empty name without '/'"));
        }
        let tls_needed = config.node.diameter_tls_listen.is_some() || config.peers.iter().any(|p| p.tls);
        if tls_needed && config.tls.is_none() {
            return Err(invalid(
                "tls",
                "a [[peers]] with tls = true or node.diameter_tls_listen needs a [tls] section",
            ));
        }
        let sip = &config.sip;
        if sip.t1.is_zero() || sip.t2 < sip.t1 || sip.t4.is_zero() {
            return Err(invalid(
                "sip.t1",
                "T1 and T4 must not be zero, and T2 must be at least T1 (RFC 3261 §17.1.1.1)",
            ));
        }
        if sip.charging && sip.quota < std::time::Duration::from_secs(1) {
            return Err(invalid("sip.quota", "must be at least 1s"));
        }
        Ok(config)
    }

    /// Applies the `CHARGING_RA_*` environment overrides of `[node]` (the values an operator changes per node).
    pub fn apply_env(&mut self, path: &Path) -> Result<(), ConfigError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let addr = |name: &'static str, v: String| {
            v.parse().map_err(|_| ConfigError::Invalid {
                path: path.into(),
                key: name,
                why: format!("{v:?} is not an address (e.g. 127.0.0.1:3868)"),
            })
        };
        if let Some(v) = var("CHARGING_RA_NODE_ID") {
            self.node.id = v;
        }
        if let Some(v) = var("CHARGING_RA_ORIGIN_HOST") {
            self.node.origin_host = v;
        }
        if let Some(v) = var("CHARGING_RA_DIAMETER_LISTEN") {
            self.node.diameter_listen = Some(addr("CHARGING_RA_DIAMETER_LISTEN", v)?);
        }
        if let Some(v) = var("CHARGING_RA_HTTP_LISTEN") {
            self.node.http_listen = Some(addr("CHARGING_RA_HTTP_LISTEN", v)?);
        }
        if let Some(v) = var("CHARGING_RA_SIP_LISTEN") {
            self.sip.listen = addr("CHARGING_RA_SIP_LISTEN", v)?;
        }
        if let Some(v) = var("CHARGING_RA_HTTP_TOKEN") {
            if !token_ok(&v) {
                return Err(ConfigError::Invalid {
                    path: path.into(),
                    key: "CHARGING_RA_HTTP_TOKEN",
                    why: TOKEN_RULE.into(),
                });
            }
            self.node.http_token = Some(v);
        }
        Ok(())
    }

    /// The engine a `charging-ra node` runs: identity, one peer per `[[peers]]` routed by its realm, the
    /// applications' defaults; replication is added by [`ReplicationSection::apply`] once the store is open.
    pub fn engine_config(&self, dictionary: std::sync::Arc<Dictionary>) -> crate::api::EngineConfig {
        use crate::peer::{LocalIdentity, PeerConfig};
        use crate::router::{PeerId, Route, RouterConfig};
        let boot = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        // Origin-State-Id (RFC 6733 §8.16): changes at every start.
        let local = LocalIdentity::charging_client(&self.node.origin_host, &self.node.origin_realm, boot as u32);
        let routes = self
            .peers
            .iter()
            .enumerate()
            .map(|(i, p)| Route {
                realm: p.realm.clone(),
                application: None,
                peer: PeerId(i),
                priority: p.priority,
                weight: 1,
            })
            .collect();
        let others: Vec<&ClusterMember> = self.cluster.members.iter().filter(|m| m.id != self.node.id).collect();
        let mut router = RouterConfig::new(local.clone(), routes);
        router.accept_peers = self.node.accept_peers.clone();
        router.max_incoming = self.limits.max_incoming;
        router.max_pending = self.limits.max_pending;
        router.limits = self.codec.limits();
        // Requests addressed to another member reach this node's engine, which proxies them to the owner of the
        // session (or adopts it): see docs/replication.md.
        router.local_aliases = others.iter().map(|m| m.origin_host.clone()).collect();
        let endpoint = |host: &str, address, tls: bool, server_name: Option<String>| {
            let mut pc = PeerConfig::new(local.clone(), Some(host.to_string()), true);
            pc.watchdog_interval = self.node.watchdog;
            crate::node::PeerEndpoint { config: pc, address: Some(address), tls, server_name }
        };
        let peers = self
            .peers
            .iter()
            .map(|p| endpoint(&p.host, p.address, p.tls, p.server_name.clone()))
            .chain(others.iter().map(|m| endpoint(&m.origin_host, m.address, false, None)))
            .collect();
        let mut node = crate::node::NodeConfig::new(router, peers);
        node.listen = self.node.diameter_listen.into_iter().collect();
        node.listen_tls = self.node.diameter_tls_listen.into_iter().collect();
        node.tls = self.tls.clone();
        node.dictionary = dictionary;
        let mut engine =
            crate::api::EngineConfig::new(node, self.applications.ro.settings(), self.applications.gx.settings());
        engine.max_sessions = self.limits.max_sessions;
        engine
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let mut config = Config::parse(&text, path)?;
        // TLS files are named relative to the configuration file.
        let base = path.parent().unwrap_or(Path::new("."));
        if let Some(t) = config.tls.as_mut() {
            for f in [&mut t.cert, &mut t.key, &mut t.ca] {
                if f.is_relative() {
                    *f = base.join(&*f);
                }
            }
        }
        Ok(config)
    }

    /// The shipped dictionaries plus the configured files (paths relative to `base`).
    pub fn dictionary(&self, base: &Path) -> Result<Dictionary, ConfigError> {
        let mut texts = Vec::new();
        for f in &self.dictionaries.files {
            let path = base.join(f);
            let text =
                std::fs::read_to_string(&path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
            texts.push((path.display().to_string(), text));
        }
        let refs: Vec<(&str, &str)> = texts.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
        Ok(Dictionary::with_files(&refs)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_parses_and_equals_the_defaults() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml"));
        let config = Config::load(path).unwrap();
        // The example documents the defaults: what it says is what a missing key means.
        assert_eq!(config, Config::default());
        assert_eq!(Config::parse("", path).unwrap(), Config::default());
    }

    #[test]
    fn the_cluster_examples_parse_and_name_each_other() {
        for i in 1..=3 {
            let path =
                std::path::PathBuf::from(format!("{}/examples/cluster/node{i}.toml", env!("CARGO_MANIFEST_DIR")));
            let c = Config::load(&path).unwrap();
            assert_eq!(c.node.id, format!("n{i}"));
            assert_eq!(c.cluster.members.len(), 3);
            let e = c.engine_config(std::sync::Arc::new(Dictionary::builtin()));
            // Two OCS peers and the two other members; requests addressed to the others reach this node's engine.
            assert_eq!(e.node.peers.len(), 4, "{path:?}");
            assert_eq!(e.node.router.local_aliases.len(), 2);
            assert!(!e.node.router.local_aliases.contains(&c.node.origin_host));
        }
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let err = Config::parse("[codec]\nmax_mesage_size = 100\n", Path::new("node.toml")).unwrap_err().to_string();
        assert!(err.contains("max_mesage_size") && err.contains("node.toml"), "{err}");
        let err = Config::parse("[codecs]\n", Path::new("n.toml")).unwrap_err().to_string();
        assert!(err.contains("codecs"), "{err}");
    }

    #[test]
    fn store_and_replication_sections_parse_and_check_their_values() {
        let c = Config::parse(
            "[replication]\nenabled = true\nwrite_delay = \"250ms\"\n[replication.replicate_by_default]\ngx = false\n\
             [store]\ntype = \"memory\"\n",
            Path::new("n.toml"),
        )
        .unwrap();
        assert!(
            c.replication.enabled && !c.replication.replicate_by_default.gx && c.replication.replicate_by_default.ro
        );
        assert_eq!(c.replication.write_delay, std::time::Duration::from_millis(250));
        assert_eq!(c.replication.write_ahead_wait, std::time::Duration::from_secs(1), "the default");
        assert_eq!(c.store.kind, StoreType::Memory);
        let c = Config::parse("[replication]\nwrite_ahead_wait = \"300ms\"\n", Path::new("n.toml")).unwrap();
        let r = c.replication.engine_config(crate::store::AnyStore::memory(), "n1", "aaa://n1.example.net");
        assert_eq!(r.write_ahead_wait, std::time::Duration::from_millis(300));
        for bad in ["0s", "1ms", "31s"] {
            let toml = format!("[replication]\nwrite_ahead_wait = \"{bad}\"\n");
            let err = Config::parse(&toml, Path::new("n.toml")).unwrap_err().to_string();
            assert!(err.contains("replication.write_ahead_wait"), "{bad}: {err}");
        }
        let err = Config::parse("[store]\ntype = \"postgres\"\n", Path::new("n.toml")).unwrap_err().to_string();
        assert!(err.contains("postgres") && err.contains("sqlite"), "{err}");
        let err = Config::parse("[replication]\nlease_ttl = \"600ms\"\n", Path::new("n.toml")).unwrap_err().to_string();
        assert!(err.contains("replication.lease_ttl") && err.contains("twice"), "{err}");
        let err = Config::parse("[replication]\nbatches_in_flight = 0\n", Path::new("n.toml")).unwrap_err().to_string();
        assert!(err.contains("replication.batches_in_flight") && err.contains("1 to 8"), "{err}");
        let two = Config::parse("[replication]\nbatches_in_flight = 2\n", Path::new("n.toml")).unwrap();
        assert_eq!(two.replication.batches_in_flight, 2);
    }

    #[test]
    fn out_of_range_values_say_what_is_allowed() {
        let err = Config::parse("[codec]\nmax_depth = 0\n", Path::new("n.toml")).unwrap_err().to_string();
        assert!(err.contains("codec.max_depth") && err.contains("1 to 64"), "{err}");
    }
}
