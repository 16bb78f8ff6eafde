//! A charging service embedding charging-ra: it starts an OCS simulator in the same process (so the example runs
//! anywhere), opens a Ro session for a voice call, reports usage as the call goes on, reacts to the network's
//! events, and terminates the session when the call ends.
//!
//! `cargo run --example embedded_service`

use std::time::Duration;

use charging_ra::api::{App, AppSettings, Engine, EngineConfig, RatingGroupRequest, Subscriber, UsedUnits};
use charging_ra::codec::{AppId, VendorId};
use charging_ra::node::{NodeConfig, PeerEndpoint};
use charging_ra::ocs::server::{OcsServer, OcsServerConfig};
use charging_ra::peer::{Application, LocalIdentity, PeerConfig};
use charging_ra::router::{PeerId, Route, RouterConfig};
use charging_ra::units::Units;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The OCS: our simulator on an ephemeral port.
    let ocs = OcsServer::start(OcsServerConfig::new("127.0.0.1:0".parse()?, "ocs.example.net", "example.net")).await?;

    // Our node: identity, one peer, the OCS realm routed to it.
    let mut local = LocalIdentity::charging_client("as1.example.net", "example.net", 0);
    local.applications =
        vec![Application::Auth(AppId::CREDIT_CONTROL), Application::VendorAuth(VendorId::TGPP, AppId::GX)];
    let routes =
        vec![Route { realm: "example.net".into(), application: None, peer: PeerId(0), priority: 1, weight: 1 }];
    let peer = PeerConfig::new(local.clone(), Some("ocs.example.net".into()), true);
    let node = NodeConfig::new(
        RouterConfig::new(local, routes),
        vec![PeerEndpoint { config: peer, address: Some(ocs.diameter_addr()), tls: false, server_name: None }],
    );
    let engine =
        Engine::start(EngineConfig::new(node, AppSettings::new("example.net"), AppSettings::new("example.net")))
            .await?;
    while !engine.node_status().await.is_some_and(|s| s.peers[0].available) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // What the network tells us (re-auth, abort, final units…) arrives on a stream.
    let mut events = engine.events().await?;
    tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            println!("network event for {}: {:?}", e.session_id, e.event);
        }
    });

    // The call is answered: CCR-I for rating group 100 (voice).
    let subscriber = Some(Subscriber { kind: "msisdn".into(), data: "46701234567".into() });
    let voice = RatingGroupRequest {
        rating_group: 100,
        service_id: None,
        requested: Units { time: Some(60), ..Units::default() },
    };
    let open = engine.open_session(App::Ro, subscriber, Some("32260@3gpp.org".into()), vec![voice]).await?;
    println!("session {} open: {:?}", open.session_id, open.granted);

    // Every minute the quota is used up: report it and get the next one (CCR-U).
    for minute in 1..=3 {
        let used = UsedUnits {
            rating_group: 100,
            used: Units { time: Some(60), ..Units::default() },
            reporting_reason: Some(3),
        };
        let o = engine.update(&open.session_id, vec![used], vec![], Some(format!("minute-{minute}"))).await?;
        println!("minute {minute}: granted {:?}", o.granted.first().map(|g| g.granted));
    }

    // The caller hangs up after 25 more seconds: CCR-T with the final usage.
    let last =
        UsedUnits { rating_group: 100, used: Units { time: Some(25), ..Units::default() }, reporting_reason: Some(2) };
    let end = engine.terminate(&open.session_id, vec![last]).await?;
    println!("session ended: Result-Code {:?}", end.result_code);

    engine.stop().await;
    let check = ocs.stop().await;
    println!(
        "OCS ledger clean: {} ({} session opened, {} terminated)",
        check.clean, check.sessions.opened, check.sessions.terminated
    );
    Ok(())
}
