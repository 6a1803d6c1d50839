//! Starting and stopping a `spate serve` process, and finding the client tools.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `spate serve` on loopback ports chosen by the kernel.
pub struct Spate {
    child: Child,
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
    log: PathBuf,
}

/// How to start a server beyond the defaults.
#[derive(Debug, Default)]
pub struct Options {
    /// Soft and hard limit on open files for the server process.
    pub open_files: Option<u64>,
    /// A TOML config file's text (written next to the data directory).
    pub config: Option<String>,
    /// Listen here instead of on a free port (to restart on the same address).
    pub listen: Option<std::net::SocketAddr>,
    /// `--io-backend`.
    pub io_backend: Option<&'static str>,
}

impl Spate {
    /// Starts a server on `dir` with two shards.
    pub fn start(dir: &Path) -> Spate {
        Spate::start_with(dir, Options::default())
    }

    pub fn start_with(dir: &Path, options: Options) -> Spate {
        use std::os::unix::process::CommandExt;
        std::fs::create_dir_all(dir).unwrap();
        let log = dir.with_extension("log");
        let stderr = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_spate"));
        let listen = options.listen.map_or("127.0.0.1:0".to_string(), |a| a.to_string());
        command
            .args(["serve", "--listen", &listen, "--metrics-listen", "127.0.0.1:0", "--shards", "2"])
            .arg("--data-dir")
            .arg(dir)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(stderr);
        if let Some(backend) = options.io_backend {
            command.args(["--io-backend", backend]);
        }
        if let Some(text) = &options.config {
            let path = dir.with_extension("toml");
            std::fs::write(&path, text).unwrap();
            command.arg("--config").arg(path);
        }
        if let Some(n) = options.open_files {
            // SAFETY: setrlimit is async-signal-safe, and the closure touches nothing else.
            unsafe {
                command.pre_exec(move || {
                    let rl = libc::rlimit { rlim_cur: n, rlim_max: n };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command.spawn().expect("spawn spate");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut addr = None;
        let mut metrics = None;
        while addr.is_none() || metrics.is_none() {
            let Some(Ok(line)) = lines.next() else {
                panic!(
                    "spate exited before listening:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            };
            if let Some(a) = line.strip_prefix("spate listening on ") {
                addr = Some(a.trim().parse().unwrap());
            } else if let Some(m) = line.strip_prefix("spate metrics on http://") {
                metrics = Some(m.trim_end_matches("/metrics").parse().unwrap());
            }
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Spate { child, addr: addr.unwrap(), metrics: metrics.unwrap(), log }
    }

    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }

    /// The Prometheus text from `GET /metrics`.
    pub fn metrics_text(&self) -> String {
        let mut s = TcpStream::connect(self.metrics).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        out
    }

    /// One sample's value (0 when absent).
    pub fn metric(&self, name_and_labels: &str) -> f64 {
        spate::kafka::metrics::sample(&self.metrics_text(), name_and_labels).unwrap_or(0.0)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGTERM, then waits for the clean shutdown to finish.
    pub fn stop(mut self) {
        // SAFETY: sends SIGTERM to our own child, which has not been reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "spate exited with {status}:\n{}", self.server_log());
    }

    /// SIGKILL: no flush, no goodbye.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Spate {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: sends SIGTERM to our own child, which has not been reaped.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            for _ in 0..100 {
                if self.child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The seed of a randomised test: `var` if set (to replay a run), else the clock. Printed.
pub fn seed(var: &str) -> u64 {
    let seed = std::env::var(var).ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
    });
    eprintln!("{var}={seed}");
    seed
}

fn required() -> bool {
    std::env::var("SPATE_REQUIRE_CLIENTS").is_ok_and(|v| v == "1")
}

fn missing(what: &str) -> Option<PathBuf> {
    if required() {
        panic!("{what} is required (SPATE_REQUIRE_CLIENTS=1) but not installed; run scripts/install-kafka-clients.sh");
    }
    eprintln!("skipping: {what} is not installed (scripts/install-kafka-clients.sh installs it)");
    None
}

/// The python with confluent-kafka and kafka-python.
pub fn python() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("SPATE_PYTHON").map(PathBuf::from),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/kafka-clients/bin/python")),
    ];
    for p in candidates.into_iter().flatten() {
        let ok = Command::new(&p)
            .args(["-c", "import confluent_kafka, kafka"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(p);
        }
    }
    missing("python with confluent-kafka and kafka-python")
}

pub fn kcat() -> Option<PathBuf> {
    let ok = Command::new("kcat").arg("-V").stdout(Stdio::null()).status().is_ok_and(|s| s.success());
    if ok {
        Some(PathBuf::from("kcat"))
    } else {
        missing("kcat")
    }
}

/// Runs a script of tests/kafka/python with arguments; returns its stdout's last line as JSON.
pub fn run_python(python: &Path, script: &str, args: &[&str]) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kafka/python").join(script);
    let out = Command::new(python).arg(path).args(args).output().expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{script} printed {last:?}: {e}"))
}

/// Runs kcat with `args`, feeding `input`; returns stdout.
pub fn run_kcat(kcat: &Path, args: &[&str], input: &str) -> String {
    let mut child = Command::new(kcat)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kcat");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "kcat {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}
