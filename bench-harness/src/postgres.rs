//! A throwaway PostgreSQL cluster: initdb into a temporary directory, `wal_level=logical`, on a
//! free loopback port, in its own process group so that it can be killed all at once. Used by
//! the CDC scenarios and by the CDC tests (which include this file).
//!
//! The binaries come from Debian's `postgresql-15` (scripts/install-postgres.sh) or from
//! `SPATE_PG_BIN`. As root the cluster runs as the `postgres` user (initdb refuses root).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

#[derive(Debug)]
pub struct Postgres {
    bin: PathBuf,
    dir: PathBuf,
    pub port: u16,
    child: Option<Child>,
    user: Option<(u32, u32)>,
}

/// The directory of the PostgreSQL 15 binaries, if they are installed.
pub fn binaries() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("SPATE_PG_BIN").map(PathBuf::from),
        Some(PathBuf::from("/usr/lib/postgresql/15/bin")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|d| ["initdb", "postgres", "psql"].iter().all(|t| d.join(t).exists()))
}

/// The uid and gid of the `postgres` user, from /etc/passwd.
fn postgres_user() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.first() != Some(&"postgres") {
            return None;
        }
        Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?))
    })
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Postgres {
    /// Creates a cluster under the system's temporary directory and starts it.
    pub fn start(bin: &Path, name: &str) -> anyhow::Result<Postgres> {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let user = match root {
            true => Some(postgres_user().context("running PostgreSQL as root needs a postgres user")?),
            false => None,
        };
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("spate-pg-{name}-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
        }
        let mut pg = Postgres { bin: bin.to_path_buf(), dir, port, child: None, user };
        pg.initdb()?;
        // The port was free a moment ago; another process may have taken it since.
        for attempt in 0.. {
            match pg.boot() {
                Ok(()) => break,
                Err(e) if attempt < 3 && pg.child.is_none() => {
                    note_port_retry(&e);
                    pg.port = free_port()?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(pg)
    }

    fn initdb(&self) -> anyhow::Result<()> {
        let out = self
            .command("initdb")
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync", "-D"])
            .arg(self.data())
            .output()
            .context("running initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Replaces the cluster by a new, empty one on the same port (a database restored
    /// elsewhere, or rebuilt: its WAL positions start again from the beginning). Used by the
    /// CDC tests.
    #[allow(dead_code)]
    pub fn recreate(&mut self) -> anyhow::Result<()> {
        self.kill();
        std::fs::remove_dir_all(self.data())?;
        self.initdb()?;
        self.boot()
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

    fn boot(&mut self) -> anyhow::Result<()> {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("postgres.log"))?;
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data())
            .args(["-p", &self.port.to_string(), "-c", "listen_addresses=127.0.0.1", "-c"])
            .arg(format!("unix_socket_directories={}", self.dir.display()))
            .args(["-c", "wal_level=logical", "-c", "max_replication_slots=8", "-c", "max_wal_senders=8"])
            // Process crashes keep every commit (the page cache holds it); power cuts are not
            // what this cluster is for.
            .args(["-c", "fsync=off", "-c", "wal_sender_timeout=10s"])
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("starting postgres")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.psql_output("postgres", "SELECT 1")?.status.success() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                bail!("postgres exited ({status}):\n{}", self.log());
            }
            if Instant::now() > deadline {
                bail!("PostgreSQL did not start:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }

    /// The URI of database `db`, as the superuser `postgres`.
    pub fn url(&self, db: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{db}", self.port)
    }

    fn psql_command(&self, db: &str) -> Command {
        let mut c = Command::new(self.bin.join("psql"));
        c.args([
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
        .args(["-p", &self.port.to_string(), "-d", db]);
        c
    }

    fn psql_output(&self, db: &str, sql: &str) -> anyhow::Result<Output> {
        self.psql_command(db).args(["-c", sql]).output().context("running psql")
    }

    /// Runs `sql` in `db`; returns its rows, one per line, columns separated by tabs.
    pub fn psql(&self, db: &str, sql: &str) -> anyhow::Result<String> {
        let out = self.psql_output(db, sql)?;
        if !out.status.success() {
            bail!("psql {sql:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// Runs a script of statements, stopping at the first error (whose message is returned).
    pub fn psql_script(&self, db: &str, sql: &str) -> anyhow::Result<()> {
        let path = self.dir.join(format!("script-{}.sql", free_port()?));
        std::fs::write(&path, sql)?;
        let out = self.psql_command(db).arg("-f").arg(&path).stdout(Stdio::null()).output();
        let _ = std::fs::remove_file(&path);
        let out = out.context("running psql")?;
        if !out.status.success() {
            bail!("{}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Runs `sql` reading its output and counting it (`COPY ... TO STDOUT`); returns how long
    /// psql took and how many bytes it printed.
    pub fn psql_timed(&self, db: &str, sql: &str) -> anyhow::Result<(Duration, u64)> {
        let start = Instant::now();
        let mut child = self.psql_command(db).args(["-c", sql]).stdout(Stdio::piped()).spawn()?;
        let bytes = std::io::copy(&mut child.stdout.take().context("psql's stdout")?, &mut std::io::sink())?;
        let status = child.wait()?;
        let took = start.elapsed();
        if !status.success() {
            bail!("psql {sql:?} failed");
        }
        Ok((took, bytes))
    }

    /// SIGKILL to the postmaster and every backend at once: a crash, not a shutdown.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let group = -(child.id() as i32);
            // SAFETY: signals our own child's process group.
            unsafe { libc::kill(group, libc::SIGKILL) };
            let _ = child.wait();
            // The backends die of the same signal; a restart must not find one still holding
            // the shared memory. Signal 0 fails with ESRCH once the group is empty.
            let deadline = Instant::now() + Duration::from_secs(10);
            // SAFETY: signal 0 only checks that the group exists.
            while unsafe { libc::kill(group, 0) } == 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Starts a killed server again on the same port (crash recovery replays its WAL). Used by
    /// the CDC crash tests.
    #[allow(dead_code)]
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.boot()
    }
}

fn note_port_retry(e: &anyhow::Error) {
    eprintln!("PostgreSQL did not start on its first port, trying another: {e:#}");
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
