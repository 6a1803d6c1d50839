//! Change data capture from a real PostgreSQL 15 into a real `spate serve`, read back with a
//! real Kafka client (kcat). Each test starts its own throwaway cluster (see pg.rs).

#[path = "../kafka/server.rs"]
#[allow(dead_code)]
mod server;

mod pg;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use pg::Postgres;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use server::{Options, Spate};

/// One record as kcat prints it.
#[derive(Debug, Clone)]
struct Rec {
    partition: u32,
    key: String,
    value: Option<Value>,
    position: Option<(u64, u64, u64)>,
}

fn cdc_config(pg: &Postgres, db: &str, extra: &str) -> String {
    format!(
        "compaction_check_interval_ms = 3600000\n[cdc]\nurl = \"{}\"\npublication = \"{db}\"\ntopic_prefix = \"pg\"\nheartbeat_interval_ms = 200\n{extra}",
        pg.url(db)
    )
}

fn start_spate(dir: &Path, config: &str) -> Spate {
    Spate::start_with(dir, Options { config: Some(config.to_string()), ..Options::default() })
}

/// Every record of `topic` from the beginning (empty if the topic does not exist yet).
fn read_topic(kcat: &Path, spate: &Spate, topic: &str) -> Vec<Rec> {
    let out = std::process::Command::new(kcat)
        .args(["-C", "-b", &spate.bootstrap(), "-t", topic, "-o", "beginning", "-e", "-Z", "-q", "-u"])
        .args(["-f", "%p\t%k\t%h\t%s\n"])
        .output()
        .expect("run kcat");
    if !out.status.success() {
        return Vec::new();
    }
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.splitn(4, '\t').collect();
            assert_eq!(f.len(), 4, "kcat line {l:?}");
            let position = f[2].split(',').find_map(|h| h.strip_prefix("spate.cdc.position=")).map(|p| {
                let n: Vec<u64> = p.split(':').map(|n| n.parse().unwrap()).collect();
                (n[0], n[1], n[2])
            });
            Rec {
                partition: f[0].parse().unwrap(),
                key: serde_json::from_str::<Value>(f[1]).map_or(f[1].to_string(), |k| k.to_string()),
                value: (f[3] != "NULL")
                    .then(|| serde_json::from_str(f[3]).unwrap_or_else(|e| panic!("{l:?}: {e}"))),
                position,
            }
        })
        .collect()
}

/// JSON text in one canonical form (sorted keys, no spaces).
fn canonical(json: &str) -> String {
    serde_json::to_string(&serde_json::from_str::<Value>(json).unwrap_or_else(|e| panic!("{json:?}: {e}")))
        .unwrap()
}

/// What a compacted read of the records holds: each key's latest `after`, keys gone only by a
/// tombstone (a delete without its tombstone leaves the key with a null row).
fn latest(records: &[Rec]) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for r in records {
        match &r.value {
            Some(v) => {
                out.insert(r.key.clone(), v["after"].clone());
            }
            None => {
                out.remove(&r.key);
            }
        }
    }
    out
}

/// Rows of a query returning (key JSON, row JSON) pairs.
fn table(pg: &Postgres, db: &str, sql: &str) -> BTreeMap<String, Value> {
    pg.sql(db, sql)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once('\t').unwrap();
            (canonical(k), serde_json::from_str(v).unwrap())
        })
        .collect()
}

/// Waits until `check` holds, or panics with `what` and the last difference.
fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{what} did not happen in {timeout:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn differences(topic: &BTreeMap<String, Value>, table: &BTreeMap<String, Value>) -> Result<(), String> {
    if topic == table {
        return Ok(());
    }
    let missing: Vec<_> = table.keys().filter(|k| !topic.contains_key(*k)).take(3).collect();
    let extra: Vec<_> = topic.keys().filter(|k| !table.contains_key(*k)).take(3).collect();
    let changed: Vec<_> =
        table.iter().filter(|(k, v)| topic.get(*k).is_some_and(|t| t != *v)).take(2).collect();
    Err(format!(
        "topic {} keys, table {} rows; missing {missing:?}, extra {extra:?}, differing {changed:?} (topic has {:?})",
        topic.len(),
        table.len(),
        changed.first().and_then(|(k, _)| topic.get(*k))
    ))
}

/// No record was written twice: positions only grow within each partition (only a TRUNCATE's
/// tombstones share one), and no change is there twice (same key and envelope but for the time
/// it was written).
fn assert_no_duplicates(records: &[Rec]) {
    let mut last: BTreeMap<u32, (bool, (u64, u64, u64))> = BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    for r in records {
        let p = r.position.unwrap_or_else(|| panic!("record without a position header: {r:?}"));
        let tombstone = r.value.is_none();
        if let Some((prev_tombstone, prev)) = last.insert(r.partition, (tombstone, p)) {
            let shared = p == prev && tombstone && prev_tombstone;
            assert!(
                p > prev || shared,
                "partition {}: position {p:?} after {prev:?} (written twice): {r:?}",
                r.partition
            );
        }
        if let Some(v) = &r.value {
            let mut v = v.clone();
            v["ts_ms"] = Value::Null;
            assert!(seen.insert((r.key.clone(), v.to_string())), "change written twice: {r:?}");
        }
    }
}

const ACCOUNTS: &str = "SELECT json_build_object('id', id)::text, json_build_object('id', id, 'owner', owner, \
    'balance', balance::text, 'active', active, 'tags', tags::text, 'photo', encode(photo, 'base64'))::text FROM accounts";
const LINES: &str = "SELECT json_build_object('order_id', order_id, 'line', line)::text, \
    json_build_object('order_id', order_id, 'line', line, 'qty', qty)::text FROM lines";

#[test]
fn snapshot_then_changes_make_the_topics_equal_the_tables() {
    let Some(pg) = pg::start("basic") else { return };
    let Some(kcat) = server::kcat() else { return };
    pg.sql("postgres", "CREATE DATABASE shop");
    pg.psql_script(
        "shop",
        "CREATE TABLE accounts (id int PRIMARY KEY, owner text NOT NULL, balance numeric(12,2), active bool, tags jsonb, photo bytea);
         CREATE TABLE lines (order_id bigint, line int, qty int, PRIMARY KEY (order_id, line));
         CREATE TABLE unpublished (id int PRIMARY KEY);
         INSERT INTO accounts SELECT g, 'owner ' || g, g * 1.5, g % 2 = 0, jsonb_build_object('g', g), decode(md5(g::text), 'hex')
           FROM generate_series(1, 300) g;
         INSERT INTO lines SELECT g / 10, g % 10, g FROM generate_series(1, 200) g;
         CREATE PUBLICATION shop FOR TABLE accounts, lines;",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = cdc_config(&pg, "shop", "");
    let spate = start_spate(&dir.path().join("spate"), &config);

    // The snapshot: every row once, as op "r", the last one marked.
    eventually("the snapshot", Duration::from_secs(60), || {
        let n = read_topic(&kcat, &spate, "pg.public.accounts").len()
            + read_topic(&kcat, &spate, "pg.public.lines").len();
        (n == 500).then_some(()).ok_or(format!("{n} records"))
    });
    let snapshot = read_topic(&kcat, &spate, "pg.public.accounts");
    assert!(snapshot.iter().all(|r| r.value.as_ref().unwrap()["op"] == "r"));
    assert_eq!(latest(&snapshot), table(&pg, "shop", ACCOUNTS), "snapshot equals the table");
    let first = snapshot[0].value.clone().unwrap();
    assert_eq!(first["source"]["connector"], "postgresql");
    assert_eq!(first["source"]["db"], "shop");
    assert_eq!(first["source"]["table"], "accounts");
    assert!(first["source"]["lsn"].as_u64().unwrap() > 0);
    let markers = [snapshot.clone(), read_topic(&kcat, &spate, "pg.public.lines")].concat();
    assert_eq!(
        markers.iter().filter(|r| r.value.as_ref().unwrap()["source"]["snapshot"] == "last").count(),
        1
    );

    // Changes: single-statement and multi-statement transactions, a rolled-back one, a key
    // change, deletes, and writes to a table outside the publication.
    pg.psql_script(
        "shop",
        "UPDATE accounts SET balance = balance + 10, tags = '{\"vip\": true}' WHERE id <= 20;
         DELETE FROM accounts WHERE id BETWEEN 21 AND 30;
         INSERT INTO accounts VALUES (1000, 'new', NULL, NULL, NULL, NULL);
         BEGIN; UPDATE accounts SET owner = 'rolled back' WHERE id = 1; ROLLBACK;
         BEGIN; INSERT INTO lines VALUES (99, 1, 5); UPDATE lines SET qty = 0 WHERE order_id = 1; DELETE FROM lines WHERE order_id = 2; COMMIT;
         UPDATE lines SET line = line + 100 WHERE order_id = 3;
         INSERT INTO unpublished SELECT generate_series(1, 50);",
    )
    .unwrap();
    eventually("the changes", Duration::from_secs(30), || {
        differences(
            &latest(&read_topic(&kcat, &spate, "pg.public.accounts")),
            &table(&pg, "shop", ACCOUNTS),
        )?;
        differences(&latest(&read_topic(&kcat, &spate, "pg.public.lines")), &table(&pg, "shop", LINES))
    });
    let accounts = read_topic(&kcat, &spate, "pg.public.accounts");
    assert_no_duplicates(&accounts);
    let update = accounts
        .iter()
        .find(|r| r.key == r#"{"id":5}"# && r.value.as_ref().is_some_and(|v| v["op"] == "u"))
        .unwrap();
    let v = update.value.as_ref().unwrap();
    assert_eq!(v["before"], Value::Null, "default replica identity: no before image");
    assert_eq!(v["after"]["balance"], "17.50");
    assert!(v["source"]["txId"].as_u64().unwrap() > 0);
    // A delete: the "d" envelope with the key as before, then a tombstone.
    let at = accounts
        .iter()
        .position(|r| r.key == r#"{"id":25}"# && r.value.as_ref().is_some_and(|v| v["op"] == "d"))
        .unwrap();
    assert_eq!(accounts[at].value.as_ref().unwrap()["before"]["id"], 25);
    assert!(
        accounts[at + 1].key == r#"{"id":25}"# && accounts[at + 1].value.is_none(),
        "tombstone after the delete"
    );
    assert!(!accounts.iter().any(|r| r.value.as_ref().is_some_and(|v| v["after"]["owner"] == "rolled back")));
    // The key change: delete and tombstone of the old key, create of the new one.
    let lines = read_topic(&kcat, &spate, "pg.public.lines");
    let old = r#"{"line":1,"order_id":3}"#;
    let ops: Vec<_> =
        lines.iter().filter(|r| r.key == old).map(|r| r.value.as_ref().map(|v| v["op"].clone())).collect();
    assert_eq!(ops, vec![Some("r".into()), Some("d".into()), None]);
    let new = lines.iter().find(|r| r.key == r#"{"line":101,"order_id":3}"#).unwrap();
    assert_eq!(new.value.as_ref().unwrap()["op"], "c");

    // Resume state and confirmed position; a restart writes nothing again.
    let state = read_topic(&kcat, &spate, "__spate_cdc");
    let state = state.last().expect("the resume state is stored");
    assert_eq!(state.key, "spate");
    assert_eq!(state.value.as_ref().unwrap()["snapshot_done"], true);
    let confirmed = |pg: &Postgres| {
        pg.sql("shop", "SELECT (confirmed_flush_lsn - '0/0')::bigint FROM pg_replication_slots WHERE slot_name = 'spate'")
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    assert!(confirmed(&pg) > 0);
    let before = accounts.len();
    spate.stop();
    let spate = start_spate(&dir.path().join("spate"), &config);
    pg.sql("shop", "INSERT INTO accounts VALUES (2000, 'after restart', 1, true, NULL, NULL)");
    eventually("the insert after the restart", Duration::from_secs(30), || {
        differences(&latest(&read_topic(&kcat, &spate, "pg.public.accounts")), &table(&pg, "shop", ACCOUNTS))
    });
    let accounts = read_topic(&kcat, &spate, "pg.public.accounts");
    assert_eq!(accounts.len(), before + 1, "the restart wrote nothing twice");
    assert_no_duplicates(&accounts);

    // An idle database still advances the slot: WAL written elsewhere is confirmed through
    // the heartbeat messages, and the lag is a metric.
    pg.sql("postgres", "CREATE TABLE busy AS SELECT generate_series(1, 20000) AS n");
    let wal: u64 = pg.sql("shop", "SELECT (pg_current_wal_lsn() - '0/0')::bigint").trim().parse().unwrap();
    eventually("the idle slot to advance", Duration::from_secs(30), || {
        let c = confirmed(&pg);
        (c >= wal).then_some(()).ok_or(format!("confirmed {c} < {wal}"))
    });
    eventually("the lag metric", Duration::from_secs(10), || {
        let lag = spate.metric("spate_cdc_slot_lag_bytes{slot=\"spate\"}");
        (spate.metric("spate_cdc_up{slot=\"spate\"}") == 1.0 && (0.0..1e6).contains(&lag))
            .then_some(())
            .ok_or(format!("lag {lag}"))
    });
    assert!(spate.metric("spate_cdc_snapshot_rows_total{slot=\"spate\"}") == 0.0, "no second snapshot");
    spate.stop();
}

const ITEMS: &str = "SELECT json_build_object('id', id)::text, json_build_object('id', id, 'v', v, 'note', note)::text FROM items";

/// A script of `n` random transactions over keys 0..300 of `items`.
fn random_transactions(rng: &mut impl Rng, n: usize) -> String {
    let mut sql = String::new();
    for _ in 0..n {
        sql.push_str("BEGIN;\n");
        for _ in 0..rng.random_range(1..6) {
            let k = rng.random_range(0..300);
            let v = rng.random_range(0..1_000_000);
            match rng.random_range(0..10) {
                0..=3 => sql.push_str(&format!(
                    "INSERT INTO items VALUES ({k}, {v}, 'n{v}') ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v, note = EXCLUDED.note;\n"
                )),
                4..=6 => sql.push_str(&format!("UPDATE items SET v = v + 1 WHERE id = {k};\n")),
                7..=8 => sql.push_str(&format!("DELETE FROM items WHERE id = {k};\n")),
                _ => {
                    let k2 = rng.random_range(0..300);
                    sql.push_str(&format!(
                        "UPDATE items SET id = {k2} WHERE id = {k} AND NOT EXISTS (SELECT 1 FROM items WHERE id = {k2});\n"
                    ));
                }
            }
        }
        sql.push_str(if rng.random_range(0..20) == 0 { "ROLLBACK;\n" } else { "COMMIT;\n" });
    }
    sql
}

#[test]
fn crashes_of_either_side_lose_nothing_and_write_nothing_twice() {
    let Some(mut pg) = pg::start("crash") else { return };
    let Some(kcat) = server::kcat() else { return };
    let seed = server::seed("SPATE_CDC_SEED");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    pg.sql("postgres", "CREATE DATABASE bank");
    pg.psql_script(
        "bank",
        "CREATE TABLE items (id int PRIMARY KEY, v int, note text);
         INSERT INTO items SELECT g, g, 'initial' FROM generate_series(0, 299, 2) g;
         CREATE PUBLICATION bank FOR TABLE items;",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("spate");
    let config = cdc_config(&pg, "bank", "partitions = 2\nflush_bytes = 65536\n");
    let mut spate = start_spate(&data, &config);
    let records = |spate: &Spate| spate.metric("spate_cdc_records_total{slot=\"spate\"}");
    eventually("the snapshot", Duration::from_secs(60), || {
        (records(&spate) >= 150.0).then_some(()).ok_or("not yet".into())
    });

    // A crash in the middle of a large transaction: part of it is in the topic, its commit
    // is not stored. After the restart PostgreSQL sends it again, and the records already
    // written are skipped by their positions.
    let written = records(&spate);
    pg.sql("bank", "INSERT INTO items SELECT g, g, repeat('x', 300) FROM generate_series(1000, 20999) g");
    let deadline = Instant::now() + Duration::from_secs(60);
    while records(&spate) < written + 2_000.0 {
        assert!(Instant::now() < deadline, "the large transaction is not being written");
        std::thread::sleep(Duration::from_millis(2));
    }
    spate.kill();
    spate = start_spate(&data, &config);
    eventually("the large transaction", Duration::from_secs(60), || {
        let n = spate.metric("spate_cdc_transactions_total{slot=\"spate\"}");
        (n >= 1.0).then_some(()).ok_or(format!("{n} transactions"))
    });
    let skipped = spate.metric("spate_cdc_duplicates_skipped_total{slot=\"spate\"}");
    assert!(
        skipped >= 2_000.0,
        "the records written before the crash are skipped, not written again ({skipped})"
    );

    // A crash among the tombstones of a TRUNCATE, in a transaction that goes on inserting: on
    // replay the keys still live are tombstoned and nothing after the TRUNCATE moves.
    let written = records(&spate);
    pg.psql_script(
        "bank",
        "BEGIN; TRUNCATE items; INSERT INTO items SELECT g, g, 'after truncate' FROM generate_series(0, 299, 3) g; COMMIT;",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while records(&spate) < written + 2_000.0 {
        assert!(Instant::now() < deadline, "the truncate is not being written");
        std::thread::sleep(Duration::from_millis(2));
    }
    spate.kill();
    spate = start_spate(&data, &config);
    eventually("the truncate and the inserts after it", Duration::from_secs(60), || {
        differences(&latest(&read_topic(&kcat, &spate, "pg.public.items")), &table(&pg, "bank", ITEMS))
    });

    let mut kills = 2;
    for round in 0..8 {
        // Transactions while the connector runs (and while it is down or restarting).
        let script = random_transactions(&mut rng, 40);
        let _ = pg.psql_script("bank", &script);
        std::thread::sleep(Duration::from_millis(rng.random_range(0..400)));
        match round % 4 {
            // SIGKILL Spate at some point of its work (snapshot, a batch, a state write).
            0 | 2 => {
                spate.kill();
                kills += 1;
                let _ = pg.psql_script("bank", &random_transactions(&mut rng, 20));
                spate = start_spate(&data, &config);
            }
            // Drop the replication connection from the PostgreSQL side.
            1 => {
                pg.sql("bank", "SELECT pg_terminate_backend(pid) FROM pg_stat_replication");
            }
            // Crash PostgreSQL (every process at once) and bring it back.
            _ => {
                pg.kill();
                std::thread::sleep(Duration::from_millis(rng.random_range(0..500)));
                pg.restart().unwrap();
            }
        }
    }
    let _ = pg.psql_script("bank", &random_transactions(&mut rng, 40));
    eventually("the topic to equal the table", Duration::from_secs(90), || {
        differences(&latest(&read_topic(&kcat, &spate, "pg.public.items")), &table(&pg, "bank", ITEMS))
    });
    let records = read_topic(&kcat, &spate, "pg.public.items");
    assert!(records.iter().any(|r| r.partition == 1), "two partitions in use");
    assert_no_duplicates(&records);
    eprintln!(
        "{} records after {kills} kills of Spate, a dropped connection and a PostgreSQL crash",
        records.len()
    );

    // The database is replaced by a new cluster (a restore elsewhere): the slot is gone and the
    // WAL positions start again far below those the topic holds. A new snapshot, in a new
    // epoch, makes the topic equal the new table.
    spate.stop();
    pg.recreate().unwrap();
    pg.sql("postgres", "CREATE DATABASE bank");
    pg.psql_script(
        "bank",
        "CREATE TABLE items (id int PRIMARY KEY, v int, note text);
         INSERT INTO items SELECT g, -g, 'restored' FROM generate_series(0, 299, 5) g;
         CREATE PUBLICATION bank FOR TABLE items;",
    )
    .unwrap();
    let new_lsn: u64 =
        pg.sql("bank", "SELECT (pg_current_wal_lsn() - '0/0')::bigint").trim().parse().unwrap();
    let old_lsn = records.iter().filter_map(|r| r.position).map(|p| p.1).max().unwrap();
    assert!(
        new_lsn < old_lsn,
        "the new cluster's WAL is behind the topic's positions ({new_lsn} < {old_lsn})"
    );
    let spate = start_spate(&data, &config);
    pg.sql("bank", "UPDATE items SET v = 1 WHERE id = 5");
    eventually("the topic to equal the new table", Duration::from_secs(60), || {
        differences(&latest(&read_topic(&kcat, &spate, "pg.public.items")), &table(&pg, "bank", ITEMS))
    });
    assert_no_duplicates(&read_topic(&kcat, &spate, "pg.public.items"));
    spate.stop();
}

#[test]
fn keyless_tables_are_refused_and_toast_added_columns_and_truncate_are_handled() {
    let Some(pg) = pg::start("shapes") else { return };
    let Some(kcat) = server::kcat() else { return };
    pg.sql("postgres", "CREATE DATABASE docs");
    pg.psql_script(
        "docs",
        "CREATE TABLE plain (id int PRIMARY KEY, n int, body text);
         CREATE TABLE full_image (id int PRIMARY KEY, n int, body text);
         ALTER TABLE full_image REPLICA IDENTITY FULL;
         CREATE TABLE keyless (a int, b text);
         INSERT INTO keyless VALUES (1, 'one');
         CREATE PUBLICATION docs FOR TABLE plain, full_image, keyless;",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spate = start_spate(&dir.path().join("spate"), &cdc_config(&pg, "docs", ""));

    // A table without a primary key cannot be keyed: refused with the reason and the fix.
    eventually("the refusal", Duration::from_secs(30), || {
        let log = spate.server_log();
        log.contains("table public.keyless has no primary key").then_some(()).ok_or("not yet".into())
    });
    assert_eq!(spate.metric("spate_cdc_up{slot=\"spate\"}"), 0.0);
    assert!(spate.metric("spate_cdc_errors_total{slot=\"spate\"}") >= 1.0);
    // Fixed in PostgreSQL, the connector picks it up on its next attempt.
    pg.sql("docs", "ALTER TABLE keyless ADD PRIMARY KEY (a)");
    eventually("the connector to start after the fix", Duration::from_secs(40), || {
        (spate.metric("spate_cdc_up{slot=\"spate\"}") == 1.0).then_some(()).ok_or("down".into())
    });
    let keyless = read_topic(&kcat, &spate, "pg.public.keyless");
    assert_eq!(keyless.len(), 1);
    assert_eq!(keyless[0].key, r#"{"a":1}"#);

    // TOAST'd values an update leaves unchanged: pgoutput leaves them out. With REPLICA
    // IDENTITY FULL the old row carries them; otherwise Debezium's placeholder, never null.
    let body = "(SELECT string_agg(md5(i::text || random()::text), '') FROM generate_series(1, 400) i)";
    pg.psql_script(
        "docs",
        &format!(
            "INSERT INTO plain VALUES (1, 0, {body}); INSERT INTO full_image VALUES (1, 0, {body});
             UPDATE plain SET n = 1; UPDATE full_image SET n = 1;"
        ),
    )
    .unwrap();
    let updated = |topic: &str| -> Option<Value> {
        read_topic(&kcat, &spate, topic).into_iter().filter_map(|r| r.value).find(|v| v["op"] == "u")
    };
    eventually("the updates", Duration::from_secs(30), || {
        (updated("pg.public.plain").is_some() && updated("pg.public.full_image").is_some())
            .then_some(())
            .ok_or("not yet".into())
    });
    let stored: String = pg.sql("docs", "SELECT body FROM full_image WHERE id = 1").trim().to_string();
    assert!(stored.len() > 10_000, "the body is large enough to be TOAST'd");
    let full = updated("pg.public.full_image").unwrap();
    assert_eq!(full["after"]["body"], stored.as_str(), "filled from the old row");
    assert_eq!(full["before"]["n"], 0, "REPLICA IDENTITY FULL: the before image");
    let plain = updated("pg.public.plain").unwrap();
    assert_eq!(plain["after"]["body"], spate::cdc::UNAVAILABLE);
    assert_eq!(plain["after"]["n"], 1);

    // A key change under the default identity: the old key carries nulls for the other
    // columns, so the unchanged TOAST'd body is the placeholder, not null.
    pg.sql("docs", "UPDATE plain SET id = 10 WHERE id = 1");
    eventually("the key change", Duration::from_secs(30), || {
        let rows = latest(&read_topic(&kcat, &spate, "pg.public.plain"));
        match rows.get(r#"{"id":10}"#) {
            Some(after) if after["body"] == spate::cdc::UNAVAILABLE && after["n"] == 1 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });

    // A row larger than a batch of the connector's own (512 KiB): a batch of its own.
    pg.sql("docs", "INSERT INTO plain VALUES (3, 3, repeat(md5('large'), 70000))");
    eventually("the large row", Duration::from_secs(30), || {
        let rows = latest(&read_topic(&kcat, &spate, "pg.public.plain"));
        match rows.get(r#"{"id":3}"#).and_then(|a| a["body"].as_str()) {
            Some(body) if body.len() == 32 * 70_000 => Ok(()),
            other => Err(format!("{:?}", other.map(str::len))),
        }
    });

    // An added column appears in the rows written after it.
    pg.psql_script(
        "docs",
        "ALTER TABLE plain ADD COLUMN tag text DEFAULT 'new'; INSERT INTO plain VALUES (2, 2, 'b', 'two');",
    )
    .unwrap();
    eventually("the row with the added column", Duration::from_secs(30), || {
        let rows = latest(&read_topic(&kcat, &spate, "pg.public.plain"));
        match rows.get(r#"{"id":2}"#) {
            Some(after) if after["tag"] == "two" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });

    // TRUNCATE: a tombstone for every key the topic holds.
    pg.sql("docs", "TRUNCATE plain");
    eventually("the truncate", Duration::from_secs(30), || {
        let rows = latest(&read_topic(&kcat, &spate, "pg.public.plain"));
        rows.is_empty().then_some(()).ok_or(format!("{} keys left", rows.len()))
    });
    let plain = read_topic(&kcat, &spate, "pg.public.plain");
    assert!(plain.iter().rev().take(3).all(|r| r.value.is_none()), "tombstones for the three keys");
    assert_eq!(plain.last().unwrap().position, plain[plain.len() - 3].position, "one position per TRUNCATE");
    assert_no_duplicates(&plain);
    spate.stop();
}
