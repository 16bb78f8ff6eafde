//! SIP over UDP and TCP on one port (RFC 3261 §18): datagrams in and out of one socket; TCP connections accepted
//! or opened on demand, framed by Content-Length, and reused for every message to the same address.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

use crate::sip::message::{MAX_MESSAGE, Message};
use crate::sip::transaction::{Dest, Transport};

/// A message off the wire, or a stream that broke its framing.
#[derive(Debug)]
pub struct Packet {
    /// The bytes of one message.
    pub data: Bytes,
    /// Where it came from.
    pub src: Dest,
}

type Writers = Arc<Mutex<HashMap<SocketAddr, mpsc::UnboundedSender<Bytes>>>>;

/// A UDP socket with 4 MiB buffers (as far as `net.core.rmem_max` allows): a burst of responses to hundreds of
/// INVITEs must not overflow the default 208 KiB and be dropped, costing a retransmission round.
fn udp_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

/// UDP and TCP on one port. With port 0 the kernel picks the UDP port, and that port may be taken for TCP (by any
/// connection's ephemeral end): then another UDP port is tried, a few times, rather than failing the node.
async fn bind_pair(addr: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let attempts = if addr.port() == 0 { 16 } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        let udp = udp_socket(addr)?;
        match TcpListener::bind(udp.local_addr()?).await {
            Ok(l) => return Ok((udp, l)),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrInUse)))
}

/// The sockets of one SIP node.
#[derive(Clone)]
pub struct SipTransport {
    udp: Arc<UdpSocket>,
    tcp: Writers,
    inbound: mpsc::Sender<Packet>,
    local: SocketAddr,
}

impl SipTransport {
    /// Binds UDP and TCP on `addr` (TCP on the port UDP got, when `addr` asks for port 0); messages received go to
    /// `inbound`.
    pub async fn bind(addr: SocketAddr, inbound: mpsc::Sender<Packet>) -> io::Result<SipTransport> {
        let (udp, listener) = bind_pair(addr).await?;
        let local = udp.local_addr()?;
        let t = SipTransport { udp: Arc::new(udp), tcp: Arc::default(), inbound, local };
        let reader = t.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_MESSAGE];
            loop {
                match reader.udp.recv_from(&mut buf).await {
                    Ok((n, from)) => {
                        let p = Packet {
                            data: Bytes::copy_from_slice(&buf[..n]),
                            src: Dest { transport: Transport::Udp, addr: from },
                        };
                        if reader.inbound.send(p).await.is_err() {
                            return;
                        }
                    }
                    // ICMP port unreachable from an earlier send shows up here on Linux: not fatal.
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "SIP UDP receive failed");
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                }
            }
        });
        let acceptor = t.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, peer)) => acceptor.adopt_stream(stream, peer),
                    Err(e) => {
                        tracing::warn!(error = %e, "SIP TCP accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                }
            }
        });
        Ok(t)
    }

    /// The bound address (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Sends one message. UDP is fire-and-forget (the transaction layer retransmits); TCP reuses the connection
    /// to `dest` or opens one.
    pub fn send(&self, bytes: Bytes, dest: Dest) {
        match dest.transport {
            Transport::Udp => {
                if let Err(e) = self.udp.try_send_to(&bytes, dest.addr) {
                    tracing::debug!(to = %dest.addr, error = %e, "SIP UDP send failed");
                }
            }
            Transport::Tcp => {
                let mut map = self.tcp.lock().expect("writers lock");
                if let Some(w) = map.get(&dest.addr)
                    && w.send(bytes.clone()).is_ok()
                {
                    return;
                }
                let (tx, rx) = mpsc::unbounded_channel();
                let _ = tx.send(bytes);
                map.insert(dest.addr, tx);
                drop(map);
                let me = self.clone();
                tokio::spawn(async move {
                    match TcpStream::connect(dest.addr).await {
                        Ok(stream) => me.run_stream(stream, dest.addr, rx),
                        Err(e) => {
                            tracing::info!(to = %dest.addr, error = %e, "SIP TCP connect failed");
                            me.tcp.lock().expect("writers lock").remove(&dest.addr);
                        }
                    }
                });
            }
        }
    }

    fn adopt_stream(&self, stream: TcpStream, peer: SocketAddr) {
        let (tx, rx) = mpsc::unbounded_channel();
        self.tcp.lock().expect("writers lock").insert(peer, tx);
        self.run_stream(stream, peer, rx);
    }

    fn run_stream(&self, stream: TcpStream, peer: SocketAddr, mut rx: mpsc::UnboundedReceiver<Bytes>) {
        let _ = stream.set_nodelay(true);
        let (mut r, mut w) = stream.into_split();
        tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                if w.write_all(&b).await.is_err() {
                    return;
                }
            }
        });
        let me = self.clone();
        tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(8192);
            'read: loop {
                match r.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                loop {
                    match Message::frame_len(&buf) {
                        Ok(Some(n)) => {
                            let data = buf.split_to(n).freeze();
                            let p = Packet { data, src: Dest { transport: Transport::Tcp, addr: peer } };
                            if me.inbound.send(p).await.is_err() {
                                break 'read;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            // §18.3: a stream whose framing is lost cannot be resynchronised: close it.
                            tracing::info!(peer = %peer, error = %e, "SIP TCP framing error; closing");
                            break 'read;
                        }
                    }
                }
            }
            me.tcp.lock().expect("writers lock").remove(&peer);
        });
    }
}
