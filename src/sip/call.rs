//! What a B2BUA call is replicated as: both legs' dialogs in explicit fields, and (by mode) the application data
//! that lets an adopter carry the charging on. Stored at `state/<convergence>/sip/call`, next to the Ro session's
//! `state/<convergence>/diameter/<Session-Id>`; each leg has its protocol record `proto/sip/<Call-ID>/<local
//! tag>/<remote tag>` whose `associated` attribute is the convergence name.

use serde::{Deserialize, Serialize};

use super::dialog::Dialog;

/// Which dialogs are replicated (the modes of Mobicents JAIN SIP HA). Early dialogs never are: until the 2xx and
/// its ACK the call depends on transactions only the setting-up node holds, which an adopter could not complete
/// (docs/sip.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DialogReplication {
    /// Nothing: a node failure drops its calls.
    Off,
    /// Confirmed dialogs with the application data (charging, last SDP): an adopter carries the call and its
    /// charging on. The default.
    #[default]
    ConfirmedDialog,
    /// Confirmed dialogs only: an adopter carries the call's signalling on, but not its charging (the Ro session
    /// is left to its own replication and the OCS's session timeout). Smaller records, for services that do not
    /// charge through this B2BUA.
    ConfirmedDialogNoApplicationData,
}

/// A call: leg A (this node is the UAS toward the caller) and leg B (the UAC toward the callee).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRecord {
    /// Leg A.
    pub a: Dialog,
    /// Leg B.
    pub b: Dialog,
    /// The CSeq number of the last INVITE on leg A (its 2xx is ACKed with it).
    pub a_invite_cseq: u32,
    /// The CSeq number of the last INVITE on leg B.
    pub b_invite_cseq: u32,
    /// Application data (mode [`DialogReplication::ConfirmedDialog`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<AppData>,
}

/// The B2BUA's own data about a call.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppData {
    /// The call's Ro session, when it is charged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ro_session: Option<String>,
    /// When the call was answered (the 2xx on leg B), wall-clock ms.
    pub answered_at_ms: u64,
    /// Seconds reported to the OCS so far (CCR-U Used-Service-Unit).
    pub reported_secs: u64,
    /// Seconds granted so far: the quota runs out at `answered_at_ms + granted_secs * 1000`.
    pub granted_secs: u64,
    /// Whether charging goes on without a quota (CCFH CONTINUE or no time granted).
    #[serde(default)]
    pub unmetered: bool,
    /// The last grant carried a Final-Unit-Indication: when it is used up the call ends (RFC 4006 §5.6.2), with
    /// no CCR-U asking for more.
    #[serde(default)]
    pub final_units: bool,
    /// The last SDP leg A sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_a: Option<String>,
    /// The last SDP leg B sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_b: Option<String>,
}

impl AppData {
    /// When the quota runs out (wall-clock ms), if the call is metered and answered (time runs from the answer).
    pub fn quota_deadline_ms(&self) -> Option<u64> {
        (!self.unmetered && self.ro_session.is_some() && self.answered_at_ms != 0)
            .then(|| self.answered_at_ms + self.granted_secs * 1000)
    }

    /// Seconds used and not yet reported at `now_ms` (a started second counts).
    pub fn unreported_secs(&self, now_ms: u64) -> u64 {
        let total = now_ms.saturating_sub(self.answered_at_ms).div_ceil(1000);
        total.saturating_sub(self.reported_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreported_time_counts_started_seconds() {
        let app = AppData { answered_at_ms: 10_000, reported_secs: 30, granted_secs: 60, ..AppData::default() };
        assert_eq!(app.unreported_secs(40_000), 0);
        assert_eq!(app.unreported_secs(40_001), 1);
        assert_eq!(app.quota_deadline_ms(), None, "not charged");
        let charged = AppData { ro_session: Some("s".into()), ..app };
        assert_eq!(charged.quota_deadline_ms(), Some(70_000));
    }
}
