//! The simulator's configuration (`--config ocs.toml`): tariff, accounts, Gx policy, faults, Tcc. Every key has a
//! default, so an empty file (or none) gives a working OCS and PCRF.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::units::Units;

/// Final-Unit-Action (RFC 4006 §8.35).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FinalUnitAction {
    /// 0: terminate the service.
    Terminate,
    /// 1: redirect to a top-up server.
    Redirect,
    /// 2: restrict access with filters.
    RestrictAccess,
}

/// The whole file.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OcsConfig {
    /// Ro (online charging).
    pub ro: RoConfig,
    /// Gx (policy).
    pub gx: GxConfig,
    /// Accounts with their own balances (others get `ro.default_balance`).
    pub subscribers: Vec<SubscriberConfig>,
    /// Fault rules, applied in order; the first that matches acts.
    pub faults: Vec<FaultRule>,
    /// Tcc, RFC 4006 §13: a session with no request for this long is closed by the server. Default 0 (off).
    #[serde(with = "humantime_serde")]
    pub tcc: Duration,
    /// Requests recorded per session in the ledger; beyond it they are counted, not listed (long load runs).
    pub max_requests_per_session: usize,
}

impl Default for OcsConfig {
    fn default() -> Self {
        OcsConfig {
            ro: RoConfig::default(),
            gx: GxConfig::default(),
            subscribers: Vec::new(),
            faults: Vec::new(),
            tcc: Duration::ZERO,
            max_requests_per_session: 10_000,
        }
    }
}

/// `[ro]`: the tariff.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RoConfig {
    /// Balance of every subscriber not listed in `[[subscribers]]`, per unit kind (absent kinds: unlimited).
    pub default_balance: Units,
    /// Rating groups with their own tariff; others use `default_rating_group`.
    pub rating_groups: Vec<RatingGroupConfig>,
    /// The tariff of rating groups not listed.
    pub default_rating_group: RatingGroupConfig,
    /// Unit price for event charging and price enquiries, in the smallest currency unit per service unit.
    pub event_price: u64,
    /// ISO 4217 numeric currency code for Cost-Information (default 978, EUR).
    pub currency_code: u32,
    /// Credit-Control-Failure-Handling sent in CCA-I (0 TERMINATE, 1 CONTINUE, 2 RETRY_AND_TERMINATE); absent:
    /// not sent, the client keeps its own.
    pub ccfh: Option<i32>,
    /// CC-Session-Failover sent in CCA-I (0 NOT_SUPPORTED, 1 SUPPORTED); absent: not sent.
    pub cc_session_failover: Option<i32>,
}

impl Default for RoConfig {
    fn default() -> Self {
        RoConfig {
            default_balance: Units::default(),
            rating_groups: Vec::new(),
            default_rating_group: RatingGroupConfig::default(),
            event_price: 10,
            currency_code: 978,
            ccfh: Some(2),
            cc_session_failover: Some(1),
        }
    }
}

/// The tariff of one rating group.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RatingGroupConfig {
    /// The rating group (ignored for the default).
    pub rating_group: u32,
    /// Units granted per request, per kind: the kinds the client asks for, or all of these when it asks none.
    pub grant: Units,
    /// Validity-Time of a grant, 0 for none.
    #[serde(with = "humantime_serde")]
    pub validity_time: Duration,
    /// Quota-Holding-Time (TS 32.299), 0 for none.
    #[serde(with = "humantime_serde")]
    pub quota_holding_time: Duration,
    /// Time-Quota-Threshold (seconds), 0 for none.
    pub time_quota_threshold: u32,
    /// Volume-Quota-Threshold (octets), 0 for none.
    pub volume_quota_threshold: u32,
    /// What the client must do once the last units are used.
    pub final_unit_action: FinalUnitAction,
    /// Redirect-Server-Address for REDIRECT (a SIP URI or URL).
    pub redirect_address: String,
    /// Filter-Id for RESTRICT_ACCESS.
    pub restriction_filter: String,
}

impl Default for RatingGroupConfig {
    fn default() -> Self {
        RatingGroupConfig {
            rating_group: 0,
            grant: Units { time: Some(300), total_octets: Some(10_000_000), units: Some(10), ..Units::default() },
            validity_time: Duration::ZERO,
            quota_holding_time: Duration::ZERO,
            time_quota_threshold: 0,
            volume_quota_threshold: 0,
            final_unit_action: FinalUnitAction::Terminate,
            redirect_address: "sip:topup@ocs.localdomain".into(),
            restriction_filter: "topup-only".into(),
        }
    }
}

/// An account.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SubscriberConfig {
    /// Subscription-Id-Data (MSISDN, IMSI, SIP URI or NAI).
    pub id: String,
    /// Its balance per unit kind; kinds not listed are unlimited.
    pub balance: Units,
}

/// `[gx]`: the policy the PCRF hands out.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GxConfig {
    /// Predefined rule names installed at CCR-I (Charging-Rule-Name).
    pub rule_names: Vec<String>,
    /// Predefined rule bases installed at CCR-I (Charging-Rule-Base-Name).
    pub rule_base_names: Vec<String>,
    /// Dynamic rules installed at CCR-I (Charging-Rule-Definition).
    pub rules: Vec<RuleConfig>,
    /// Event-Trigger values armed at CCR-I (numeric, TS 29.212 §5.3.7).
    pub event_triggers: Vec<i32>,
    /// Session QoS: APN-AMBR uplink / downlink (bit/s) and the default bearer's QCI.
    pub apn_ambr_ul: u32,
    /// APN-AMBR downlink.
    pub apn_ambr_dl: u32,
    /// Default bearer QCI.
    pub default_qci: i32,
    /// Usage monitoring: Monitoring-Key and the volume granted per report, 0 for none.
    pub monitoring_key: String,
    /// Octets per usage-monitoring grant.
    pub monitoring_volume: u64,
}

impl Default for GxConfig {
    fn default() -> Self {
        GxConfig {
            rule_names: Vec::new(),
            rule_base_names: vec!["default-internet".into()],
            rules: vec![RuleConfig::default()],
            event_triggers: vec![2, 13, 33],
            apn_ambr_ul: 50_000_000,
            apn_ambr_dl: 150_000_000,
            default_qci: 9,
            monitoring_key: "mk-session".into(),
            monitoring_volume: 100_000_000,
        }
    }
}

/// A dynamic PCC rule.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RuleConfig {
    /// Charging-Rule-Name.
    pub name: String,
    /// Flow-Description values (IPFilterRule).
    pub flows: Vec<String>,
    /// QCI of the rule.
    pub qci: i32,
    /// Rating-Group.
    pub rating_group: u32,
    /// Precedence.
    pub precedence: u32,
}

impl Default for RuleConfig {
    fn default() -> Self {
        RuleConfig {
            name: "video-zero-rated".into(),
            flows: vec!["permit out 17 from 198.51.100.0/24 443 to assigned".into()],
            qci: 8,
            rating_group: 200,
            precedence: 100,
        }
    }
}

/// What a fault rule does: `"drop"`, `"close"`, `"unable_to_deliver"`, `"dpr"`, `{"result_code": 5031}` or
/// `{"delay": "2s"}`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum FaultAction {
    /// Answer with this Result-Code (3xxx with the E bit).
    ResultCode(u32),
    /// Answer normally, after this delay.
    Delay(#[serde(with = "humantime_serde")] Duration),
    /// Process the request but never answer (a lost answer: exercises Tx, CCFH and T-flag retransmission).
    Drop,
    /// Close the connection the request came on, without answering.
    Close,
    /// Answer 3002 (DIAMETER_UNABLE_TO_DELIVER) with the E bit, as a relay that lost the route would.
    UnableToDeliver,
    /// Answer normally, then send DPR (REBOOTING) to the peer.
    Dpr,
}

/// A fault: which requests it matches and what it does to them.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    /// Subscription-Id-Data to match (any when absent).
    #[serde(default)]
    pub subscriber: Option<String>,
    /// Session-Id to match.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Command short name: "CCR", "RAA"… (any when absent).
    #[serde(default)]
    pub command: Option<String>,
    /// CC-Request-Type: "initial", "update", "termination", "event".
    #[serde(default)]
    pub request_type: Option<String>,
    /// CC-Request-Number.
    #[serde(default)]
    pub request_number: Option<u32>,
    /// Only requests without (false) or with (true) the T flag.
    #[serde(default)]
    pub retransmission: Option<bool>,
    /// How many times it fires (unlimited when absent).
    #[serde(default)]
    pub times: Option<u32>,
    /// What it does.
    pub action: FaultAction,
}

impl FaultRule {
    /// A rule that matches every request and does `action`; narrow it with the other fields
    /// (`FaultRule { request_type: Some("update".into()), ..FaultRule::always(FaultAction::ResultCode(4012)) }`).
    pub fn always(action: FaultAction) -> FaultRule {
        FaultRule {
            subscriber: None,
            session_id: None,
            command: None,
            request_type: None,
            request_number: None,
            retransmission: None,
            times: None,
            action,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_parses_and_unknown_keys_are_named() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/ocs.toml")).unwrap();
        let c: OcsConfig = toml::from_str(&text).unwrap();
        assert_eq!(c.ro.rating_groups[0].validity_time, Duration::from_secs(600));
        assert_eq!(c.faults[0].action, FaultAction::Drop);
        assert_eq!(c.faults[1].action, FaultAction::ResultCode(3004));
        assert_eq!(c.faults[2].action, FaultAction::Delay(Duration::from_secs(2)));
        assert_eq!(c.subscribers[0].balance.time, Some(120));
        let err = toml::from_str::<OcsConfig>("[ro]\ndefault_balanse = {}\n").unwrap_err().to_string();
        assert!(err.contains("default_balanse"), "{err}");
        let err = toml::from_str::<OcsConfig>("[[faults]]\naction = \"explode\"\n").unwrap_err().to_string();
        assert!(err.contains("explode"), "{err}");
        assert_eq!(toml::from_str::<OcsConfig>("").unwrap(), OcsConfig::default());
    }
}
