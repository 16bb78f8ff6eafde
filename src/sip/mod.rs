//! SIP for the B2BUA (RFC 3261), sans-IO: messages, transactions, dialogs, and the record a call is replicated
//! as. The runtime that drives them over UDP and TCP, charges the call and adopts it after a node failure is
//! [`crate::b2bua`].

pub mod call;
pub mod dialog;
pub mod message;
pub mod transaction;

pub use call::{AppData, CallRecord, DialogReplication};
pub use dialog::Dialog;
pub use message::{Message, ParseError, StartLine, Via};
pub use transaction::{Dest, Timers, Transactions, Transport};
