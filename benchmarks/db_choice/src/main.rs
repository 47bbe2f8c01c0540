//! The ledger's transition pattern on three embedded databases, every transition durable:
//! admit (job + idempotency key) → queued → transcoding → stored (renditions) → done (job,
//! renditions index, per-day and per-source counters in one transaction).
//! Engines: sled 0.34 (flush after each transaction, as comine's ledger did), SQLite WAL
//! synchronous=FULL and redb Durability::Immediate, each alone and with group commit (one writer
//! thread; every transaction queued while a commit runs joins the next one).

use redb::ReadableTable;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

const RECORD: &str = r#"{"state":"queued","class":"batch","manifest_id":"m","seq":1,"profiles":["P240p30fps16x9","P360p30fps16x9"],"duration_ms":2000,"segment_bytes":123456,"received_at_ms":1,"updated_at_ms":1,"attempts":1,"decoded_pixels":0,"encoded_pixels":0}"#;

type Step = Box<dyn FnOnce(&mut dyn Tx) + Send>;

trait Tx {
    fn put(&mut self, table: &str, key: &str, val: &str);
    fn get(&mut self, table: &str, key: &str) -> Option<String>;
}

trait Engine: Send + Sync {
    /// Runs `f` in one durable transaction.
    fn write(&self, f: Step);
}

fn job(engine: &dyn Engine, id: String) {
    let idem = format!("m\0{id}\0P240p");
    let (i2, j2) = (idem.clone(), id.clone());
    engine.write(Box::new(move |t| {
        if t.get("idem", &i2).is_none() {
            t.put("idem", &i2, &j2);
            t.put("jobs", &j2, RECORD);
        }
    }));
    for state in ["queued", "transcoding", "stored"] {
        let j = id.clone();
        engine.write(Box::new(move |t| {
            let rec = t.get("jobs", &j).unwrap_or_default();
            let rec = rec.replace("\"queued\"", &format!("\"{state}\""));
            t.put("jobs", &j, &rec);
        }));
    }
    let j = id.clone();
    engine.write(Box::new(move |t| {
        let rec = t.get("jobs", &j).unwrap_or_default();
        t.put("jobs", &j, &rec.replace("stored", "done"));
        t.put("renditions", &format!("Qm{j}a"), &j);
        t.put("renditions", &format!("Qm{j}b"), &j);
        for (table, key) in [("days", "2026-01-01"), ("sources", "m")] {
            let n: u64 = t.get(table, key).and_then(|v| v.parse().ok()).unwrap_or(0);
            t.put(table, key, &(n + 1).to_string());
        }
    }));
}

// ---- sled ----
struct Sled(sled::Db);
struct SledTx<'a>(&'a sled::Db, Vec<(String, String, String)>);
impl Tx for SledTx<'_> {
    fn put(&mut self, t: &str, k: &str, v: &str) {
        self.1.push((t.into(), k.into(), v.into()));
    }
    fn get(&mut self, t: &str, k: &str) -> Option<String> {
        if let Some((_, _, v)) = self.1.iter().rev().find(|(a, b, _)| a == t && b == k) {
            return Some(v.clone());
        }
        let tree = self.0.open_tree(t).unwrap();
        tree.get(k).unwrap().map(|v| String::from_utf8_lossy(&v).into_owned())
    }
}
impl Engine for Sled {
    fn write(&self, f: Step) {
        // Reads then one batch per tree; good enough for the write cost, which dominates.
        let mut tx = SledTx(&self.0, Vec::new());
        f(&mut tx);
        for (t, k, v) in tx.1 {
            self.0.open_tree(&t).unwrap().insert(k, v.as_bytes()).unwrap();
        }
        self.0.flush().unwrap();
    }
}

// ---- SQLite ----
fn sqlite_conn(path: &std::path::Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=5000;
         CREATE TABLE IF NOT EXISTS kv (t TEXT, k TEXT, v TEXT, PRIMARY KEY (t, k)) WITHOUT ROWID;",
    )
    .unwrap();
    c
}
struct SqlTx<'a>(&'a rusqlite::Connection);
impl Tx for SqlTx<'_> {
    fn put(&mut self, t: &str, k: &str, v: &str) {
        self.0
            .prepare_cached("INSERT OR REPLACE INTO kv (t, k, v) VALUES (?1, ?2, ?3)")
            .unwrap()
            .execute((t, k, v))
            .unwrap();
    }
    fn get(&mut self, t: &str, k: &str) -> Option<String> {
        use rusqlite::OptionalExtension;
        self.0
            .prepare_cached("SELECT v FROM kv WHERE t = ?1 AND k = ?2")
            .unwrap()
            .query_row((t, k), |r| r.get(0))
            .optional()
            .unwrap()
    }
}
struct Sqlite(std::sync::Mutex<rusqlite::Connection>);
impl Engine for Sqlite {
    fn write(&self, f: Step) {
        let mut c = self.0.lock().unwrap();
        let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
        f(&mut SqlTx(&tx));
        tx.commit().unwrap();
    }
}

// ---- redb ----
const TABLES: [&str; 5] = ["jobs", "idem", "renditions", "days", "sources"];
fn redb_def(t: &str) -> redb::TableDefinition<'_, &'static str, &'static str> {
    redb::TableDefinition::new(t)
}
struct RedbTx<'a>(&'a redb::WriteTransaction);
impl Tx for RedbTx<'_> {
    fn put(&mut self, t: &str, k: &str, v: &str) {
        self.0.open_table(redb_def(t)).unwrap().insert(k, v).unwrap();
    }
    fn get(&mut self, t: &str, k: &str) -> Option<String> {
        let table = self.0.open_table(redb_def(t)).unwrap();
        let v = table.get(k).unwrap().map(|g| g.value().to_string());
        v
    }
}
struct Redb(redb::Database);
impl Engine for Redb {
    fn write(&self, f: Step) {
        let tx = self.0.begin_write().unwrap();
        f(&mut RedbTx(&tx));
        tx.commit().unwrap();
    }
}

// ---- group commit over either ----
type Req = (Step, mpsc::Sender<()>);
struct Grouped(std::sync::Mutex<mpsc::Sender<Req>>);
impl Grouped {
    fn start(run_batch: impl Fn(Vec<Step>) + Send + 'static) -> Grouped {
        let (tx, rx) = mpsc::channel::<Req>();
        std::thread::spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                    if batch.len() >= 256 {
                        break;
                    }
                }
                let (steps, replies): (Vec<Step>, Vec<_>) = batch.into_iter().unzip();
                run_batch(steps);
                for r in replies {
                    let _ = r.send(());
                }
            }
        });
        Grouped(std::sync::Mutex::new(tx))
    }
}
impl Engine for Grouped {
    fn write(&self, f: Step) {
        let (tx, rx) = mpsc::channel();
        self.0.lock().unwrap().send((f, tx)).unwrap();
        rx.recv().unwrap();
    }
}

fn run(name: &str, engine: Arc<dyn Engine>, jobs: usize, clients: usize) {
    let t = Instant::now();
    let per = jobs / clients;
    std::thread::scope(|s| {
        for c in 0..clients {
            let e = engine.clone();
            s.spawn(move || {
                for i in 0..per {
                    job(&*e, format!("{c:04}{i:08}"));
                }
            });
        }
    });
    let secs = t.elapsed().as_secs_f64();
    println!("{name:<34} clients {clients:>3}  {:>8.0} jobs/s  ({} jobs, {:.2} s)", (per * clients) as f64 / secs, per * clients, secs);
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let jobs = args.first().copied().unwrap_or(2000);
    let clients_list = [1usize, args.get(1).copied().unwrap_or(16)];
    for &clients in &clients_list {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path().join("sled")).open().unwrap();
        run("sled 0.34 (flush per txn)", Arc::new(Sled(db)), jobs, clients);

        let dir = tempfile::tempdir().unwrap();
        let c = sqlite_conn(&dir.path().join("a.db"));
        run("sqlite WAL FULL, no grouping", Arc::new(Sqlite(std::sync::Mutex::new(c))), jobs, clients);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.db");
        let g = Grouped::start(move |steps| {
            thread_local!(static C: std::cell::RefCell<Option<rusqlite::Connection>> = const { std::cell::RefCell::new(None) });
            C.with(|c| {
                let mut c = c.borrow_mut();
                let conn = c.get_or_insert_with(|| sqlite_conn(&path));
                let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
                for s in steps {
                    s(&mut SqlTx(&tx));
                }
                tx.commit().unwrap();
            })
        });
        run("sqlite WAL FULL, group commit", Arc::new(g), jobs, clients);

        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("c.redb")).unwrap();
        {
            let tx = db.begin_write().unwrap();
            for t in TABLES {
                tx.open_table(redb_def(t)).unwrap();
            }
            tx.commit().unwrap();
        }
        run("redb 4 (Immediate), no grouping", Arc::new(Redb(db)), jobs, clients);

        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(redb::Database::create(dir.path().join("d.redb")).unwrap());
        let g = Grouped::start(move |steps| {
            let tx = db.begin_write().unwrap();
            for s in steps {
                s(&mut RedbTx(&tx));
            }
            tx.commit().unwrap();
        });
        run("redb 4 (Immediate), group commit", Arc::new(g), jobs, clients);
        drop(dir);
    }
}
