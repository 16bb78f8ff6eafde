//! The settings of the ScyllaDB backend (`[store.scylla]` in the config). They exist whether or not the backend is
//! built (cargo feature `scylla`), so that a configuration file means the same to every build.

use std::time::Duration;

use serde::Deserialize;

/// Consistency of reads and of the commit of writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ScyllaConsistency {
    /// `ONE`.
    One,
    /// `LOCAL_ONE`.
    LocalOne,
    /// `QUORUM`.
    Quorum,
    /// `LOCAL_QUORUM`: the default.
    #[default]
    LocalQuorum,
    /// `EACH_QUORUM`.
    EachQuorum,
    /// `ALL`.
    All,
}

/// Consistency of the Paxos round of a conditional write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ScyllaSerialConsistency {
    /// `LOCAL_SERIAL`: a quorum of the local datacenter (the default).
    #[default]
    LocalSerial,
    /// `SERIAL`: a quorum across datacenters.
    Serial,
}

/// Where the store is and how it is written.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScyllaConfig {
    /// Contact points, `host:port` (`127.0.0.1:9042`); the driver discovers the rest of the cluster from them.
    pub nodes: Vec<String>,
    /// The keyspace (case-sensitive: it is quoted in every statement).
    pub keyspace: String,
    /// Consistency of reads and of the commit of writes (`LOCAL_QUORUM`).
    pub consistency: ScyllaConsistency,
    /// Consistency of the Paxos round of writes (`LOCAL_SERIAL`).
    pub serial_consistency: ScyllaSerialConsistency,
    /// Client-side limit on one statement (`"5s"`: above the server's own write timeout, 2 s by default, so that a
    /// slow conditional write is reported by the server, with its kind, rather than cut short by the client).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Limit on opening a connection, and twice it on the whole of `ScyllaStore::connect` (`"5s"`).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Create the keyspace and the table when missing (`false`: the operator applies `schema/scylla.cql`).
    pub create_schema: bool,
    /// Replication factor of a keyspace created by `create_schema` (in every datacenter; `3`).
    pub replication_factor: u8,
}

impl Default for ScyllaConfig {
    fn default() -> ScyllaConfig {
        ScyllaConfig {
            nodes: vec!["127.0.0.1:9042".into()],
            keyspace: "charging_ra".into(),
            consistency: ScyllaConsistency::default(),
            serial_consistency: ScyllaSerialConsistency::default(),
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            create_schema: false,
            replication_factor: 3,
        }
    }
}
