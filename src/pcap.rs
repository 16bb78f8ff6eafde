//! Diameter messages out of a capture file (`charging-ra decode --pcap FILE`): classic pcap (µs or ns, either byte
//! order) and pcapng, link types Ethernet, Linux cooked (v1 and v2), BSD loopback and raw IP; IPv4 and IPv6; TCP
//! streams reassembled per direction by sequence number (retransmitted bytes dropped), then cut into Diameter
//! frames by their Message Length. Truncated or foreign packets are skipped, never a panic.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;

use crate::codec::peek_frame_length;

/// One Diameter message found in a capture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The 1-based number of the packet that completed it.
    pub packet: usize,
    /// Sender.
    pub src: SocketAddr,
    /// Receiver.
    pub dst: SocketAddr,
    /// The message's bytes.
    pub bytes: Bytes,
}

/// Why a capture could not be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a pcap or pcapng file: {0}")]
pub struct PcapError(String);

struct Flow {
    next_seq: Option<u32>,
    buf: Vec<u8>,
}

/// Every Diameter message carried over TCP in the capture, in the order they completed.
pub fn diameter_frames(file: &[u8]) -> Result<Vec<Frame>, PcapError> {
    let packets = packets(file)?;
    let limits = crate::codec::DecodeLimits { max_message_size: crate::codec::MAX_LENGTH, ..Default::default() };
    let mut flows: BTreeMap<(SocketAddr, SocketAddr), Flow> = BTreeMap::new();
    let mut out = Vec::new();
    for (i, (link, data)) in packets.iter().enumerate() {
        let Some((src, dst, seq, payload)) = tcp_segment(*link, data) else { continue };
        if payload.is_empty() {
            continue;
        }
        let flow = flows.entry((src, dst)).or_insert(Flow { next_seq: None, buf: Vec::new() });
        // Keep only bytes past what this direction has delivered (a retransmission repeats them).
        let skip = match flow.next_seq {
            None => 0,
            Some(next) => {
                // Signed distance from what is expected: ahead is a gap, behind is a repeat.
                let ahead = seq.wrapping_sub(next) as i32;
                if ahead > 0 {
                    // A gap (bytes not captured): start afresh from this segment.
                    flow.buf.clear();
                    0
                } else {
                    let behind = ahead.unsigned_abs() as usize;
                    if behind >= payload.len() {
                        continue;
                    }
                    behind
                }
            }
        };
        flow.buf.extend_from_slice(&payload[skip..]);
        flow.next_seq = Some(seq.wrapping_add(payload.len() as u32));
        while flow.buf.len() >= 4 {
            let len = match peek_frame_length(&flow.buf, &limits) {
                Ok(Some(n)) => n,
                Ok(None) => break,
                Err(_) => {
                    // Not Diameter (or lost sync): drop what this direction has buffered.
                    flow.buf.clear();
                    break;
                }
            };
            if flow.buf.len() < len {
                break;
            }
            let bytes: Vec<u8> = flow.buf.drain(..len).collect();
            out.push(Frame { packet: i + 1, src, dst, bytes: Bytes::from(bytes) });
        }
    }
    Ok(out)
}

fn u16_at(b: &[u8], at: usize, le: bool) -> Option<u16> {
    let s: [u8; 2] = b.get(at..at + 2)?.try_into().ok()?;
    Some(if le { u16::from_le_bytes(s) } else { u16::from_be_bytes(s) })
}

fn u32_at(b: &[u8], at: usize, le: bool) -> Option<u32> {
    let s: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(if le { u32::from_le_bytes(s) } else { u32::from_be_bytes(s) })
}

/// (link type, packet bytes) for every packet of a pcap or pcapng file.
fn packets(file: &[u8]) -> Result<Vec<(u32, &[u8])>, PcapError> {
    let magic = u32_at(file, 0, true).ok_or_else(|| PcapError("shorter than a header".into()))?;
    match magic {
        0xa1b2_c3d4 | 0xa1b2_3c4d | 0xd4c3_b2a1 | 0x4d3c_b2a1 => {
            let le = matches!(magic, 0xa1b2_c3d4 | 0xa1b2_3c4d);
            let link = u32_at(file, 20, le).ok_or_else(|| PcapError("truncated header".into()))?;
            let mut at = 24;
            let mut out = Vec::new();
            while let Some(caplen) = u32_at(file, at + 8, le) {
                let start = at + 16;
                let Some(data) = file.get(start..start + caplen as usize) else { break };
                out.push((link, data));
                at = start + caplen as usize;
            }
            Ok(out)
        }
        0x0a0d_0d0a => {
            let bom = u32_at(file, 8, true).ok_or_else(|| PcapError("truncated section header".into()))?;
            let le = bom == 0x1a2b_3c4d;
            let mut links = Vec::new();
            let mut out = Vec::new();
            let mut at = 0;
            while let (Some(kind), Some(len)) = (u32_at(file, at, le), u32_at(file, at + 4, le)) {
                let len = len as usize;
                if len < 12 || at + len > file.len() {
                    break;
                }
                let block = &file[at..at + len];
                match kind {
                    // Interface Description Block: its link type.
                    1 => links.push(u32::from(u16_at(block, 8, le).unwrap_or(0))),
                    // Enhanced Packet Block.
                    6 => {
                        let iface = u32_at(block, 8, le).unwrap_or(0) as usize;
                        let caplen = u32_at(block, 20, le).unwrap_or(0) as usize;
                        if let (Some(link), Some(data)) = (links.get(iface), block.get(28..28 + caplen)) {
                            out.push((*link, data));
                        }
                    }
                    _ => {}
                }
                at += len;
            }
            Ok(out)
        }
        other => Err(PcapError(format!("magic number {other:#010x}"))),
    }
}

/// The TCP segment of a link-layer packet: (source, destination, sequence number, payload).
fn tcp_segment(link: u32, data: &[u8]) -> Option<(SocketAddr, SocketAddr, u32, &[u8])> {
    let (ethertype, ip) = match link {
        1 => (u16_at(data, 12, false)?, data.get(14..)?),
        113 => (u16_at(data, 14, false)?, data.get(16..)?),
        276 => (u16_at(data, 0, false)?, data.get(20..)?),
        0 => {
            let family = u32_at(data, 0, true)?;
            (if family == 2 { 0x0800 } else { 0x86dd }, data.get(4..)?)
        }
        101 => (if data.first()? >> 4 == 4 { 0x0800 } else { 0x86dd }, data),
        _ => return None,
    };
    let (src_ip, dst_ip, proto, tcp): (IpAddr, IpAddr, u8, &[u8]) = match ethertype {
        0x0800 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            let total = usize::from(u16_at(ip, 2, false)?);
            let src: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
            (src.into(), dst.into(), *ip.get(9)?, ip.get(ihl..total.min(ip.len()))?)
        }
        0x86dd => {
            let len = usize::from(u16_at(ip, 4, false)?);
            let src: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            (src.into(), dst.into(), *ip.get(6)?, ip.get(40..(40 + len).min(ip.len()))?)
        }
        _ => return None,
    };
    if proto != 6 {
        return None;
    }
    let sport = u16_at(tcp, 0, false)?;
    let dport = u16_at(tcp, 2, false)?;
    let seq = u32_at(tcp, 4, false)?;
    let off = usize::from(tcp.get(12)? >> 4) * 4;
    Some((SocketAddr::new(src_ip, sport), SocketAddr::new(dst_ip, dport), seq, tcp.get(off..)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A classic pcap (Ethernet) of TCP segments carrying `payloads` from 10.0.0.1:40000 to 10.0.0.2:3868.
    fn capture(payloads: &[(u32, &[u8])]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        f.extend_from_slice(&2u16.to_le_bytes());
        f.extend_from_slice(&4u16.to_le_bytes());
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&65535u32.to_le_bytes());
        f.extend_from_slice(&1u32.to_le_bytes());
        for (seq, p) in payloads {
            let mut pkt = vec![0u8; 12];
            pkt.extend_from_slice(&0x0800u16.to_be_bytes());
            let total = (20 + 20 + p.len()) as u16;
            pkt.extend_from_slice(&[0x45, 0]);
            pkt.extend_from_slice(&total.to_be_bytes());
            pkt.extend_from_slice(&[0, 0, 0, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
            pkt.extend_from_slice(&40000u16.to_be_bytes());
            pkt.extend_from_slice(&3868u16.to_be_bytes());
            pkt.extend_from_slice(&seq.to_be_bytes());
            pkt.extend_from_slice(&[0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
            pkt.extend_from_slice(p);
            f.extend_from_slice(&[0; 8]);
            f.extend_from_slice(&(pkt.len() as u32).to_le_bytes());
            f.extend_from_slice(&(pkt.len() as u32).to_le_bytes());
            f.extend_from_slice(&pkt);
        }
        f
    }

    #[test]
    fn frames_are_reassembled_across_segments_and_retransmissions() {
        let dict = crate::dict::Dictionary::builtin();
        let samples = crate::samples::all(&dict);
        let a = samples[0].1.encode().unwrap();
        let b = samples[1].1.encode().unwrap();
        let mut stream = a.to_vec();
        stream.extend_from_slice(&b);
        let cut = a.len() + 7;
        let (first, second) = stream.split_at(cut);
        // The first segment is retransmitted in full before the second arrives.
        let f = capture(&[(1000, first), (1000, first), (1000 + cut as u32, second)]);
        let frames = diameter_frames(&f).unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!((frames[0].bytes.clone(), frames[1].bytes.clone()), (a, b));
        assert_eq!((frames[0].packet, frames[1].packet), (1, 3));
        assert_eq!(frames[0].dst, "10.0.0.2:3868".parse().unwrap());
    }

    #[test]
    fn junk_is_refused_or_skipped_without_panic() {
        assert!(diameter_frames(b"nope").is_err());
        let f = capture(&[(1, b"GET / HTTP/1.1\r\n\r\n")]);
        assert_eq!(diameter_frames(&f).unwrap(), Vec::new());
        let mut truncated = capture(&[(1, &[1, 0, 0, 20])]);
        truncated.truncate(truncated.len() - 3);
        let _ = diameter_frames(&truncated);
        for n in 0..truncated.len() {
            let _ = diameter_frames(&truncated[..n]);
        }
    }
}
