//! SIP messages (RFC 3261 §7, §20, §25): parse and build requests and responses.
//!
//! Enough of the grammar for a routing B2BUA: start lines, header fields with their compact forms (§7.3.3),
//! folded lines (§7.3.1), comma-joined values of the list headers (Via, Route, Record-Route, Contact) split
//! into one entry each, Content-Length framing (§18.3, §20.14). Header values are kept as text; the few that the
//! B2BUA reads (Via, CSeq, From/To tags, name-addr URIs) have accessors. Anything malformed is a [`ParseError`]
//! that says why and carries what is needed to answer it with 400 (§8.2.6) when that is possible.
//!
//! ```
//! use charging_ra::sip::message::Message;
//!
//! // Compact header names, a folded line and two Via values in one header.
//! let text = "BYE sip:bob@192.0.2.2 SIP/2.0\r\n\
//!             v: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKp1, SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa1\r\n\
//!             f: <sip:alice@example.net>;tag=a1\r\nt: <sip:bob@example.net>\r\n ;tag=b1\r\n\
//!             i: call-1\r\nCSeq: 2 BYE\r\nl: 0\r\n\r\n";
//! let bye = Message::parse(text.as_bytes()).unwrap();
//! assert_eq!((bye.method(), bye.call_id(), bye.to_tag()), ("BYE", "call-1", Some("b1")));
//! assert_eq!(bye.top_via().unwrap().branch.as_deref(), Some("z9hG4bKp1"));
//! let ok = bye.response(200, "OK", None);
//! assert!(ok.to_bytes().starts_with(b"SIP/2.0 200 OK\r\n"));
//!
//! // Malformed input is an error that says why, never a panic.
//! let err = Message::parse(b"BYE sip:bob@192.0.2.2 SIP/2.0\r\ni: c\r\n\r\n").unwrap_err();
//! assert!(err.to_string().contains("Via"), "{err}");
//! ```

use std::fmt::Write as _;

use bytes::Bytes;

/// The largest message accepted (a UDP datagram holds less; over TCP this bounds a peer that never stops).
pub const MAX_MESSAGE: usize = 64 * 1024;

/// Request line or status line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartLine {
    /// `METHOD Request-URI SIP/2.0`
    Request {
        /// The method (case-sensitive, §7.1).
        method: String,
        /// The Request-URI.
        uri: String,
    },
    /// `SIP/2.0 code reason`
    Response {
        /// Status code.
        code: u16,
        /// Reason phrase.
        reason: String,
    },
}

/// One header field. Names are kept in their long canonical form (`v` becomes `Via`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Canonical name.
    pub name: String,
    /// Value, unfolded and trimmed.
    pub value: String,
}

/// A SIP message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Request or status line.
    pub start: StartLine,
    /// Header fields in order (list headers one value per entry; Content-Length is not kept, see `to_bytes`).
    pub headers: Vec<Header>,
    /// The body (Content-Length is recomputed from it when encoding).
    pub body: Bytes,
}

/// Why a message could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct ParseError {
    /// What is wrong (goes into the 400's reason phrase).
    pub reason: String,
    /// Status to answer with (400, or 513 for an oversized message).
    pub status: u16,
    /// The request as far as it was read, when it has what a response needs (Via, From, To, Call-ID, CSeq):
    /// the caller answers it with `status`. `None`: drop silently (§16.3 / §18.3: nothing to answer to).
    pub partial: Option<Box<Message>>,
}

impl ParseError {
    fn new(reason: impl Into<String>) -> ParseError {
        ParseError { reason: reason.into(), status: 400, partial: None }
    }
}

/// Compact forms (§7.3.3) and canonical spelling of the headers the B2BUA meets.
fn canonical(name: &str) -> String {
    let known: &[(&str, &str)] = &[
        ("i", "Call-ID"),
        ("call-id", "Call-ID"),
        ("m", "Contact"),
        ("contact", "Contact"),
        ("e", "Content-Encoding"),
        ("content-encoding", "Content-Encoding"),
        ("l", "Content-Length"),
        ("content-length", "Content-Length"),
        ("c", "Content-Type"),
        ("content-type", "Content-Type"),
        ("f", "From"),
        ("from", "From"),
        ("s", "Subject"),
        ("subject", "Subject"),
        ("k", "Supported"),
        ("supported", "Supported"),
        ("t", "To"),
        ("to", "To"),
        ("v", "Via"),
        ("via", "Via"),
        ("o", "Event"),
        ("r", "Refer-To"),
        ("u", "Allow-Events"),
        ("x", "Session-Expires"),
        ("cseq", "CSeq"),
        ("max-forwards", "Max-Forwards"),
        ("route", "Route"),
        ("record-route", "Record-Route"),
        ("p-asserted-identity", "P-Asserted-Identity"),
        ("allow", "Allow"),
        ("user-agent", "User-Agent"),
        ("server", "Server"),
        ("retry-after", "Retry-After"),
        ("require", "Require"),
        ("unsupported", "Unsupported"),
    ];
    let lower = name.to_ascii_lowercase();
    known.iter().find(|(k, _)| *k == lower).map_or_else(|| name.to_string(), |(_, v)| v.to_string())
}

/// Headers whose comma-separated values are separate entries (§7.3.1).
fn is_list(name: &str) -> bool {
    matches!(name, "Via" | "Route" | "Record-Route" | "Contact")
}

/// Splits a header value at commas outside quotes and angle brackets.
pub fn split_list(value: &str) -> Vec<&str> {
    let (mut out, mut start, mut quoted, mut angle, mut escaped) = (Vec::new(), 0, false, false, false);
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ',' if !quoted && !angle => {
                out.push(value[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(value[start..].trim());
    out.retain(|v| !v.is_empty());
    out
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
}

/// Where the head of a message ends: the offset of the body. `None` when the blank line has not arrived yet.
pub fn head_len(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| p + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Message {
    /// Parses a whole message (a UDP datagram, or one framed off a TCP stream with [`Message::frame_len`]).
    /// Bytes beyond Content-Length are ignored (§18.3); a body shorter than Content-Length is an error.
    pub fn parse(buf: &[u8]) -> Result<Message, ParseError> {
        if buf.len() > MAX_MESSAGE {
            return Err(ParseError { reason: "Message Too Large".into(), status: 513, partial: None });
        }
        // Keep-alives (RFC 5626 CRLF) and stray blank lines before the start line are skipped (§7.5).
        let start_at = buf.iter().position(|b| !matches!(b, b'\r' | b'\n')).unwrap_or(buf.len());
        let buf = &buf[start_at..];
        let head_end = head_len(buf).ok_or_else(|| ParseError::new("no blank line after the headers"))?;
        let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| ParseError::new("headers are not UTF-8"))?;
        let mut lines: Vec<String> = Vec::new();
        for raw in head.split('\n') {
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            if line.is_empty() {
                continue;
            }
            if line.starts_with([' ', '\t']) {
                // Folded line (§7.3.1): continues the previous header with one space.
                let n = lines.len();
                let Some(prev) = lines.last_mut().filter(|_| n > 1) else {
                    return Err(ParseError::new("continuation line before any header"));
                };
                prev.push(' ');
                prev.push_str(line.trim());
                continue;
            }
            lines.push(line.to_string());
        }
        let mut it = lines.into_iter();
        let first = it.next().ok_or_else(|| ParseError::new("empty message"))?;
        let mut headers = Vec::new();
        for line in it {
            let (name, value) =
                line.split_once(':').ok_or_else(|| ParseError::new(format!("header without ':' ({line})")))?;
            let name = name.trim();
            if !is_token(name) {
                return Err(ParseError::new(format!("bad header name {name:?}")));
            }
            let name = canonical(name);
            let value = value.trim();
            if is_list(&name) && value != "*" {
                for v in split_list(value) {
                    headers.push(Header { name: name.clone(), value: v.to_string() });
                }
            } else {
                headers.push(Header { name, value: value.to_string() });
            }
        }
        let start = match parse_start(&first) {
            Ok(s) => s,
            Err(reason) => {
                let partial = Message {
                    start: StartLine::Request { method: "UNKNOWN".into(), uri: String::new() },
                    headers,
                    body: Bytes::new(),
                };
                return Err(with_partial(ParseError::new(reason), partial));
            }
        };
        let mut msg = Message { start, headers, body: Bytes::new() };
        let rest = &buf[head_end..];
        let disagree = {
            let mut lengths = msg.headers_named("Content-Length").map(str::trim);
            let first = lengths.next();
            lengths.any(|l| Some(l) != first)
        };
        if disagree {
            return Err(with_partial(ParseError::new("Content-Length headers disagree"), msg));
        }
        let body_len = match msg.header("Content-Length") {
            Some(v) => match v.trim().parse::<usize>() {
                Ok(n) if n <= rest.len() => n,
                Ok(n) => {
                    return Err(with_partial(
                        ParseError::new(format!("Content-Length {n} but {} bytes of body", rest.len())),
                        msg,
                    ));
                }
                Err(_) => return Err(with_partial(ParseError::new(format!("bad Content-Length {v:?}")), msg)),
            },
            None => rest.len(),
        };
        msg.body = Bytes::copy_from_slice(&rest[..body_len]);
        // Content-Length describes the body, which the message now holds: it is written from the body again by
        // `to_bytes`, never carried over.
        msg.remove("Content-Length");
        if let Err(reason) = msg.check() {
            return Err(with_partial(ParseError::new(reason), msg));
        }
        Ok(msg)
    }

    /// On a stream (TCP, §18.3): the length of the first whole message in `buf` (head plus Content-Length),
    /// `Ok(None)` when more bytes are needed, an error when the head is too large or has no valid Content-Length.
    pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, ParseError> {
        let skip = buf.iter().position(|b| !matches!(b, b'\r' | b'\n')).unwrap_or(buf.len());
        let Some(head) = head_len(&buf[skip..]) else {
            return if buf.len() > MAX_MESSAGE {
                Err(ParseError { reason: "Message Too Large".into(), status: 513, partial: None })
            } else {
                Ok(None)
            };
        };
        let text = String::from_utf8_lossy(&buf[skip..skip + head]);
        let mut len = None;
        for line in text.lines() {
            if let Some((name, value)) = line.split_once(':')
                && canonical(name.trim()) == "Content-Length"
            {
                let v = value.trim().parse::<usize>().map_err(|_| ParseError::new("bad Content-Length"))?;
                if len.is_some_and(|l| l != v) {
                    return Err(ParseError::new("Content-Length headers disagree"));
                }
                len = Some(v);
            }
        }
        let len = len.ok_or_else(|| ParseError::new("Content-Length is required on a stream transport"))?;
        // The length is the peer's: it must not overflow, nor make the message larger than allowed.
        let total = (skip + head).checked_add(len).filter(|t| *t <= MAX_MESSAGE);
        let Some(total) = total else {
            return Err(ParseError { reason: "Message Too Large".into(), status: 513, partial: None });
        };
        Ok((buf.len() >= total).then_some(total))
    }

    /// The mandatory headers (§8.1.1) and their consistency.
    fn check(&self) -> Result<(), String> {
        for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
            if self.header(name).is_none() {
                return Err(format!("Missing {name} header"));
            }
        }
        let (_, cseq_method) = self.cseq().ok_or("bad CSeq")?;
        if let StartLine::Request { method, .. } = &self.start {
            if self.header("Max-Forwards").is_some_and(|v| v.trim().parse::<u8>().is_err()) {
                return Err("bad Max-Forwards".into());
            }
            if *method != cseq_method && method != "ACK" && method != "CANCEL" {
                return Err(format!("CSeq method {cseq_method} does not match {method}"));
            }
            if (method == "ACK" || method == "CANCEL") && cseq_method != *method {
                return Err(format!("CSeq method {cseq_method} does not match {method}"));
            }
        }
        Via::parse(self.header("Via").unwrap_or_default()).ok_or("bad Via")?;
        Ok(())
    }

    /// A request.
    pub fn request(method: &str, uri: &str) -> Message {
        Message {
            start: StartLine::Request { method: method.into(), uri: uri.into() },
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// The method of a request, or of the CSeq of a response.
    pub fn method(&self) -> &str {
        match &self.start {
            StartLine::Request { method, .. } => method,
            StartLine::Response { .. } => self.header("CSeq").and_then(|v| v.split_whitespace().nth(1)).unwrap_or(""),
        }
    }

    /// Whether this is a request.
    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// The status code of a response (0 for a request).
    pub fn code(&self) -> u16 {
        match self.start {
            StartLine::Response { code, .. } => code,
            StartLine::Request { .. } => 0,
        }
    }

    /// The Request-URI of a request.
    pub fn uri(&self) -> &str {
        match &self.start {
            StartLine::Request { uri, .. } => uri,
            StartLine::Response { .. } => "",
        }
    }

    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value.as_str())
    }

    /// Every value of a header, in order.
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers.iter().filter(move |h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value.as_str())
    }

    /// Replaces every value of a header with one.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        match self.headers.iter().position(|h| h.name.eq_ignore_ascii_case(name)) {
            Some(i) => {
                self.headers[i].value = value;
                let mut n = 0;
                self.headers.retain(|h| {
                    let keep = !h.name.eq_ignore_ascii_case(name) || n == 0;
                    if h.name.eq_ignore_ascii_case(name) {
                        n += 1;
                    }
                    keep
                });
            }
            None => self.headers.push(Header { name: name.into(), value }),
        }
    }

    /// Appends a header value.
    pub fn push(&mut self, name: &str, value: impl Into<String>) {
        self.headers.push(Header { name: name.into(), value: value.into() });
    }

    /// Inserts a header value before the other values of the same name (a new top Via).
    pub fn push_front(&mut self, name: &str, value: impl Into<String>) {
        let at = self.headers.iter().position(|h| h.name.eq_ignore_ascii_case(name)).unwrap_or(0);
        self.headers.insert(at, Header { name: name.into(), value: value.into() });
    }

    /// Removes and returns the first value of a header (the top Via, the top Route).
    pub fn pop(&mut self, name: &str) -> Option<String> {
        let i = self.headers.iter().position(|h| h.name.eq_ignore_ascii_case(name))?;
        Some(self.headers.remove(i).value)
    }

    /// Removes every value of a header.
    pub fn remove(&mut self, name: &str) {
        self.headers.retain(|h| !h.name.eq_ignore_ascii_case(name));
    }

    /// CSeq number and method.
    pub fn cseq(&self) -> Option<(u32, String)> {
        let v = self.header("CSeq")?;
        let mut it = v.split_whitespace();
        let n = it.next()?.parse::<u32>().ok()?;
        let m = it.next()?;
        (it.next().is_none() && is_token(m)).then(|| (n, m.to_string()))
    }

    /// Call-ID.
    pub fn call_id(&self) -> &str {
        self.header("Call-ID").unwrap_or("")
    }

    /// The tag of From.
    pub fn from_tag(&self) -> Option<&str> {
        self.header("From").and_then(|v| param(v, "tag"))
    }

    /// The tag of To.
    pub fn to_tag(&self) -> Option<&str> {
        self.header("To").and_then(|v| param(v, "tag"))
    }

    /// The top Via.
    pub fn top_via(&self) -> Option<Via> {
        Via::parse(self.header("Via")?)
    }

    /// The response to this request (§8.2.6): Via, From, To, Call-ID, CSeq copied; To gets `to_tag` when it has
    /// none and the response is not 100.
    pub fn response(&self, code: u16, reason: &str, to_tag: Option<&str>) -> Message {
        let mut r = Message {
            start: StartLine::Response { code, reason: reason.into() },
            headers: Vec::new(),
            body: Bytes::new(),
        };
        for h in &self.headers {
            if matches!(h.name.as_str(), "Via" | "From" | "Call-ID" | "CSeq") {
                r.headers.push(h.clone());
            } else if h.name == "To" {
                let mut to = h.value.clone();
                if let Some(tag) = to_tag.filter(|_| code != 100 && param(&h.value, "tag").is_none()) {
                    let _ = write!(to, ";tag={tag}");
                }
                r.headers.push(Header { name: "To".into(), value: to });
            }
        }
        r
    }

    /// Encodes the message; Content-Length is written from the body.
    pub fn to_bytes(&self) -> Bytes {
        let mut s = String::with_capacity(512 + self.body.len());
        match &self.start {
            StartLine::Request { method, uri } => {
                let _ = write!(s, "{method} {uri} SIP/2.0\r\n");
            }
            StartLine::Response { code, reason } => {
                let _ = write!(s, "SIP/2.0 {code} {reason}\r\n");
            }
        }
        for h in self.headers.iter().filter(|h| h.name != "Content-Length") {
            let _ = write!(s, "{}: {}\r\n", h.name, h.value);
        }
        let _ = write!(s, "Content-Length: {}\r\n\r\n", self.body.len());
        let mut out = s.into_bytes();
        out.extend_from_slice(&self.body);
        Bytes::from(out)
    }
}

fn with_partial(mut e: ParseError, m: Message) -> ParseError {
    let answerable = ["Via", "From", "To", "Call-ID", "CSeq"].iter().all(|h| m.header(h).is_some())
        && m.top_via().is_some()
        && !matches!(m.start, StartLine::Response { .. });
    if answerable {
        e.partial = Some(Box::new(m));
    }
    e
}

fn parse_start(line: &str) -> Result<StartLine, String> {
    if let Some(rest) = line.strip_prefix("SIP/2.0 ") {
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        let code: u16 = code.parse().map_err(|_| format!("bad status code in {line:?}"))?;
        if !(100..700).contains(&code) {
            return Err(format!("status code {code} out of range"));
        }
        return Ok(StartLine::Response { code, reason: reason.to_string() });
    }
    let mut it = line.split(' ');
    let (Some(method), Some(uri), Some(version), None) = (it.next(), it.next(), it.next(), it.next()) else {
        return Err("Malformed Request-Line".into());
    };
    if version != "SIP/2.0" {
        return Err(format!("unsupported version {version:?}"));
    }
    if !is_token(method) || uri.is_empty() || !uri.contains(':') {
        return Err("Malformed Request-Line".into());
    }
    Ok(StartLine::Request { method: method.into(), uri: uri.into() })
}

/// A header parameter (`;tag=…`, `;branch=…`) after the name-addr or value, outside `<…>` and quotes.
pub fn param<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    let params = match value.rfind('>') {
        Some(i) => &value[i + 1..],
        None => value.split_once(';').map_or("", |(_, p)| p),
    };
    params.split(';').map(str::trim).find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The URI of a name-addr or addr-spec (`"Bob" <sip:bob@h>;tag=1` → `sip:bob@h`).
pub fn uri_of(value: &str) -> &str {
    match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value.split(';').next().unwrap_or(value).trim(),
    }
}

/// Host and port of a SIP URI (`sip:user@host:port;params` → `("host", Some(port))`).
pub fn uri_host_port(uri: &str) -> Option<(String, Option<u16>)> {
    let rest = uri.strip_prefix("sips:").or_else(|| uri.strip_prefix("sip:"))?;
    let rest = rest.split(['?', ';']).next()?;
    let hostport = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    host_port(hostport)
}

fn host_port(hostport: &str) -> Option<(String, Option<u16>)> {
    if let Some(v6) = hostport.strip_prefix('[') {
        let (h, rest) = v6.split_once(']')?;
        let port = match rest.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if rest.is_empty() => None,
            None => return None,
        };
        return Some((h.to_string(), port));
    }
    let (h, p) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h, Some(p.parse::<u16>().ok()?)),
        None => (hostport, None),
    };
    (!h.is_empty()).then(|| (h.to_string(), p))
}

/// A URI parameter (`;lr`, `;transport=tcp`), without the header parameters after `>`.
pub fn uri_param<'a>(uri: &'a str, name: &str) -> Option<&'a str> {
    uri.split(';').skip(1).map(str::trim).find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        k.eq_ignore_ascii_case(name).then_some(v)
    })
}

/// A parsed Via value (§20.42).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Via {
    /// `UDP`, `TCP`…
    pub transport: String,
    /// sent-by host.
    pub host: String,
    /// sent-by port.
    pub port: Option<u16>,
    /// The branch parameter.
    pub branch: Option<String>,
    /// `received=`.
    pub received: Option<String>,
    /// `rport=` with a value.
    pub rport: Option<u16>,
}

impl Via {
    /// Parses `SIP/2.0/UDP host:port;branch=…`.
    pub fn parse(value: &str) -> Option<Via> {
        let (proto, rest) = value.trim().split_once(char::is_whitespace)?;
        let mut parts = proto.split('/');
        let (Some(name), Some(version), Some(transport), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        if !name.trim().eq_ignore_ascii_case("SIP") || version.trim() != "2.0" {
            return None;
        }
        let mut it = rest.split(';');
        let (host, port) = host_port(it.next()?.trim())?;
        let mut via = Via {
            transport: transport.trim().to_ascii_uppercase(),
            host,
            port,
            branch: None,
            received: None,
            rport: None,
        };
        for p in it {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            match k.trim().to_ascii_lowercase().as_str() {
                "branch" => via.branch = Some(v.trim().to_string()),
                "received" => via.received = Some(v.trim().to_string()),
                "rport" => via.rport = v.trim().parse().ok(),
                _ => {}
            }
        }
        Some(via)
    }

    /// Where a response to this Via goes (§18.2.2, RFC 3581): `received`/`rport` when present, else sent-by.
    pub fn response_target(&self) -> (String, u16) {
        let host = self.received.clone().unwrap_or_else(|| self.host.clone());
        (host, self.rport.or(self.port).unwrap_or(5060))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &str = "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
        v: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds, SIP/2.0/TCP proxy.example.com:5070;branch=z9hG4bKa\r\n\
        Max-Forwards: 70\r\n\
        t: Bob <sip:bob@biloxi.example.com>\r\n\
        f: \"Alice, A.\" <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
        i: a84b4c76e66710@pc33.atlanta.example.com\r\n\
        CSeq: 314159 INVITE\r\n\
        m: <sip:alice@pc33.atlanta.example.com>\r\n\
        Subject: a folded\r\n  subject line\r\n\
        c: application/sdp\r\n\
        l: 4\r\n\r\nv=0\r\nEXTRA";

    #[test]
    fn compact_forms_folding_and_multiple_vias() {
        let m = Message::parse(INVITE.as_bytes()).unwrap();
        assert_eq!(m.method(), "INVITE");
        assert_eq!(m.headers_named("Via").count(), 2);
        let via = m.top_via().unwrap();
        assert_eq!((via.transport.as_str(), via.host.as_str()), ("UDP", "pc33.atlanta.example.com"));
        assert_eq!(via.branch.as_deref(), Some("z9hG4bK776asdhds"));
        assert_eq!(m.from_tag(), Some("1928301774"));
        assert_eq!(m.header("From").map(uri_of), Some("sip:alice@atlanta.example.com"));
        assert_eq!(m.to_tag(), None);
        assert_eq!(m.cseq(), Some((314159, "INVITE".into())));
        assert_eq!(m.header("Subject"), Some("a folded subject line"));
        assert_eq!(&m.body[..], b"v=0\r");
        let again = Message::parse(&m.to_bytes()).unwrap();
        assert_eq!(again, m);
    }

    #[test]
    fn malformed_input_is_an_error_with_a_reason() {
        let missing = INVITE.replace("i: a84b4c76e66710@pc33.atlanta.example.com\r\n", "");
        let e = Message::parse(missing.as_bytes()).unwrap_err();
        assert_eq!(e.reason, "Missing Call-ID header");
        assert!(e.partial.is_none(), "no Call-ID: nothing to answer with");
        let bad_len = INVITE.replace("l: 4", "l: 400");
        let e = Message::parse(bad_len.as_bytes()).unwrap_err();
        assert!(e.reason.contains("Content-Length 400"), "{}", e.reason);
        assert!(e.partial.is_some(), "answerable with 400");
        let bad_start = INVITE.replace("INVITE sip:bob@biloxi.example.com SIP/2.0", "INVITE  SIP/2.0");
        let e = Message::parse(bad_start.as_bytes()).unwrap_err();
        assert_eq!(e.reason, "Malformed Request-Line");
        assert!(e.partial.is_some());
        let mismatch = INVITE.replace("314159 INVITE", "314159 BYE");
        assert!(Message::parse(mismatch.as_bytes()).unwrap_err().reason.contains("does not match"));
        assert_eq!(Message::parse(&vec![b'a'; MAX_MESSAGE + 1]).unwrap_err().status, 513);
        for junk in [&b""[..], b"\r\n\r\n", b"garbage", b"SIP/2.0 999 X\r\n\r\n", b"\xff\xfe\r\n\r\n"] {
            assert!(Message::parse(junk).is_err());
        }
    }

    #[test]
    fn response_copies_the_dialog_headers_and_adds_the_tag() {
        let m = Message::parse(INVITE.as_bytes()).unwrap();
        let r = m.response(180, "Ringing", Some("xyz"));
        assert_eq!(r.to_tag(), Some("xyz"));
        assert_eq!(r.headers_named("Via").count(), 2);
        assert_eq!(r.method(), "INVITE");
        let trying = m.response(100, "Trying", Some("xyz"));
        assert_eq!(trying.to_tag(), None);
    }

    #[test]
    fn stream_framing() {
        let bytes = Message::parse(INVITE.as_bytes()).unwrap().to_bytes();
        let mut two = bytes.to_vec();
        two.extend_from_slice(&bytes);
        assert_eq!(Message::frame_len(&two).unwrap(), Some(bytes.len()));
        assert_eq!(Message::frame_len(&bytes[..bytes.len() - 1]).unwrap(), None);
        assert!(Message::frame_len(b"OPTIONS sip:a SIP/2.0\r\nVia: x\r\n\r\n").is_err());
        let huge = format!("OPTIONS sip:a SIP/2.0\r\nl: {}\r\n\r\n", usize::MAX);
        assert_eq!(Message::frame_len(huge.as_bytes()).unwrap_err().status, 513, "no overflow on a hostile length");
        assert!(Message::frame_len(b"OPTIONS sip:a SIP/2.0\r\nl: 1\r\nl: 2\r\n\r\nab").is_err());
    }

    #[test]
    fn uris_and_params() {
        assert_eq!(uri_host_port("sip:bob@127.0.0.1:5070;transport=udp"), Some(("127.0.0.1".into(), Some(5070))));
        assert_eq!(uri_host_port("sip:example.com"), Some(("example.com".into(), None)));
        assert_eq!(uri_host_port("sip:[::1]:5060"), Some(("::1".into(), Some(5060))));
        assert_eq!(uri_param("sip:p.example.com;lr", "lr"), Some(""));
        assert_eq!(split_list("<sip:a;lr>, \"x,y\" <sip:b>"), vec!["<sip:a;lr>", "\"x,y\" <sip:b>"]);
        let via = Via::parse("SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bKx;received=1.2.3.4;rport=999").unwrap();
        assert_eq!(via.response_target(), ("1.2.3.4".into(), 999));
    }
}
