//! `keygate migrate` on PostgreSQL: the tables read in one repeatable-read
//! snapshot, or written in one transaction (see `store::copy` for the
//! table map).

use tokio::sync::mpsc::{Receiver, Sender};
use tokio_postgres::types::ToSql;
use tokio_postgres::IsolationLevel;

use super::super::copy::{
    check, count, destination_gone, holdings, live_leases, not_empty, other_pepper,
    running_instances, source_gone, table_at, Batch, Copied, Kind, SourceEnd, Table, Value, BATCH,
    MUST_BE_EMPTY, TABLES,
};
use super::super::StoreError;
use super::{db_error, to_u64, PgStore};

/// A heartbeat younger than this (ms) is a running instance's.
const RUNNING_WITHIN_MS: i64 = 2_000;

/// A value as a parameter of its column's type (a NULL typed too).
fn param(kind: Kind, value: Value) -> Box<dyn ToSql + Sync + Send> {
    match (kind, value) {
        (_, Value::Int(n)) => Box::new(n),
        (_, Value::Text(t)) => Box::new(t),
        (_, Value::Blob(b)) => Box::new(b),
        (Kind::Int, Value::Null) => Box::new(None::<i64>),
        (Kind::Text, Value::Null) => Box::new(None::<String>),
        (Kind::Blob, Value::Null) => Box::new(None::<Vec<u8>>),
    }
}

/// The multi-row insert of `rows` rows into `table`.
fn insert(table: &Table, rows: usize) -> String {
    let width = table.columns.len();
    let tuples: Vec<String> = (0..rows)
        .map(|r| {
            let marks: Vec<String> = (1..=width).map(|c| format!("${}", r * width + c)).collect();
            format!("({})", marks.join(", "))
        })
        .collect();
    format!(
        "INSERT INTO {} {} VALUES {}",
        table.name,
        table.column_list(),
        tuples.join(", ")
    )
}

impl PgStore {
    /// The pepper fingerprint the database stores (hex), if any.
    pub async fn stored_fingerprint(&self) -> Result<Option<String>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT pepper_fingerprint FROM meta", &[])
            .await
            .map_err(db_error)?;
        Ok(row.get(0))
    }

    /// Sends every row of the copied tables to `out`, in one read-only
    /// repeatable-read snapshot, then [`Batch::End`]. Refuses while an
    /// instance holds a credit lease that has not expired by `now_ms`.
    pub async fn export(&self, out: Sender<Batch>, now_ms: i64) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(db_error)?;
        // Every running instance beats every 200 ms (`sync::shares`); a
        // stopped one withdraws, a crashed one's beat is stale in 2 s.
        let running: i64 = tx
            .query_one(
                "SELECT count(*) FROM rate_instances WHERE updated_at_ms >= $1",
                &[&now_ms.saturating_sub(RUNNING_WITHIN_MS)],
            )
            .await
            .map_err(db_error)?
            .get(0);
        if running > 0 {
            return Err(running_instances(running));
        }
        let leases = tx
            .query_one(
                "SELECT count(*) FILTER (WHERE expires_at_ms > $1), \
                        max(expires_at_ms) FILTER (WHERE expires_at_ms > $1), \
                        count(*), COALESCE(sum(amount), 0)::BIGINT \
                 FROM credit_leases",
                &[&now_ms],
            )
            .await
            .map_err(db_error)?;
        let (live, until): (i64, Option<i64>) = (leases.get(0), leases.get(1));
        if live > 0 {
            return Err(live_leases(live, until.unwrap_or_default()));
        }
        let (expired, credits): (i64, i64) = (leases.get(2), leases.get(3));
        for (i, table) in TABLES.iter().enumerate() {
            let stmt = tx.prepare(&table.select()).await.map_err(db_error)?;
            let portal = tx.bind(&stmt, &[]).await.map_err(db_error)?;
            let mut n = 0u64;
            loop {
                let rows = tx
                    .query_portal(&portal, i32::try_from(BATCH).unwrap_or(i32::MAX))
                    .await
                    .map_err(db_error)?;
                let last = rows.len() < BATCH;
                let mut batch = Vec::with_capacity(rows.len());
                for row in &rows {
                    n += 1;
                    let mut values = Vec::with_capacity(table.columns.len());
                    for (c, column) in table.columns.iter().enumerate() {
                        let value = match column.kind {
                            Kind::Int => row
                                .try_get::<_, Option<i64>>(c)
                                .map(|v| v.map_or(Value::Null, Value::Int)),
                            Kind::Text => row
                                .try_get::<_, Option<String>>(c)
                                .map(|v| v.map_or(Value::Null, Value::Text)),
                            Kind::Blob => row
                                .try_get::<_, Option<Vec<u8>>>(c)
                                .map(|v| v.map_or(Value::Null, Value::Blob)),
                        }
                        .map_err(db_error)?;
                        check(table, column, n, &value)?;
                        values.push(value);
                    }
                    batch.push(values);
                }
                if !batch.is_empty() {
                    out.send(Batch::Rows {
                        table: i,
                        rows: batch,
                    })
                    .await
                    .map_err(|_| destination_gone())?;
                }
                if last {
                    break;
                }
            }
        }
        let last_seq: i64 = tx
            .query_one(
                "SELECT GREATEST(seq, (SELECT COALESCE(max(seq), 0) FROM changes)) FROM change_seq",
                &[],
            )
            .await
            .map_err(db_error)?
            .get(0);
        tx.commit().await.map_err(db_error)?;
        let end = SourceEnd {
            last_seq,
            expired_leases: to_u64(expired),
            expired_credits: to_u64(credits),
        };
        out.send(Batch::End(end))
            .await
            .map_err(|_| destination_gone())
    }

    /// Writes what `input` brings into this database, which must be empty
    /// and have no fingerprint or `fingerprint` (hex), in one transaction
    /// committed at [`Batch::End`]; stores `fingerprint`, and moves
    /// `change_seq` past the source's last seq.
    pub async fn import(
        &self,
        mut input: Receiver<Batch>,
        fingerprint: String,
    ) -> Result<Copied, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_error)?;
        // meta's row first, as a bootstrap takes it: a starting instance
        // waits for the copy, then finds keys.
        let stored: Option<String> = tx
            .query_one("SELECT pepper_fingerprint FROM meta FOR UPDATE", &[])
            .await
            .map_err(db_error)?
            .get(0);
        if stored.is_some_and(|s| !s.eq_ignore_ascii_case(&fingerprint)) {
            return Err(other_pepper());
        }
        // change_seq's row: every write to the log waits for the copy.
        tx.execute("SELECT 1 FROM change_seq FOR UPDATE", &[])
            .await
            .map_err(db_error)?;
        let mut counts = Vec::with_capacity(MUST_BE_EMPTY.len());
        for table in MUST_BE_EMPTY {
            let n: i64 = tx
                .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                .await
                .map_err(db_error)?
                .get(0);
            counts.push((table, n));
        }
        if let Some(what) = holdings(&counts) {
            return Err(not_empty(&what));
        }
        tx.execute("UPDATE meta SET pepper_fingerprint = $1", &[&fingerprint])
            .await
            .map_err(db_error)?;
        let mut copied = Copied::default();
        loop {
            match input.recv().await {
                Some(Batch::Rows { table: i, rows }) => {
                    let table = table_at(i)?;
                    let n = rows.len();
                    let mut params: Vec<Box<dyn ToSql + Sync + Send>> =
                        Vec::with_capacity(n * table.columns.len());
                    for row in rows {
                        for (column, value) in table.columns.iter().zip(row) {
                            params.push(param(column.kind, value));
                        }
                    }
                    let refs: Vec<&(dyn ToSql + Sync)> = params
                        .iter()
                        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                        .collect();
                    tx.execute(&insert(table, n), &refs)
                        .await
                        .map_err(db_error)?;
                    count(&mut copied, i, n);
                }
                Some(Batch::End(end)) => {
                    tx.execute(
                        "UPDATE change_seq SET seq = GREATEST(seq, $1, \
                         (SELECT COALESCE(max(seq), 0) FROM changes))",
                        &[&end.last_seq],
                    )
                    .await
                    .map_err(db_error)?;
                    tx.commit().await.map_err(db_error)?;
                    copied.end = end;
                    return Ok(copied);
                }
                None => return Err(source_gone()),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_one_insert_with_numbered_parameters() {
        let table = table_at(2).unwrap();
        assert_eq!(
            insert(table, 2),
            "INSERT INTO credit_balances (meter_id, remaining, period) VALUES ($1, $2, $3), ($4, $5, $6)"
        );
    }
}
