//! The ownership API (in the spirit of Rhino's Session Ownership Facility), over a [`Store`]: node leases, the
//! convergence and protocol records of a session, and adoption by compare-and-set. The decisions are the pure
//! functions of [`crate::replication`]; this module only reads and writes records.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::replication::{
    self, Adoption, ConvergenceRecord, FORMAT, NodeIdentity, NodeLease, ProtocolRecord, RecordError, keys,
};
use crate::store::{Expect, Store, StoreError, Write};

/// Why an ownership operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OwnershipError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A record could not be read.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The session already exists.
    #[error("convergence {0} already exists")]
    Exists(String),
}

/// Where a session stands after [`Ownership::resolve`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// No such replicated session.
    Unknown,
    /// Ours (already, or just adopted): process it under this epoch.
    Owned {
        /// The convergence name (the protocol record's `associated` attribute).
        convergence: String,
        /// The epoch.
        epoch: u64,
        /// The convergence record's version (the token for the next CAS on it).
        version: u64,
        /// The protocol record's version.
        protocol_version: u64,
        /// The dead owner this call adopted it from, if it did.
        adopted_from: Option<String>,
    },
    /// Another live node owns it: forward.
    Proxy {
        /// The owner.
        owner: String,
        /// Its internal URI.
        uri: String,
        /// Its HTTP front, when it has one.
        http: Option<String>,
    },
}

/// One node's view of ownership.
pub struct Ownership<S: Store> {
    store: Arc<S>,
    cluster: String,
    me: NodeIdentity,
    lease_ttl: Duration,
    record_ttl: Option<Duration>,
    /// The wall-clock time (ms) until which this node's lease is known to run: the expiry of the newest renewal
    /// the store confirmed. Until then no other node may adopt its sessions.
    held_until_ms: std::sync::atomic::AtomicU64,
}

/// The cluster by its leases ([`Ownership::members`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Members {
    /// The nodes whose lease runs, this node first.
    pub live: Vec<String>,
    /// The nodes whose lease has run out.
    pub dead: Vec<String>,
    /// The newest binary state layout every live node reads (0: one reads JSON only).
    pub state_layout: u8,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl<S: Store> Ownership<S> {
    /// Ownership for node `me` in `cluster`; leases last `lease_ttl` (default 2 s, renewed every 500 ms).
    pub fn new(store: Arc<S>, cluster: &str, me: NodeIdentity, lease_ttl: Duration) -> Ownership<S> {
        Ownership { store, cluster: cluster.into(), me, lease_ttl, record_ttl: None, held_until_ms: Default::default() }
    }

    /// Expiry of a convergence record this node writes when it adopts a session (none by default); the engine sets
    /// its `record_ttl`, so an adopter that dies before its next write leaves nothing forever.
    pub fn with_record_ttl(mut self, ttl: Duration) -> Ownership<S> {
        self.record_ttl = Some(ttl);
        self
    }

    /// This node.
    pub fn me(&self) -> &NodeIdentity {
        &self.me
    }

    /// Writes this node's lease (the heartbeat).
    pub async fn renew_lease(&self) -> Result<(), OwnershipError> {
        let lease = NodeLease {
            format: FORMAT,
            identity: self.me.clone(),
            expires_at_ms: now_ms() + self.lease_ttl.as_millis() as u64,
        };
        // The store's TTL outlives the lease a little, so that an expired lease can still be read and told apart
        // from a node that never existed.
        let ttl = self.lease_ttl * 10;
        self.store
            .put(&keys::node(&self.cluster, &self.me.node), replication::encode(&lease), Expect::Any, Some(ttl))
            .await?;
        self.held_until_ms.fetch_max(lease.expires_at_ms, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Until when (wall-clock ms) this node's lease is known to run: the expiry of the newest renewal the store
    /// confirmed (0 before the first). The expiry is computed before the write, so it never runs later than the
    /// one other nodes read.
    pub fn lease_held_until_ms(&self) -> u64 {
        self.held_until_ms.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Renews the lease every `period` until the returned task is aborted.
    pub fn spawn_heartbeat(self: &Arc<Self>, period: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(period);
            loop {
                t.tick().await;
                if let Err(e) = me.renew_lease().await {
                    tracing::warn!(error = %e, "lease renewal failed; survivors may adopt this node's sessions");
                }
            }
        })
    }

    /// The other nodes of the cluster by their leases now. This node is first among the live ones and not in the
    /// dead ones (its own lease is what it renews). A node whose lease record the store has forgotten
    /// (10 × `lease_ttl` after it ran out, or given up at a graceful stop) is in neither list.
    pub async fn members(&self) -> Result<Members, StoreError> {
        let now = now_ms();
        let mut m = Members { live: vec![self.me.node.clone()], dead: Vec::new(), state_layout: self.me.state_layout };
        for (_, v) in self.store.scan_prefix(&format!("{}/node/", self.cluster)).await? {
            let Ok(l) = replication::decode::<NodeLease>(&v.value) else { continue };
            if l.identity.node == self.me.node {
                continue;
            }
            if l.expires_at_ms > now {
                m.state_layout = m.state_layout.min(l.identity.state_layout);
                m.live.push(l.identity.node);
            } else {
                m.dead.push(l.identity.node);
            }
        }
        Ok(m)
    }

    /// Gives the lease up (graceful shutdown): survivors adopt at once instead of waiting for it to run out.
    pub async fn release_lease(&self) -> Result<(), OwnershipError> {
        self.held_until_ms.store(0, std::sync::atomic::Ordering::Relaxed);
        self.store.delete(&keys::node(&self.cluster, &self.me.node), Expect::Any).await?;
        Ok(())
    }

    /// The writes that create a new session's records, owned by this node: the convergence record (epoch 1, only if
    /// absent) and the protocol record linked to it. Returned rather than written so that a caller can
    /// group-commit them with other writes (the engine adds the first state snapshot). `ttl` bounds what a crash
    /// can leave behind.
    pub fn creation_writes(&self, convergence: &str, protocol_key: &str, ttl: Option<Duration>) -> [Write; 2] {
        let conv = ConvergenceRecord {
            format: FORMAT,
            owner: self.me.node.clone(),
            incarnation: self.me.incarnation,
            owner_uri: self.me.diameter_uri.clone(),
            epoch: 1,
        };
        let proto =
            ProtocolRecord { format: FORMAT, associated: convergence.into(), owner_uri: self.me.diameter_uri.clone() };
        [
            Write {
                key: keys::convergence(&self.cluster, convergence),
                value: Some(replication::encode(&conv)),
                expect: Expect::Absent,
                ttl,
            },
            Write { key: protocol_key.into(), value: Some(replication::encode(&proto)), expect: Expect::Absent, ttl },
        ]
    }

    /// Creates the records of a new session owned by this node ([`Ownership::creation_writes`]); returns the
    /// convergence record's version.
    pub async fn create(
        &self,
        convergence: &str,
        protocol_key: &str,
        ttl: Option<Duration>,
    ) -> Result<u64, OwnershipError> {
        // In two steps: the protocol record must not be written when the convergence record already exists.
        let [conv, proto] = self.creation_writes(convergence, protocol_key, ttl);
        let version = match self.store.batch(vec![conv]).await?.pop().expect("one result") {
            Ok(v) => v,
            Err(StoreError::Conflict { .. }) => return Err(OwnershipError::Exists(convergence.into())),
            Err(e) => return Err(e.into()),
        };
        self.store.batch(vec![proto]).await?.pop().expect("one result")?;
        Ok(version)
    }

    /// The cluster id every key is namespaced by.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The store.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// Applies the adoption rule to an event for `protocol_key` (e.g. [`keys::diameter`]): owned here, proxy to
    /// a live owner, or take over a dead owner's session by CAS (a lost race re-reads and proxies to the winner).
    pub async fn resolve(&self, protocol_key: &str) -> Result<Resolution, OwnershipError> {
        for _ in 0..4 {
            let Some(p) = self.store.get(protocol_key).await? else { return Ok(Resolution::Unknown) };
            let proto: ProtocolRecord = replication::decode(&p.value)?;
            let ck = keys::convergence(&self.cluster, &proto.associated);
            let Some(c) = self.store.get(&ck).await? else { return Ok(Resolution::Unknown) };
            let conv: ConvergenceRecord = replication::decode(&c.value)?;
            let lease = match self.store.get(&keys::node(&self.cluster, &conv.owner)).await? {
                Some(l) => Some(replication::decode::<NodeLease>(&l.value)?),
                None => None,
            };
            match replication::decide(&self.me, Some(&proto), Some((&conv, c.version)), lease.as_ref(), now_ms()) {
                Adoption::Unknown => return Ok(Resolution::Unknown),
                Adoption::Local { epoch } => {
                    let (convergence, version, protocol_version) = (proto.associated, c.version, p.version);
                    return Ok(Resolution::Owned { convergence, epoch, version, protocol_version, adopted_from: None });
                }
                Adoption::Proxy { owner, uri, http } => return Ok(Resolution::Proxy { owner, uri, http }),
                Adoption::TakeOver { expect_version, record } => {
                    let ttl = self.record_ttl;
                    match self.store.put(&ck, replication::encode(&record), Expect::Version(expect_version), ttl).await
                    {
                        Ok(version) => {
                            tracing::debug!(convergence = %proto.associated, from = %conv.owner, epoch = record.epoch, "ownership taken over");
                            return Ok(Resolution::Owned {
                                convergence: proto.associated,
                                epoch: record.epoch,
                                version,
                                protocol_version: p.version,
                                adopted_from: Some(conv.owner),
                            });
                        }
                        // Another node won the race: read again, and proxy to it.
                        Err(StoreError::Conflict { .. }) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Err(StoreError::Unavailable {
            reason: "ownership kept changing during adoption".into(),
            retry_after: Duration::from_millis(50),
        }
        .into())
    }

    /// Deletes a session's records (it ended).
    pub async fn delete(&self, convergence: &str, protocol_key: &str) -> Result<(), OwnershipError> {
        self.store.delete(protocol_key, Expect::Any).await?;
        self.store.delete(&keys::convergence(&self.cluster, convergence), Expect::Any).await?;
        Ok(())
    }
}
