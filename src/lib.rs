//! charging-ra: a Diameter Ro/Gx credit-control client with session replication.
//!
//! The crate is layered so that everything with protocol behaviour can run without sockets, clocks or stores:
//!
//! ```text
//!   sans-IO core                          runtime around it
//!   ────────────                          ─────────────────
//!   codec   bytes <-> Message             (to come: transport, store, node, api, ocs)
//!   dict    XML dictionaries, validation
//! ```
//!
//! [`codec`] turns frames into [`codec::Message`]s and back without a dictionary; [`dict`] knows the AVPs and
//! grammars of RFC 6733, RFC 4006/8506, 3GPP Ro (TS 32.299) and Gx (TS 29.212) and validates messages against them
//! with the Result-Codes of RFC 6733 §7.
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
