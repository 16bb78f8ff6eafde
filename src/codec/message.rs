//! Diameter messages (RFC 6733 §3): decode from a frame, encode into a reusable buffer, find AVPs.

use bytes::{BufMut, Bytes, BytesMut};

use super::avp::{Avp, Container, parse_avp};
use super::error::{DecodeError, DecodeErrorKind};
use super::header::{AppId, CommandCode, CommandFlags, EndToEndId, Header, HopByHopId};
use super::{HEADER_LEN, MAX_LENGTH, VERSION, code};

/// Bounds on what a decoder accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest Message Length accepted; larger frames are refused before they are read.
    pub max_message_size: usize,
    /// Deepest nesting of Grouped AVPs that validation descends into.
    pub max_depth: usize,
}

impl Default for DecodeLimits {
    /// 1 MiB messages (a CCR is a few hundred octets; the 24-bit field allows 16 MiB) and 16 levels of Grouped
    /// AVPs (the deepest 3GPP Ro AVP, Service-Information, nests about six).
    fn default() -> Self {
        DecodeLimits { max_message_size: 1 << 20, max_depth: 16 }
    }
}

/// Reads the Message Length from the first four octets of a frame, checking version and length before anything
/// is allocated (RFC 6733 §3). `Ok(None)` means fewer than four octets are available.
pub fn peek_frame_length(buf: &[u8], limits: &DecodeLimits) -> Result<Option<usize>, DecodeError> {
    let Some(first) = buf.get(..4) else {
        return Ok(None);
    };
    if first[0] != VERSION {
        return Err(DecodeError::new(DecodeErrorKind::UnsupportedVersion(first[0])));
    }
    let length = u32::from_be_bytes([0, first[1], first[2], first[3]]) as usize;
    if length < HEADER_LEN || !length.is_multiple_of(4) {
        return Err(DecodeError::new(DecodeErrorKind::InvalidMessageLength { declared: length, actual: buf.len() }));
    }
    if length > limits.max_message_size {
        return Err(DecodeError::new(DecodeErrorKind::TooLarge { length, max: limits.max_message_size }));
    }
    Ok(Some(length))
}

/// A Diameter message: header and top-level AVPs in wire order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The header (its length is computed when encoding).
    pub header: Header,
    /// The top-level AVPs, in order.
    pub avps: Vec<Avp>,
}

impl Message {
    /// A request with the P bit set and zero identifiers (the router assigns them).
    pub fn request(code: CommandCode, application_id: AppId) -> Message {
        Message {
            header: Header {
                flags: CommandFlags(CommandFlags::REQUEST | CommandFlags::PROXIABLE),
                code,
                application_id,
                hop_by_hop: HopByHopId(0),
                end_to_end: EndToEndId(0),
            },
            avps: Vec::new(),
        }
    }

    /// An empty answer to `request`: same command, application and identifiers (RFC 6733 §6.2), with the
    /// Session-Id copied first when present. Finish it with [`Message::echo_proxy_info`].
    pub fn answer_to(request: &Message) -> Message {
        let avps = request.find(code::SESSION_ID, 0).cloned().into_iter().collect();
        Message { header: request.header.answer(), avps }
    }

    /// Appends the request's Proxy-Info AVPs, in order (RFC 6733 §6.2 step 4: an answer carries every
    /// Proxy-Info of its request, unchanged).
    pub fn echo_proxy_info(&mut self, request: &Message) -> &mut Message {
        self.avps.extend(request.find_all(code::PROXY_INFO, 0).cloned());
        self
    }

    /// Appends an AVP (builder style).
    pub fn with(mut self, avp: Avp) -> Message {
        self.avps.push(avp);
        self
    }

    /// Appends an AVP.
    pub fn push(&mut self, avp: Avp) -> &mut Message {
        self.avps.push(avp);
        self
    }

    /// Whether the R bit is set.
    pub fn is_request(&self) -> bool {
        self.header.flags.is_request()
    }

    /// The first top-level AVP with this code and vendor (0 for none).
    pub fn find(&self, code: u32, vendor: u32) -> Option<&Avp> {
        self.avps.iter().find(|a| a.is(code, vendor))
    }

    /// Every top-level AVP with this code and vendor.
    pub fn find_all(&self, code: u32, vendor: u32) -> impl Iterator<Item = &Avp> {
        self.avps.iter().filter(move |a| a.is(code, vendor))
    }

    /// The Session-Id, when present and valid UTF-8.
    pub fn session_id(&self) -> Option<&str> {
        self.find(code::SESSION_ID, 0).and_then(|a| a.as_utf8().ok())
    }

    /// Result-Code, or the Experimental-Result-Code inside Experimental-Result (RFC 6733 §7.6), whichever is
    /// present; 3GPP servers send the latter with vendor 10415.
    pub fn result_code(&self) -> Option<super::ResultCode> {
        if let Some(rc) = self.find(code::RESULT_CODE, 0).and_then(|a| a.as_u32().ok()) {
            return Some(super::ResultCode(rc));
        }
        let exp = self.find(code::EXPERIMENTAL_RESULT, 0)?;
        exp.grouped_iter()
            .filter_map(Result::ok)
            .find(|a| a.is(code::EXPERIMENTAL_RESULT_CODE, 0))
            .and_then(|a| a.as_u32().ok())
            .map(super::ResultCode)
    }

    /// The Message Length this message encodes to.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.avps.iter().map(Avp::padded_len).sum::<usize>()
    }

    /// Appends the encoded message to `buf`. Fails only when the message exceeds the 24-bit length field.
    pub fn encode_into(&self, buf: &mut BytesMut) -> Result<(), MessageTooLong> {
        let len = self.encoded_len();
        if len > MAX_LENGTH {
            return Err(MessageTooLong(len));
        }
        buf.reserve(len);
        let h = &self.header;
        buf.put_u32(u32::from(VERSION) << 24 | len as u32);
        buf.put_u32(u32::from(h.flags.0) << 24 | (h.code.0 & 0x00ff_ffff));
        buf.put_u32(h.application_id.0);
        buf.put_u32(h.hop_by_hop.0);
        buf.put_u32(h.end_to_end.0);
        for avp in &self.avps {
            avp.encode_into(buf);
        }
        Ok(())
    }

    /// Encodes the message into a new buffer.
    pub fn encode(&self) -> Result<Bytes, MessageTooLong> {
        let mut buf = BytesMut::with_capacity(self.encoded_len());
        self.encode_into(&mut buf)?;
        Ok(buf.freeze())
    }

    /// Decodes one whole frame with the default limits.
    pub fn decode(frame: Bytes) -> Result<Message, DecodeError> {
        Message::decode_with(frame, &DecodeLimits::default())
    }

    /// Decodes one whole frame: header, then the top-level AVP headers (payloads are not copied). Checks the
    /// version, the length against the frame and the limit, the flag combination, and every AVP length against
    /// its container.
    pub fn decode_with(frame: Bytes, limits: &DecodeLimits) -> Result<Message, DecodeError> {
        if frame.len() < HEADER_LEN {
            return Err(match peek_frame_length(&frame, limits) {
                Err(e) => e,
                Ok(_) => DecodeError::new(DecodeErrorKind::Truncated { len: frame.len() }),
            });
        }
        let word = |i: usize| u32::from_be_bytes([frame[i], frame[i + 1], frame[i + 2], frame[i + 3]]);
        let flags = CommandFlags(frame[4]);
        let header = Header {
            flags,
            code: CommandCode(word(4) & 0x00ff_ffff),
            application_id: AppId(word(8)),
            hop_by_hop: HopByHopId(word(12)),
            end_to_end: EndToEndId(word(16)),
        };
        let fail = |kind| Err(DecodeError::new(kind).with_header(header));
        if frame[0] != VERSION {
            return fail(DecodeErrorKind::UnsupportedVersion(frame[0]));
        }
        let declared = (word(0) & 0x00ff_ffff) as usize;
        if declared > limits.max_message_size {
            return fail(DecodeErrorKind::TooLarge { length: declared, max: limits.max_message_size });
        }
        if declared != frame.len() || !declared.is_multiple_of(4) {
            return fail(DecodeErrorKind::InvalidMessageLength { declared, actual: frame.len() });
        }
        // RFC 6733 §3: the E bit is for answers only.
        if flags.is_request() && flags.is_error() {
            return fail(DecodeErrorKind::InvalidHeaderBits(flags.0));
        }
        let body = frame.slice(HEADER_LEN..);
        // Sized from the input, never from a length field: typical AVPs take 12 to 40 octets, so one allocation
        // usually suffices (each takes at least 8, so the vector stays proportional to the frame).
        let mut avps = Vec::with_capacity(body.len() / 16);
        let mut pos = 0;
        while pos < body.len() {
            let (avp, next) =
                parse_avp(&body, pos, Container::Message).map_err(|f| f.into_error().with_header(header))?;
            avps.push(avp);
            pos = next;
        }
        Ok(Message { header, avps })
    }
}

/// The message is longer than the 24-bit Message Length field allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("message of {0} octets exceeds the 16 MiB Diameter limit")]
pub struct MessageTooLong(pub usize);

impl DecodeError {
    /// The answer RFC 6733 §7.2 asks for when a request fails to decode or validate: the request's header
    /// with R cleared (and E set for a 3xxx protocol error), Session-Id when it could be read, our Origin-Host
    /// and Origin-Realm, Result-Code, Error-Message, Failed-AVP, and the request's Proxy-Info.
    ///
    /// `request` is the decoded request when only validation failed. Returns `None` when there is nothing to
    /// answer: no header could be read, or the message was an answer (RFC 6733 §7.3: errors in answers are not
    /// answered).
    pub fn to_answer(&self, request: Option<&Message>, origin_host: &str, origin_realm: &str) -> Option<Message> {
        let header = self.header.filter(|h| h.flags.is_request())?;
        let rc = self.result_code();
        let mut answer = match request {
            Some(req) => Message::answer_to(req),
            None => Message { header: header.answer(), avps: Vec::new() },
        };
        answer.header.flags = answer.header.flags.with(CommandFlags::ERROR, rc.is_protocol_error());
        answer
            .push(Avp::utf8(code::ORIGIN_HOST, origin_host))
            .push(Avp::utf8(code::ORIGIN_REALM, origin_realm))
            .push(Avp::u32(code::RESULT_CODE, rc.0))
            .push(Avp::utf8(code::ERROR_MESSAGE, &self.error_message()).with_mandatory(false));
        if let Some(failed) = self.failed_avp() {
            answer.push(Avp::grouped(code::FAILED_AVP, std::slice::from_ref(failed)));
        }
        if let Some(req) = request {
            answer.echo_proxy_info(req);
        }
        Some(answer)
    }
}
