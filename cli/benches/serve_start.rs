//! What one function costs as its own Cloud Run service (issue 10): the binary's size, the time
//! from `exec` of `devgem serve <function>` to its first `200` on `/healthz` (Cloud Run's startup
//! probe), and its resident memory once idle.
//!
//! Run: `cargo bench -p devgem-cli --bench serve_start` (the bench profile: release). Each
//! function starts `RUNS` times on a fresh data dir, in two configurations: the embedded adapters,
//! and every GCP adapter as on Cloud Run (`DEVGEM_STORE=firestore`, `DEVGEM_BUS=pubsub`, ...),
//! pointed at the Firestore and Cloud Storage emulators and the in-process stand-ins of the other
//! APIs (run `scripts/install-tools.sh` first).

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

/// Resident memory of a process in KiB: all of it (`VmRSS`), and the part that is its own
/// (`RssAnon`: heap and stacks; the rest is the binary's and libraries' pages, shared and
/// reclaimable).
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("RssAnon:"))
}

struct Started {
    child: Child,
    ready: Duration,
}

fn start(binary: &Path, function: &str, data_dir: &Path, env: &[(&str, String)]) -> Started {
    let port = free_port();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let begun = Instant::now();
    let child = Command::new(binary)
        .args(["--data-dir", &data_dir.display().to_string(), "serve", function, "--port", &port.to_string()])
        .env("RUST_LOG", "warn")
        .env("DEVGEM_SECRETS_KEY_FILE", data_dir.join("secrets.key"))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
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

/// Every GCP adapter, on emulators and stand-ins that live as long as this value.
struct Gcp {
    _firestore: devgem_infra::gcp::emulators::firestore::FirestoreEmulator,
    _storage: devgem_infra::gcp::emulators::storage::StorageEmulator,
    _pubsub: devgem_infra::gcp::emulators::pubsub::PubSubStandIn,
    _cloud_run: devgem_infra::gcp::emulators::cloudrun::CloudRunStandIn,
    _secret_manager: devgem_infra::gcp::emulators::secretmanager::SecretManagerStandIn,
    _logging: devgem_infra::gcp::emulators::logging::LoggingStandIn,
    _iam: devgem_infra::gcp::emulators::iam::IamStandIn,
    env: Vec<(&'static str, String)>,
}

async fn gcp() -> Gcp {
    use devgem_infra::gcp::emulators::{cloudrun, firestore, iam, logging, pubsub, secretmanager, storage};
    let firestore = firestore::FirestoreEmulator::start().await.expect("the Firestore emulator");
    let storage = storage::StorageEmulator::start("devgem-bench").await.expect("the storage emulator");
    let pubsub = pubsub::PubSubStandIn::start("devgem-bench").await.expect("the Pub/Sub stand-in");
    let cloud_run = cloudrun::CloudRunStandIn::start().await.expect("Cloud Run stand-in");
    let secret_manager = secretmanager::SecretManagerStandIn::start().await.expect("Secret Manager stand-in");
    let logging = logging::LoggingStandIn::start().await.expect("Logging stand-in");
    let iam = iam::IamStandIn::start().await.expect("IAM stand-in");
    let env = vec![
        ("GOOGLE_CLOUD_PROJECT", "devgem-bench".to_owned()),
        ("DEVGEM_STORE", "firestore".to_owned()),
        ("FIRESTORE_EMULATOR_HOST", firestore.host.clone()),
        ("DEVGEM_BUS", "pubsub".to_owned()),
        ("PUBSUB_EMULATOR_HOST", pubsub.emulator_host()),
        ("DEVGEM_BLOBS", "gcs".to_owned()),
        ("STORAGE_EMULATOR_HOST", storage.endpoint().to_owned()),
        ("DEVGEM_BUCKET", storage.bucket().to_owned()),
        ("DEVGEM_BUILDER", "cloudbuild".to_owned()),
        ("DEVGEM_RUNTIME", "cloudrun".to_owned()),
        ("DEVGEM_SECRETS", "secretmanager".to_owned()),
        // Cloud Build is only called on a submit; no stand-in needs to answer at start.
        ("DEVGEM_CLOUD_BUILD_ENDPOINT", "http://127.0.0.1:9".to_owned()),
        ("DEVGEM_CLOUD_RUN_ENDPOINT", cloud_run.endpoint()),
        ("DEVGEM_SECRET_MANAGER_ENDPOINT", secret_manager.endpoint()),
        ("DEVGEM_LOGGING_ENDPOINT", logging.endpoint()),
        ("DEVGEM_IAM_ENDPOINT", iam.endpoint()),
        ("DEVGEM_IMAGE_REPOSITORY", "us-central1-docker.pkg.dev/devgem-bench/apps".to_owned()),
        ("DEVGEM_APP_SERVICE_ACCOUNT", "apps@devgem-bench.iam.gserviceaccount.com".to_owned()),
        ("DEVGEM_PUSH_AUDIENCE", "https://fn.example.run.app".to_owned()),
        ("DEVGEM_OIDC_JWKS_URL", "http://127.0.0.1:9/certs".to_owned()),
    ];
    Gcp {
        _firestore: firestore,
        _storage: storage,
        _pubsub: pubsub,
        _cloud_run: cloud_run,
        _secret_manager: secret_manager,
        _logging: logging,
        _iam: iam,
        env,
    }
}

fn measure(binary: &Path, configuration: &str, env: &[(&str, String)]) {
    println!("\n{configuration}");
    println!(
        "{:<8} {:>10} {:>10} {:>10} {:>12} {:>12}",
        "function", "ready p50", "ready p95", "ready max", "idle RSS", "of it anon"
    );
    let mut worst_rss = 0;
    let mut all = Vec::new();
    for function in FUNCTIONS {
        let mut readies = Vec::with_capacity(RUNS);
        let mut rss = (0, 0);
        for run in 0..RUNS {
            let dir = tempfile::tempdir().expect("tempdir");
            let started = start(binary, function, dir.path(), env);
            readies.push(started.ready);
            if run == 0 {
                std::thread::sleep(IDLE);
                rss = rss_kib(started.child.id());
            }
            stop(started.child);
        }
        readies.sort();
        all.extend(readies.iter().copied());
        worst_rss = worst_rss.max(rss.0);
        println!(
            "{function:<8} {:>8.1}ms {:>8.1}ms {:>8.1}ms {:>8.1} MiB {:>8.1} MiB",
            percentile(&readies, 50.0).as_secs_f64() * 1e3,
            percentile(&readies, 95.0).as_secs_f64() * 1e3,
            readies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
            rss.0 as f64 / 1024.0,
            rss.1 as f64 / 1024.0
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

fn main() {
    let binary = Path::new(env!("CARGO_BIN_EXE_devgem"));
    let size = std::fs::metadata(binary).expect("the binary").len();
    println!("binary: {} ({:.1} MiB)", binary.display(), size as f64 / (1024.0 * 1024.0));
    measure(binary, "embedded adapters", &[]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime for the emulators");
    let gcp = runtime.block_on(gcp());
    // The emulators and stand-ins answer on the runtime's thread while the starts are measured.
    measure(binary, "every GCP adapter (emulators and stand-ins)", &gcp.env);
    drop(gcp);
}
