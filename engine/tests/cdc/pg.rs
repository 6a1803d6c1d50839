//! A throwaway PostgreSQL cluster: initdb into a temporary directory, `wal_level=logical`, on a
//! free loopback port, in its own process group so a test can kill all of it at once.
//!
//! The binaries come from Debian's `postgresql-15` (scripts/test.sh installs it) or from
//! `SPATE_PG_BIN`. As root the cluster runs as the `postgres` user (initdb refuses root).

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Postgres {
    bin: PathBuf,
    dir: PathBuf,
    pub port: u16,
    child: Option<Child>,
    user: Option<(u32, u32)>,
}

fn required() -> bool {
    std::env::var("SPATE_REQUIRE_POSTGRES").is_ok_and(|v| v == "1")
}

fn bin_dir() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("SPATE_PG_BIN").map(PathBuf::from),
        Some(PathBuf::from("/usr/lib/postgresql/15/bin")),
    ];
    candidates.into_iter().flatten().find(|d| d.join("initdb").exists() && d.join("postgres").exists())
}

/// The uid and gid of the `postgres` user, from /etc/passwd.
fn postgres_user() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&"postgres"))
            .then(|| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))
            .flatten()
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Postgres {
    /// A new cluster, running. `None` (the test skips) where PostgreSQL is not installed,
    /// unless SPATE_REQUIRE_POSTGRES=1 makes that a failure.
    pub fn start(name: &str) -> Option<Postgres> {
        let Some(bin) = bin_dir() else {
            if required() {
                panic!("PostgreSQL 15 is required (SPATE_REQUIRE_POSTGRES=1) but not installed; scripts/test.sh installs it");
            }
            eprintln!("skipping: PostgreSQL 15 is not installed (scripts/test.sh installs postgresql-15)");
            return None;
        };
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let user = if root {
            Some(postgres_user().expect("root needs a postgres user to run PostgreSQL"))
        } else {
            None
        };
        let dir =
            std::env::temp_dir().join(format!("spate-pg-{name}-{}-{}", std::process::id(), free_port()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
        }
        let mut pg = Postgres { bin, dir, port: free_port(), child: None, user };
        let out = pg
            .command("initdb")
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync", "-D"])
            .arg(pg.data())
            .output()
            .expect("run initdb");
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        pg.boot();
        Some(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn command(&self, tool: &str) -> Command {
        let mut c = Command::new(self.bin.join(tool));
        if let Some((uid, gid)) = self.user {
            c.uid(uid).gid(gid);
        }
        c.current_dir(&self.dir);
        c
    }

    fn boot(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("postgres.log"))
            .unwrap();
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data())
            .args(["-p", &self.port.to_string(), "-c", "listen_addresses=127.0.0.1", "-c"])
            .arg(format!("unix_socket_directories={}", self.dir.display()))
            .args(["-c", "wal_level=logical", "-c", "max_replication_slots=8", "-c", "max_wal_senders=8"])
            // A killed server must not lose commits; the sync itself is not what the tests probe.
            .args(["-c", "fsync=off", "-c", "wal_sender_timeout=10s"])
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("spawn postgres");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = self.psql_output("postgres", "SELECT 1").status.success();
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "PostgreSQL did not start:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }

    /// The URI of database `db` (as the superuser `postgres`).
    pub fn url(&self, db: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{db}", self.port)
    }

    fn psql_output(&self, db: &str, sql: &str) -> Output {
        Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-F",
                "\t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
            ])
            .args(["-p", &self.port.to_string(), "-d", db, "-c", sql])
            .output()
            .expect("run psql")
    }

    /// Runs `sql` in `db`; returns the rows, one per line, columns separated by tabs. Panics on
    /// an SQL error.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = self.psql_output(db, sql);
        assert!(out.status.success(), "psql {sql:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs `sql` (many statements) from a file; `Err` with psql's message if it fails.
    pub fn psql_script(&self, db: &str, sql: &str) -> Result<(), String> {
        let path = self.dir.join(format!("script-{}.sql", free_port()));
        std::fs::write(&path, sql).unwrap();
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres"])
            .args(["-p", &self.port.to_string(), "-d", db, "-f"])
            .arg(&path)
            .stdout(Stdio::null())
            .output()
            .expect("run psql");
        let _ = std::fs::remove_file(&path);
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// SIGKILL to the postmaster and every backend at once: a crash, not a shutdown.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signals our own child's process group.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            // Backends of the group exit on the same signal; give the kernel a moment to reap
            // them so the restart finds no live shared memory.
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Starts the killed server again on the same port (crash recovery replays its WAL).
    pub fn restart(&mut self) {
        self.boot();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
