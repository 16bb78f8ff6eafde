//! Message validation against the dictionary: M-bit AVPs (RFC 6733 §4.1), AVP flag rules, data formats
//! (§4.2, §4.3), command and Grouped grammars (§3.2, §4.4), with the Result-Code and Failed-AVP of §7.

use std::borrow::Borrow;

use bytes::Bytes;

use super::{AvpDef, DataType, Dictionary, Grammar};
use crate::codec::value::{DiameterUri, check_filter_rule, check_identity};
use crate::codec::{Avp, AvpFault, AvpFlags, DecodeError, DecodeErrorKind, DecodeLimits, Message, ValueError};

/// RFC 6733 §7.2: the grammar of every answer with the E bit set, whatever its command: (name, min, max).
pub(super) const ERROR_ANSWER: &[(&str, u32, Option<u32>)] = &[
    ("Session-Id", 0, Some(1)),
    ("Origin-Host", 1, Some(1)),
    ("Origin-Realm", 1, Some(1)),
    ("Result-Code", 1, Some(1)),
    ("Origin-State-Id", 0, Some(1)),
    ("Error-Message", 0, Some(1)),
    ("Error-Reporting-Host", 0, Some(1)),
    ("Failed-AVP", 0, Some(1)),
    ("Experimental-Result", 0, Some(1)),
    ("Proxy-Info", 0, None),
];

impl Dictionary {
    /// Validates a decoded message: the command is known for its application, every AVP with the M bit is
    /// known, flags agree with each definition, values fit their formats, and occurrences fit the grammars,
    /// recursively into Grouped AVPs down to `limits.max_depth`. Unknown AVPs without the M bit are accepted, and
    /// so are unknown values of Enumerated AVPs (3GPP keeps extending them; the application decides).
    pub fn validate(&self, msg: &Message, limits: &DecodeLimits) -> Result<(), DecodeError> {
        let h = msg.header;
        // RFC 6733 §7.2: an answer with the E bit has the generic answer-message grammar, whatever its command
        // (an unknown command is answered 3001 with E set, and that answer must be accepted).
        if !h.flags.is_request() && h.flags.is_error() {
            return self.check_error_answer(msg, limits).map_err(|e| e.with_header(h));
        }
        let cmd = match self.command(h.application_id, h.code) {
            Some(cmd) => cmd,
            None if self.application(h.application_id).is_none() && h.application_id.0 != 0 => {
                return Err(DecodeError::new(DecodeErrorKind::ApplicationUnsupported).with_header(h));
            }
            None => {
                return Err(DecodeError::new(DecodeErrorKind::CommandUnsupported).with_header(h));
            }
        };
        let grammar = if h.flags.is_request() { &cmd.request } else { &cmd.answer };
        self.check_avps(msg.avps.iter().map(Ok), Some(grammar), 0, limits).map_err(|e| e.with_header(h))
    }

    fn check_error_answer(&self, msg: &Message, limits: &DecodeLimits) -> Result<(), DecodeError> {
        self.check_avps(msg.avps.iter().map(Ok), Some(&self.error_answer), 0, limits)
    }

    /// Checks a sequence of AVPs against a grammar. The sequence is consumed lazily (a Grouped payload is
    /// parsed as it is checked), so memory grows with the nesting depth, not with the number of members.
    fn check_avps<A: Borrow<Avp>>(
        &self,
        avps: impl Iterator<Item = Result<A, AvpFault>>,
        grammar: Option<&Grammar>,
        depth: usize,
        limits: &DecodeLimits,
    ) -> Result<(), DecodeError> {
        let rules = grammar.map_or(&[][..], |g| &g.rules[..]);
        // Occurrences per rule; grammars are short (a CCR has ~35 rules), a linear scan beats hashing, and a
        // stack array avoids an allocation per Grouped AVP.
        let mut small = [0u32; 80];
        let mut large = Vec::new();
        let counts: &mut [u32] = if rules.len() <= small.len() {
            &mut small[..rules.len()]
        } else {
            large.resize(rules.len(), 0);
            &mut large
        };
        for avp in avps {
            let avp = avp.map_err(AvpFault::into_error)?;
            let avp = avp.borrow();
            let Some(idx) = self.by_code.get(&super::key(avp.code(), avp.vendor())).copied() else {
                if avp.flags().is_mandatory() {
                    return Err(DecodeError::new(DecodeErrorKind::AvpUnsupported { avp: avp.clone() }));
                }
                continue;
            };
            let def = &self.avps[idx];
            self.check_avp(def, avp, depth, limits)?;
            if let Some(i) = rules.iter().position(|r| r.avp == Some(idx)) {
                counts[i] += 1;
                if rules[i].max.is_some_and(|max| counts[i] > max) {
                    let avp = avp.clone();
                    let kind = if rules[i].max == Some(0) {
                        DecodeErrorKind::AvpNotAllowed { avp }
                    } else {
                        DecodeErrorKind::TooManyOccurrences { avp }
                    };
                    return Err(DecodeError::new(kind));
                }
            }
        }
        for (rule, &n) in rules.iter().zip(counts.iter()) {
            if let (true, Some(idx)) = (n < rule.min, rule.avp) {
                return Err(missing(&self.avps[idx]));
            }
        }
        Ok(())
    }

    fn check_avp(&self, def: &AvpDef, avp: &Avp, depth: usize, limits: &DecodeLimits) -> Result<(), DecodeError> {
        // RFC 6733 §7.1.3: flags inconsistent with the AVP's definition. Only for IETF AVPs: the 3GPP flag
        // tables changed across releases (peers of an older release set M where a newer one forbids it), and
        // rejecting a whole CCR for that would hurt more than it protects.
        let flags = avp.flags().0 & (AvpFlags::MANDATORY | AvpFlags::PROTECTED);
        if def.vendor == 0 && flags & def.must_not.0 != 0 {
            return Err(DecodeError::new(DecodeErrorKind::InvalidAvpBits { avp: avp.clone() }));
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
        // RFC 6733 §7.5: Failed-AVP carries the offending AVPs themselves; only its structure is checked, or an
        // answer reporting an unsupported AVP would be rejected for containing it.
        if def.code == crate::codec::code::FAILED_AVP && def.vendor == 0 {
            return avp.grouped_iter().try_for_each(|c| c.map(drop)).map_err(|e| e.nested_in(avp));
        }
        // A member's failure is reported wrapped in this AVP (RFC 6733 §7.5).
        self.check_avps(avp.grouped_raw(), def.grammar.as_ref(), depth + 1, limits).map_err(|e| match e.kind {
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
