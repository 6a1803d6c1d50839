//! `cdc`: change data capture from a throwaway PostgreSQL 15 into an embedded engine.
//!
//! Snapshot: a table of `rows` rows is copied by a new connector (slot created with an exported
//! snapshot, rows written to a compacted topic and synced); the rate, from the connector's
//! start until its snapshot is durable, is in rows and in bytes of the table's text form per
//! second, against the same-run reference of `COPY ... TO STDOUT` of the same table through
//! psql (R E R E … R, median run with the spread).
//!
//! Latency: one writer inserts rows at `rate` per second, one transaction each, for `seconds`;
//! the row is the time from the INSERT's commit returning to the writer until the record is
//! fetchable from the topic (a consumer long-polls it), plus the same from the intended send
//! time (open loop).
//!
//! Dual writes: two writers update the same key at the same moment, each in PostgreSQL and
//! then, directly, in a second store (a table of another database, standing for a search index
//! or cache), with a delay of up to `dual_delay` between its two writes, as across a network. The first row is how many
//! keys the two stores disagree on afterwards (a race: rounds are repeated, up to ten, until
//! one shows it); the second is how many keys a view folded from the CDC topic disagrees with
//! the table on, once the connector has confirmed the last commit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use spate::cdc::{Cdc, CdcConfig};
use spate::io::BackendChoice;
use spate::{Engine, FetchOptions};

use crate::postgres::{self, Postgres};
use crate::report::{Alternation, Outcome, Row};
use crate::workload;

#[derive(Debug, Clone)]
pub struct Params {
    pub rows: u64,
    pub rounds: usize,
    pub rate: f64,
    pub seconds: f64,
    pub dual_keys: u32,
    pub dual_updates: u64,
    pub dual_delay: Duration,
    pub backend: BackendChoice,
}

impl Params {
    pub fn to_json(&self) -> Value {
        json!({
            "rows": self.rows, "rounds": self.rounds, "rate": self.rate, "seconds": self.seconds,
            "dual_keys": self.dual_keys, "dual_updates": self.dual_updates,
            "dual_delay_us": self.dual_delay.as_micros() as u64,
        })
    }
}

const DB: &str = "bench";
const STORE_DB: &str = "store";

fn connector(engine: &Engine, pg: &Postgres, publication: &str, slot: &str) -> anyhow::Result<Cdc> {
    let mut config = CdcConfig::new(pg.url(DB), publication, "pg");
    config.slot = slot.to_string();
    config.heartbeat_interval_ms = 500;
    Cdc::start(engine, config).map_err(anyhow::Error::msg)
}

/// Waits until `done` holds, failing after `timeout` with the connector's state.
fn wait(cdc: &Cdc, what: &str, timeout: Duration, done: impl Fn(&Cdc) -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !done(cdc) {
        if Instant::now() > deadline {
            let errors = cdc.stats().errors.load(Ordering::Relaxed);
            bail!("cdc: {what} did not happen within {timeout:?} ({errors} session errors; see the log)");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

fn sql(url: &str) -> anyhow::Result<pg_walstream::PgReplicationConnection> {
    pg_walstream::PgReplicationConnection::connect(url).with_context(|| format!("connecting to {url}"))
}

/// Drops a slot once the walsender of the stopped connector has let go of it.
fn drop_slot(pg: &Postgres, slot: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match pg.psql(DB, &format!("SELECT pg_drop_replication_slot('{slot}')")) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() < deadline && e.to_string().contains("is active") => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
}

fn snapshot(root: &std::path::Path, p: &Params, pg: &Postgres, out: &mut Outcome) -> anyhow::Result<()> {
    let copy = || -> anyhow::Result<(f64, u64)> {
        let (took, bytes) = pg.psql_timed(DB, "COPY orders TO STDOUT")?;
        Ok((bytes as f64 / took.as_secs_f64(), bytes))
    };
    let (reference, bytes) = copy()?;
    let mut alt = Alternation { references: vec![reference], runs: Vec::new() };
    for round in 0..p.rounds.max(1) {
        let (engine, _dir) = workload::engine(root, 0, p.backend)?;
        let slot = format!("bench_snapshot_{round}");
        let start = Instant::now();
        let cdc = connector(&engine, pg, "orders", &slot)?;
        wait(&cdc, "the snapshot", Duration::from_secs(600), |c| {
            c.stats().snapshots.load(Ordering::Relaxed) >= 1
        })?;
        let secs = start.elapsed().as_secs_f64();
        let copied = cdc.stats().snapshot_rows.load(Ordering::Relaxed);
        if copied != p.rows {
            bail!("the snapshot copied {copied} rows of {}", p.rows);
        }
        cdc.stop();
        engine.shutdown()?;
        drop_slot(pg, &slot)?;
        alt.runs.push(bytes as f64 / secs);
        alt.references.push(copy()?.0);
    }
    let row = Row::named(format!("cdc snapshot {} rows", p.rows));
    out.rows.push(alt.fill(row, p.rows, bytes).extra("reference", "COPY orders TO STDOUT (psql)"));
    Ok(())
}

fn latency(root: &std::path::Path, p: &Params, pg: &Postgres, out: &mut Outcome) -> anyhow::Result<()> {
    let (engine, _dir) = workload::engine(root, 0, p.backend)?;
    let cdc = connector(&engine, pg, "events", "bench_latency")?;
    wait(&cdc, "streaming", Duration::from_secs(60), |c| c.stats().up.load(Ordering::Relaxed) == 1)?;
    let total = (p.rate * p.seconds).max(1.0) as u64;
    let schedule = workload::Schedule::new(Instant::now(), p.rate);
    let committed: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let arrived: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let topic = "pg.public.events";
    let consumer = {
        let (engine, arrived) = (engine.clone(), Arc::clone(&arrived));
        std::thread::spawn(move || -> anyhow::Result<()> {
            let mut offset = 0;
            let mut seen = 0;
            let deadline = Instant::now() + Duration::from_secs(120);
            while seen < total {
                if Instant::now() > deadline {
                    bail!("only {seen} of {total} rows reached the topic");
                }
                let options =
                    FetchOptions { max_bytes: 1 << 20, min_bytes: 1, max_wait: Duration::from_millis(100) };
                let fetched = match engine.fetch(topic, 0, offset, options) {
                    Ok(f) => f,
                    Err(spate::EngineError::UnknownTopic(_)) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                let now = schedule.start.elapsed().as_nanos() as u64;
                for r in fetched.records(offset)? {
                    offset = r.offset + 1;
                    let Some(value) = r.value else { continue };
                    let v: Value = serde_json::from_slice(&value)?;
                    let id = v["after"]["id"].as_u64().context("a row id")?;
                    if let Some(slot) = arrived.get(id as usize) {
                        slot.store(now.max(1), Ordering::Relaxed);
                        seen += 1;
                    }
                }
            }
            Ok(())
        })
    };
    let mut writer = sql(&pg.url(DB))?;
    for i in 0..total {
        schedule.wait_for(i);
        writer.exec(&format!("INSERT INTO events VALUES ({i})"))?;
        committed[i as usize].store(schedule.start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
    consumer.join().map_err(|_| anyhow::anyhow!("consumer panicked"))??;
    cdc.stop();
    engine.shutdown()?;
    let (mut from_commit, mut from_due) = (workload::histogram(), workload::histogram());
    for i in 0..total {
        let at = arrived[i as usize].load(Ordering::Relaxed);
        let commit = committed[i as usize].load(Ordering::Relaxed);
        from_commit.saturating_record(at.saturating_sub(commit) / 1000);
        from_due.saturating_record(at.saturating_sub(schedule.due_ns(i)) / 1000);
    }
    out.rows.push(
        Row::named(format!("cdc commit to fetchable @ {} rows/s", p.rate))
            .with_latency(&from_commit)
            .extra("rate", p.rate)
            .extra("samples", from_commit.len())
            .extra("p50_from_due_us", from_due.value_at_quantile(0.5))
            .extra("p99_from_due_us", from_due.value_at_quantile(0.99)),
    );
    Ok(())
}

/// One round of dual writes: two writers update the same key at the same moment (as two
/// clients do in the seed's example), each in PostgreSQL and then, after its own delay, in the
/// second store.
fn dual_round(pg: &Postgres, p: &Params, seed: u64) -> anyhow::Result<()> {
    let together = Arc::new(std::sync::Barrier::new(2));
    let writers: Vec<_> = (0..2u64)
        .map(|w| {
            let (db_url, store_url) = (pg.url(DB), pg.url(STORE_DB));
            let (keys, updates, delay) = (p.dual_keys, p.dual_updates, p.dual_delay);
            let together = Arc::clone(&together);
            std::thread::spawn(move || -> anyhow::Result<()> {
                // Both writers draw the same keys; each its own delays.
                let mut keys_rng = rand::rngs::StdRng::seed_from_u64(seed);
                let mut delays = rand::rngs::StdRng::seed_from_u64(seed.wrapping_mul(31) ^ (w + 1));
                let (mut db, mut store) = (sql(&db_url)?, sql(&store_url)?);
                for i in 0..updates {
                    let k = keys_rng.random_range(0..keys);
                    let v = (w + 1) * 1_000_000_000 + seed % 1000 * 1_000_000 + i;
                    together.wait();
                    db.exec(&format!("UPDATE accounts SET balance = {v} WHERE id = {k}"))?;
                    std::thread::sleep(delay.mul_f64(delays.random_range(0.0..1.0)));
                    store.exec(&format!("UPDATE balances SET balance = {v} WHERE id = {k}"))?;
                }
                Ok(())
            })
        })
        .collect();
    for w in writers {
        w.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
    }
    Ok(())
}

/// `id → balance` from a query's tab-separated lines.
fn balances(pg: &Postgres, db: &str, sql: &str) -> anyhow::Result<std::collections::BTreeMap<u64, i64>> {
    pg.psql(db, sql)?
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once('\t').context("two columns")?;
            Ok((k.parse()?, v.parse()?))
        })
        .collect()
}

fn disagreeing(a: &std::collections::BTreeMap<u64, i64>, b: &std::collections::BTreeMap<u64, i64>) -> u64 {
    a.iter().filter(|(k, v)| b.get(k) != Some(v)).count() as u64
        + b.keys().filter(|k| !a.contains_key(k)).count() as u64
}

fn dual_writes(root: &std::path::Path, p: &Params, pg: &Postgres, out: &mut Outcome) -> anyhow::Result<()> {
    let (engine, _dir) = workload::engine(root, 0, p.backend)?;
    let cdc = connector(&engine, pg, "accounts", "bench_dual")?;
    wait(&cdc, "streaming", Duration::from_secs(60), |c| c.stats().up.load(Ordering::Relaxed) == 1)?;
    let table_sql = "SELECT id, balance FROM accounts ORDER BY id";
    let (mut rounds, mut dual) = (0, 0);
    while rounds < 10 {
        rounds += 1;
        dual_round(pg, p, rounds)?;
        dual = disagreeing(
            &balances(pg, DB, table_sql)?,
            &balances(pg, STORE_DB, "SELECT id, balance FROM balances ORDER BY id")?,
        );
        if dual > 0 {
            break;
        }
    }
    // The view: every change of the CDC topic folded by key, once the last commit is confirmed.
    let end: u64 = pg.psql(DB, "SELECT (pg_current_wal_lsn() - '0/0')::bigint")?.trim().parse()?;
    wait(&cdc, "the last commit to be confirmed", Duration::from_secs(60), |c| {
        c.stats().confirmed_lsn.load(Ordering::Relaxed) >= end
    })?;
    let mut view = std::collections::BTreeMap::new();
    let mut offset = 0;
    loop {
        let fetched = engine.fetch("pg.public.accounts", 0, offset, FetchOptions::default())?;
        let records = fetched.records(offset)?;
        if records.is_empty() {
            break;
        }
        for r in records {
            offset = r.offset + 1;
            let Some(value) = r.value else { continue };
            let v: Value = serde_json::from_slice(&value)?;
            let after = &v["after"];
            view.insert(after["id"].as_u64().context("id")?, after["balance"].as_i64().context("balance")?);
        }
    }
    cdc.stop();
    engine.shutdown()?;
    let table = balances(pg, DB, table_sql)?;
    let view_off = disagreeing(&table, &view);
    let updates = 2 * p.dual_updates * rounds;
    out.rows.push(
        Row::named(format!("dual writes: second store disagrees on {dual} of {} keys", p.dual_keys))
            .extra("disagreeing_keys", dual)
            .extra("rounds", rounds)
            .extra("updates", updates),
    );
    out.rows.push(
        Row::named(format!("cdc view: disagrees with the table on {view_off} of {} keys", p.dual_keys))
            .extra("disagreeing_keys", view_off)
            .extra("updates", updates),
    );
    Ok(())
}

pub fn run(root: &std::path::Path, p: &Params, progress: &dyn Fn(&str)) -> anyhow::Result<Outcome> {
    let mut out = Outcome::default();
    let Some(bin) = postgres::binaries() else {
        progress("cdc: skipped: PostgreSQL 15 is not installed (scripts/install-postgres.sh installs it)");
        return Ok(out);
    };
    progress("cdc: starting a throwaway PostgreSQL 15");
    let pg = Postgres::start(&bin, "bench")?;
    pg.psql("postgres", &format!("CREATE DATABASE {DB}"))?;
    pg.psql("postgres", &format!("CREATE DATABASE {STORE_DB}"))?;
    let keys = p.dual_keys;
    pg.psql_script(
        DB,
        &format!(
            "CREATE TABLE orders (id bigint PRIMARY KEY, customer text NOT NULL, amount numeric(12,2), status text, created timestamptz);
             INSERT INTO orders SELECT g, 'customer-' || (g % 1000), (g % 100000) / 100.0, 'new',
               timestamptz '2026-01-01' + g * interval '1 second' FROM generate_series(1, {}) g;
             VACUUM ANALYZE orders;
             CREATE TABLE events (id bigint PRIMARY KEY);
             CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);
             INSERT INTO accounts SELECT g, 0 FROM generate_series(0, {}) g;
             CREATE PUBLICATION orders FOR TABLE orders;
             CREATE PUBLICATION events FOR TABLE events;
             CREATE PUBLICATION accounts FOR TABLE accounts;",
            p.rows,
            keys.saturating_sub(1)
        ),
    )?;
    pg.psql_script(
        STORE_DB,
        &format!(
            "CREATE TABLE balances (id int PRIMARY KEY, balance bigint NOT NULL);
             INSERT INTO balances SELECT g, 0 FROM generate_series(0, {}) g;",
            keys.saturating_sub(1)
        ),
    )?;
    progress("cdc: initial snapshots, alternating with COPY TO of the same table");
    snapshot(root, p, &pg, &mut out)?;
    progress("cdc: commit-to-fetchable latency at a fixed rate");
    latency(root, p, &pg, &mut out)?;
    progress("cdc: dual writes against a view fed by CDC");
    dual_writes(root, p, &pg, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_latency_and_dual_writes_rows() {
        if postgres::binaries().is_none() {
            assert!(
                std::env::var("SPATE_REQUIRE_POSTGRES").map_or(true, |v| v != "1"),
                "PostgreSQL 15 is required (SPATE_REQUIRE_POSTGRES=1)"
            );
            eprintln!("skipping: PostgreSQL 15 is not installed");
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let p = Params {
            rows: 5_000,
            rounds: 1,
            rate: 200.0,
            seconds: 1.0,
            dual_keys: 8,
            dual_updates: 300,
            dual_delay: Duration::from_millis(2),
            backend: BackendChoice::Fallback,
        };
        let out = run(root.path(), &p, &|_| {}).unwrap();
        let get = |r: &Row, k: &str| r.extra.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()).unwrap();
        assert_eq!(out.rows.len(), 4);
        let snap = &out.rows[0];
        assert!(snap.msgs_per_s.unwrap() > 0.0 && snap.ratio_to_reference.unwrap() > 0.0);
        let lat = &out.rows[1];
        assert_eq!(get(lat, "samples").as_u64(), Some(200));
        assert!(lat.p99_us.unwrap() >= lat.p50_us.unwrap());
        assert!(get(&out.rows[2], "disagreeing_keys").as_u64().unwrap() > 0, "dual writes diverge");
        assert_eq!(get(&out.rows[3], "disagreeing_keys").as_u64(), Some(0), "the CDC view converges");
    }
}
