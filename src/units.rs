//! Service units as RFC 4006 counts them (§8.17–8.23): time, octets, service-specific units. The shape is the
//! JSON of the HTTP front and the simulator's ledger: `{"time": s, "total_octets": n, "input_octets": n,
//! "output_octets": n, "units": n}`, any subset.

use serde::{Deserialize, Serialize};

use crate::codec::{Avp, code};

/// Kinds of units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitKind {
    /// CC-Time, seconds.
    Time,
    /// CC-Total-Octets.
    TotalOctets,
    /// CC-Input-Octets.
    InputOctets,
    /// CC-Output-Octets.
    OutputOctets,
    /// CC-Service-Specific-Units.
    Units,
    /// CC-Money, in hundredths of the currency unit (Unit-Value with Exponent -2).
    Money,
}

impl UnitKind {
    /// Every kind, in a fixed order.
    pub const ALL: [UnitKind; 6] = [
        UnitKind::Time,
        UnitKind::TotalOctets,
        UnitKind::InputOctets,
        UnitKind::OutputOctets,
        UnitKind::Units,
        UnitKind::Money,
    ];

    /// The AVP carrying this kind inside Granted/Requested/Used-Service-Unit.
    pub fn avp_code(self) -> u32 {
        match self {
            UnitKind::Time => code::CC_TIME,
            UnitKind::TotalOctets => code::CC_TOTAL_OCTETS,
            UnitKind::InputOctets => code::CC_INPUT_OCTETS,
            UnitKind::OutputOctets => code::CC_OUTPUT_OCTETS,
            UnitKind::Units => code::CC_SERVICE_SPECIFIC_UNITS,
            UnitKind::Money => CC_MONEY,
        }
    }
}

/// RFC 4006 §8.22 CC-Money and its members (§8.8 Unit-Value, §8.10 Value-Digits, §8.9 Exponent).
const CC_MONEY: u32 = 413;
const UNIT_VALUE: u32 = 445;
const VALUE_DIGITS: u32 = 447;
const EXPONENT: u32 = 429;

/// An amount of each kind; absent kinds are "none given". In JSON, the kinds given, by name; in a binary record,
/// all six in order ([`crate::replication::StateEncoding::Binary`]: a positional format cannot leave one out).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Units {
    /// Seconds.
    pub time: Option<u64>,
    /// Octets both ways.
    pub total_octets: Option<u64>,
    /// Octets from the user.
    pub input_octets: Option<u64>,
    /// Octets to the user.
    pub output_octets: Option<u64>,
    /// Service-specific units (events, messages…).
    pub units: Option<u64>,
    /// Money, in hundredths of the currency unit.
    pub money: Option<u64>,
}

/// The JSON shape of [`Units`] (serde's remote derive: the compiler checks it names the same fields).
#[derive(Deserialize, Serialize)]
#[serde(remote = "Units", deny_unknown_fields)]
struct UnitsJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    time: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    total_octets: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    input_octets: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    output_octets: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    units: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    money: Option<u64>,
}

type UnitsTuple = (Option<u64>, Option<u64>, Option<u64>, Option<u64>, Option<u64>, Option<u64>);

impl Serialize for Units {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            UnitsJson::serialize(self, s)
        } else {
            (self.time, self.total_octets, self.input_octets, self.output_octets, self.units, self.money).serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Units {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            UnitsJson::deserialize(d)
        } else {
            let (time, total_octets, input_octets, output_octets, units, money) = UnitsTuple::deserialize(d)?;
            Ok(Units { time, total_octets, input_octets, output_octets, units, money })
        }
    }
}

impl Units {
    /// The amount of one kind.
    pub fn get(&self, k: UnitKind) -> Option<u64> {
        match k {
            UnitKind::Time => self.time,
            UnitKind::TotalOctets => self.total_octets,
            UnitKind::InputOctets => self.input_octets,
            UnitKind::OutputOctets => self.output_octets,
            UnitKind::Units => self.units,
            UnitKind::Money => self.money,
        }
    }

    /// Sets the amount of one kind.
    pub fn set(&mut self, k: UnitKind, v: Option<u64>) {
        let slot = match k {
            UnitKind::Time => &mut self.time,
            UnitKind::TotalOctets => &mut self.total_octets,
            UnitKind::InputOctets => &mut self.input_octets,
            UnitKind::OutputOctets => &mut self.output_octets,
            UnitKind::Units => &mut self.units,
            UnitKind::Money => &mut self.money,
        };
        *slot = v;
    }

    /// Whether no kind is given.
    pub fn is_empty(&self) -> bool {
        UnitKind::ALL.iter().all(|k| self.get(*k).is_none())
    }

    /// The kinds given.
    pub fn kinds(&self) -> impl Iterator<Item = UnitKind> + '_ {
        UnitKind::ALL.into_iter().filter(|k| self.get(*k).is_some())
    }

    /// Adds `other` kind by kind (absent + x = x).
    pub fn add(&mut self, other: &Units) {
        for k in UnitKind::ALL {
            if let Some(v) = other.get(k) {
                self.set(k, Some(self.get(k).unwrap_or(0).saturating_add(v)));
            }
        }
    }

    /// Reads the unit AVPs inside a GSU/RSU/USU (RFC 4006 §8.17–8.19). Money (CC-Money) is not counted.
    pub fn from_grouped(avp: &Avp) -> Units {
        let mut u = Units::default();
        for child in avp.grouped_iter().filter_map(Result::ok) {
            if child.vendor() != 0 {
                continue;
            }
            let v = match child.code() {
                code::CC_TIME => child.as_u32().ok().map(u64::from),
                CC_MONEY => money_hundredths(&child),
                _ => child.as_u64().ok(),
            };
            if let Some(k) = UnitKind::ALL.into_iter().find(|k| k.avp_code() == child.code()) {
                u.set(k, v);
            }
        }
        u
    }

    /// The unit AVPs for a GSU/RSU/USU (CC-Time is Unsigned32, the others Unsigned64).
    pub fn to_avps(&self) -> Vec<Avp> {
        self.kinds()
            .map(|k| {
                let v = self.get(k).unwrap_or(0);
                match k {
                    UnitKind::Time => Avp::u32(k.avp_code(), v.min(u64::from(u32::MAX)) as u32),
                    UnitKind::Money => Avp::grouped(
                        CC_MONEY,
                        &[Avp::grouped(
                            UNIT_VALUE,
                            &[Avp::i64(VALUE_DIGITS, v.min(i64::MAX as u64) as i64), Avp::i32(EXPONENT, -2)],
                        )],
                    ),
                    _ => Avp::u64(k.avp_code(), v),
                }
            })
            .collect()
    }
}

/// Reads CC-Money as hundredths: Value-Digits × 10^(Exponent + 2), negative or unreadable amounts as none.
fn money_hundredths(cc_money: &Avp) -> Option<u64> {
    let uv = cc_money.grouped_iter().filter_map(Result::ok).find(|a| a.is(UNIT_VALUE, 0))?;
    let members: Vec<Avp> = uv.grouped_iter().filter_map(Result::ok).collect();
    let digits = members.iter().find(|a| a.is(VALUE_DIGITS, 0))?.as_i64().ok()?;
    let exp = members.iter().find(|a| a.is(EXPONENT, 0)).and_then(|a| a.as_i32().ok()).unwrap_or(0) + 2;
    let scaled = if exp >= 0 {
        i128::from(digits).checked_mul(10i128.checked_pow(exp.unsigned_abs())?)?
    } else {
        i128::from(digits) / 10i128.checked_pow(exp.unsigned_abs())?
    };
    u64::try_from(scaled).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_round_trip_through_avps_and_json() {
        let u = Units { time: Some(60), total_octets: Some(1 << 40), ..Default::default() };
        let g = Avp::grouped(code::GRANTED_SERVICE_UNIT, &u.to_avps());
        assert_eq!(Units::from_grouped(&g), u);
        let json = serde_json::to_string(&u).unwrap();
        assert_eq!(json, r#"{"time":60,"total_octets":1099511627776}"#);
        assert_eq!(serde_json::from_str::<Units>(&json).unwrap(), u);
        let money = Units { money: Some(1250), ..Default::default() };
        let g = Avp::grouped(code::USED_SERVICE_UNIT, &money.to_avps());
        assert_eq!(Units::from_grouped(&g), money, "CC-Money 12.50 round-trips as 1250 hundredths");
        let mut sum = u;
        sum.add(&Units { time: Some(1), units: Some(2), ..Default::default() });
        assert_eq!((sum.time, sum.units), (Some(61), Some(2)));
    }
}
