//! Network partitions between real processes, each in a Linux network namespace of its own, joined by veth pairs to
//! a bridge the scenario makes (iproute2; needs root). A partition is a route, in both namespaces, to a gateway that
//! does not exist: packets are dropped silently, as in a real partition, with no error for either side to notice
//! but silence. The test process, in the host namespace, keeps reaching every process over the bridge.
//!
//! The store is the SQLite file on the host, which no network partition separates a node from: leases keep being
//! renewed, so a partition costs reachability, never ownership. A node cut off from the store (its lease
//! expiring while it lives) is `failover-stale-owner-fenced`, which stalls it with SIGSTOP: that is what such a
//! partition looks like from the store.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use super::cc::{ensure, numbering, requests};
use crate::harness::{Node, Ocs, Place, wait_for};
use crate::{Ctx, SKIPPED, StoreKind, Subject};

/// The namespaces, the bridge and the veths of one scenario; all removed when dropped.
struct Net {
    tag: String,
    subnet: u8,
    names: Vec<String>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Net {
    /// A namespace per name, `10.201.<s>.<i+1>` each, on a bridge at `.254` in the host namespace.
    fn up(names: &[&str]) -> Result<Net, String> {
        // Names unique per scenario of this run (interface names: 15 characters at most).
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id() % 10_000;
        let net = Net {
            tag: format!("cr{pid}{n}"),
            subnet: ((pid * 7 + n) % 250) as u8,
            names: names.iter().map(|n| n.to_string()).collect(),
        };
        net.down(); // what a killed earlier run with this pid left
        let bridge = net.bridge();
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}/24", net.addr(253)), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        for (i, name) in names.iter().enumerate() {
            let (ns, host_end, ns_end) = (net.ns(name), format!("{}h{i}", net.tag), format!("{}n{i}", net.tag));
            ip(&["netns", "add", &ns])?;
            ip(&["link", "add", &host_end, "type", "veth", "peer", "name", &ns_end])?;
            ip(&["link", "set", &ns_end, "netns", &ns])?;
            ip(&["link", "set", &host_end, "master", &bridge])?;
            ip(&["link", "set", &host_end, "up"])?;
            let addr = format!("{}/24", net.addr(i as u8 + 1));
            ip(&["netns", "exec", &ns, "ip", "addr", "add", &addr, "dev", &ns_end])?;
            ip(&["netns", "exec", &ns, "ip", "link", "set", &ns_end, "up"])?;
            ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    fn bridge(&self) -> String {
        format!("{}br", self.tag)
    }

    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.tag)
    }

    fn addr(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 201, self.subnet, host)
    }

    fn place(&self, name: &str) -> Place {
        let i = self.names.iter().position(|n| n == name).expect("a namespace of this net");
        Place { ip: IpAddr::V4(self.addr(i as u8 + 1)), netns: Some(self.ns(name)) }
    }

    /// Cuts `a` from `b` both ways: each routes the other through a gateway nobody answers ARP for.
    fn cut(&self, a: &str, b: &str) -> Result<(), String> {
        self.route("add", a, b)?;
        self.route("add", b, a)
    }

    fn heal(&self, a: &str, b: &str) -> Result<(), String> {
        self.route("del", a, b)?;
        self.route("del", b, a)
    }

    fn route(&self, op: &str, from: &str, to: &str) -> Result<(), String> {
        let to_ip = format!("{}/32", self.place(to).ip);
        let ghost = self.addr(250).to_string();
        ip(&["netns", "exec", &self.ns(from), "ip", "route", op, &to_ip, "via", &ghost])
    }

    fn down(&self) {
        for (i, name) in self.names.iter().enumerate() {
            // Deleting the host end takes the pair away even while a process still holds the namespace.
            let _ = ip(&["link", "del", &format!("{}h{i}", self.tag)]);
            let _ = ip(&["netns", "del", &self.ns(name)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.down();
    }
}

/// The network, the simulator in its namespace, and two cluster nodes in theirs, replicating to the run's store.
fn cluster(ctx: &Ctx) -> Result<(Net, Ocs, Node, Node), String> {
    if ctx.config.subject != Subject::Exec || ctx.config.store != StoreKind::Sqlite {
        return Err(format!("{SKIPPED}needs real processes and the SQLite store"));
    }
    let net = match Net::up(&["ocs", "n1", "n2"]) {
        Ok(n) => n,
        Err(e) => return Err(format!("{SKIPPED}network namespaces need root and iproute2 ({e})")),
    };
    let ocs = Ocs::start_at(ctx.config.subject, &ctx.config.binary, &ctx.dir, "", &net.place("ocs"))?;
    let mut specs = ctx.cluster_specs(2, &ocs)?;
    let places = [net.place("n1"), net.place("n2")];
    let members: Vec<(String, SocketAddr)> =
        specs.iter().zip(&places).map(|(s, p)| (s.id.clone(), SocketAddr::new(p.ip, s.diameter_port))).collect();
    for (s, p) in specs.iter_mut().zip(&places) {
        s.place = p.clone();
        s.cluster = members.clone();
        s.tx = Duration::from_secs(2);
    }
    let n1 = ctx.node(&specs[0])?;
    let n2 = ctx.node(&specs[1])?;
    Ok((net, ocs, n1, n2))
}

/// The OCS peer of a node is open and available (peers are listed OCS first).
fn ocs_open(node: &Node) -> Option<()> {
    let st = node.status().ok()?;
    let p = st["peers"].as_array()?.iter().find(|p| p["identity"] == crate::harness::OCS_HOST)?.clone();
    (p["available"] == true).then_some(())
}

pub(super) fn node_cut_from_ocs(ctx: &mut Ctx) -> Result<(), String> {
    let (net, ocs, n1, n2) = cluster(ctx)?;
    let a = n1.open_ro("46700000601")?;
    let b = n2.open_ro("46700000602")?;
    net.cut("n1", "ocs")?;
    // n2's session does not notice.
    let (s, body) = n2.update(&b, 10)?;
    ensure(s == 200, "a session on the other node is unaffected", &body)?;
    // n1's request goes into the silence: Tx, then CCFH (TERMINATE here) ends that service, and says why.
    // (The simulator's CCFH is RETRY_AND_TERMINATE: the service is granted while the request is retried, and with
    // no other server to retry on, the session then ends.)
    let (s, body) = n1.update(&a, 10)?;
    ensure(
        s == 503 || (s == 200 && body["ccfh"].is_string() && body["state"] == "PendingU"),
        "Tx expiry under the partition: CCFH applies",
        &body,
    )?;
    wait_for("n1's session to end", Duration::from_secs(10), || n1.session(&a).ok().filter(|(s, _)| *s == 404))?;
    // The watchdog finds the peer gone (RFC 3539: Tw 1 s, SUSPECT, DOWN).
    wait_for("n1 to mark the OCS down", Duration::from_secs(10), || ocs_open(&n1).is_none().then_some(()))?;
    net.heal("n1", "ocs")?;
    wait_for("n1 to reopen the OCS peer", Duration::from_secs(30), || ocs_open(&n1))?;
    let c = n1.open_ro("46700000603")?;
    for (node, sid) in [(&n1, &c), (&n2, &b)] {
        let (s, body) = node.update(sid, 5)?;
        ensure(s == 200, "charging works again after the partition", &body)?;
        let (s, body) = node.terminate(sid, 1)?;
        ensure(s == 200, "and sessions end normally", &body)?;
    }
    for (sid, want) in [(&b, &[0, 1, 2, 3][..]), (&c, &[0, 1, 2][..])] {
        let fresh = numbering(&requests(&ocs, sid)?)?;
        ensure(fresh == want, "every number once, in order", &json!(fresh))?;
    }
    ocs.clean().map(drop)
}

pub(super) fn nodes_cut_from_each_other(ctx: &mut Ctx) -> Result<(), String> {
    let (net, ocs, n1, n2) = cluster(ctx)?;
    let a = n1.open_ro("46700000611")?;
    n1.update(&a, 10)?;
    net.cut("n1", "n2")?;
    // A call for n1's session reaching n2: n1 is alive (its lease is in the store), so n2 does not adopt; it
    // cannot forward either, and says so instead of charging the session a second time.
    let (s, body) = n2.update(&a, 7)?;
    ensure(s == 502, "the owner is unreachable from here: 502 with the reason, no adoption", &body)?;
    let st = n2.status()?;
    ensure(st["replication"]["adopted"] == 0, "n2 adopted nothing", &st)?;
    // The same call through the owner (as a load balancer would retry it) is charged once.
    let (s, body) = n1.update(&a, 7)?;
    ensure(s == 200 && body["node"] == "n1.charging.localdomain", "the owner carries on", &body)?;
    net.heal("n1", "n2")?;
    let (s, body) = n2.update(&a, 3)?;
    ensure(s == 200 && body["node"] == "n1.charging.localdomain", "forwarded again once healed", &body)?;
    n1.terminate(&a, 1)?;
    let seen = requests(&ocs, &a)?;
    let fresh = numbering(&seen)?;
    ensure(fresh == [0, 1, 2, 3, 4], "every number once, in order", &json!(format!("{seen:?}")))?;
    let c = ocs.clean()?;
    ensure(c["units"]["reported_used"]["time"] == 21, "every second reported once (10 + 7 + 3 + 1)", &c)
}
