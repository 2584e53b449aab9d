//! What one function costs as its own Cloud Run service (issue 10): the binary's size, the time
//! from `exec` of `devgem serve <function>` to its first `200` on `/healthz` (Cloud Run's startup
//! probe), and its resident memory once idle.
//!
//! Run: `cargo bench -p devgem-cli --bench serve_start` (the bench profile: release with line
//! tables). Each function starts `RUNS` times on a fresh data dir; the embedded adapters are used
//! (the GCP clients connect lazily, on the first call, so their start is not on this path).

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const RUNS: usize = 20;
const FUNCTIONS: [&str; 8] = ["chat", "analyze", "build", "deploy", "monitor", "relay", "api", "janitor"];
/// How long a function may stay idle before its memory is read: long enough for start-up
/// allocations to settle, as on a Cloud Run instance waiting for its first request.
const IDLE: Duration = Duration::from_secs(2);

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// Whether `/healthz` answers 200 now.
fn healthy(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(50)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

/// Resident set size of a process, in KiB (`VmRSS`).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

struct Started {
    child: Child,
    ready: Duration,
}

fn start(binary: &Path, function: &str, data_dir: &Path) -> Started {
    let port = free_port();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let begun = Instant::now();
    let child = Command::new(binary)
        .args(["--data-dir", &data_dir.display().to_string(), "serve", function, "--port", &port.to_string()])
        .env("RUST_LOG", "warn")
        .env("DEVGEM_SECRETS_KEY_FILE", data_dir.join("secrets.key"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn devgem serve");
    while !healthy(addr) {
        assert!(begun.elapsed() < Duration::from_secs(20), "{function} never became ready");
        std::thread::sleep(Duration::from_micros(200));
    }
    Started { child, ready: begun.elapsed() }
}

fn stop(mut child: Child) {
    // SIGTERM, as Cloud Run stops an instance; the function drains and exits.
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn main() {
    let binary = Path::new(env!("CARGO_BIN_EXE_devgem"));
    let size = std::fs::metadata(binary).expect("the binary").len();
    println!("binary: {} ({:.1} MiB)", binary.display(), size as f64 / (1024.0 * 1024.0));
    println!("{:<8} {:>10} {:>10} {:>10} {:>12}", "function", "ready p50", "ready p95", "ready max", "idle RSS");
    let mut worst_rss = 0;
    let mut all = Vec::new();
    for function in FUNCTIONS {
        let mut readies = Vec::with_capacity(RUNS);
        let mut rss = 0;
        for run in 0..RUNS {
            let dir = tempfile::tempdir().expect("tempdir");
            let started = start(binary, function, dir.path());
            readies.push(started.ready);
            if run == 0 {
                std::thread::sleep(IDLE);
                rss = rss_kib(started.child.id());
            }
            stop(started.child);
        }
        readies.sort();
        all.extend(readies.iter().copied());
        worst_rss = worst_rss.max(rss);
        println!(
            "{function:<8} {:>8.1}ms {:>8.1}ms {:>8.1}ms {:>8.1} MiB",
            percentile(&readies, 50.0).as_secs_f64() * 1e3,
            percentile(&readies, 95.0).as_secs_f64() * 1e3,
            readies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
            rss as f64 / 1024.0
        );
    }
    all.sort();
    println!(
        "all: ready p50 {:.1} ms, p95 {:.1} ms over {} starts; worst idle RSS {:.1} MiB",
        percentile(&all, 50.0).as_secs_f64() * 1e3,
        percentile(&all, 95.0).as_secs_f64() * 1e3,
        all.len(),
        worst_rss as f64 / 1024.0
    );
}
