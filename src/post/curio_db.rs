//! Curio's running PoSt tasks, read from its HarmonyDB (`harmony_task` joined with
//! `harmony_machines`) over the PostgreSQL wire protocol (YugabyteDB in production).
//!
//! A task with an owner is running on that machine. One connection is kept and re-opened
//! after an error; every round trip is bounded by the timeout. Plain TCP (or a Unix socket):
//! HarmonyDB sits on the cluster's private network, as Curio itself connects to it.

use std::str::FromStr;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_postgres::config::Host;
use tokio_postgres::{Client, NoTls};

use super::PostError;

/// Curio's WindowPoSt task name.
pub const TASK_WDPOST: &str = "WdPost";
/// Curio's WinningPoSt task name.
pub const TASK_WINPOST: &str = "WinPost";

/// Running PoSt tasks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CurioPost {
    pub window: u32,
    pub winning: u32,
}

/// A schema name is spliced into SQL, so only plain identifiers pass.
pub fn check_schema(schema: &str) -> Result<(), PostError> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && schema
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && schema
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(PostError::Config(format!(
            "[post] curio_schema = {schema:?} is not a plain SQL identifier (letters, digits, _)"
        )))
    }
}

pub struct CurioDb {
    config: tokio_postgres::Config,
    sql: String,
    machine: Option<String>,
    timeout: Duration,
    client: Mutex<Option<Client>>,
}

impl CurioDb {
    /// `conn`: `host=… port=… user=… password=… dbname=…` or `postgres://…`.
    pub fn new(
        conn: &str,
        schema: &str,
        machine: Option<String>,
        timeout: Duration,
    ) -> Result<CurioDb, PostError> {
        check_schema(schema)?;
        // The parser's message never echoes the string (it may hold a password).
        let config = tokio_postgres::Config::from_str(conn).map_err(|e| {
            PostError::CurioDb(format!(
                "not a PostgreSQL connection string ({e}); use \"host=HOST port=5433 user=USER password=… dbname=DB\" or postgres://USER@HOST:PORT/DB"
            ))
        })?;
        if config.get_hosts().is_empty() {
            return Err(PostError::CurioDb(
                "no host: add host=… (HarmonyDB's address, as in Curio's --db-host)".into(),
            ));
        }
        let sql = format!(
            "SELECT t.name, count(*)::bigint FROM {schema}.harmony_task t \
             JOIN {schema}.harmony_machines m ON m.id = t.owner_id \
             WHERE t.name IN ('{TASK_WDPOST}', '{TASK_WINPOST}') \
             AND ($1::text IS NULL OR m.host_and_port = $1::text) GROUP BY t.name"
        );
        Ok(CurioDb {
            config,
            sql,
            machine,
            timeout,
            client: Mutex::new(None),
        })
    }

    fn target(&self) -> String {
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        match self.config.get_hosts().first() {
            Some(Host::Tcp(h)) => format!("{h}:{port}"),
            #[cfg(unix)]
            Some(Host::Unix(p)) => format!("{}/.s.PGSQL.{port}", p.display()),
            None => "?".into(),
        }
    }

    async fn connect(&self) -> Result<Client, PostError> {
        let err = |why: String| {
            PostError::CurioDb(format!(
                "cannot connect to {}: {why}; check host, port, user, password and dbname",
                self.target()
            ))
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        let client = match self.config.get_hosts().first() {
            Some(Host::Tcp(h)) => {
                let tcp = tokio::net::TcpStream::connect((h.as_str(), port))
                    .await
                    .map_err(|e| err(e.to_string()))?;
                let _ = tcp.set_nodelay(true);
                let (client, conn) = self
                    .config
                    .connect_raw(tcp, NoTls)
                    .await
                    .map_err(|e| err(e.to_string()))?;
                // The connection task ends when the client is dropped.
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!("curio_db connection closed: {e}");
                    }
                });
                client
            }
            #[cfg(unix)]
            Some(Host::Unix(dir)) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                let sock = tokio::net::UnixStream::connect(&path)
                    .await
                    .map_err(|e| err(e.to_string()))?;
                let (client, conn) = self
                    .config
                    .connect_raw(sock, NoTls)
                    .await
                    .map_err(|e| err(e.to_string()))?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!("curio_db connection closed: {e}");
                    }
                });
                client
            }
            None => return Err(err("no host".into())),
        };
        Ok(client)
    }

    /// Running `WdPost` / `WinPost` tasks (of `curio_machine` when set).
    pub async fn running(&self) -> Result<CurioPost, PostError> {
        match tokio::time::timeout(self.timeout, self.query()).await {
            Ok(r) => r,
            Err(_) => {
                *self.client.lock().await = None;
                Err(PostError::CurioDb(format!(
                    "{} did not answer within {:?}",
                    self.target(),
                    self.timeout
                )))
            }
        }
    }

    async fn query(&self) -> Result<CurioPost, PostError> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = Some(self.connect().await?);
        }
        let Some(client) = guard.as_ref() else {
            return Err(PostError::CurioDb("no connection".into()));
        };
        let rows = match client.query(self.sql.as_str(), &[&self.machine]).await {
            Ok(r) => r,
            Err(e) => {
                *guard = None;
                return Err(PostError::CurioDb(format!(
                    "reading harmony_task on {} failed: {e}; is this Curio's HarmonyDB (and [post] curio_schema its schema)?",
                    self.target()
                )));
            }
        };
        let mut out = CurioPost::default();
        for row in rows {
            let name: String = row.try_get(0).unwrap_or_default();
            let n: i64 = row.try_get(1).unwrap_or(0);
            let n = u32::try_from(n).unwrap_or(u32::MAX);
            match name.as_str() {
                TASK_WDPOST => out.window += n,
                TASK_WINPOST => out.winning += n,
                _ => {}
            }
        }
        Ok(out)
    }
}

/// Runs SQL statements (tests create Curio's tables with it).
#[cfg(any(test, feature = "test-utils"))]
pub async fn execute_batch(conn: &str, sql: &str) -> Result<(), PostError> {
    let db = CurioDb::new(conn, "curio", None, Duration::from_secs(10))?;
    let client = db.connect().await?;
    client
        .batch_execute(sql)
        .await
        .map_err(|e| PostError::CurioDb(format!("{e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_connection_strings_and_schemas_are_refused_without_echoing_secrets() {
        let e = CurioDb::new(
            "host=h password=hunter2 bogus_key=1",
            "curio",
            None,
            Duration::from_secs(1),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("[post] curio_db"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        assert!(CurioDb::new("user=x", "curio", None, Duration::from_secs(1)).is_err());
        for bad in ["", "cu rio", "x;drop", "1abc"] {
            assert!(check_schema(bad).is_err(), "{bad}");
        }
        check_schema("curio").unwrap();
    }
}
