//! The realm-based routing table (RFC 6733 §2.7): Destination-Realm and Application-Id to peers, by priority
//! then weight.

use crate::codec::AppId;

/// An index into the router's peer list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub usize);

/// One route: requests for `realm` (and `application`, when set) may go to `peer`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Destination-Realm, compared case-insensitively; `*` matches any realm (a default route).
    pub realm: String,
    /// The application, or every application.
    pub application: Option<AppId>,
    /// The next hop.
    pub peer: PeerId,
    /// Lower is preferred; peers of the next priority are used only when none of this one is available.
    pub priority: u32,
    /// Share of traffic among available peers of the same priority.
    pub weight: u32,
}

/// The routes, with the smooth weighted round-robin state per route.
#[derive(Clone, Debug, Default)]
pub struct RealmTable {
    routes: Vec<Route>,
    /// Current credit per route for smooth weighted round-robin (nginx's algorithm: deterministic and even).
    credit: Vec<i64>,
}

impl RealmTable {
    /// A table of these routes.
    pub fn new(routes: Vec<Route>) -> RealmTable {
        let credit = vec![0; routes.len()];
        RealmTable { routes, credit }
    }

    /// Whether any route names this realm (not counting `*`): the difference between 3003 and 3002.
    pub fn knows_realm(&self, realm: &str) -> bool {
        self.routes.iter().any(|r| r.realm.eq_ignore_ascii_case(realm))
    }

    /// Every peer a request for (realm, app) could go to, best first, ignoring availability.
    pub fn candidates(&self, realm: &str, app: AppId) -> Vec<PeerId> {
        let mut v: Vec<&Route> = self.matching(realm, app).collect();
        v.sort_by_key(|r| r.priority);
        let mut out: Vec<PeerId> = Vec::new();
        for r in v {
            if !out.contains(&r.peer) {
                out.push(r.peer);
            }
        }
        out
    }

    fn matching<'a>(&'a self, realm: &'a str, app: AppId) -> impl Iterator<Item = &'a Route> + 'a {
        let exact = self.knows_realm(realm);
        self.routes.iter().filter(move |r| {
            let realm_ok = if exact { r.realm.eq_ignore_ascii_case(realm) } else { r.realm == "*" };
            realm_ok && r.application.is_none_or(|a| a == app)
        })
    }

    /// Picks the next hop for (realm, app) among peers for which `usable` holds: the best priority with a usable
    /// peer, then by weight.
    pub fn select(&mut self, realm: &str, app: AppId, usable: impl Fn(PeerId) -> bool) -> Option<PeerId> {
        let exact = self.knows_realm(realm);
        let eligible: Vec<usize> = (0..self.routes.len())
            .filter(|&i| {
                let r = &self.routes[i];
                let realm_ok = if exact { r.realm.eq_ignore_ascii_case(realm) } else { r.realm == "*" };
                realm_ok && r.application.is_none_or(|a| a == app) && usable(r.peer)
            })
            .collect();
        let best = eligible.iter().map(|&i| self.routes[i].priority).min()?;
        let group: Vec<usize> = eligible.into_iter().filter(|&i| self.routes[i].priority == best).collect();
        let total: i64 = group.iter().map(|&i| i64::from(self.routes[i].weight.max(1))).sum();
        let mut chosen = group[0];
        for &i in &group {
            self.credit[i] += i64::from(self.routes[i].weight.max(1));
            if self.credit[i] > self.credit[chosen] {
                chosen = i;
            }
        }
        self.credit[chosen] -= total;
        Some(self.routes[chosen].peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(realm: &str, peer: usize, priority: u32, weight: u32) -> Route {
        Route { realm: realm.into(), application: None, peer: PeerId(peer), priority, weight }
    }

    #[test]
    fn priority_then_weight() {
        let mut t = RealmTable::new(vec![
            route("ocs.example.net", 0, 1, 3),
            route("ocs.example.net", 1, 1, 1),
            route("ocs.example.net", 2, 2, 1),
        ]);
        let picks: Vec<usize> =
            (0..8).map(|_| t.select("OCS.example.net", AppId::CREDIT_CONTROL, |_| true).unwrap().0).collect();
        assert_eq!(picks.iter().filter(|&&p| p == 0).count(), 6);
        assert_eq!(picks.iter().filter(|&&p| p == 1).count(), 2);
        // Peer 0 and 1 down: the backup of priority 2.
        assert_eq!(t.select("ocs.example.net", AppId::CREDIT_CONTROL, |p| p.0 == 2), Some(PeerId(2)));
        assert_eq!(t.select("ocs.example.net", AppId::CREDIT_CONTROL, |_| false), None);
        assert_eq!(t.candidates("ocs.example.net", AppId::CREDIT_CONTROL), vec![PeerId(0), PeerId(1), PeerId(2)]);
    }

    #[test]
    fn applications_and_default_route() {
        let mut t = RealmTable::new(vec![
            Route { realm: "x.net".into(), application: Some(AppId::GX), peer: PeerId(0), priority: 1, weight: 1 },
            route("*", 1, 1, 1),
        ]);
        assert_eq!(t.select("x.net", AppId::GX, |_| true), Some(PeerId(0)));
        assert_eq!(t.select("x.net", AppId::CREDIT_CONTROL, |_| true), None, "a known realm does not fall back to *");
        assert_eq!(t.select("y.net", AppId::CREDIT_CONTROL, |_| true), Some(PeerId(1)));
        assert!(t.knows_realm("X.NET") && !t.knows_realm("y.net"));
    }
}
