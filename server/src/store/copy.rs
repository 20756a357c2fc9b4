//! Copying one store into another, empty one (`keygate migrate`): the
//! tables that are copied, the row format both stores read and write, and
//! what the copy reports.
//!
//! The source streams its tables, in one read snapshot, as batches of rows
//! over a bounded channel; the destination writes them in one transaction
//! that it commits only after the source's last batch ([`Batch::End`]). A
//! source that fails, or a destination row that PostgreSQL or SQLite
//! refuses, rolls the whole copy back: the destination stays empty.
//!
//! # Which table goes where
//!
//! Both stores have the same tables and columns for what is durable
//! (`store::sqlite` and `store::postgres` list them), so each is copied
//! column for column, values unchanged:
//!
//! | table | SQLite | PostgreSQL | copied |
//! |---|---|---|---|
//! | `keys` | 18 columns | the same 18 | every row, revoked ones included (tombstones: a revoked id stays dead), with lineage (`creator_id`, `rolled_from`), limits and meter, `last_used_at_ms` |
//! | `changes` | `seq` `AUTOINCREMENT` | `seq BIGINT` | every row, `seq` kept |
//! | `credit_balances` | meter pools | the same | every row as it stands |
//! | `usage_minutes`, `usage_days` | counts | the same | every row |
//! | sequence counter | `sqlite_sequence` (`changes`) | `change_seq` | set to the source's last handed-out number (at least the highest `seq`) |
//! | `meta` | `schema_version`, `pepper_fingerprint` rows | one row with both | the fingerprint of the given pepper; the version is the destination's own |
//! | `credit_leases` | | | not copied: a live lease stops the copy (an instance still runs); an expired one is forfeited, as `Store::expire_leases` would |
//! | `schema_migrations` | | PostgreSQL only | not copied: the destination's own history |
//! | `rate_instances`, `rate_demand` | in memory | `UNLOGGED` | not copied: seconds-old soft state (a fresh heartbeat in a PostgreSQL source stops the copy: an instance still runs) |
//!
//! Rate limits keep no durable state (each instance's GCRA cells live in
//! memory), so a moved key starts with a full burst, as after a restart.

use std::fmt;

use super::StoreError;

/// A column's SQL type, as both stores hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `INTEGER` / `BIGINT`.
    Int,
    /// `TEXT`.
    Text,
    /// `BLOB` / `BYTEA`.
    Blob,
}

/// One column of a copied table.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    /// Its name in both schemas.
    pub name: &'static str,
    /// Its type.
    pub kind: Kind,
    /// Whether it may be NULL.
    pub nullable: bool,
}

const fn col(name: &'static str, kind: Kind, nullable: bool) -> Column {
    Column {
        name,
        kind,
        nullable,
    }
}

/// A copied table: its name and columns (the same in both schemas) and the
/// order it is read in.
#[derive(Debug)]
pub struct Table {
    /// Its name in both schemas.
    pub name: &'static str,
    /// Its columns, in the order the rows hold them.
    pub columns: &'static [Column],
    /// The `ORDER BY` of the read (its primary key).
    pub order_by: &'static str,
}

impl Table {
    /// The read of every row, in order.
    pub fn select(&self) -> String {
        let names: Vec<&str> = self.columns.iter().map(|c| c.name).collect();
        format!(
            "SELECT {} FROM {} ORDER BY {}",
            names.join(", "),
            self.name,
            self.order_by
        )
    }

    /// The column list of an insert: `(a, b, c)`.
    pub fn column_list(&self) -> String {
        let names: Vec<&str> = self.columns.iter().map(|c| c.name).collect();
        format!("({})", names.join(", "))
    }
}

use Kind::{Blob, Int, Text};

/// The usage tables' four counts.
const COUNTS: [Column; 4] = [
    col("allowed", Int, false),
    col("forbidden", Int, false),
    col("rate_limited", Int, false),
    col("credits_exhausted", Int, false),
];

/// Every copied table, in the order they are copied.
pub const TABLES: [Table; 5] = [
    Table {
        name: "keys",
        columns: &[
            col("id", Text, false),
            col("kind", Text, false),
            col("name", Text, false),
            col("secret_hash", Blob, false),
            col("scopes", Int, false),
            col("created_at_ms", Int, false),
            col("expires_at_ms", Int, true),
            col("creator_id", Text, true),
            col("revoked_at_ms", Int, true),
            col("last_used_at_ms", Int, true),
            col("rolled_from", Text, true),
            col("rate_limit", Int, true),
            col("rate_period_ms", Int, true),
            col("credits_remaining", Int, true),
            col("credits_refill_amount", Int, true),
            col("credits_refill_interval_ms", Int, true),
            col("meter_id", Text, true),
            col("meter_since_ms", Int, true),
        ],
        order_by: "id",
    },
    Table {
        name: "changes",
        columns: &[
            col("seq", Int, false),
            col("at_ms", Int, false),
            col("action", Text, false),
            col("key_id", Text, false),
            col("actor_id", Text, true),
            col("new_key_id", Text, true),
        ],
        order_by: "seq",
    },
    Table {
        name: "credit_balances",
        columns: &[
            col("meter_id", Text, false),
            col("remaining", Int, false),
            col("period", Int, false),
        ],
        order_by: "meter_id",
    },
    Table {
        name: "usage_minutes",
        columns: &[
            col("key_id", Text, false),
            col("minute_ms", Int, false),
            COUNTS[0],
            COUNTS[1],
            COUNTS[2],
            COUNTS[3],
        ],
        order_by: "key_id, minute_ms",
    },
    Table {
        name: "usage_days",
        columns: &[
            col("key_id", Text, false),
            col("day_ms", Int, false),
            COUNTS[0],
            COUNTS[1],
            COUNTS[2],
            COUNTS[3],
        ],
        order_by: "key_id, day_ms",
    },
];

/// How many rows a batch holds at most (PostgreSQL takes at most 65 535
/// parameters a statement: 500 rows of 18 columns are 9 000).
pub const BATCH: usize = 500;

/// One value of a copied row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// NULL.
    Null,
    /// An integer.
    Int(i64),
    /// Text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

impl Value {
    fn kind_name(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Int(_) => "an integer",
            Value::Text(_) => "text",
            Value::Blob(_) => "bytes",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Int => "an integer",
            Kind::Text => "text",
            Kind::Blob => "bytes",
        })
    }
}

/// Checks that `value` fits `column` of `table`: SQLite keeps any type in
/// any column, and the destination must not get what its own reads refuse.
/// The message names the table, column and row number, never the value
/// (a corrupt column may hold a token).
pub fn check(table: &Table, column: &Column, row: u64, value: &Value) -> Result<(), StoreError> {
    let fits = match value {
        Value::Null => column.nullable,
        Value::Int(_) => column.kind == Kind::Int,
        Value::Text(_) => column.kind == Kind::Text,
        Value::Blob(_) => column.kind == Kind::Blob,
    };
    if fits {
        Ok(())
    } else {
        Err(StoreError::Fatal(format!(
            "the source's table `{}` holds {} in column `{}` of its row {row}, where {} belongs",
            table.name,
            value.kind_name(),
            column.name,
            if column.nullable {
                format!("{} or NULL", column.kind)
            } else {
                column.kind.to_string()
            },
        )))
    }
}

/// What the source sends, in order: the rows of each table, then the end.
#[derive(Debug)]
pub enum Batch {
    /// Up to [`BATCH`] rows of `TABLES[table]`, each value checked.
    Rows {
        /// The index of the table in [`TABLES`].
        table: usize,
        /// The rows, values in column order.
        rows: Vec<Vec<Value>>,
    },
    /// Every row was sent: the destination may commit.
    End(SourceEnd),
}

/// What the source knows once it has sent every row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceEnd {
    /// The last sequence number the source handed out (at least its
    /// highest `seq`): the destination's counter continues after it.
    pub last_seq: i64,
    /// Expired credit leases left behind (forfeited, see the module docs).
    pub expired_leases: u64,
    /// The credits they last reported.
    pub expired_credits: u64,
}

/// What the destination wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Copied {
    /// Rows per table, in [`TABLES`] order.
    pub rows: [u64; TABLES.len()],
    /// What the source said at its end.
    pub end: SourceEnd,
}

/// The tables an empty destination holds no row of: the copied ones and
/// the leases.
pub const MUST_BE_EMPTY: [&str; 6] = [
    "keys",
    "changes",
    "credit_balances",
    "credit_leases",
    "usage_minutes",
    "usage_days",
];

/// What a destination holds, from its row counts per table (in
/// [`MUST_BE_EMPTY`] order): `None` when it holds nothing.
pub fn holdings(counts: &[(&str, i64)]) -> Option<String> {
    let parts: Vec<String> = counts
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(table, n)| match *table {
            "keys" => format!("{n} key(s)"),
            "changes" => format!("{n} event(s)"),
            other => format!("{n} row(s) of `{other}`"),
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// `TABLES[i]`, or the error of a batch naming no table (never sent).
pub fn table_at(i: usize) -> Result<&'static Table, StoreError> {
    TABLES
        .get(i)
        .ok_or_else(|| StoreError::Fatal(format!("a batch of unknown table {i}")))
}

/// Adds `n` rows of table `i` to `copied`.
pub fn count(copied: &mut Copied, i: usize, n: usize) {
    if let Some(c) = copied.rows.get_mut(i) {
        *c += u64::try_from(n).unwrap_or(u64::MAX);
    }
}

/// The message of a destination that holds anything: `what` lists it.
pub fn not_empty(what: &str) -> StoreError {
    StoreError::Conflict(format!("not empty: it holds {what}"))
}

/// The message of a destination whose stored fingerprint is another
/// pepper's.
pub fn other_pepper() -> StoreError {
    StoreError::Fatal(String::from(
        "its pepper fingerprint differs from the pepper file's: it was made with another pepper",
    ))
}

/// The message of a source on which an instance still holds credits.
pub fn live_leases(count: i64, until_ms: i64) -> StoreError {
    StoreError::Conflict(format!(
        "{count} credit lease(s) are held by a running `keygate serve` (the last until {until_ms} \
         ms); stop every instance on the source first (a stopped instance returns its leases, \
         a crashed one's lapse within seconds)"
    ))
}

/// The message of a PostgreSQL source on which instances still run.
pub fn running_instances(count: i64) -> StoreError {
    StoreError::Conflict(format!(
        "{count} `keygate serve` instance(s) still run on it (their heartbeat is under 2 s \
         old); stop every instance on the source first, so that no write is left behind"
    ))
}

/// The answer of a source whose destination stopped reading (the
/// destination's own error says why).
pub fn destination_gone() -> StoreError {
    StoreError::Unavailable(String::from("the destination stopped taking rows"))
}

/// The answer of a destination whose source stopped before its end (the
/// source's own error says why).
pub fn source_gone() -> StoreError {
    StoreError::Unavailable(String::from(
        "the source stopped before its last row; nothing was committed",
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn tables_read_in_key_order_and_values_are_checked() {
        assert_eq!(
            TABLES[1].select(),
            "SELECT seq, at_ms, action, key_id, actor_id, new_key_id FROM changes ORDER BY seq"
        );
        assert_eq!(TABLES[0].columns.len(), 18);
        let keys = &TABLES[0];
        let hash = &keys.columns[3];
        assert!(check(keys, hash, 1, &Value::Blob(vec![0; 32])).is_ok());
        let e = check(keys, hash, 7, &Value::Text("ak_secret".into())).unwrap_err();
        let m = e.to_string();
        assert!(m.contains("`secret_hash`") && m.contains("row 7"), "{m}");
        assert!(!m.contains("ak_secret"), "{m}");
        assert!(check(keys, &keys.columns[6], 1, &Value::Null).is_ok());
        assert!(check(keys, &keys.columns[0], 1, &Value::Null).is_err());
    }
}
