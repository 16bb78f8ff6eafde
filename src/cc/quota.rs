//! A quota per rating group (RFC 4006 §5.1.2 Multiple-Services-Credit-Control): what was granted, what is used,
//! Validity-Time and Quota-Holding-Time deadlines (absolute, so that an adopter can re-arm them), and the
//! Final-Unit-Indication.

use std::time::{Duration, Instant};

use crate::codec::{Avp, code};
use crate::units::Units;

/// Final-Unit-Indication (RFC 4006 §8.34): what to do when the last units are used.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FinalUnit {
    /// 0 TERMINATE: end the service.
    Terminate,
    /// 1 REDIRECT: to this address (Redirect-Server-Address).
    Redirect(String),
    /// 2 RESTRICT_ACCESS: with these filters (Filter-Id / Restriction-Filter-Rule).
    RestrictAccess(Vec<String>),
}

impl FinalUnit {
    /// Reads a Final-Unit-Indication AVP; unknown actions read as TERMINATE (the safe one).
    pub fn from_avp(fui: &Avp) -> FinalUnit {
        let members: Vec<Avp> = fui.grouped_iter().filter_map(Result::ok).collect();
        let action =
            members.iter().find(|a| a.is(code::FINAL_UNIT_ACTION, 0)).and_then(|a| a.as_i32().ok()).unwrap_or(0);
        match action {
            1 => {
                let addr = members
                    .iter()
                    .find(|a| a.is(434, 0))
                    .and_then(|rs| rs.grouped_iter().filter_map(Result::ok).find(|a| a.is(435, 0)))
                    .and_then(|a| a.as_utf8().ok().map(str::to_string))
                    .unwrap_or_default();
                FinalUnit::Redirect(addr)
            }
            2 => FinalUnit::RestrictAccess(
                members
                    .iter()
                    .filter(|a| a.is(11, 0) || a.is(438, 0))
                    .filter_map(|a| a.as_utf8().ok().map(str::to_string))
                    .collect(),
            ),
            _ => FinalUnit::Terminate,
        }
    }
}

/// The credit of one rating group.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Quota {
    /// The rating group (`None`: a single-service session without MSCC).
    pub rating_group: Option<u32>,
    /// The last grant.
    pub granted: Units,
    /// Used since the last report.
    pub used: Units,
    /// Final units: the action once they are used.
    pub final_unit: Option<FinalUnit>,
    #[serde(skip)]
    pub(super) validity_deadline: Option<Instant>,
    #[serde(skip)]
    pub(super) holding_time: Option<Duration>,
    #[serde(skip)]
    pub(super) holding_deadline: Option<Instant>,
}

impl Quota {
    /// An empty quota.
    pub fn new(rating_group: Option<u32>) -> Quota {
        Quota {
            rating_group,
            granted: Units::default(),
            used: Units::default(),
            final_unit: None,
            validity_deadline: None,
            holding_time: None,
            holding_deadline: None,
        }
    }

    /// A new grant: Validity-Time starts now (RFC 4006 §8.33), Quota-Holding-Time (TS 32.299) starts idle.
    pub fn granted(
        &mut self,
        now: Instant,
        units: Units,
        validity: Option<Duration>,
        qht: Option<Duration>,
        final_unit: Option<FinalUnit>,
    ) {
        self.granted = units;
        self.used = Units::default();
        self.final_unit = final_unit;
        self.validity_deadline = validity.filter(|v| !v.is_zero()).map(|v| now + v);
        self.holding_time = qht.filter(|q| !q.is_zero());
        self.holding_deadline = self.holding_time.map(|q| now + q);
    }

    /// Usage was reported: counting starts again.
    pub fn reported(&mut self, _used: Units) {
        self.used = Units::default();
    }

    /// The service used units: adds them, restarts Quota-Holding-Time, and says whether the grant is used up.
    pub fn consume(&mut self, now: Instant, units: &Units) -> bool {
        self.used.add(units);
        if let Some(q) = self.holding_time {
            self.holding_deadline = Some(now + q);
        }
        self.granted.kinds().any(|k| self.used.get(k).unwrap_or(0) >= self.granted.get(k).unwrap_or(0))
    }

    /// The earliest of Validity-Time and Quota-Holding-Time.
    pub fn deadline(&self) -> Option<Instant> {
        match (self.validity_deadline, self.holding_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether Quota-Holding-Time has run out (rather than Validity-Time).
    pub fn holding_expired(&self, now: Instant) -> bool {
        self.holding_deadline.is_some_and(|t| t <= now)
    }

    /// Stops both timers (a report is on its way, or the session ends).
    pub fn clear_timers(&mut self) {
        self.validity_deadline = None;
        self.holding_deadline = None;
    }
}
