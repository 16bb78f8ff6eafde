//! Message validation against the dictionary: M-bit AVPs (RFC 6733 §4.1), AVP flag rules, data formats
//! (§4.2, §4.3), command and Grouped grammars (§3.2, §4.4), with the Result-Code and Failed-AVP of §7.

use bytes::Bytes;

use super::{AvpDef, DataType, Dictionary, Grammar};
use crate::codec::value::{DiameterUri, check_filter_rule, check_identity};
use crate::codec::{
    Avp, AvpFlags, DecodeError, DecodeErrorKind, DecodeLimits, Message, ValueError,
};

/// RFC 6733 §7.2: the grammar of every answer with the E bit set, whatever its command.
const ERROR_ANSWER: &[&str] = &["Session-Id", "Origin-Host", "Origin-Realm", "Result-Code"];

impl Dictionary {
    /// Validates a decoded message: the command is known for its application, every AVP with the M bit is
    /// known, flags agree with each definition, values fit their formats, and occurrences fit the grammars,
    /// recursively into Grouped AVPs down to `limits.max_depth`. Unknown AVPs without the M bit are accepted, and
    /// so are unknown values of Enumerated AVPs (3GPP keeps extending them; the application decides).
    pub fn validate(&self, msg: &Message, limits: &DecodeLimits) -> Result<(), DecodeError> {
        let h = msg.header;
        let cmd = match self.command(h.application_id, h.code) {
            Some(cmd) => cmd,
            None if self.application(h.application_id).is_none() && h.application_id.0 != 0 => {
                return Err(
                    DecodeError::new(DecodeErrorKind::ApplicationUnsupported).with_header(h)
                );
            }
            None => {
                return Err(DecodeError::new(DecodeErrorKind::CommandUnsupported).with_header(h));
            }
        };
        let result = if !h.flags.is_request() && h.flags.is_error() {
            self.check_error_answer(msg, limits)
        } else {
            let grammar = if h.flags.is_request() {
                &cmd.request
            } else {
                &cmd.answer
            };
            self.check_avps(&msg.avps, Some(grammar), 0, limits)
        };
        result.map_err(|e| e.with_header(h))
    }

    fn check_error_answer(&self, msg: &Message, limits: &DecodeLimits) -> Result<(), DecodeError> {
        self.check_avps(&msg.avps, None, 0, limits)?;
        for name in &ERROR_ANSWER[1..] {
            let def = self.avp_by_name(name).expect("base AVPs are shipped");
            if !msg.avps.iter().any(|a| a.is(def.code, def.vendor)) {
                return Err(missing(def));
            }
        }
        Ok(())
    }

    fn check_avps(
        &self,
        avps: &[Avp],
        grammar: Option<&Grammar>,
        depth: usize,
        limits: &DecodeLimits,
    ) -> Result<(), DecodeError> {
        let rules = grammar.map_or(&[][..], |g| &g.rules[..]);
        // Occurrences per rule; grammars are short (a CCR has ~35 rules), a linear scan beats hashing.
        let mut counts = vec![0u32; rules.len()];
        for avp in avps {
            let Some(idx) = self
                .by_code
                .get(&super::key(avp.code(), avp.vendor()))
                .copied()
            else {
                if avp.flags().is_mandatory() {
                    return Err(DecodeError::new(DecodeErrorKind::AvpUnsupported {
                        avp: avp.clone(),
                    }));
                }
                continue;
            };
            let def = &self.avps[idx];
            self.check_avp(def, avp, depth, limits)?;
            if let Some(i) = rules.iter().position(|r| r.avp == Some(idx)) {
                counts[i] += 1;
                if rules[i].max.is_some_and(|max| counts[i] > max) {
                    let kind = if rules[i].max == Some(0) {
                        DecodeErrorKind::AvpNotAllowed { avp: avp.clone() }
                    } else {
                        DecodeErrorKind::TooManyOccurrences { avp: avp.clone() }
                    };
                    return Err(DecodeError::new(kind));
                }
            }
        }
        for (rule, &n) in rules.iter().zip(&counts) {
            if n < rule.min {
                if let Some(idx) = rule.avp {
                    return Err(missing(&self.avps[idx]));
                }
            }
        }
        Ok(())
    }

    fn check_avp(
        &self,
        def: &AvpDef,
        avp: &Avp,
        depth: usize,
        limits: &DecodeLimits,
    ) -> Result<(), DecodeError> {
        // RFC 6733 §7.1.3: flags inconsistent with the AVP's definition. Only for IETF AVPs: the 3GPP flag
        // tables changed across releases (peers of an older release set M where a newer one forbids it), and
        // rejecting a whole CCR for that would hurt more than it protects.
        let flags = avp.flags().0 & (AvpFlags::MANDATORY | AvpFlags::PROTECTED);
        if def.vendor == 0 && flags & def.must_not.0 != 0 {
            return Err(DecodeError::new(DecodeErrorKind::InvalidAvpBits {
                avp: avp.clone(),
            }));
        }
        if def.data_type != DataType::Grouped {
            return check_value(def, avp).map_err(|e| e.for_avp(avp));
        }
        if depth + 1 >= limits.max_depth {
            return Err(DecodeError::new(DecodeErrorKind::NestingTooDeep {
                avp: Avp::new(avp.code(), avp.flags(), avp.vendor_id(), Bytes::new()),
                max_depth: limits.max_depth,
            }));
        }
        // Failed-AVP for a member (wrapped in this AVP): RFC 6733 §7.5.
        let children = avp.grouped_avps().map_err(|e| e.nested_in(avp))?;
        // RFC 6733 §7.5: Failed-AVP carries the offending AVPs themselves; only its structure is checked, or an
        // answer reporting an unsupported AVP would be rejected for containing it.
        if def.code == crate::codec::code::FAILED_AVP && def.vendor == 0 {
            return Ok(());
        }
        self.check_avps(&children, def.grammar.as_ref(), depth + 1, limits)
            .map_err(|e| match e.kind {
                DecodeErrorKind::NestingTooDeep { .. } => e,
                _ => e.nested_in(avp),
            })
    }
}

/// The 5005 error for a missing AVP: an example with a zero-filled payload of the minimum size (RFC 6733 §7.5).
fn missing(def: &AvpDef) -> DecodeError {
    DecodeError::new(DecodeErrorKind::MissingAvp {
        name: def.name.clone(),
        avp: def.make(def.data_type.minimum_payload()),
    })
}

/// Checks a non-Grouped payload against its format.
pub(super) fn check_value(def: &AvpDef, avp: &Avp) -> Result<(), ValueError> {
    use DataType::*;
    match def.data_type {
        OctetString | Grouped => Ok(()),
        Integer32 | Enumerated => avp.as_i32().map(drop),
        Unsigned32 => avp.as_u32().map(drop),
        Float32 => avp.as_f32().map(drop),
        Time => avp.as_time().map(drop),
        Integer64 => avp.as_i64().map(drop),
        Unsigned64 => avp.as_u64().map(drop),
        Float64 => avp.as_f64().map(drop),
        Address => avp.as_address().map(drop),
        UTF8String => avp.as_utf8().map(drop),
        // Route-Record and similar carry identities; a relay's own formatting quirks are not ours to police
        // beyond the character set.
        DiameterIdentity => check_identity(avp.data()).map(drop),
        DiameterURI => DiameterUri::parse(avp.as_utf8()?).map(drop),
        IPFilterRule => check_filter_rule(avp.as_utf8()?, false),
        QoSFilterRule => check_filter_rule(avp.as_utf8()?, true),
    }
}
