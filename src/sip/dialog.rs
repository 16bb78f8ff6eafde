//! Dialogs (RFC 3261 §12): the state one side keeps, in explicit fields, so that a dialog can be written to the
//! store and carried on by another node (the adopter does not replay raw headers).

use serde::{Deserialize, Serialize};

use super::message::{Message, uri_of, uri_param};
use super::transaction::Transport;

/// One dialog, as this node (one leg of the B2BUA) sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dialog {
    /// Call-ID.
    pub call_id: String,
    /// This side's tag.
    pub local_tag: String,
    /// The other side's tag (empty until the dialog exists).
    pub remote_tag: String,
    /// This side's URI, as a name-addr without tag (the From of requests this side sends).
    pub local_uri: String,
    /// The other side's URI (the To of requests this side sends).
    pub remote_uri: String,
    /// The CSeq of the last request this side sent.
    pub local_cseq: u32,
    /// The CSeq of the last request the other side sent (0: none yet; §12.2.2).
    pub remote_cseq: u32,
    /// Where requests go: the other side's Contact (§12.1.1, refreshed by target refresh requests).
    pub remote_target: String,
    /// Route set in sending order (§12.1.1: the Record-Route of the request; of the 2xx, reversed).
    pub route_set: Vec<String>,
    /// This side's Contact.
    pub local_contact: String,
    /// The transport toward the other side.
    pub transport: Transport,
    /// Confirmed (a 2xx was exchanged) rather than early.
    pub confirmed: bool,
}

impl Dialog {
    /// The UAS side of a dialog created by `request` (§12.1.1), with this side's tag and Contact.
    pub fn uas(request: &Message, local_tag: &str, local_contact: &str, transport: Transport) -> Dialog {
        Dialog {
            call_id: request.call_id().to_string(),
            local_tag: local_tag.to_string(),
            remote_tag: request.from_tag().unwrap_or_default().to_string(),
            local_uri: strip_tag(request.header("To").unwrap_or_default()),
            remote_uri: strip_tag(request.header("From").unwrap_or_default()),
            local_cseq: 0,
            remote_cseq: request.cseq().map_or(0, |c| c.0),
            remote_target: request.header("Contact").map(uri_of).unwrap_or_default().to_string(),
            route_set: request.headers_named("Record-Route").map(str::to_string).collect(),
            local_contact: local_contact.to_string(),
            transport,
            confirmed: false,
        }
    }

    /// The UAC side of a dialog a request this side sends will create (the remote tag and target come with the
    /// response: [`Dialog::on_response`]).
    #[allow(clippy::too_many_arguments)]
    pub fn uac(
        call_id: &str,
        local_tag: &str,
        local_uri: &str,
        remote_uri: &str,
        remote_target: &str,
        route_set: Vec<String>,
        local_contact: &str,
        transport: Transport,
    ) -> Dialog {
        Dialog {
            call_id: call_id.into(),
            local_tag: local_tag.into(),
            remote_tag: String::new(),
            local_uri: local_uri.into(),
            remote_uri: remote_uri.into(),
            local_cseq: 0,
            remote_cseq: 0,
            remote_target: remote_target.into(),
            route_set,
            local_contact: local_contact.into(),
            transport,
            confirmed: false,
        }
    }

    /// A response to the request that creates the dialog (UAC side, §12.1.2): the remote tag, the remote target
    /// from Contact, the route set from Record-Route reversed. A 2xx confirms the dialog.
    pub fn on_response(&mut self, response: &Message) {
        if let Some(tag) = response.to_tag() {
            self.remote_tag = tag.to_string();
        }
        if let Some(c) = response.header("Contact") {
            self.remote_target = uri_of(c).to_string();
        }
        if !self.confirmed {
            let mut rr: Vec<String> = response.headers_named("Record-Route").map(str::to_string).collect();
            if !rr.is_empty() {
                rr.reverse();
                self.route_set = rr;
            }
        }
        if (200..300).contains(&response.code()) {
            self.confirmed = true;
        }
    }

    /// A target refresh (re-INVITE, UPDATE, or its 2xx) moves the remote target (§12.2.1.2, §12.2.2).
    pub fn refresh_target(&mut self, m: &Message) {
        if let Some(c) = m.header("Contact") {
            self.remote_target = uri_of(c).to_string();
        }
    }

    /// A request the other side sent within the dialog (§12.2.2): a CSeq lower than or equal to the last one is
    /// out of order (the caller answers 500); otherwise it becomes the remote CSeq. ACK and CANCEL reuse the
    /// number of the request they belong to and are not checked.
    pub fn accept_remote_cseq(&mut self, m: &Message) -> bool {
        let Some((n, method)) = m.cseq() else { return false };
        if method == "ACK" || method == "CANCEL" {
            return true;
        }
        if self.remote_cseq != 0 && n <= self.remote_cseq {
            return false;
        }
        self.remote_cseq = n;
        true
    }

    /// A request within the dialog (§12.2.1.1): Request-URI and Route from the remote target and the route set
    /// (loose or strict routing), From/To with the tags, the next CSeq (ACK takes the number it is given). The
    /// caller adds its Via.
    pub fn request(&mut self, method: &str, ack_of: Option<u32>) -> Message {
        let cseq = match (method, ack_of) {
            ("ACK", Some(n)) | ("CANCEL", Some(n)) => n,
            _ => {
                self.local_cseq += 1;
                self.local_cseq
            }
        };
        let strict = self.route_set.first().is_some_and(|r| uri_param(uri_of(r), "lr").is_none());
        let (uri, routes): (String, Vec<String>) = if strict {
            // §12.2.1.1: strict routing puts the first route in the Request-URI and the remote target last.
            let mut rest: Vec<String> = self.route_set[1..].to_vec();
            rest.push(format!("<{}>", self.remote_target));
            (uri_of(&self.route_set[0]).to_string(), rest)
        } else {
            (self.remote_target.clone(), self.route_set.clone())
        };
        let mut m = Message::request(method, &uri);
        m.push("Max-Forwards", "70");
        m.push("From", format!("{};tag={}", self.local_uri, self.local_tag));
        let to = if self.remote_tag.is_empty() {
            self.remote_uri.clone()
        } else {
            format!("{};tag={}", self.remote_uri, self.remote_tag)
        };
        m.push("To", to);
        m.push("Call-ID", self.call_id.clone());
        m.push("CSeq", format!("{cseq} {method}"));
        for r in routes {
            m.push("Route", r);
        }
        if method != "ACK" && method != "CANCEL" && method != "BYE" {
            m.push("Contact", format!("<{}>", self.local_contact));
        }
        m
    }

    /// The URI requests are sent to: the first route, or the remote target (§8.1.2).
    pub fn next_hop(&self) -> &str {
        match self.route_set.first() {
            Some(r) => uri_of(r),
            None => &self.remote_target,
        }
    }

    /// After this node adopted the dialog from a dead one: requests the dead node sent after its last write may
    /// have used CSeq numbers beyond the stored one, so the local CSeq jumps by `gap`; the remote CSeq is the
    /// larger of the stored one and the one just seen minus one (the request that caused adoption is then
    /// accepted by [`Dialog::accept_remote_cseq`]).
    pub fn adopt(&mut self, gap: u32, seen_remote: Option<u32>) {
        self.local_cseq = self.local_cseq.saturating_add(gap);
        if let Some(seen) = seen_remote {
            self.remote_cseq = self.remote_cseq.max(seen.saturating_sub(1));
        }
    }
}

/// A From/To value without its tag parameter.
pub fn strip_tag(value: &str) -> String {
    let (head, params) = match value.rfind('>') {
        Some(i) => value.split_at(i + 1),
        None => (value, ""),
    };
    if params.is_empty() && !value.contains('>') {
        // addr-spec form: parameters after the URI are header parameters (§20.10).
        return value.split(';').filter(|p| !p.trim().starts_with("tag=")).collect::<Vec<_>>().join(";");
    }
    let kept: String =
        params.split(';').filter(|p| !p.is_empty() && !p.trim().starts_with("tag=")).map(|p| format!(";{p}")).collect();
    format!("{head}{kept}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invite() -> Message {
        Message::parse(
            b"INVITE sip:b2bua@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKa\r\n\
              From: \"A\" <sip:alice@a.example>;tag=aaa\r\nTo: <sip:bob@b.example>\r\nCall-ID: call-1\r\n\
              CSeq: 10 INVITE\r\nContact: <sip:alice@127.0.0.1:5061>\r\n\
              Record-Route: <sip:p1.example;lr>, <sip:p2.example;lr>\r\nMax-Forwards: 70\r\n\r\n",
        )
        .unwrap()
    }

    #[test]
    fn uas_dialog_from_an_invite() {
        let mut d = Dialog::uas(&invite(), "bbb", "sip:node1@127.0.0.1:5060", Transport::Udp);
        assert_eq!(d.remote_tag, "aaa");
        assert_eq!(d.remote_uri, "\"A\" <sip:alice@a.example>");
        assert_eq!(d.remote_target, "sip:alice@127.0.0.1:5061");
        assert_eq!(d.route_set, vec!["<sip:p1.example;lr>", "<sip:p2.example;lr>"]);
        assert_eq!(d.next_hop(), "sip:p1.example;lr");
        let bye = d.request("BYE", None);
        assert_eq!(bye.uri(), "sip:alice@127.0.0.1:5061");
        assert_eq!(bye.cseq(), Some((1, "BYE".into())));
        assert_eq!(bye.to_tag(), Some("aaa"));
        assert_eq!(bye.from_tag(), Some("bbb"));
        assert_eq!(bye.headers_named("Route").count(), 2);
    }

    #[test]
    fn remote_cseq_must_grow_and_adoption_leaves_a_gap() {
        let mut d = Dialog::uas(&invite(), "bbb", "sip:n@h", Transport::Udp);
        let mut req = invite();
        req.set("CSeq", "10 BYE");
        assert!(!d.accept_remote_cseq(&req), "equal CSeq is out of order");
        req.set("CSeq", "11 BYE");
        assert!(d.accept_remote_cseq(&req));
        d.local_cseq = 5;
        d.adopt(100, Some(20));
        assert_eq!(d.local_cseq, 105);
        req.set("CSeq", "20 BYE");
        assert!(d.accept_remote_cseq(&req), "the request that caused adoption is accepted");
    }

    #[test]
    fn strict_route_goes_in_the_request_uri() {
        let mut d = Dialog::uas(&invite(), "bbb", "sip:n@h", Transport::Udp);
        d.route_set = vec!["<sip:strict.example>".into()];
        let r = d.request("INFO", None);
        assert_eq!(r.uri(), "sip:strict.example");
        assert_eq!(r.header("Route"), Some("<sip:alice@127.0.0.1:5061>"));
    }

    #[test]
    fn tags_are_stripped() {
        assert_eq!(strip_tag("<sip:a@x>;tag=1;foo=2"), "<sip:a@x>;foo=2");
        assert_eq!(strip_tag("sip:a@x;tag=1"), "sip:a@x");
    }
}
