//! Human-readable rendering of messages with dictionary names, in the spirit of `tshark -V`.

use std::fmt::Write;

use super::{DataType, Dictionary};
use crate::codec::value::hex;
use crate::codec::{Avp, DecodeLimits, Message};

impl Dictionary {
    /// Renders a message: header line, then one line per AVP with name, code, flags and typed value, Grouped
    /// members indented. Values that do not fit their format are shown raw with the reason.
    pub fn display(&self, msg: &Message) -> String {
        let h = &msg.header;
        let cmd = self.command(h.application_id, h.code);
        let name = cmd.map_or_else(|| format!("Unknown command {}", h.code.0), |c| c.name.clone());
        let dir = if h.flags.is_request() { "Request" } else { "Answer" };
        let app = self.application(h.application_id).map_or("unknown application", |a| a.name.as_str());
        let mut out = format!(
            "{name}-{dir} ({}) code={} flags={:?} application={} ({app}) hop-by-hop={:#010x} end-to-end={:#010x} length={}\n",
            cmd.map_or_else(|| h.short_name(), |c| format!("{}{}", c.short, &dir[..1])),
            h.code.0,
            h.flags,
            h.application_id.0,
            h.hop_by_hop.0,
            h.end_to_end.0,
            msg.encoded_len(),
        );
        for avp in &msg.avps {
            self.display_avp(&mut out, avp, 1);
        }
        out
    }

    fn display_avp(&self, out: &mut String, avp: &Avp, depth: usize) {
        let indent = "  ".repeat(depth);
        let def = self.avp_def(avp.code(), avp.vendor());
        let vendor = avp.vendor_id().map(|v| format!(" vendor={}", v.0)).unwrap_or_default();
        let name = def.map_or("Unknown AVP", |d| d.name.as_str());
        let _ = write!(out, "{indent}{name} ({}{vendor}) flags={:?} len={}", avp.code(), avp.flags(), avp.length());
        let Some(def) = def else {
            let _ = writeln!(out, ": {}", hex(avp.data()));
            return;
        };
        if def.data_type == DataType::Grouped {
            if depth >= DecodeLimits::default().max_depth {
                let _ = writeln!(out, ": (nested too deep, {} octets)", avp.data().len());
                return;
            }
            let _ = writeln!(out);
            for child in avp.grouped_iter() {
                match child {
                    Ok(child) => self.display_avp(out, &child, depth + 1),
                    Err(e) => {
                        let _ = writeln!(out, "{indent}  !! {e}");
                    }
                }
            }
            return;
        }
        let value = match super::validate::check_value(def, avp) {
            Err(e) => format!("{} !! {e}", hex(avp.data())),
            Ok(()) => match def.data_type {
                DataType::OctetString => match std::str::from_utf8(avp.data()) {
                    Ok(s) if !s.is_empty() && s.chars().all(|c| !c.is_control()) => {
                        format!("{} ({s:?})", hex(avp.data()))
                    }
                    _ => hex(avp.data()),
                },
                DataType::Integer32 => avp.as_i32().unwrap_or_default().to_string(),
                DataType::Integer64 => avp.as_i64().unwrap_or_default().to_string(),
                DataType::Unsigned32 => avp.as_u32().unwrap_or_default().to_string(),
                DataType::Unsigned64 => avp.as_u64().unwrap_or_default().to_string(),
                DataType::Float32 => avp.as_f32().unwrap_or_default().to_string(),
                DataType::Float64 => avp.as_f64().unwrap_or_default().to_string(),
                DataType::Enumerated => {
                    let v = avp.as_i32().unwrap_or_default();
                    format!("{} ({v})", def.item_name(v).unwrap_or("unknown value"))
                }
                DataType::Time => avp.as_time().map(|t| t.to_string()).unwrap_or_default(),
                DataType::Address => avp.as_address().map(|a| a.to_string()).unwrap_or_default(),
                _ => format!("{:?}", avp.as_utf8().unwrap_or_default()),
            },
        };
        let _ = writeln!(out, ": {value}");
    }
}
