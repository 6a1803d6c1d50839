//! One connector's life: connect, snapshot or resume, stream, and after any error start over
//! from the stored position.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pg_walstream::{
    CancellationToken, ChangeEvent, EventType, LogicalReplicationStream, PgReplicationConnection,
    ReplicaIdentity, ReplicationError, ReplicationStreamConfig, RowData, SnapshotOutcome, StreamingMode,
};

use super::envelope::{envelope, Column, Fields, Op, Source, Table};
use super::sink::{load_state, now_ms, store_state, Position, Sink, State};
use super::{CdcConfig, CdcStats};
use crate::{Engine, EngineError};

/// The prefix of the heartbeat messages the connector writes to the WAL.
const HEARTBEAT: &str = "spate.heartbeat";

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum CdcError {
    #[error("PostgreSQL: {0}")]
    Pg(#[from] ReplicationError),
    #[error("Spate: {0}")]
    Engine(#[from] EngineError),
    /// The database or a table cannot be captured as it is; the message says what to change.
    #[error("{0}")]
    Refused(String),
    #[error("resume state: {0}")]
    State(String),
    #[error("replication stream: {0}")]
    Protocol(String),
}

/// Runs sessions until `stop`, backing off after failures.
pub async fn run(engine: Engine, config: CdcConfig, stats: Arc<CdcStats>, stop: CancellationToken) {
    let mut backoff = Duration::from_secs(1);
    while !stop.is_cancelled() {
        let started = Instant::now();
        // A stop ends a session wherever it is: a snapshot cut short is taken again from the
        // start next time, and records appended without their commit stored are recognised by
        // their positions.
        let result = tokio::select! {
            r = session(&engine, &config, &stats, &stop) => r,
            _ = stop.cancelled() => Ok(()),
        };
        stats.up.store(0, Ordering::Relaxed);
        match result {
            Ok(()) => break,
            Err(_) if stop.is_cancelled() => break,
            Err(e) => {
                CdcStats::add(&stats.errors, 1);
                tracing::error!(slot = %config.slot, error = %e, retry_in = ?backoff, "cdc session ended");
            }
        }
        if started.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_secs(1);
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
    tracing::info!(slot = %config.slot, "cdc connector stopped");
}

/// `conninfo` with `name=value` added (a URI's query parameter, or a keyword pair; a later
/// setting wins in both forms).
fn with_param(conninfo: &str, name: &str, value: &str) -> String {
    let t = conninfo.trim();
    if t.starts_with("postgresql://") || t.starts_with("postgres://") {
        let sep = if !t.contains('?') {
            "?"
        } else if t.ends_with('?') || t.ends_with('&') {
            ""
        } else {
            "&"
        };
        format!("{t}{sep}{name}={value}")
    } else {
        format!("{t} {name}={value}")
    }
}

/// A plain SQL connection (simple queries), for the catalog, the slot and heartbeats.
struct Sql {
    conn: PgReplicationConnection,
}

impl Sql {
    fn connect(url: &str) -> Result<Sql, CdcError> {
        let mut url = with_param(url, "replication", "false");
        if !url.contains("connect_timeout") {
            // An unreachable server fails the session in seconds, not at the TCP timeout.
            url = with_param(&url, "connect_timeout", "10");
        }
        Ok(Sql { conn: PgReplicationConnection::connect(&url)? })
    }

    /// The first column of every row.
    fn column(&mut self, sql: &str) -> Result<Vec<Option<String>>, CdcError> {
        let r = self.conn.exec(sql)?;
        Ok((0..r.ntuples()).map(|i| r.get_value(i, 0)).collect())
    }

    fn value(&mut self, sql: &str) -> Result<Option<String>, CdcError> {
        Ok(self.column(sql)?.into_iter().next().flatten())
    }
}

fn literal(s: &str) -> Result<String, CdcError> {
    Ok(pg_walstream::quote_literal(s)?)
}

/// What the catalog says about a table's keys.
struct KeyInfo {
    identity: char,
    primary: Vec<String>,
    identity_index: Vec<String>,
}

/// The catalog's keys of the relation `oid` (found again after a rename); `None` once the table
/// is dropped.
fn key_info(sql: &mut Sql, oid: u32) -> Result<Option<KeyInfo>, CdcError> {
    let index_columns = |which: &str| {
        format!(
            "coalesce((SELECT json_agg(a.attname ORDER BY a.attnum) FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
             WHERE i.indrelid = c.oid AND i.{which}), '[]'::json)::text"
        )
    };
    let query = format!(
        "SELECT c.relreplident::text || ' ' || {} || ' ' || {} FROM pg_class c WHERE c.oid = {oid}",
        index_columns("indisprimary"),
        index_columns("indisreplident"),
    );
    let Some(line) = sql.value(&query)? else { return Ok(None) };
    let mut parts = line.splitn(2, ' ');
    let identity = parts.next().and_then(|s| s.chars().next()).unwrap_or('d');
    // Two JSON arrays separated by a space: parse them as a stream.
    let rest = parts.next().unwrap_or("[] []");
    let mut arrays = serde_json::Deserializer::from_str(rest).into_iter::<Vec<String>>();
    let mut next = || -> Result<Vec<String>, CdcError> {
        arrays
            .next()
            .transpose()
            .map_err(|e| CdcError::Protocol(format!("catalog answer {rest:?}: {e}")))
            .map(Option::unwrap_or_default)
    };
    Ok(Some(KeyInfo { identity, primary: next()?, identity_index: next()? }))
}

fn no_key(schema: &str, table: &str, publication: &str) -> CdcError {
    CdcError::Refused(format!(
        "table {schema}.{table} has no primary key (nor REPLICA IDENTITY USING INDEX): its rows cannot be keyed \
         in a compacted topic. Add a primary key, set REPLICA IDENTITY USING INDEX <unique index>, or remove it \
         from publication {publication}"
    ))
}

/// The key columns (indexes into `columns`, in column order) from the catalog: the replica
/// identity index, else the primary key. Tables with neither are refused.
fn catalog_key(
    schema: &str,
    table: &str,
    columns: &[Column],
    info: &KeyInfo,
    publication: &str,
) -> Result<Vec<usize>, CdcError> {
    let names = match info.identity {
        'i' if !info.identity_index.is_empty() => &info.identity_index,
        _ => &info.primary,
    };
    if names.is_empty() {
        return Err(no_key(schema, table, publication));
    }
    let mut key = names
        .iter()
        .map(|n| {
            columns.iter().position(|c| &c.name == n).ok_or_else(|| {
                CdcError::Refused(format!(
                    "table {schema}.{table}: key column {n:?} is not published (column lists must include the key)"
                ))
            })
        })
        .collect::<Result<Vec<usize>, CdcError>>()?;
    key.sort_unstable();
    Ok(key)
}

fn check_database(sql: &mut Sql, config: &CdcConfig) -> Result<String, CdcError> {
    let level = sql.value("SHOW wal_level")?.unwrap_or_default();
    if level != "logical" {
        return Err(CdcError::Refused(format!(
            "wal_level is {level:?}: logical decoding needs wal_level = logical (postgresql.conf, then a restart)"
        )));
    }
    let db = sql.value("SELECT current_database()")?.unwrap_or_default();
    let publication = literal(&config.publication)?;
    if sql.value(&format!("SELECT 1 FROM pg_publication WHERE pubname = {publication}"))?.is_none() {
        return Err(CdcError::Refused(format!(
            "publication {:?} does not exist in database {db:?}: CREATE PUBLICATION {} FOR TABLE ...",
            config.publication, config.publication
        )));
    }
    Ok(db)
}

/// Whether our slot exists (refusing a slot of that name that is not ours to use).
fn slot_exists(sql: &mut Sql, slot: &str, db: &str) -> Result<bool, CdcError> {
    let found = sql.value(&format!(
        "SELECT slot_type || ' ' || coalesce(plugin, '') || ' ' || coalesce(database, '') FROM pg_replication_slots WHERE slot_name = {}",
        literal(slot)?
    ))?;
    match found {
        None => Ok(false),
        Some(s) if s == format!("logical pgoutput {db}") => Ok(true),
        Some(s) => Err(CdcError::Refused(format!(
            "replication slot {slot:?} exists but is not a pgoutput slot of database {db:?} ({s}); choose another slot name"
        ))),
    }
}

/// Drops our slot, waiting for a walsender of an earlier session (not yet noticed gone) to
/// let go of it.
async fn drop_slot(sql: &mut Sql, slot: &str) -> Result<(), CdcError> {
    let slot_literal = literal(slot)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match sql.column(&format!("SELECT pg_drop_replication_slot({slot_literal})")) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() < deadline && e.to_string().contains("is active") => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The tables the connector knows, by relation OID (streaming; `None`: a relation whose
/// changes are passed over, see [`Session::relation_table`]) and by `schema.table`.
#[derive(Default)]
struct Tables {
    by_oid: HashMap<u32, Option<Arc<Table>>>,
    by_name: HashMap<String, Arc<Table>>,
    /// Which table each topic was first used for (two tables must not share one).
    topics: HashMap<String, String>,
}

/// The transaction being read.
struct Txn {
    xid: u32,
    lsn: u64,
    commit_ms: i64,
    seq: u64,
    /// Committed below the resume position: written by an earlier session.
    skip: bool,
}

struct Session<'a> {
    config: &'a CdcConfig,
    stats: &'a CdcStats,
    db: String,
    sql: Sql,
    sink: Sink,
    tables: Tables,
    engine: Engine,
    /// The snapshot generation of the positions this session writes.
    epoch: u64,
}

async fn session(
    engine: &Engine,
    config: &CdcConfig,
    stats: &Arc<CdcStats>,
    stop: &CancellationToken,
) -> Result<(), CdcError> {
    let mut sql = Sql::connect(&config.url)?;
    let db = check_database(&mut sql, config)?;
    let mut state = load_state(engine, &config.slot).await?.unwrap_or_default();
    let exists = slot_exists(&mut sql, &config.slot, &db)?;
    let stream_config = ReplicationStreamConfig::builder(config.slot.clone(), config.publication.clone())
        .with_protocol_version(1)
        .with_streaming_mode(StreamingMode::Off)
        .with_messages(true)
        .with_feedback_interval(Duration::from_secs(1))
        .with_connection_timeout(Duration::from_secs(10));
    let stream =
        LogicalReplicationStream::new(&with_param(&config.url, "replication", "database"), stream_config)
            .await?;
    let mut s = Session {
        config,
        stats,
        db,
        sql,
        sink: Sink::new(engine.clone(), config.partitions, config.flush_bytes, Arc::clone(stats)),
        tables: Tables::default(),
        engine: engine.clone(),
        epoch: state.epoch,
    };
    let result = async {
        let mut stream = if state.snapshot_done && exists && state.publication == config.publication {
            stream
        } else {
            if exists {
                let why = if state.snapshot_done { "the publication changed" } else { "its snapshot did not finish" };
                tracing::warn!(slot = %config.slot, why, "dropping the replication slot to take a new snapshot");
                drop_slot(&mut s.sql, &config.slot).await?;
            } else if state.snapshot_done {
                tracing::warn!(slot = %config.slot, "the replication slot is gone (dropped, or the database restored): taking a new snapshot");
            }
            let (stream, snapshot) = s.snapshot(stream, state.epoch).await?;
            state = snapshot;
            stream
        };
        stream.start(Some(state.lsn)).await?;
        stats.confirmed_lsn.store(state.lsn, Ordering::Relaxed);
        stats.up.store(1, Ordering::Relaxed);
        tracing::info!(slot = %config.slot, lsn = %pg_walstream::format_lsn(state.lsn), "cdc streaming");

        let feedback = Arc::clone(&stream.shared_lsn_feedback);
        feedback.update_flushed_lsn(state.lsn);
        feedback.update_applied_lsn(state.lsn);
        let token = stop.child_token();
        let budget = Arc::new(tokio::sync::Semaphore::new(EVENT_BYTES_IN_FLIGHT));
        let (tx, mut rx) = tokio::sync::mpsc::channel(EVENTS_IN_FLIGHT);
        let reader = tokio::spawn(read_events(stream, tx, Arc::clone(&budget), token.clone()));
        let (beat_config, beat_stats, beat_token) = (config.clone(), Arc::clone(stats), token.clone());
        // Not joined: it ends by itself at its next check (a query in flight may take a while).
        std::thread::Builder::new()
            .name("spate-cdc-beat".into())
            .spawn(move || heartbeat(beat_config, beat_stats, beat_token))
            .map_err(|e| CdcError::Protocol(format!("starting the heartbeat thread: {e}")))?;
        let result = s.stream(&mut rx, &state, &feedback).await;
        token.cancel();
        drop(rx);
        let _ = reader.await;
        result
    }
    .await;
    // Appends still in flight land (or fail) before the next session reads the tails.
    s.sink.drain().await;
    result
}

/// Decoded changes the reader may hold ahead of the writer, by count and by bytes.
const EVENTS_IN_FLIGHT: usize = 4096;
const EVENT_BYTES_IN_FLIGHT: usize = 64 << 20;

/// About the memory a change takes (its column values).
fn event_bytes(event: &ChangeEvent) -> usize {
    let row = |r: &RowData| r.iter().map(|(n, v)| n.len() + v.as_bytes().len() + 16).sum::<usize>();
    128 + match &event.event_type {
        EventType::Insert { data, .. } => row(data),
        EventType::Update { old_data, new_data, .. } => row(new_data) + old_data.as_ref().map_or(0, row),
        EventType::Delete { old_data, .. } => row(old_data),
        _ => 0,
    }
}

type Event = (Result<ChangeEvent, ReplicationError>, Option<tokio::sync::OwnedSemaphorePermit>);

/// Moves events from the replication connection to the writer, sending feedback between them;
/// each holds its share of the byte budget until the writer is done with it.
async fn read_events(
    mut stream: LogicalReplicationStream,
    tx: tokio::sync::mpsc::Sender<Event>,
    budget: Arc<tokio::sync::Semaphore>,
    token: CancellationToken,
) {
    loop {
        let event = stream.next_event(&token).await;
        let failed = event.is_err();
        let bytes = event.as_ref().map_or(0, event_bytes).min(EVENT_BYTES_IN_FLIGHT) as u32;
        let permit = match Arc::clone(&budget).acquire_many_owned(bytes).await {
            Ok(p) => Some(p),
            Err(_) => break,
        };
        if tx.send((event, permit)).await.is_err() || failed {
            break;
        }
        stream.maybe_send_feedback().await;
    }
    if !token.is_cancelled() {
        return;
    }
    // A clean stop: report the final confirmed position.
    let _ = stream.send_feedback().await;
}

/// Every interval: a non-transactional message into the WAL (so an idle database still moves
/// the slot: its position is confirmed once everything before it is written) and the slot's
/// lag. On a thread of its own with a connection of its own, outside the connector's runtime:
/// a query blocks its thread, and one blocked on a runtime's worker while that runtime shuts
/// down would never finish. The thread ends at the first check after `token` is cancelled.
fn heartbeat(config: CdcConfig, stats: Arc<CdcStats>, token: CancellationToken) {
    let mut sql = None;
    let mut warned = false;
    let mut next = Instant::now();
    loop {
        while Instant::now() < next {
            if token.is_cancelled() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20).min(next.saturating_duration_since(Instant::now())));
        }
        if token.is_cancelled() {
            return;
        }
        next = Instant::now() + config.heartbeat_interval();
        if sql.is_none() {
            sql = Sql::connect(&config.url).ok();
        }
        let Some(conn) = sql.as_mut() else { continue };
        let beat = |conn: &mut Sql| -> Result<Option<String>, CdcError> {
            conn.column(&format!("SELECT pg_logical_emit_message(false, '{HEARTBEAT}', '')"))?;
            conn.value(&format!(
                "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = {}",
                literal(&config.slot)?
            ))
        };
        match beat(conn) {
            Ok(lag) => {
                warned = false;
                if let Some(lag) = lag.and_then(|l| l.parse::<i64>().ok()) {
                    stats.slot_lag_bytes.store(lag, Ordering::Relaxed);
                }
            }
            Err(_) if token.is_cancelled() => return,
            Err(e) => {
                if !warned {
                    tracing::warn!(slot = %config.slot, error = %e, "cdc heartbeat failed (an idle database will not advance the slot)");
                    warned = true;
                }
                sql = None;
            }
        }
    }
}

impl Session<'_> {
    fn source(&self, ts_ms: i64, tx_id: Option<u32>, lsn: u64, snapshot: &'static str) -> Source<'_> {
        Source { name: &self.config.topic_prefix, db: &self.db, ts_ms, tx_id, lsn, snapshot }
    }

    fn position(&self, lsn: u64, seq: u64) -> Position {
        Position { epoch: self.epoch, lsn, seq }
    }

    /// A table keyed by `key`; its topic is created if missing (and may not be another
    /// table's).
    fn table(
        &mut self,
        schema: &str,
        name: &str,
        columns: Vec<Column>,
        key: Vec<usize>,
    ) -> Result<Arc<Table>, CdcError> {
        let topic = Table::topic_name(&self.config.topic_prefix, schema, name);
        let table = Arc::new(Table {
            schema: schema.to_string(),
            name: name.to_string(),
            columns,
            key,
            topic: Arc::from(topic.as_str()),
        });
        let owner = self.tables.topics.entry(topic.clone()).or_insert_with(|| table.qualified());
        if *owner != table.qualified() {
            return Err(CdcError::Refused(format!(
                "tables {owner} and {} would share topic {topic}: rename one, or remove one from the publication",
                table.qualified()
            )));
        }
        self.sink.ensure_topic(&topic)?;
        Ok(table)
    }

    /// The table of a Relation message. Under the default replica identity and `USING INDEX`
    /// the message marks the key columns itself; under `FULL` (every column marked) and
    /// `NOTHING` the key comes from the catalog, by OID (a renamed table is found again). A
    /// table dropped since has no catalog entry: its changes are passed over (`None`).
    fn relation_table(
        &mut self,
        oid: u32,
        schema: &str,
        name: &str,
        identity: &ReplicaIdentity,
        columns: &[pg_walstream::RelationColumn],
    ) -> Result<Option<Arc<Table>>, CdcError> {
        let cols: Vec<Column> =
            columns.iter().map(|c| Column { name: c.name.to_string(), type_oid: c.type_id }).collect();
        let key = match identity {
            ReplicaIdentity::Default | ReplicaIdentity::Index => {
                let key: Vec<usize> =
                    columns.iter().enumerate().filter(|(_, c)| c.is_key).map(|(i, _)| i).collect();
                if key.is_empty() {
                    return Err(no_key(schema, name, &self.config.publication));
                }
                key
            }
            ReplicaIdentity::Full | ReplicaIdentity::Nothing => match key_info(&mut self.sql, oid)? {
                Some(info) => catalog_key(schema, name, &cols, &info, &self.config.publication)?,
                None => {
                    tracing::warn!(table = %format!("{schema}.{name}"), "cdc: the table was dropped and has REPLICA IDENTITY FULL or NOTHING: its last changes cannot be keyed and are passed over");
                    return Ok(None);
                }
            },
        };
        self.table(schema, name, cols, key).map(Some)
    }

    /// Creates the slot with an exported snapshot, empties the topics of what an earlier
    /// snapshot left (tombstones), copies every published table, and stores the consistent
    /// point as the resume position, in a new epoch.
    async fn snapshot(
        &mut self,
        stream: LogicalReplicationStream,
        epoch: u64,
    ) -> Result<(LogicalReplicationStream, State), CdcError> {
        let snap = match stream.snapshot().await? {
            SnapshotOutcome::Available(snap) => snap,
            SnapshotOutcome::Unavailable(_) => {
                return Err(CdcError::Protocol(format!(
                    "slot {:?} appeared while a snapshot was being set up",
                    self.config.slot
                )))
            }
        };
        let lsn = snap.consistent_point().value();
        let mut tables = HashMap::new();
        for t in snap.tables() {
            let rel = t.relation();
            let columns: Vec<Column> = rel
                .columns
                .iter()
                .map(|c| Column { name: c.name.to_string(), type_oid: c.type_id })
                .collect();
            let Some(info) = key_info(&mut self.sql, rel.relation_id)? else {
                return Err(CdcError::Protocol(format!(
                    "table {} vanished from the catalog",
                    rel.full_name()
                )));
            };
            let key =
                catalog_key(&rel.namespace, &rel.relation_name, &columns, &info, &self.config.publication)?;
            let table = self.table(&rel.namespace, &rel.relation_name, columns, key)?;
            tables.insert(rel.full_name(), table);
        }
        // The new epoch sorts after every position the topics hold, whatever the LSNs of the
        // database now (a restored one may be behind).
        let mut newest = epoch;
        for table in tables.values() {
            let topic = Arc::clone(&table.topic);
            for p in 0..self.engine.topic(&topic)?.partitions {
                newest = newest.max(self.sink.tail(&topic, p).await?.epoch);
            }
        }
        self.epoch = newest + 1;
        tracing::info!(slot = %self.config.slot, tables = tables.len(), epoch = self.epoch, lsn = %pg_walstream::format_lsn(lsn), "cdc snapshot");
        let started = now_ms();
        let mut seq = 0;
        for table in tables.values() {
            let topic = Arc::clone(&table.topic);
            for key in self.sink.live_keys(&topic).await? {
                self.sink.push(&topic, key, None, self.position(lsn, seq), false).await?;
                seq += 1;
            }
        }
        let mut rows = snap.rows();
        let mut held: Option<(Arc<Table>, RowData)> = None;
        let mut copied = 0u64;
        while let Some(row) = rows.next_row().await? {
            let Some(table) = tables.get(&row.relation.full_name()) else {
                return Err(CdcError::Protocol(format!(
                    "snapshot row of unknown table {}",
                    row.relation.full_name()
                )));
            };
            if let Some((t, data)) = held.replace((Arc::clone(table), row.data)) {
                self.snapshot_row(&t, &data, lsn, started, &mut seq, "true").await?;
                copied += 1;
            }
        }
        if let Some((t, data)) = held {
            self.snapshot_row(&t, &data, lsn, started, &mut seq, "last").await?;
            copied += 1;
        }
        let stream = rows.finish().await?;
        self.sink.flush().await?;
        let state = State {
            lsn,
            snapshot_done: true,
            publication: self.config.publication.clone(),
            epoch: self.epoch,
        };
        store_state(&self.engine, &self.config.slot, &state).await?;
        CdcStats::add(&self.stats.snapshots, 1);
        tracing::info!(slot = %self.config.slot, rows = copied, "cdc snapshot done");
        for (name, table) in tables {
            self.tables.by_name.insert(name, table);
        }
        Ok((stream, state))
    }

    async fn snapshot_row(
        &mut self,
        table: &Table,
        data: &RowData,
        lsn: u64,
        ts: i64,
        seq: &mut u64,
        marker: &'static str,
    ) -> Result<(), CdcError> {
        let key = self.key(table, data, None)?;
        let after = table.row(data, None);
        let value =
            envelope(table, Op::Read, None, Some(&after), &self.source(ts, None, lsn, marker), now_ms());
        let position = self.position(lsn, *seq);
        self.sink.push(&table.topic, key, Some(value), position, false).await?;
        *seq += 1;
        CdcStats::add(&self.stats.snapshot_rows, 1);
        Ok(())
    }

    /// Writes events as they come; whenever the reader has nothing more queued (or every
    /// [`STORE_INTERVAL`] under a steady stream, between transactions), appends what is
    /// buffered and, past a commit, stores and confirms the new position.
    async fn stream(
        &mut self,
        rx: &mut tokio::sync::mpsc::Receiver<Event>,
        state: &State,
        feedback: &pg_walstream::SharedLsnFeedback,
    ) -> Result<(), CdcError> {
        let resume = state.lsn;
        let mut txn: Option<Txn> = None;
        let mut done = resume;
        let mut stored = resume;
        loop {
            let Some(first) = rx.recv().await else {
                return Err(CdcError::Protocol("the replication reader stopped".into()));
            };
            let since = Instant::now();
            let mut next = Some(first);
            while let Some((event, permit)) = next {
                match event {
                    Ok(event) => self.event(event, &mut txn, &mut done, resume).await?,
                    Err(ReplicationError::Cancelled(_)) => return Ok(()),
                    Err(e) => return Err(e.into()),
                }
                drop(permit);
                if txn.is_none() && since.elapsed() >= STORE_INTERVAL {
                    break;
                }
                next = rx.try_recv().ok();
            }
            self.sink.flush().await?;
            if done > stored {
                let state = State { lsn: done, ..state.clone() };
                store_state(&self.engine, &self.config.slot, &state).await?;
                stored = done;
                feedback.update_flushed_lsn(done);
                feedback.update_applied_lsn(done);
                self.stats.confirmed_lsn.store(done, Ordering::Relaxed);
            }
        }
    }

    /// The table of a change (`None`: a relation passed over).
    fn relation(&self, oid: u32) -> Result<Option<Arc<Table>>, CdcError> {
        self.tables.by_oid.get(&oid).cloned().ok_or_else(|| {
            CdcError::Protocol(format!("change of relation {oid} before its Relation message"))
        })
    }

    async fn event(
        &mut self,
        event: ChangeEvent,
        txn: &mut Option<Txn>,
        done: &mut u64,
        resume: u64,
    ) -> Result<(), CdcError> {
        match event.event_type {
            EventType::Begin { transaction_id, final_lsn, commit_timestamp } => {
                *txn = Some(Txn {
                    xid: transaction_id,
                    lsn: final_lsn.value(),
                    commit_ms: commit_timestamp.timestamp_millis(),
                    seq: 0,
                    skip: final_lsn.value() < resume,
                });
            }
            EventType::Commit { end_lsn, .. } => {
                if let Some(t) = txn.take() {
                    if !t.skip {
                        CdcStats::add(&self.stats.transactions, 1);
                        self.stats.last_commit_ms.store(t.commit_ms, Ordering::Relaxed);
                    }
                }
                *done = (*done).max(end_lsn.value());
            }
            EventType::Relation { relation_id, namespace, relation_name, replica_identity, columns } => {
                let table = self.relation_table(
                    relation_id,
                    &namespace,
                    &relation_name,
                    &replica_identity,
                    &columns,
                )?;
                if let Some(table) = &table {
                    self.tables.by_name.insert(table.qualified(), Arc::clone(table));
                }
                self.tables.by_oid.insert(relation_id, table);
            }
            EventType::Insert { relation_oid, data, .. } => {
                let Some(t) = live(txn) else { return Ok(()) };
                let Some(table) = self.relation(relation_oid)? else { return Ok(()) };
                let key = self.key(&table, &data, None)?;
                let after = table.row(&data, None);
                self.change(&table, t, key, Op::Create, None, Some(after)).await?;
            }
            EventType::Update { relation_oid, old_data, new_data, replica_identity, .. } => {
                let Some(t) = live(txn) else { return Ok(()) };
                let Some(table) = self.relation(relation_oid)? else { return Ok(()) };
                // Key columns an update left unchanged come from the old key; other columns
                // only from a full old row (the old key carries nulls for them).
                let full = matches!(replica_identity, ReplicaIdentity::Full);
                let key = self.key(&table, &new_data, old_data.as_ref())?;
                let old_key = old_data.as_ref().map(|o| self.key(&table, o, None)).transpose()?;
                let after = table.row(&new_data, old_data.as_ref().filter(|_| full));
                match (old_key, old_data) {
                    // The key changed: a delete of the old key (and its tombstone), a create.
                    (Some(old_key), Some(old)) if old_key != key => {
                        let before = table.key_row(&old);
                        self.change(&table, t, old_key.clone(), Op::Delete, Some(before), None).await?;
                        self.tombstone(&table, t, old_key).await?;
                        self.change(&table, t, key, Op::Create, None, Some(after)).await?;
                    }
                    (_, old) => {
                        let before = old.filter(|_| full).map(|old| table.row(&old, None));
                        self.change(&table, t, key, Op::Update, before, Some(after)).await?;
                    }
                }
            }
            EventType::Delete { relation_oid, old_data, .. } => {
                let Some(t) = live(txn) else { return Ok(()) };
                let Some(table) = self.relation(relation_oid)? else { return Ok(()) };
                let key = self.key(&table, &old_data, None)?;
                let before = table.key_row(&old_data);
                self.change(&table, t, key.clone(), Op::Delete, Some(before), None).await?;
                self.tombstone(&table, t, key).await?;
            }
            EventType::Truncate { tables, .. } => {
                let Some(t) = live(txn) else { return Ok(()) };
                // One position for all of a TRUNCATE's tombstones: a replay after a crash
                // among them tombstones the keys still live then, and nothing after it in the
                // transaction moves.
                let position = self.position(t.lsn, t.seq);
                t.seq += 1;
                for name in tables {
                    let Some(table) = self.tables.by_name.get(&*name).cloned() else { continue };
                    let topic = Arc::clone(&table.topic);
                    for key in self.sink.live_keys(&topic).await? {
                        self.sink.push(&topic, key, None, position, true).await?;
                    }
                }
            }
            EventType::Message { prefix, message_lsn, .. } if &*prefix == HEARTBEAT && txn.is_none() => {
                // Everything committed before the message has been delivered ahead of it.
                *done = (*done).max(message_lsn.value());
            }
            EventType::StreamStart { .. }
            | EventType::StreamStop
            | EventType::StreamCommit { .. }
            | EventType::StreamAbort { .. }
            | EventType::BeginPrepare { .. }
            | EventType::Prepare { .. }
            | EventType::CommitPrepared { .. }
            | EventType::RollbackPrepared { .. }
            | EventType::StreamPrepare { .. } => {
                return Err(CdcError::Protocol(
                    "streamed or two-phase transaction on a protocol-1 stream".into(),
                ));
            }
            _ => {}
        }
        Ok(())
    }

    fn key(&self, table: &Table, row: &RowData, fill: Option<&RowData>) -> Result<Vec<u8>, CdcError> {
        table.key(row, fill).map_err(|e| CdcError::Refused(e.to_string()))
    }

    async fn change(
        &mut self,
        table: &Table,
        t: &mut Txn,
        key: Vec<u8>,
        op: Op,
        before: Option<Fields<'_>>,
        after: Option<Fields<'_>>,
    ) -> Result<(), CdcError> {
        let source = self.source(t.commit_ms, Some(t.xid), t.lsn, "false");
        let value = envelope(table, op, before.as_ref(), after.as_ref(), &source, now_ms());
        let position = self.position(t.lsn, t.seq);
        t.seq += 1;
        self.sink.push(&table.topic, key, Some(value), position, false).await
    }

    async fn tombstone(&mut self, table: &Table, t: &mut Txn, key: Vec<u8>) -> Result<(), CdcError> {
        let position = self.position(t.lsn, t.seq);
        t.seq += 1;
        self.sink.push(&table.topic, key, None, position, false).await
    }
}

/// How long a steady stream of changes goes without its position stored and confirmed.
const STORE_INTERVAL: Duration = Duration::from_millis(100);

/// The open transaction, unless it is one an earlier session wrote.
fn live(txn: &mut Option<Txn>) -> Option<&mut Txn> {
    txn.as_mut().filter(|t| !t.skip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_parameter_is_added_to_both_forms() {
        assert_eq!(
            with_param("postgresql://u@h/db", "replication", "database"),
            "postgresql://u@h/db?replication=database"
        );
        assert_eq!(
            with_param("postgres://u@h/db?sslmode=disable", "replication", "database"),
            "postgres://u@h/db?sslmode=disable&replication=database"
        );
        assert_eq!(
            with_param("host=h dbname=db", "replication", "false"),
            "host=h dbname=db replication=false"
        );
    }

    #[test]
    fn catalog_key_is_the_identity_index_else_the_primary_key_else_refused() {
        let cols: Vec<Column> =
            ["id", "email", "name"].iter().map(|n| Column { name: n.to_string(), type_oid: 25 }).collect();
        let info = |identity, primary: &[&str], index: &[&str]| KeyInfo {
            identity,
            primary: primary.iter().map(|s| s.to_string()).collect(),
            identity_index: index.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(catalog_key("s", "t", &cols, &info('d', &["id"], &[]), "p").unwrap(), vec![0]);
        assert_eq!(catalog_key("s", "t", &cols, &info('i', &["id"], &["email"]), "p").unwrap(), vec![1]);
        assert_eq!(
            catalog_key("s", "t", &cols, &info('f', &["name", "id"], &[]), "p").unwrap(),
            vec![0, 2],
            "column order, as the stream's key flags give it"
        );
        let err = catalog_key("s", "t", &cols, &info('f', &[], &[]), "p").unwrap_err().to_string();
        assert!(err.contains("s.t has no primary key") && err.contains("publication p"), "{err}");
        let err = catalog_key("s", "t", &cols, &info('d', &["gone"], &[]), "p").unwrap_err().to_string();
        assert!(err.contains("not published"), "{err}");
    }
}
