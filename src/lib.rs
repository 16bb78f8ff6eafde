//! charging-ra: a Diameter Ro/Gx credit-control client with session replication, and a SIP B2BUA on the same
//! store and ownership layer.
//!
//! The crate is layered so that everything with protocol behaviour runs without sockets, clocks or stores (each
//! machine takes `now` and returns what to send), which lets tests drive a cluster deterministically:
//!
//! ```text
//!   sans-IO machines                                 runtime around them
//!   ────────────────                                 ───────────────────
//!   codec        bytes <-> Message                   transport   TCP/TLS framing, one task per connection
//!   dict         XML dictionaries, validation        node        a Diameter node: router + connections
//!   peer         RFC 6733 peer state, RFC 3539 DWR   store       SQLite, ScyllaDB, memory (compare-and-set)
//!   router       realm routing, pending, failover    ownership   leases, convergence records, adoption race
//!   cc           RFC 4006 client session (Ro, Gx)    api         the engine (embedding API), HTTP JSON front,
//!   replication  write-ahead / write-behind plan                 metrics, replica load/adopt/proxy
//!   sip          RFC 3261 messages, transactions,    b2bua       the charging B2BUA over UDP/TCP, its UAs
//!                dialogs                             ocs         the OCS/PCRF simulator and its ledger
//! ```
//!
//! One CCR: [`api::Engine::update`] sends a command to the engine's task, whose [`cc::CcSession`] builds the
//! request; a replicated session's state is written ahead ([`replication`], [`store`]); the [`node`]'s [`router`]
//! picks a peer and the connection writes it. The answer comes back the same way and settles the caller.
//! A request for a session this node does not hold loads it from the store, and adopts it with a compare-and-set
//! when its owner's lease has expired ([`ownership`]), or forwards it to the live owner.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod b2bua;
pub mod cc;
pub mod codec;
pub mod config;
pub mod demo;
pub mod dict;
pub mod load;
pub mod node;
pub mod ocs;
pub mod ownership;
pub mod pcap;
pub mod peer;
pub mod replication;
pub mod router;
pub mod samples;
pub mod sip;
pub mod store;
pub mod transport;
pub mod units;
pub mod wirecheck;
