//! `keygate migrate` on SQLite: the tables read in one snapshot, or written
//! in one immediate transaction (see `store::copy` for the table map).

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params, OptionalExtension, TransactionBehavior};
use tokio::sync::mpsc::{Receiver, Sender};

use super::super::copy::{
    check, count, destination_gone, holdings, live_leases, not_empty, other_pepper, source_gone,
    table_at, Batch, Copied, SourceEnd, Value, BATCH, MUST_BE_EMPTY, TABLES,
};
use super::super::StoreError;
use super::{meta_get, meta_set, sql, SqliteStore};

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(n) => ValueRef::Integer(*n),
            Value::Text(t) => ValueRef::Text(t.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

impl SqliteStore {
    /// The pepper fingerprint the database stores (hex), if any.
    pub async fn stored_fingerprint(&self) -> Result<Option<String>, StoreError> {
        self.read(|conn| meta_get(conn, "pepper_fingerprint")).await
    }

    /// Sends every row of the copied tables to `out`, in one read snapshot,
    /// then [`Batch::End`]. Refuses while an instance holds a credit lease
    /// that has not expired by `now_ms`.
    pub async fn export(&self, out: Sender<Batch>, now_ms: i64) -> Result<(), StoreError> {
        self.read(move |conn| {
            // Deferred: the first read starts the snapshot every later one sees.
            let tx = conn.transaction().map_err(sql)?;
            let (live, until): (i64, Option<i64>) = tx
                .query_row(
                    "SELECT count(*), max(expires_at_ms) FROM credit_leases WHERE expires_at_ms > ?1",
                    params![now_ms],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(sql)?;
            if live > 0 {
                return Err(live_leases(live, until.unwrap_or_default()));
            }
            let (expired, credits): (i64, i64) = tx
                .query_row(
                    "SELECT count(*), COALESCE(sum(amount), 0) FROM credit_leases",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(sql)?;
            for (i, table) in TABLES.iter().enumerate() {
                let mut stmt = tx.prepare(&table.select()).map_err(sql)?;
                let mut rows = stmt.query([]).map_err(sql)?;
                let mut batch = Vec::with_capacity(BATCH);
                let mut n = 0u64;
                while let Some(row) = rows.next().map_err(sql)? {
                    n += 1;
                    let mut values = Vec::with_capacity(table.columns.len());
                    for (c, column) in table.columns.iter().enumerate() {
                        let odd = |what: &str| {
                            StoreError::Fatal(format!(
                                "the source's table `{}` holds {what} in column `{}` of its row {n}",
                                table.name, column.name
                            ))
                        };
                        let value = match row.get_ref(c).map_err(sql)? {
                            ValueRef::Null => Value::Null,
                            ValueRef::Integer(v) => Value::Int(v),
                            ValueRef::Real(_) => return Err(odd("a real number")),
                            ValueRef::Text(t) => Value::Text(
                                String::from_utf8(t.to_vec()).map_err(|_| odd("text that is not UTF-8"))?,
                            ),
                            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
                        };
                        check(table, column, n, &value)?;
                        values.push(value);
                    }
                    batch.push(values);
                    if batch.len() == BATCH {
                        let rows = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                        out.blocking_send(Batch::Rows { table: i, rows })
                            .map_err(|_| destination_gone())?;
                    }
                }
                if !batch.is_empty() {
                    out.blocking_send(Batch::Rows { table: i, rows: batch })
                        .map_err(|_| destination_gone())?;
                }
            }
            // AUTOINCREMENT's counter: above every seq ever handed out.
            let counter: Option<i64> = tx
                .query_row(
                    "SELECT seq FROM sqlite_sequence WHERE name = 'changes'",
                    [],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sql)?;
            let max: Option<i64> = tx
                .query_row("SELECT max(seq) FROM changes", [], |r| r.get(0))
                .map_err(sql)?;
            let end = SourceEnd {
                last_seq: counter.unwrap_or_default().max(max.unwrap_or_default()),
                expired_leases: u64::try_from(expired).unwrap_or_default(),
                expired_credits: u64::try_from(credits).unwrap_or_default(),
            };
            out.blocking_send(Batch::End(end))
                .map_err(|_| destination_gone())
        })
        .await
    }

    /// Writes what `input` brings into this database, which must be empty
    /// and have no fingerprint or `fingerprint` (hex), in one immediate
    /// transaction committed at [`Batch::End`]; stores `fingerprint`, and
    /// moves the sequence counter past the source's last seq.
    pub async fn import(
        &self,
        mut input: Receiver<Batch>,
        fingerprint: String,
    ) -> Result<Copied, StoreError> {
        self.write(move |conn, _| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql)?;
            if meta_get(&tx, "pepper_fingerprint")?.is_some_and(|stored| stored != fingerprint) {
                return Err(other_pepper());
            }
            let mut counts = Vec::with_capacity(MUST_BE_EMPTY.len());
            for table in MUST_BE_EMPTY {
                let n: i64 = tx
                    .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
                    .map_err(sql)?;
                counts.push((table, n));
            }
            if let Some(what) = holdings(&counts) {
                return Err(not_empty(&what));
            }
            meta_set(&tx, "pepper_fingerprint", &fingerprint)?;
            let mut copied = Copied::default();
            loop {
                match input.blocking_recv() {
                    Some(Batch::Rows { table: i, rows }) => {
                        let table = table_at(i)?;
                        let marks: Vec<String> =
                            (1..=table.columns.len()).map(|n| format!("?{n}")).collect();
                        let mut stmt = tx
                            .prepare_cached(&format!(
                                "INSERT INTO {} {} VALUES ({})",
                                table.name,
                                table.column_list(),
                                marks.join(", ")
                            ))
                            .map_err(sql)?;
                        for row in &rows {
                            stmt.execute(rusqlite::params_from_iter(row.iter()))
                                .map_err(sql)?;
                        }
                        count(&mut copied, i, rows.len());
                    }
                    Some(Batch::End(end)) => {
                        // Explicit seqs raised the counter to the highest; a
                        // source's counter may stand higher still.
                        let raised = tx
                            .execute(
                                "UPDATE sqlite_sequence SET seq = max(seq, ?1) WHERE name = 'changes'",
                                params![end.last_seq],
                            )
                            .map_err(sql)?;
                        if raised == 0 && end.last_seq > 0 {
                            tx.execute(
                                "INSERT INTO sqlite_sequence (name, seq) VALUES ('changes', ?1)",
                                params![end.last_seq],
                            )
                            .map_err(sql)?;
                        }
                        tx.commit().map_err(sql)?;
                        copied.end = end;
                        return Ok(copied);
                    }
                    None => return Err(source_gone()),
                }
            }
        })
        .await
    }
}
