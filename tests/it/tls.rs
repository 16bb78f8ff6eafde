//! TLS/TCP between two of our nodes (RFC 6733 §2.1: TLS from the first octet on a dedicated port), with
//! certificates made for the test: mutual verification succeeds, a peer signed by another CA is refused.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

use charging_ra::codec::ResultCode;
use charging_ra::node::DiameterNode;
use charging_ra::peer::DisconnectCause;
use charging_ra::transport::tls::TlsConfig;

use crate::stack::{Behaviour, ccr, client_config, open, serve, server_config, wait_for};

struct Pki {
    dir: PathBuf,
    ca_params: CertificateParams,
    ca_key: KeyPair,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Pki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, format!("{name} test CA"));
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join(format!("{name}-ca.pem")), ca.pem()).unwrap();
        Pki { dir: dir.to_path_buf(), ca_params, ca_key }
    }

    /// A certificate for `host`, signed by this CA, and the TlsConfig using it.
    fn node(&self, ca_name: &str, host: &str) -> TlsConfig {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec![host.to_string()]).unwrap();
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let (c, k) = (self.dir.join(format!("{host}.pem")), self.dir.join(format!("{host}.key")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        TlsConfig { cert: c, key: k, ca: self.dir.join(format!("{ca_name}-ca.pem")), verify_clients: true }
    }
}

/// A server answering on a TLS port with a certificate of `pki`.
async fn tls_server(pki: &Pki) -> (DiameterNode, std::net::SocketAddr) {
    let mut scfg = server_config("ocs1.ocs.localdomain");
    scfg.listen = vec![];
    scfg.listen_tls = vec!["127.0.0.1:0".parse().unwrap()];
    scfg.tls = Some(pki.node("good", "ocs1.ocs.localdomain"));
    let (server, srx) = DiameterNode::start(scfg).await.unwrap();
    serve("ocs1.ocs.localdomain", srx, Behaviour::Answer);
    let addr = server.local_tls_addrs()[0];
    (server, addr)
}

#[tokio::test]
async fn tls_nodes_verify_each_other_and_refuse_strangers() {
    let dir = crate::wire::tempdir("tls");
    let pki = Pki::new(&dir, "good");
    let rogue = Pki::new(&dir, "rogue");

    let (server, addr) = tls_server(&pki).await;

    let mut ccfg = client_config("as1.test.localdomain", &[("ocs1.ocs.localdomain", addr, 1)], Duration::from_secs(5));
    ccfg.peers[0].tls = true;
    ccfg.tls = Some(pki.node("good", "as1.test.localdomain"));
    let (client, _crx) = DiameterNode::start(ccfg).await.unwrap();
    wait_for(&client, Duration::from_secs(5), "TLS open", |s| open(s, 0)).await;
    let a = client.request(ccr("as1;tls", "as1.test.localdomain", 0), None).await.unwrap();
    assert_eq!(a.result_code(), Some(ResultCode::SUCCESS));

    // A client whose certificate another CA signed never gets past the handshake.
    let mut bad = client_config("evil.test.localdomain", &[("ocs1.ocs.localdomain", addr, 1)], Duration::from_secs(5));
    bad.peers[0].tls = true;
    let mut t = rogue.node("rogue", "evil.test.localdomain");
    t.ca = dir.join("good-ca.pem"); // it trusts the server, the server does not trust it
    bad.tls = Some(t);
    let (evil, _erx) = DiameterNode::start(bad).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let st = evil.status().await.unwrap();
    assert!(!st.peers[0].available, "{st:#?}");
    assert!(!st.peers[0].metrics.messages_in.contains_key("CEA"));
    // And a client that does not trust the server's CA refuses the server.
    let mut wary = client_config("wary.test.localdomain", &[("ocs1.ocs.localdomain", addr, 1)], Duration::from_secs(5));
    wary.peers[0].tls = true;
    let mut t = pki.node("good", "wary.test.localdomain");
    t.ca = dir.join("rogue-ca.pem");
    wary.tls = Some(t);
    let (wary, _wrx) = DiameterNode::start(wary).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!wary.status().await.unwrap().peers[0].available);

    evil.abort();
    wary.abort();
    client.stop(DisconnectCause::Rebooting).await;
    server.stop(DisconnectCause::Rebooting).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_node_configured_by_file_connects_with_tls() {
    let dir = crate::wire::tempdir("tls-config");
    let pki = Pki::new(&dir, "good");
    let (server, addr) = tls_server(&pki).await;
    pki.node("good", "as1.test.localdomain");
    // File names relative to the configuration file.
    let toml = format!(
        "[node]\nid = \"as1\"\norigin_host = \"as1.test.localdomain\"\norigin_realm = \"test.localdomain\"\n\n\
         [[peers]]\nhost = \"ocs1.ocs.localdomain\"\nrealm = \"ocs.localdomain\"\naddress = \"{addr}\"\ntls = true\n\n\
         [tls]\ncert = \"as1.test.localdomain.pem\"\nkey = \"as1.test.localdomain.key\"\nca = \"good-ca.pem\"\n"
    );
    let path = dir.join("node.toml");
    std::fs::write(&path, &toml).unwrap();
    let config = charging_ra::config::Config::load(&path).unwrap();
    let ec = config.engine_config(std::sync::Arc::new(charging_ra::dict::Dictionary::builtin()));
    let (client, _crx) = DiameterNode::start(ec.node).await.unwrap();
    wait_for(&client, Duration::from_secs(5), "TLS open from the file's [tls]", |s| open(s, 0)).await;
    // Without [tls] the file is refused, naming the section.
    std::fs::write(&path, toml.split("[tls]").next().unwrap()).unwrap();
    let err = charging_ra::config::Config::load(&path).unwrap_err().to_string();
    assert!(err.contains("tls") && err.contains("[tls]"), "{err}");
    client.stop(DisconnectCause::Rebooting).await;
    server.stop(DisconnectCause::Rebooting).await;
    let _ = std::fs::remove_dir_all(&dir);
}
