//! The throwaway PostgreSQL cluster of the CDC scenarios (bench-harness/src/postgres.rs), with
//! the tests' conventions: skip where PostgreSQL is missing unless SPATE_REQUIRE_POSTGRES=1,
//! panic on SQL errors.

#[path = "../../../bench-harness/src/postgres.rs"]
#[allow(dead_code)]
mod cluster;

pub use cluster::Postgres;

/// A running cluster, or `None` (the test skips) where PostgreSQL 15 is not installed.
pub fn start(name: &str) -> Option<Postgres> {
    let Some(bin) = cluster::binaries() else {
        if std::env::var("SPATE_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") {
            panic!("PostgreSQL 15 is required (SPATE_REQUIRE_POSTGRES=1) but not installed; scripts/test.sh installs it");
        }
        eprintln!("skipping: PostgreSQL 15 is not installed (scripts/install-postgres.sh installs it)");
        return None;
    };
    Some(Postgres::start(&bin, name).unwrap())
}

impl Postgres {
    /// [`Postgres::psql`], panicking on an SQL error.
    pub fn sql(&self, db: &str, sql: &str) -> String {
        self.psql(db, sql).unwrap()
    }
}
