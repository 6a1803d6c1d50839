//! What a captured row becomes: a key (the primary key as a JSON object) and a value (the
//! Debezium change-event envelope, schemaless JSON). Pure functions over rows as pgoutput and
//! `COPY` give them: text values typed by their column's type OID.

use std::sync::Arc;

use pg_walstream::{ColumnValue, RowData};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Number, Value};

/// What Debezium writes for a TOAST'd column that an update left unchanged and whose value the
/// event does not carry (`unavailable.value.placeholder`).
pub const UNAVAILABLE: &str = "__debezium_unavailable_value";

/// Type OIDs with a JSON form other than a string (`pg_type.dat`).
mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const OID: u32 = 26;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
}

/// One column of a captured table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
}

/// A captured table as the connector knows it: its columns in order and which of them make the
/// key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub schema: String,
    pub name: String,
    pub columns: Vec<Column>,
    /// Indexes into `columns`, in column order; never empty.
    pub key: Vec<usize>,
    /// Its topic ([`Table::topic_name`]), named once.
    pub topic: Arc<str>,
}

/// A row that cannot be keyed: its key column is missing or null.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{schema}.{table}: key column {column:?} is missing or null in a captured row")]
pub struct KeyError {
    pub schema: String,
    pub table: String,
    pub column: String,
}

/// Where a change comes from, for the envelope's `source` block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source<'a> {
    /// The connector's logical name (the topic prefix), Debezium's `topic.prefix`.
    pub name: &'a str,
    pub db: &'a str,
    /// Commit time of the transaction (or of the snapshot), milliseconds since the epoch.
    pub ts_ms: i64,
    pub tx_id: Option<u32>,
    /// The transaction's commit LSN (the snapshot's consistent point for snapshot rows).
    pub lsn: u64,
    /// `"false"`, or `"true"` / `"last"` for snapshot rows (Debezium's strings).
    pub snapshot: &'static str,
}

/// The kind of change, Debezium's `op`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `r`: a row read by the initial snapshot.
    Read,
    /// `c`
    Create,
    /// `u`
    Update,
    /// `d`
    Delete,
}

impl Op {
    fn code(self) -> &'static str {
        match self {
            Op::Read => "r",
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
        }
    }
}

impl Table {
    /// The topic of a table: `<prefix>.<schema>.<table>` (characters Kafka does not allow in
    /// topic names become `_`, as Debezium does).
    pub fn topic_name(prefix: &str, schema: &str, name: &str) -> String {
        let clean = |s: &str| -> String {
            s.chars()
                .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' })
                .collect()
        };
        format!("{prefix}.{}.{}", clean(schema), clean(name))
    }

    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// The key of `row`: a JSON object of the key columns, in column order. A key column the row
    /// lacks (a TOAST'd value an update left unchanged) is taken from `fill`.
    pub fn key(&self, row: &RowData, fill: Option<&RowData>) -> Result<Vec<u8>, KeyError> {
        let mut key = Fields::default();
        for &i in &self.key {
            let column = &self.columns[i];
            match row.get(&column.name).or_else(|| fill.and_then(|f| f.get(&column.name))) {
                Some(v) if !v.is_null() => {
                    key.0.push((&column.name, json_value(column.type_oid, v)));
                }
                _ => {
                    return Err(KeyError {
                        schema: self.schema.clone(),
                        table: self.name.clone(),
                        column: column.name.clone(),
                    })
                }
            }
        }
        Ok(serde_json::to_vec(&key).expect("JSON values serialise"))
    }

    /// `row` as a JSON object of every column. A column the row lacks (pgoutput leaves out a
    /// TOAST'd value an update did not change) is taken from `fill` (the old row, which carries
    /// it under `REPLICA IDENTITY FULL`), else written as [`UNAVAILABLE`]: never as null.
    pub fn row(&self, row: &RowData, fill: Option<&RowData>) -> Fields<'_> {
        let mut out = Fields::default();
        for column in &self.columns {
            let v = match row.get(&column.name).or_else(|| fill.and_then(|f| f.get(&column.name))) {
                Some(v) => json_value(column.type_oid, v),
                None => Value::String(UNAVAILABLE.to_string()),
            };
            out.0.push((&column.name, v));
        }
        out
    }

    /// The key columns of `row` only (the `before` of a delete under the default replica
    /// identity carries nothing else).
    pub fn key_row(&self, row: &RowData) -> Fields<'_> {
        let mut out = Fields::default();
        for column in &self.columns {
            if let Some(v) = row.get(&column.name) {
                out.0.push((&column.name, json_value(column.type_oid, v)));
            }
        }
        out
    }
}

/// A JSON object whose fields keep their order (the table's column order), as Debezium writes
/// them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fields<'a>(pub Vec<(&'a str, Value)>);

impl Fields<'_> {
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

/// `fields["name"]`, null when absent (as for a JSON value).
impl std::ops::Index<&str> for Fields<'_> {
    type Output = Value;

    fn index(&self, name: &str) -> &Value {
        const NULL: Value = Value::Null;
        self.get(name).unwrap_or(&NULL)
    }
}

impl Serialize for Fields<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

#[derive(serde::Serialize)]
struct Envelope<'a> {
    before: Option<&'a Fields<'a>>,
    after: Option<&'a Fields<'a>>,
    source: SourceBlock<'a>,
    op: &'static str,
    ts_ms: i64,
    transaction: Option<()>,
}

#[derive(serde::Serialize)]
struct SourceBlock<'a> {
    version: &'static str,
    connector: &'static str,
    name: &'a str,
    ts_ms: i64,
    snapshot: &'static str,
    db: &'a str,
    schema: &'a str,
    table: &'a str,
    #[serde(rename = "txId")]
    tx_id: Option<u32>,
    lsn: u64,
    xmin: Option<u64>,
}

/// The Debezium envelope: `{"before", "after", "source", "op", "ts_ms", "transaction"}`.
pub fn envelope(
    table: &Table,
    op: Op,
    before: Option<&Fields<'_>>,
    after: Option<&Fields<'_>>,
    source: &Source<'_>,
    now_ms: i64,
) -> Vec<u8> {
    let envelope = Envelope {
        before,
        after,
        source: SourceBlock {
            version: env!("CARGO_PKG_VERSION"),
            connector: "postgresql",
            name: source.name,
            ts_ms: source.ts_ms,
            snapshot: source.snapshot,
            db: source.db,
            schema: &table.schema,
            table: &table.name,
            tx_id: source.tx_id,
            lsn: source.lsn,
            xmin: None,
        },
        op: op.code(),
        ts_ms: now_ms,
        transaction: None,
    };
    serde_json::to_vec(&envelope).expect("JSON values serialise")
}

/// One value in its JSON form. Integers and booleans become JSON numbers and booleans; finite
/// floats numbers (NaN and the infinities strings); bytea base64 (Debezium's default
/// `binary.handling.mode=bytes`); everything else PostgreSQL's text form: `numeric` as a string
/// (`decimal.handling.mode=string`), json/jsonb as the document's text, temporal types as
/// PostgreSQL prints them.
pub fn json_value(type_oid: u32, value: &ColumnValue) -> Value {
    let text = match value {
        ColumnValue::Null => return Value::Null,
        ColumnValue::Binary(bytes) => return Value::String(base64(bytes)),
        ColumnValue::Text(bytes) => String::from_utf8_lossy(bytes),
    };
    match type_oid {
        oid::BOOL => match &*text {
            "t" => Value::Bool(true),
            "f" => Value::Bool(false),
            _ => Value::String(text.into_owned()),
        },
        oid::INT2 | oid::INT4 | oid::INT8 | oid::OID => match text.parse::<i64>() {
            Ok(n) => Value::Number(n.into()),
            Err(_) => Value::String(text.into_owned()),
        },
        oid::FLOAT4 | oid::FLOAT8 => match text.parse::<f64>().ok().and_then(Number::from_f64) {
            Some(n) => Value::Number(n),
            None => Value::String(text.into_owned()),
        },
        oid::BYTEA => match text.strip_prefix("\\x").and_then(hex) {
            Some(bytes) => Value::String(base64(&bytes)),
            None => Value::String(text.into_owned()),
        },
        _ => Value::String(text.into_owned()),
    }
}

fn hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        Table {
            schema: "public".into(),
            name: "accounts".into(),
            columns: vec![
                Column { name: "id".into(), type_oid: oid::INT4 },
                Column { name: "region".into(), type_oid: 25 },
                Column { name: "balance".into(), type_oid: 1700 },
                Column { name: "note".into(), type_oid: 25 },
            ],
            key: vec![0, 1],
            topic: Arc::from("pg.public.accounts"),
        }
    }

    fn row(pairs: &[(&str, Option<&str>)]) -> RowData {
        RowData::from_pairs(
            pairs.iter().map(|(n, v)| (*n, v.map_or(ColumnValue::Null, ColumnValue::text))).collect(),
        )
    }

    #[test]
    fn values_are_typed_by_oid() {
        let t = |oid, s: &str| json_value(oid, &ColumnValue::text(s));
        assert_eq!(t(oid::BOOL, "t"), Value::Bool(true));
        assert_eq!(t(oid::BOOL, "f"), Value::Bool(false));
        assert_eq!(t(oid::INT8, "-9223372036854775808"), serde_json::json!(i64::MIN));
        assert_eq!(t(oid::INT2, "7"), serde_json::json!(7));
        assert_eq!(t(oid::FLOAT8, "1.5"), serde_json::json!(1.5));
        assert_eq!(t(oid::FLOAT8, "NaN"), serde_json::json!("NaN"));
        assert_eq!(t(oid::FLOAT4, "-Infinity"), serde_json::json!("-Infinity"));
        assert_eq!(t(1700, "12345678901234567890.123"), serde_json::json!("12345678901234567890.123"));
        assert_eq!(t(oid::BYTEA, "\\x48656c6c6f"), serde_json::json!("SGVsbG8="));
        assert_eq!(t(3802, "{\"a\": 1}"), serde_json::json!("{\"a\": 1}"));
        assert_eq!(t(1184, "2026-12-02 01:00:00+00"), serde_json::json!("2026-12-02 01:00:00+00"));
        assert_eq!(json_value(oid::INT4, &ColumnValue::Null), Value::Null);
    }

    #[test]
    fn key_is_the_key_columns_in_key_order() {
        let t = table();
        let key = t
            .key(&row(&[("id", Some("7")), ("region", Some("eu")), ("balance", Some("1.00"))]), None)
            .unwrap();
        assert_eq!(std::str::from_utf8(&key).unwrap(), r#"{"id":7,"region":"eu"}"#, "column order");
        let err = t.key(&row(&[("id", Some("7")), ("region", None)]), None).unwrap_err();
        assert_eq!(err.column, "region");
        assert!(t.key(&row(&[("region", Some("eu"))]), None).is_err(), "a missing key column is refused");
        let old = row(&[("id", Some("7")), ("region", Some("eu"))]);
        assert_eq!(
            t.key(&row(&[("region", Some("eu"))]), Some(&old)).unwrap(),
            key,
            "filled from the old row"
        );
    }

    #[test]
    fn unchanged_toast_columns_are_filled_or_marked_never_null() {
        let t = table();
        // pgoutput leaves out "note" (unchanged TOAST); "balance" is a real null.
        let new = row(&[("id", Some("1")), ("region", Some("eu")), ("balance", None)]);
        let after = t.row(&new, None);
        assert_eq!(after["note"], serde_json::json!(UNAVAILABLE));
        assert_eq!(after["balance"], Value::Null);
        let old =
            row(&[("id", Some("1")), ("region", Some("eu")), ("balance", Some("2")), ("note", Some("long"))]);
        let after = t.row(&new, Some(&old));
        assert_eq!(
            after["note"],
            serde_json::json!("long"),
            "taken from the old row (REPLICA IDENTITY FULL)"
        );
        assert_eq!(after["balance"], Value::Null, "a null in the new row stays null");
        let names: Vec<&str> = after.0.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["id", "region", "balance", "note"], "column order");
    }

    #[test]
    fn envelope_has_debezium_fields() {
        let t = table();
        let r = row(&[("id", Some("1")), ("region", Some("eu")), ("balance", Some("3.50")), ("note", None)]);
        let source = Source {
            name: "pg",
            db: "shop",
            ts_ms: 1_700_000_000_000,
            tx_id: Some(42),
            lsn: 0x16B3_748D,
            snapshot: "false",
        };
        let bytes = envelope(&t, Op::Create, None, Some(&t.row(&r, None)), &source, 5);
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(text.starts_with(r#"{"before":null,"after":{"id":1,"region":"eu","#), "{text}");
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["op"], "c");
        assert_eq!(v["before"], Value::Null);
        assert_eq!(v["after"]["id"], 1);
        assert_eq!(v["after"]["balance"], "3.50");
        assert_eq!(v["source"]["connector"], "postgresql");
        assert_eq!(v["source"]["txId"], 42);
        assert_eq!(v["source"]["lsn"], 0x16B3_748D_u64);
        assert_eq!(v["source"]["table"], "accounts");
        assert_eq!(v["source"]["schema"], "public");
        assert_eq!(v["source"]["db"], "shop");
        assert_eq!(v["ts_ms"], 5);
    }

    #[test]
    fn topic_names_are_kafka_safe() {
        assert_eq!(Table::topic_name("pg", "public", "accounts"), "pg.public.accounts");
        assert_eq!(Table::topic_name("pg", "public", "weird name$"), "pg.public.weird_name_");
    }
}
