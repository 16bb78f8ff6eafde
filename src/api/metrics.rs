//! Prometheus text exposition (format 0.0.4) of a node: Diameter peers, credit-control sessions, replication and the
//! SIP B2BUA, served at `GET /metrics` on the HTTP front. Names follow the Prometheus conventions: a
//! `charging_ra_` prefix, `_total` on counters, base units, labels for the dimensions.

use std::fmt::Write as _;

use super::Engine;
use crate::b2bua::B2bua;

/// Writes one metric family: its HELP and TYPE lines, then its samples (labels already rendered).
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: impl IntoIterator<Item = (String, u64)>) {
    let _ = writeln!(out, "# HELP charging_ra_{name} {help}");
    let _ = writeln!(out, "# TYPE charging_ra_{name} {kind}");
    for (labels, v) in samples {
        let _ = writeln!(out, "charging_ra_{name}{labels} {v}");
    }
}

/// Writes metrics without labels, one family each: (name, help, value).
fn unlabelled(out: &mut String, kind: &str, metrics: &[(&str, &str, u64)]) {
    for &(name, help, v) in metrics {
        family(out, name, kind, help, [(String::new(), v)]);
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The node's metrics now.
pub async fn render(engine: &Engine, sip: Option<&B2bua>) -> String {
    let mut out = String::with_capacity(4096);
    let status = engine.node_status().await;
    let peers = status.as_ref().map(|s| s.peers.as_slice()).unwrap_or_default();
    let name = |i: usize, p: &crate::node::PeerStatus| esc(p.identity.as_deref().unwrap_or(&format!("peer{i}")));
    family(
        &mut out,
        "peer_up",
        "gauge",
        "Whether the Diameter peer is open and available for requests (1) or not (0).",
        peers.iter().enumerate().map(|(i, p)| (format!("{{peer=\"{}\"}}", name(i, p)), u64::from(p.available))),
    );
    // States as one series per state, 1 for the current one: a state change moves a 1, it starts no new series.
    let one_hot = |now: fn(&crate::node::PeerStatus) -> &'static str, all: &[&'static str]| {
        let mut v = Vec::new();
        for (i, p) in peers.iter().enumerate() {
            for s in all {
                v.push((format!("{{peer=\"{}\",state=\"{s}\"}}", name(i, p)), u64::from(now(p) == *s)));
            }
        }
        v
    };
    family(
        &mut out,
        "diameter_peer_state",
        "gauge",
        "The peer's RFC 6733 §5.6 state: 1 for the current one.",
        one_hot(|p| crate::peer::state_name(p.state), crate::peer::STATE_NAMES),
    );
    family(
        &mut out,
        "diameter_peer_watchdog",
        "gauge",
        "The peer's RFC 3539 watchdog state (okay, suspect, reopen; down when not open): 1 for the current one.",
        one_hot(|p| crate::peer::watchdog_name(p.state, p.watchdog), crate::peer::WATCHDOG_NAMES),
    );
    let pending = peers.iter().enumerate().map(|(i, p)| (format!("{{peer=\"{}\"}}", name(i, p)), p.pending as u64));
    family(
        &mut out,
        "diameter_peer_pending_requests",
        "gauge",
        "Requests sent to the peer awaiting their answer.",
        pending,
    );
    let mut msgs = Vec::new();
    let mut answers = Vec::new();
    for (i, p) in peers.iter().enumerate() {
        for (cmd, n) in &p.metrics.messages_in {
            msgs.push((format!("{{peer=\"{}\",direction=\"in\",command=\"{}\"}}", name(i, p), esc(cmd)), *n));
        }
        for (cmd, n) in &p.metrics.messages_out {
            msgs.push((format!("{{peer=\"{}\",direction=\"out\",command=\"{}\"}}", name(i, p), esc(cmd)), *n));
        }
        for (rc, n) in &p.metrics.answers_in {
            answers.push((format!("{{peer=\"{}\",result_code=\"{rc}\"}}", name(i, p)), *n));
        }
    }
    family(&mut out, "diameter_messages_total", "counter", "Diameter messages by peer, direction and command.", msgs);
    family(&mut out, "diameter_answers_total", "counter", "Answers received, by peer and Result-Code.", answers);
    // Per-peer counters, one family each: (name, help, the counter).
    type PeerCounter = (&'static str, &'static str, fn(&crate::router::PeerMetrics) -> u64);
    let per_peer: [PeerCounter; 4] = [
        ("diameter_failovers_total", "Requests moved off a peer to another (RFC 6733 §5.5.4, T flag).", |m| {
            m.failovers
        }),
        (
            "diameter_protocol_errors_answered_total",
            "Protocol errors answered to a peer (3xxx/5xxx with Failed-AVP).",
            |m| m.errors_answered,
        ),
        (
            "diameter_too_busy_answered_total",
            "Requests answered 3004 (DIAMETER_TOO_BUSY) because max_incoming requests were in flight.",
            |m| m.too_busy,
        ),
        ("diameter_answers_unmatched_total", "Answers matching no pending request, discarded (RFC 6733 §6.2).", |m| {
            m.answers_unmatched
        }),
    ];
    for (metric, help, value) in per_peer {
        let samples =
            peers.iter().enumerate().map(|(i, p)| (format!("{{peer=\"{}\"}}", name(i, p)), value(&p.metrics)));
        family(&mut out, metric, "counter", help, samples);
    }
    let node = |f: fn(&crate::node::NodeStatus) -> u64| status.as_ref().map_or(0, f);
    unlabelled(
        &mut out,
        "gauge",
        &[
            ("diameter_pending_requests", "Requests waiting for their answer.", node(|s| s.pending as u64)),
            (
                "diameter_incoming_in_flight",
                "Requests from peers being processed; at max_incoming new ones are answered 3004.",
                node(|s| s.in_flight as u64),
            ),
        ],
    );
    unlabelled(
        &mut out,
        "counter",
        &[(
            "diameter_connections_refused_total",
            "Accepted connections closed before a peer was identified: not Diameter, no CER first, unknown peer.",
            node(|s| s.connections_refused),
        )],
    );
    let counts = engine.session_counts().await;
    family(
        &mut out,
        "sessions",
        "gauge",
        "Credit-control sessions held by this node, by application and RFC 4006 state.",
        counts.iter().map(|c| (format!("{{app=\"{}\",state=\"{}\"}}", c.app, esc(&c.state)), c.sessions)),
    );
    let refused = engine.sessions_refused();
    unlabelled(
        &mut out,
        "counter",
        &[
            ("sessions_refused_total", "New sessions refused because the node held max_sessions.", refused),
            (
                "diameter_requests_proxied_total",
                "RAR/ASR for a session another live node owns, proxied to it.",
                engine.requests_proxied(),
            ),
            (
                "http_calls_forwarded_total",
                "HTTP calls for a session another live node owns, forwarded to it.",
                engine.calls_forwarded(),
            ),
        ],
    );
    if let Some(r) = engine.replication_stats().await {
        let gauges = [
            ("replication_sessions", "Sessions held here that are replicated.", r.replicated),
            ("replication_backlog", "Sessions waiting to be written to the store.", r.backlog),
            ("store_up", "Whether the store can be written now (1) or not (0).", u64::from(!r.store_down)),
        ];
        unlabelled(&mut out, "gauge", &gauges);
        let counters = [
            ("store_batches_total", "Group commits written to the store.", r.batches),
            ("store_writes_total", "Records written to the store.", r.writes),
            ("store_errors_total", "Store operations that failed.", r.store_errors),
            (
                "store_slow_batches_total",
                "Group commits unanswered after write_ahead_wait: their requests were sent without waiting.",
                r.slow_batches,
            ),
            ("sessions_fenced_total", "Sessions dropped because another node adopted them (fencing).", r.fenced),
            ("sessions_adopted_total", "Sessions adopted from a dead node.", r.adopted),
            ("sessions_loaded_total", "Sessions loaded from the store (adopted or owned).", r.loaded),
            ("replication_refused_total", "Sessions not replicated (convergence name taken, backlog full).", r.refused),
        ];
        unlabelled(&mut out, "counter", &counters);
        // A summary without quantiles: rate(sum) / rate(count) is the mean group-commit latency.
        let _ = writeln!(
            out,
            "# HELP charging_ra_store_batch_seconds Time from handing a group commit to the store to its answer."
        );
        let _ = writeln!(out, "# TYPE charging_ra_store_batch_seconds summary");
        let _ = writeln!(out, "charging_ra_store_batch_seconds_sum {:.6}", r.batch_time_us as f64 / 1e6);
        let _ = writeln!(out, "charging_ra_store_batch_seconds_count {}", r.batches_done);
        let _ = writeln!(
            out,
            "# HELP charging_ra_store_batch_max_seconds The longest group commit since the node started."
        );
        let _ = writeln!(out, "# TYPE charging_ra_store_batch_max_seconds gauge");
        let _ = writeln!(out, "charging_ra_store_batch_max_seconds {:.6}", r.batch_time_max_us as f64 / 1e6);
    }
    if let Some(b) = sip
        && let Some(s) = b.stats().await
    {
        unlabelled(&mut out, "gauge", &[("sip_calls_active", "SIP calls open now.", s.active)]);
        let counters = [
            ("sip_calls_total", "SIP calls set up (INVITE received).", s.calls),
            ("sip_calls_answered_total", "SIP calls answered (confirmed).", s.answered),
            ("sip_calls_ended_total", "SIP calls ended by BYE.", s.ended),
            ("sip_calls_failed_total", "SIP calls refused or failed before the answer.", s.failed),
            ("sip_calls_adopted_total", "SIP calls adopted from a dead node.", s.adopted),
            ("sip_requests_forwarded_total", "Mid-dialog requests forwarded to the live owner.", s.forwarded),
            ("sip_calls_fenced_total", "SIP calls dropped because another node adopted them.", s.fenced),
            ("sip_calls_replicated_total", "SIP calls written to the store once confirmed.", s.replicated),
            ("sip_store_batches_total", "Store batches written for SIP calls.", s.store_writes),
            ("sip_malformed_total", "SIP messages that could not be parsed.", s.malformed),
            (
                "sip_failures_unacknowledged_total",
                "Non-2xx final responses to an INVITE whose ACK never came (Timer H).",
                s.unacknowledged_failures,
            ),
        ];
        unlabelled(&mut out, "counter", &counters);
    }
    out
}
