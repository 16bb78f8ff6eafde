//! The independent wire judge: tshark (Wireshark's dissector) capturing loopback traffic on given ports and
//! reading it back as Diameter. Used by the integration tests and the conformance suite; an operator can use it
//! the same way against a lab. Every function returns `None` or an error when tshark is not installed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether tshark is on the PATH.
pub fn available() -> bool {
    Command::new("tshark")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The Errors and Warns lines of `tshark -z expert`, without the ones that are not about our bytes ("Unknown AVP":
/// tshark's dictionary lacks some 3GPP AVPs; "Data is empty": empty OctetStrings are legal).
pub fn unexpected_expert_lines(expert: &str) -> Vec<String> {
    let mut section = "";
    let mut out = Vec::new();
    for line in expert.lines() {
        let t = line.trim();
        if let Some(name) = ["Errors", "Warns", "Notes", "Chats", "Comments"].iter().find(|n| t.starts_with(*n)) {
            section = name;
            continue;
        }
        if !matches!(section, "Errors" | "Warns") || t.is_empty() || t.starts_with('=') || t.starts_with("Frequency") {
            continue;
        }
        if t.contains("Unknown AVP") || t.contains("Data is empty") {
            continue;
        }
        out.push(t.to_string());
    }
    out
}

/// A tshark capture on the loopback for some ports, decoded as Diameter when finished.
pub struct Capture {
    child: Child,
    pcap: PathBuf,
    ports: Vec<u16>,
}

/// What a finished capture held.
#[derive(Clone, Debug)]
pub struct Verdict {
    /// tshark's expert findings about our bytes (empty: every frame decoded clean).
    pub problems: Vec<String>,
    /// Diameter messages decoded.
    pub diameter_frames: usize,
}

impl Capture {
    /// Starts capturing traffic on `ports` into `dir/capture.pcap`; returns once the capture is live (proved by a
    /// probe connection of its own), or `Err` when tshark is missing or never captures.
    pub fn start(dir: &Path, ports: &[u16]) -> Result<Capture, String> {
        if !available() {
            return Err("tshark is not installed".into());
        }
        let pcap = dir.join("capture.pcap");
        // A listener of our own whose connections prove the capture is live: tshark writes the file's header when
        // it starts, but under load it may capture nothing for seconds after that. Its port is captured too, but
        // it carries no payload and no reset, so it adds nothing to tshark's expert findings.
        let probe = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let probe_port = probe.local_addr().map_err(|e| e.to_string())?.port();
        let filter =
            ports.iter().chain([&probe_port]).map(|p| format!("tcp port {p}")).collect::<Vec<_>>().join(" or ");
        let child = Command::new("tshark")
            .args(["-i", "lo", "-q", "-w"])
            .arg(&pcap)
            .args(["-f", &filter])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting tshark: {e}"))?;
        let mut capture = Capture { child, pcap, ports: ports.to_vec() };
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        let end = Instant::now() + Duration::from_secs(60);
        while size(&capture.pcap) == 0 {
            if Instant::now() > end {
                capture.stop();
                return Err("tshark never wrote its capture file".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let header = size(&capture.pcap);
        // dumpcap flushes the file on its own timer: probe until a probe's frames show up in it.
        while size(&capture.pcap) == header {
            if Instant::now() > end {
                capture.stop();
                return Err("tshark never captured on lo".into());
            }
            if let Ok(c) = std::net::TcpStream::connect(("127.0.0.1", probe_port)) {
                let accepted = probe.accept();
                drop(c);
                drop(accepted);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(capture)
    }

    fn stop(&mut self) {
        let _ = Command::new("kill").arg("-INT").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }

    /// The capture file (pcapng); it stays after [`Capture::finish`].
    pub fn path(&self) -> &Path {
        &self.pcap
    }

    /// Stops capturing (after letting the last frames reach the file) and judges what was captured.
    pub fn finish(mut self) -> Result<Verdict, String> {
        std::thread::sleep(Duration::from_millis(500));
        self.stop();
        // Wireshark dissects Diameter on 3868 only: decode the captured ports as Diameter too.
        let decode_as: Vec<String> =
            self.ports.iter().flat_map(|p| ["-d".to_string(), format!("tcp.port=={p},diameter")]).collect();
        let run = |extra: &[&str]| {
            Command::new("tshark")
                .arg("-r")
                .arg(&self.pcap)
                .args(&decode_as)
                .args(extra)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .map_err(|e| format!("tshark -r: {e}"))
        };
        let problems = unexpected_expert_lines(&run(&["-q", "-z", "expert"])?);
        let diameter_frames = run(&["-Y", "diameter"])?.lines().count();
        Ok(Verdict { problems, diameter_frames })
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.stop();
        }
    }
}
