//! The PostgreSQL store: one database shared by a fleet of certsmith
//! processes (`--store postgres://…`).
//!
//! Why this module exists: ephemeral CI runners and fleets of web servers
//! must not each keep their own state directory (a new account and a new
//! order on every run burns the CA's rate limits), and more than one
//! machine must be able to work on one set of certificates without
//! ordering any of them twice. This backend fulfils the same [`Storage`]
//! contract as the state directory:
//!
//! - a commit is one transaction, fenced by the worker's lease token
//!   (checked under a row lock in the same transaction), so a worker whose
//!   lease expired and passed to another cannot publish;
//! - leases are rows with a token from one sequence, claimed with
//!   `FOR UPDATE SKIP LOCKED` (a claim never waits on another claimer) and
//!   an expiry, so a worker that dies (SIGKILL, a lost machine) loses its
//!   leases after their time to live and another takes over;
//! - whatever holds a private key is sealed with the store key
//!   ([`crypt`]); the store refuses to open without it;
//! - the schema is migrated forward at open ([`schema`]).
//!
//! The trait is blocking; the database client is async. The store runs its
//! own small runtime and each call waits on a channel for its result, so
//! it can be called from any thread, also a runtime's worker (where a
//! nested `block_on` would panic).

mod crypt;
mod schema;

use std::fmt;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, NoTls, Row};

pub use crypt::{STORE_KEY_VAR, StoreKey, sealed_key_id};

use super::{
    AccountKey, AccountSlot, CertFiles, FsStore, JournalEntry, Lease, Lineage, PendingOrder,
    RateLimitRecord, SavedVersion, Storage, StoreError, StoredAccountDoc, VersionFiles,
    VersionRecord, check_cert_name, lineage_for_commit, redact_url,
};
use crate::keys::PrivateKeyPem;

/// How long a `run`, `account` or name lease lives without renewal; the
/// holder renews it every third of that while it holds it. Short, because
/// a holder that dies (SIGKILL, a lost machine) blocks its scope this long:
/// the cleanup of its presented challenges waits for its name leases.
pub const LEASE_TTL: Duration = Duration::from_secs(15);

/// At most this many connections per process.
const MAX_CONNECTIONS: usize = 8;

/// How often a lease wait asks again (with jitter).
const LEASE_RETRY: Duration = Duration::from_millis(250);

/// A row lease's key, for `FOR UPDATE SKIP LOCKED` claims.
const MIGRATION_LOCK: i64 = 0x6365_7274_736d_6974; // "certsmit"

/// The PostgreSQL backend. Cheap to clone (one pool, one runtime).
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
    // Kept outside `Inner`: tasks on the runtime hold `Inner`, and the
    // runtime must not be dropped by one of its own tasks.
    rt: Arc<Runtime>,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore")
            .field("location", &self.inner.location)
            .field("key", &self.inner.key)
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    idle: Mutex<Vec<Client>>,
    slots: Arc<tokio::sync::Semaphore>,
    key: StoreKey,
    location: String,
    mirror: Option<FsStore>,
    queries: AtomicU64,
    holder: String,
}

struct Runtime(Option<tokio::runtime::Runtime>);

impl Drop for Runtime {
    fn drop(&mut self) {
        // Dropping a runtime inside another one's context panics; this
        // does not wait, and may run anywhere.
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// A pooled connection, returned to the pool when dropped.
struct Conn {
    client: Option<Client>,
    inner: Arc<Inner>,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl Deref for Conn {
    type Target = Client;
    fn deref(&self) -> &Client {
        // Set from creation until drop.
        self.client
            .as_ref()
            .unwrap_or_else(|| unreachable!("a pooled connection is present"))
    }
}

impl DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Client {
        self.client
            .as_mut()
            .unwrap_or_else(|| unreachable!("a pooled connection is present"))
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(c) = self.client.take()
            && !c.is_closed()
            && let Ok(mut idle) = self.inner.idle.lock()
        {
            idle.push(c);
        }
    }
}

impl Inner {
    fn err(&self, action: &'static str, e: &tokio_postgres::Error) -> StoreError {
        let message = match e.as_db_error() {
            Some(db) => format!("{}: {}", db.severity(), db.message()),
            None => {
                let mut m = e.to_string();
                let mut source = std::error::Error::source(e);
                while let Some(s) = source {
                    m.push_str(": ");
                    m.push_str(&s.to_string());
                    source = s.source();
                }
                m
            }
        };
        StoreError::Database {
            location: self.location.clone(),
            action,
            message,
        }
    }

    async fn begin<'c>(
        &self,
        c: &'c mut Client,
    ) -> Result<tokio_postgres::Transaction<'c>, StoreError> {
        // BEGIN and COMMIT are not counted in `queries`.
        c.transaction()
            .await
            .map_err(|e| self.err("begin a transaction in", &e))
    }

    async fn commit(
        &self,
        tx: tokio_postgres::Transaction<'_>,
        action: &'static str,
    ) -> Result<(), StoreError> {
        tx.commit().await.map_err(|e| self.err(action, &e))
    }

    fn corrupt(&self, what: &str, reason: impl fmt::Display) -> StoreError {
        StoreError::Corrupt {
            path: PathBuf::from(format!("{}#{what}", self.location)),
            reason: reason.to_string(),
        }
    }

    async fn conn(self: &Arc<Self>) -> Result<Conn, StoreError> {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Database {
                location: self.location.clone(),
                action: "connect to",
                message: "the connection pool is closed".to_owned(),
            })?;
        let reuse = loop {
            let c = self.idle.lock().ok().and_then(|mut idle| idle.pop());
            match c {
                Some(c) if c.is_closed() => continue,
                other => break other,
            }
        };
        let client = match reuse {
            Some(c) => c,
            None => self.connect().await?,
        };
        Ok(Conn {
            client: Some(client),
            inner: self.clone(),
            _slot: slot,
        })
    }

    async fn connect(&self) -> Result<Client, StoreError> {
        let location = self.location.clone();
        let on_close = move |r: Result<(), tokio_postgres::Error>| {
            if let Err(e) = r {
                log::debug!("connection to {location} closed: {e}");
            }
        };
        match &self.tls {
            None => {
                let (client, conn) = self
                    .config
                    .connect(NoTls)
                    .await
                    .map_err(|e| self.err("connect to", &e))?;
                tokio::spawn(async move { on_close(conn.await) });
                Ok(client)
            }
            Some(tls) => {
                let (client, conn) = self
                    .config
                    .connect(tls.clone())
                    .await
                    .map_err(|e| self.err("connect to", &e))?;
                tokio::spawn(async move { on_close(conn.await) });
                Ok(client)
            }
        }
    }

    async fn query<C: GenericClient>(
        &self,
        c: &C,
        action: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        c.query(sql, params).await.map_err(|e| self.err(action, &e))
    }

    async fn query_opt<C: GenericClient>(
        &self,
        c: &C,
        action: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, StoreError> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        c.query_opt(sql, params)
            .await
            .map_err(|e| self.err(action, &e))
    }

    async fn execute<C: GenericClient>(
        &self,
        c: &C,
        action: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        c.execute(sql, params)
            .await
            .map_err(|e| self.err(action, &e))
    }

    /// Refuses to write with a key other than the store's (after a
    /// `store rotate-key` this process did not see): values sealed with
    /// two keys would be unreadable by either. Taken `FOR SHARE`, so a
    /// rotation waits for the writes in flight and they for it.
    async fn check_key<C: GenericClient>(&self, c: &C) -> Result<(), StoreError> {
        let row = self
            .query_opt(
                c,
                "read the key check of",
                "SELECT value FROM certsmith_meta WHERE key = 'key_check' FOR SHARE",
                &[],
            )
            .await?;
        let sealed: Vec<u8> = match row {
            Some(r) => r.get(0),
            None => return Ok(()),
        };
        match sealed_key_id(&sealed) {
            Some(id) if id == self.key.id_hex() => Ok(()),
            Some(id) => Err(StoreError::WrongStoreKey {
                given: self.key.id_hex(),
                sealed_with: id,
            }),
            None => Err(self.corrupt("certsmith_meta/key_check", "not a sealed value")),
        }
    }

    fn seal(&self, plain: &[u8], row: &str) -> Result<Vec<u8>, StoreError> {
        self.key.seal(plain, row)
    }

    fn open(&self, sealed: &[u8], row: &str) -> Result<Vec<u8>, StoreError> {
        self.key.open(sealed, row)
    }

    fn account_location(&self, key: &AccountKey) -> PathBuf {
        PathBuf::from(format!(
            "{}#accounts/{}/{}",
            self.location, key.ca_host, key.id
        ))
    }

    fn account_doc(&self, key: AccountKey, sealed: &[u8]) -> Result<StoredAccountDoc, StoreError> {
        let json = self.open(sealed, &account_row(&key))?;
        Ok(StoredAccountDoc {
            location: self.account_location(&key),
            key,
            json,
        })
    }

    fn lineage_text(&self, name: &str, lineage: &Lineage) -> Result<String, StoreError> {
        toml::to_string(lineage).map_err(|e| self.corrupt(&format!("certs/{name}"), e))
    }

    fn parse_lineage(&self, name: &str, text: &str) -> Result<Lineage, StoreError> {
        toml::from_str(text).map_err(|e| self.corrupt(&format!("certs/{name}"), e))
    }

    /// Claims `scope` if its lease is free or expired: `Some(token)`.
    async fn try_claim(
        self: &Arc<Self>,
        scope: &str,
        ttl: Duration,
    ) -> Result<Option<u64>, StoreError> {
        let c = self.conn().await?;
        self.execute(
            &*c,
            "create a lease in",
            "INSERT INTO certsmith_leases (scope, token, holder, expires_at) \
             VALUES ($1, 0, '', '-infinity') ON CONFLICT DO NOTHING",
            &[&scope],
        )
        .await?;
        let secs = ttl.as_secs_f64();
        let row = self
            .query_opt(
                &*c,
                "claim a lease in",
                "UPDATE certsmith_leases \
                 SET token = nextval('certsmith_lease_tokens'), holder = $2, \
                     expires_at = now() + make_interval(secs => $3) \
                 WHERE scope = (SELECT scope FROM certsmith_leases \
                                WHERE scope = $1 AND expires_at <= now() \
                                FOR UPDATE SKIP LOCKED) \
                 RETURNING token",
                &[&scope, &self.holder, &secs],
            )
            .await?;
        Ok(row.map(|r| r.get::<_, i64>(0).unsigned_abs()))
    }

    async fn renew(
        self: &Arc<Self>,
        scope: &str,
        token: u64,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let c = self.conn().await?;
        let secs = ttl.as_secs_f64();
        let n = self
            .execute(
                &*c,
                "renew a lease in",
                "UPDATE certsmith_leases SET expires_at = now() + make_interval(secs => $3) \
                 WHERE scope = $1 AND token = $2 AND expires_at > now()",
                &[&scope, &token_param(token), &secs],
            )
            .await?;
        if n == 1 {
            Ok(())
        } else {
            Err(StoreError::Fenced {
                name: scope.to_owned(),
                token,
            })
        }
    }

    async fn release(self: &Arc<Self>, scope: &str, token: u64) -> Result<(), StoreError> {
        let c = self.conn().await?;
        self.execute(
            &*c,
            "release a lease in",
            "UPDATE certsmith_leases SET expires_at = '-infinity' WHERE scope = $1 AND token = $2",
            &[&scope, &token_param(token)],
        )
        .await
        .map(drop)
    }
}

fn copy_files(f: &CertFiles) -> CertFiles {
    CertFiles {
        cert_pem: f.cert_pem.clone(),
        chain_pem: f.chain_pem.clone(),
        fullchain_pem: f.fullchain_pem.clone(),
        privkey_pem: f
            .privkey_pem
            .as_ref()
            .map(|k| PrivateKeyPem::new(k.expose().to_owned())),
        csr_pem: f.csr_pem.clone(),
    }
}

fn token_param(token: u64) -> i64 {
    i64::try_from(token).unwrap_or(i64::MAX)
}

fn account_row(key: &AccountKey) -> String {
    format!("account:{}/{}", key.ca_host, key.id)
}

fn version_row(name: &str, version: u32) -> String {
    format!("version:{name}:{version}")
}

fn pending_row(name: &str) -> String {
    format!("pending:{name}")
}

fn cert_scope(name: &str) -> String {
    format!("cert:{name}")
}

fn version_param(version: u32) -> i32 {
    i32::try_from(version).unwrap_or(i32::MAX)
}

fn next_renewal(lineage: &Lineage) -> Option<String> {
    lineage.renewal.as_ref().map(|r| r.next_renewal.clone())
}

/// What [`PgStore::rotate_key`] re-sealed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rotated {
    /// Account documents.
    pub accounts: usize,
    /// Certificate private keys.
    pub keys: usize,
    /// Pending orders.
    pub pending_orders: usize,
}

impl PgStore {
    /// Connects to the database at `url`, applies the schema migrations
    /// this certsmith knows, and checks that `key` is the store's key (the
    /// first open of an empty database makes it so). `mirror` is a
    /// directory where each version this process commits is also written,
    /// in the state directory's layout, for deploy hooks and local web
    /// servers.
    pub fn open(
        url: &str,
        key: Option<StoreKey>,
        mirror: Option<PathBuf>,
    ) -> Result<PgStore, StoreError> {
        let location = redact_url(url);
        let key = key.ok_or(StoreError::NoStoreKey)?;
        let (config, tls) = parse_url(url, &location)?;
        let mirror = match mirror {
            Some(dir) => Some(FsStore::open(dir)?),
            None => None,
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("certsmith-store")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Database {
                location: location.clone(),
                action: "start the client of",
                message: e.to_string(),
            })?;
        let holder = format!(
            "{}:{}",
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "localhost".to_owned()),
            std::process::id()
        );
        let store = PgStore {
            inner: Arc::new(Inner {
                config,
                tls,
                idle: Mutex::new(Vec::new()),
                slots: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
                key,
                location,
                mirror,
                queries: AtomicU64::new(0),
                holder,
            }),
            rt: Arc::new(Runtime(Some(rt))),
        };
        store.migrate()?;
        store.check_or_set_key()?;
        Ok(store)
    }

    /// Statements sent to the database by this process so far.
    pub fn queries(&self) -> u64 {
        self.inner.queries.load(Ordering::Relaxed)
    }

    /// The schema version of the database (after [`PgStore::open`]: the
    /// newest this certsmith knows).
    pub fn schema_version(&self) -> Result<i32, StoreError> {
        let inner = self.inner.clone();
        self.block(async move {
            let c = inner.conn().await?;
            let row = inner
                .query_opt(
                    &*c,
                    "read the schema version of",
                    "SELECT max(version) FROM certsmith_schema",
                    &[],
                )
                .await?;
            Ok(row.and_then(|r| r.get::<_, Option<i32>>(0)).unwrap_or(0))
        })
    }

    /// Runs `f` on the store's runtime and waits for it.
    fn block<T: Send + 'static>(
        &self,
        f: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let Some(rt) = self.rt.0.as_ref() else {
            return Err(self.stopped());
        };
        rt.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv().map_err(|_| self.stopped())?
    }

    fn stopped(&self) -> StoreError {
        StoreError::Database {
            location: self.inner.location.clone(),
            action: "use",
            message: "the store's client stopped".to_owned(),
        }
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        self.block(async move {
            let mut c = inner.conn().await?;
            // A schema already at this version needs nothing, and is read
            // without a write: a role that may only read (a web node's,
            // for `certsmith sync`) can open the store.
            let current = c
                .query_opt("SELECT max(version) FROM certsmith_schema", &[])
                .await
                .ok()
                .flatten()
                .and_then(|r| r.get::<_, Option<i32>>(0));
            if current == Some(schema::latest()) {
                return Ok(());
            }
            let tx = inner.begin(&mut c).await?;
            inner
                .execute(
                    &tx,
                    "lock the schema of",
                    "SELECT pg_advisory_xact_lock($1)",
                    &[&MIGRATION_LOCK],
                )
                .await?;
            inner
                .execute(
                    &tx,
                    "create the schema table in",
                    "CREATE TABLE IF NOT EXISTS certsmith_schema (\
                     version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
                    &[],
                )
                .await?;
            let found: i32 = inner
                .query_opt(
                    &tx,
                    "read the schema version of",
                    "SELECT max(version) FROM certsmith_schema",
                    &[],
                )
                .await?
                .and_then(|r| r.get::<_, Option<i32>>(0))
                .unwrap_or(0);
            if found > schema::latest() {
                return Err(StoreError::SchemaTooNew {
                    location: inner.location.clone(),
                    found,
                    known: schema::latest(),
                });
            }
            for (version, sql) in schema::MIGRATIONS.iter().filter(|(v, _)| *v > found) {
                inner.queries.fetch_add(1, Ordering::Relaxed);
                tx.batch_execute(sql)
                    .await
                    .map_err(|e| inner.err("migrate the schema of", &e))?;
                inner
                    .execute(
                        &tx,
                        "record the schema version of",
                        "INSERT INTO certsmith_schema (version) VALUES ($1)",
                        &[version],
                    )
                    .await?;
                log::info!("{}: schema migrated to version {version}", inner.location);
            }
            inner.commit(tx, "migrate the schema of").await
        })
    }

    fn check_or_set_key(&self) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        self.block(async move {
            let c = inner.conn().await?;
            let read = || async {
                inner
                    .query_opt(&*c, "read the key check of", "SELECT value FROM certsmith_meta WHERE key = 'key_check'", &[])
                    .await
                    .map(|row| row.map(|r| r.get::<_, Vec<u8>>(0)))
            };
            // Recorded once; read first, so that a role that may only read
            // opens a store whose key is recorded.
            let sealed = match read().await? {
                Some(sealed) => sealed,
                None => {
                    let check = inner.seal(b"certsmith store key", "meta:key_check")?;
                    inner
                        .execute(
                            &*c,
                            "record the store key of",
                            "INSERT INTO certsmith_meta (key, value) VALUES ('key_check', $1) ON CONFLICT DO NOTHING",
                            &[&check],
                        )
                        .await?;
                    read().await?.unwrap_or_default()
                }
            };
            inner.open(&sealed, "meta:key_check").map(drop)
        })
    }

    /// Re-seals every private key of the store with `new`, in one
    /// transaction (writers wait meanwhile). Processes still running with
    /// the old key then refuse to write (and to read keys) until they are
    /// given the new one.
    pub fn rotate_key(&self, new: &StoreKey) -> Result<Rotated, StoreError> {
        let inner = self.inner.clone();
        let new = new.clone();
        self.block(async move {
            let mut c = inner.conn().await?;
            let tx = inner.begin(&mut c).await?;
            inner
                .execute(&tx, "lock", "LOCK TABLE certsmith_meta IN EXCLUSIVE MODE", &[])
                .await?;
            let mut done = Rotated::default();
            for r in inner
                .query(&tx, "read the accounts of", "SELECT ca_host, id, doc FROM certsmith_accounts", &[])
                .await?
            {
                let key = AccountKey { ca_host: r.get(0), id: r.get(1) };
                let row = account_row(&key);
                let plain = inner.open(&r.get::<_, Vec<u8>>(2), &row)?;
                let sealed = new.seal(&plain, &row)?;
                inner
                    .execute(&tx, "re-seal an account in", "UPDATE certsmith_accounts SET doc = $3 WHERE ca_host = $1 AND id = $2", &[&key.ca_host, &key.id, &sealed])
                    .await?;
                done.accounts += 1;
            }
            for r in inner
                .query(&tx, "read the keys of", "SELECT name, version, privkey FROM certsmith_versions WHERE privkey IS NOT NULL", &[])
                .await?
            {
                let (name, version): (String, i32) = (r.get(0), r.get(1));
                let row = version_row(&name, version.unsigned_abs());
                let plain = inner.open(&r.get::<_, Vec<u8>>(2), &row)?;
                let sealed = new.seal(&plain, &row)?;
                inner
                    .execute(&tx, "re-seal a key in", "UPDATE certsmith_versions SET privkey = $3 WHERE name = $1 AND version = $2", &[&name, &version, &sealed])
                    .await?;
                done.keys += 1;
            }
            for r in inner
                .query(&tx, "read the pending orders of", "SELECT name, doc FROM certsmith_pending_orders", &[])
                .await?
            {
                let name: String = r.get(0);
                let row = pending_row(&name);
                let plain = inner.open(&r.get::<_, Vec<u8>>(1), &row)?;
                let sealed = new.seal(&plain, &row)?;
                inner
                    .execute(&tx, "re-seal a pending order in", "UPDATE certsmith_pending_orders SET doc = $2 WHERE name = $1", &[&name, &sealed])
                    .await?;
                done.pending_orders += 1;
            }
            let check = new.seal(b"certsmith store key", "meta:key_check")?;
            inner
                .execute(&tx, "record the store key of", "UPDATE certsmith_meta SET value = $1 WHERE key = 'key_check'", &[&check])
                .await?;
            inner.commit(tx, "commit the new key to").await?;
            Ok(done)
        })
    }

    fn lease_guard(&self, scope: String, token: u64, auto_renew: Option<Duration>) -> Lease {
        let guard = PgLeaseGuard::new(self.clone(), scope.clone(), token, auto_renew);
        let holder = format!("{} (lease {scope})", self.inner.location);
        let (store, ttl) = (self.clone(), auto_renew.unwrap_or(LEASE_TTL));
        Lease::new(token, holder, Box::new(guard)).with_renewer(Box::new(move |token| {
            let (inner, scope) = (store.inner.clone(), scope.clone());
            store.block(async move { inner.renew(&scope, token, ttl).await })
        }))
    }

    fn wait_lease(&self, scope: String, wait: Duration) -> Result<Lease, StoreError> {
        let start = Instant::now();
        loop {
            let (inner, s) = (self.inner.clone(), scope.clone());
            if let Some(token) = self.block(async move { inner.try_claim(&s, LEASE_TTL).await })? {
                return Ok(self.lease_guard(scope, token, Some(LEASE_TTL)));
            }
            let waited = start.elapsed();
            if waited >= wait {
                return Err(StoreError::Locked {
                    path: PathBuf::from(format!("{}#leases/{scope}", self.inner.location)),
                    waited,
                });
            }
            let jitter = Duration::from_millis(u64::from(std::process::id() % 97));
            std::thread::sleep((LEASE_RETRY + jitter).min(wait - waited));
        }
    }

    fn mirror_version(&self, name: &str, version: u32, files: &CertFiles) -> SavedVersion {
        let virtual_dir = || {
            PathBuf::from(format!(
                "{}#certs/{name}/versions/{version}",
                self.inner.location
            ))
        };
        match &self.inner.mirror {
            Some(m) => match m.place_version(name, version, files) {
                Ok(saved) => saved,
                Err(e) => {
                    log::warn!("the certificate is stored, but its local copy is not: {e}");
                    SavedVersion {
                        version,
                        dir: virtual_dir(),
                        current: virtual_dir(),
                    }
                }
            },
            None => SavedVersion {
                version,
                dir: virtual_dir(),
                current: virtual_dir(),
            },
        }
    }
}

/// Splits `sslrootcert=` off the URL (tokio-postgres does not know it) and
/// builds the TLS connector unless `sslmode=disable`.
fn parse_url(
    url: &str,
    location: &str,
) -> Result<
    (
        tokio_postgres::Config,
        Option<tokio_postgres_rustls::MakeRustlsConnect>,
    ),
    StoreError,
> {
    let bad = |reason: String| StoreError::BadUrl {
        url: location.to_owned(),
        reason,
    };
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(bad(
            "a store URL starts with postgres:// (for example postgres://certsmith@db.example/certsmith); for a directory use --state-dir".to_owned(),
        ));
    }
    let mut root_cert = None;
    let cleaned = match url.split_once('?') {
        Some((base, query)) => {
            let kept: Vec<&str> = query
                .split('&')
                .filter(|kv| match kv.split_once('=') {
                    Some(("sslrootcert", v)) => {
                        root_cert = Some(PathBuf::from(v));
                        false
                    }
                    _ => true,
                })
                .collect();
            if kept.is_empty() {
                base.to_owned()
            } else {
                format!("{base}?{}", kept.join("&"))
            }
        }
        None => url.to_owned(),
    };
    let mut config: tokio_postgres::Config = cleaned
        .parse()
        .map_err(|e: tokio_postgres::Error| bad(e.to_string()))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    if config.get_application_name().is_none() {
        config.application_name("certsmith");
    }
    if config.get_ssl_mode() == tokio_postgres::config::SslMode::Disable {
        return Ok((config, None));
    }
    let path = root_cert.unwrap_or_else(|| PathBuf::from("/etc/ssl/certs/ca-certificates.crt"));
    let mut roots = rustls::RootCertStore::empty();
    if let Ok(pem) = std::fs::read(&path) {
        use rustls::pki_types::{CertificateDer, pem::PemObject as _};
        for cert in CertificateDer::pem_slice_iter(&pem).flatten() {
            let _ = roots.add(cert);
        }
    } else if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
        return Err(bad(format!(
            "sslmode=require needs CA certificates: {} cannot be read (add sslrootcert=FILE)",
            path.display()
        )));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((
        config,
        Some(tokio_postgres_rustls::MakeRustlsConnect::new(tls)),
    ))
}

/// Releases a lease when dropped, and renews it meanwhile when asked to.
struct PgLeaseGuard {
    store: PgStore,
    scope: String,
    token: u64,
    stop: Arc<(Mutex<bool>, Condvar)>,
    renewer: Option<std::thread::JoinHandle<()>>,
}

impl fmt::Debug for PgLeaseGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgLeaseGuard")
            .field("scope", &self.scope)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl PgLeaseGuard {
    fn new(
        store: PgStore,
        scope: String,
        token: u64,
        auto_renew: Option<Duration>,
    ) -> PgLeaseGuard {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let renewer = auto_renew.and_then(|ttl| {
            let (store, scope, stop) = (store.clone(), scope.clone(), stop.clone());
            std::thread::Builder::new()
                .name("certsmith-lease".to_owned())
                .spawn(move || {
                    let (lock, cvar) = &*stop;
                    let Ok(mut stopped) = lock.lock() else { return };
                    while !*stopped {
                        let Ok((s, timeout)) = cvar.wait_timeout(stopped, ttl / 3) else {
                            return;
                        };
                        stopped = s;
                        if *stopped || !timeout.timed_out() {
                            continue;
                        }
                        let (inner, sc) = (store.inner.clone(), scope.clone());
                        if let Err(e) =
                            store.block(async move { inner.renew(&sc, token, ttl).await })
                        {
                            log::warn!("cannot renew the lease {scope}: {e}");
                        }
                    }
                })
                .ok()
        });
        PgLeaseGuard {
            store,
            scope,
            token,
            stop,
            renewer,
        }
    }
}

impl Drop for PgLeaseGuard {
    fn drop(&mut self) {
        if let Ok(mut s) = self.stop.0.lock() {
            *s = true;
            self.stop.1.notify_all();
        }
        if let Some(t) = self.renewer.take() {
            let _ = t.join();
        }
        let (inner, scope, token) = (self.store.inner.clone(), self.scope.clone(), self.token);
        if let Err(e) = self
            .store
            .block(async move { inner.release(&scope, token).await })
        {
            log::warn!(
                "cannot release the lease {}: {e} (it expires by itself)",
                self.scope
            );
        }
    }
}

/// Forgets the pending order of a certificate (`$1`) at an order URL
/// (`$2`): another worker may have recorded its own since.
const REMOVE_PENDING_ORDER: &str =
    "DELETE FROM certsmith_pending_orders WHERE name = $1 AND order_url = $2";

impl Storage for PgStore {
    fn location(&self) -> String {
        self.inner.location.clone()
    }

    fn load_account(&self, key: &AccountKey) -> Result<Option<StoredAccountDoc>, StoreError> {
        let (inner, key) = (self.inner.clone(), key.clone());
        self.block(async move {
            let c = inner.conn().await?;
            let row = inner
                .query_opt(
                    &*c,
                    "read an account from",
                    "SELECT doc FROM certsmith_accounts WHERE ca_host = $1 AND id = $2",
                    &[&key.ca_host, &key.id],
                )
                .await?;
            row.map(|r| inner.account_doc(key, &r.get::<_, Vec<u8>>(0)))
                .transpose()
        })
    }

    fn create_account(&self, key: &AccountKey, json: &[u8]) -> Result<AccountSlot, StoreError> {
        let (inner, key, json) = (self.inner.clone(), key.clone(), json.to_vec());
        self.block(async move {
            let mut c = inner.conn().await?;
            let tx = inner.begin(&mut c).await?;
            inner.check_key(&tx).await?;
            let sealed = inner.seal(&json, &account_row(&key))?;
            let created = inner
                .execute(&tx, "store an account in", "INSERT INTO certsmith_accounts (ca_host, id, doc) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING", &[&key.ca_host, &key.id, &sealed])
                .await?;
            let slot = if created == 1 {
                AccountSlot::Created(StoredAccountDoc { location: inner.account_location(&key), key, json })
            } else {
                let row = inner
                    .query_opt(&tx, "read an account from", "SELECT doc FROM certsmith_accounts WHERE ca_host = $1 AND id = $2", &[&key.ca_host, &key.id])
                    .await?
                    .ok_or_else(|| inner.corrupt("accounts", "an account vanished while it was created"))?;
                AccountSlot::Existing(inner.account_doc(key, &row.get::<_, Vec<u8>>(0))?)
            };
            inner.commit(tx, "store an account in").await?;
            Ok(slot)
        })
    }

    fn replace_account(
        &self,
        key: &AccountKey,
        json: &[u8],
    ) -> Result<StoredAccountDoc, StoreError> {
        let (inner, key, json) = (self.inner.clone(), key.clone(), json.to_vec());
        self.block(async move {
            let mut c = inner.conn().await?;
            let tx = inner.begin(&mut c).await?;
            inner.check_key(&tx).await?;
            let sealed = inner.seal(&json, &account_row(&key))?;
            inner
                .execute(
                    &tx,
                    "store an account in",
                    "INSERT INTO certsmith_accounts (ca_host, id, doc) VALUES ($1, $2, $3) \
                  ON CONFLICT (ca_host, id) DO UPDATE SET doc = excluded.doc, updated_at = now()",
                    &[&key.ca_host, &key.id, &sealed],
                )
                .await?;
            inner.commit(tx, "store an account in").await?;
            Ok(StoredAccountDoc {
                location: inner.account_location(&key),
                key,
                json,
            })
        })
    }

    fn accounts(&self) -> Result<Vec<StoredAccountDoc>, StoreError> {
        let inner = self.inner.clone();
        self.block(async move {
            let c = inner.conn().await?;
            let rows = inner
                .query(&*c, "read the accounts of", "SELECT ca_host, id, doc FROM certsmith_accounts ORDER BY ca_host COLLATE \"C\", id COLLATE \"C\"", &[])
                .await?;
            rows.iter()
                .map(|r| inner.account_doc(AccountKey { ca_host: r.get(0), id: r.get(1) }, &r.get::<_, Vec<u8>>(2)))
                .collect()
        })
    }

    fn account_location(&self, key: &AccountKey) -> PathBuf {
        self.inner.account_location(key)
    }

    fn cert_names(&self) -> Result<Vec<String>, StoreError> {
        let inner = self.inner.clone();
        self.block(async move {
            let c = inner.conn().await?;
            let rows = inner
                .query(
                    &*c,
                    "list the certificates of",
                    "SELECT name FROM certsmith_certs ORDER BY name COLLATE \"C\"",
                    &[],
                )
                .await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn load_lineage(&self, name: &str) -> Result<Option<Lineage>, StoreError> {
        check_cert_name(name)?;
        let (inner, name) = (self.inner.clone(), name.to_owned());
        self.block(async move {
            let c = inner.conn().await?;
            let row = inner
                .query_opt(
                    &*c,
                    "read a lineage from",
                    "SELECT lineage FROM certsmith_certs WHERE name = $1",
                    &[&name],
                )
                .await?;
            row.map(|r| inner.parse_lineage(&name, r.get(0)))
                .transpose()
        })
    }

    fn update_lineage(
        &self,
        name: &str,
        change: &mut dyn FnMut(&mut Lineage),
    ) -> Result<Option<Lineage>, StoreError> {
        check_cert_name(name)?;
        // Optimistic: read with the row's revision, change here (the
        // closure cannot go to the store's runtime), write if the revision
        // is unchanged, else read again.
        for _ in 0..20 {
            let (inner, n) = (self.inner.clone(), name.to_owned());
            let read = self.block(async move {
                let c = inner.conn().await?;
                let row = inner
                    .query_opt(
                        &*c,
                        "read a lineage from",
                        "SELECT lineage, rev FROM certsmith_certs WHERE name = $1",
                        &[&n],
                    )
                    .await?;
                row.map(|r| Ok((inner.parse_lineage(&n, r.get(0))?, r.get::<_, i64>(1))))
                    .transpose()
            })?;
            let Some((mut lineage, rev)) = read else {
                return Ok(None);
            };
            change(&mut lineage);
            let text = self.inner.lineage_text(name, &lineage)?;
            let (inner, n, next) = (self.inner.clone(), name.to_owned(), next_renewal(&lineage));
            let written = self.block(async move {
                let c = inner.conn().await?;
                inner
                    .execute(&*c, "write a lineage to", "UPDATE certsmith_certs SET lineage = $2, next_renewal = $3::text::timestamptz, rev = rev + 1 \
                      WHERE name = $1 AND rev = $4", &[&n, &text, &next, &rev])
                    .await
            })?;
            if written == 1 {
                return Ok(Some(lineage));
            }
        }
        Err(StoreError::Database {
            location: self.inner.location.clone(),
            action: "update a lineage in",
            message: format!("'{name}' kept changing under 20 attempts"),
        })
    }

    fn commit_version_fenced(
        &self,
        name: &str,
        files: &CertFiles,
        lineage: &Lineage,
        mut record: VersionRecord,
        fence: Option<u64>,
        settles: Option<&str>,
    ) -> Result<SavedVersion, StoreError> {
        check_cert_name(name)?;
        let inner = self.inner.clone();
        let n = name.to_owned();
        let settles = settles.map(str::to_owned);
        let lineage = lineage.clone();
        let f = (
            files.cert_pem.clone(),
            files.chain_pem.clone(),
            files.fullchain_pem.clone(),
            files
                .privkey_pem
                .as_ref()
                .map(|k| k.expose().as_bytes().to_vec()),
            files.csr_pem.clone(),
        );
        let version = self.block(async move {
            let name = n;
            let mut c = inner.conn().await?;
            let tx = inner.begin(&mut c).await?;
            inner.check_key(&tx).await?;
            if let Some(token) = fence {
                let current = inner
                    .query_opt(&tx, "check the lease in", "SELECT token FROM certsmith_leases WHERE scope = $1 AND expires_at > now() FOR UPDATE", &[&cert_scope(&name)])
                    .await?
                    .map(|r| r.get::<_, i64>(0).unsigned_abs());
                if current != Some(token) {
                    return Err(StoreError::Fenced { name, token });
                }
            }
            inner
                .execute(&tx, "create a certificate in", "INSERT INTO certsmith_certs (name, lineage) VALUES ($1, '') ON CONFLICT DO NOTHING", &[&name])
                .await?;
            let old: String = inner
                .query_opt(&tx, "read a lineage from", "SELECT lineage FROM certsmith_certs WHERE name = $1 FOR UPDATE", &[&name])
                .await?
                .map(|r| r.get(0))
                .unwrap_or_default();
            let old = if old.is_empty() { None } else { Some(inner.parse_lineage(&name, &old)?) };
            let last: i32 = inner
                .query_opt(&tx, "number a version in", "SELECT coalesce(max(version), 0) FROM certsmith_versions WHERE name = $1", &[&name])
                .await?
                .map(|r| r.get(0))
                .unwrap_or(0);
            let version = last.unsigned_abs() + 1;
            let privkey = f.3.as_ref().map(|k| inner.seal(k, &version_row(&name, version))).transpose()?;
            inner
                .execute(&tx, "store a version in", "INSERT INTO certsmith_versions (name, version, cert_pem, chain_pem, fullchain_pem, privkey, csr_pem) \
                  VALUES ($1, $2, $3, $4, $5, $6, $7)", &[&name, &version_param(version), &f.0, &f.1, &f.2, &privkey, &f.4])
                .await?;
            record.version = version;
            let merged = lineage_for_commit(old, &lineage, record);
            let text = inner.lineage_text(&name, &merged)?;
            inner
                .execute(&tx, "make a version current in", "UPDATE certsmith_certs SET lineage = $2, current_version = $3, next_renewal = $4::text::timestamptz, rev = rev + 1 WHERE name = $1",
                    &[&name, &text, &version_param(version), &next_renewal(&merged)])
                .await?;
            if let Some(url) = &settles {
                inner.execute(&tx, "remove a pending order from", REMOVE_PENDING_ORDER, &[&name, url]).await?;
            }
            inner.commit(tx, "commit a version to").await?;
            Ok(version)
        })?;
        Ok(self.mirror_version(name, version, files))
    }

    fn remove_cert(&self, name: &str, keep_files: bool) -> Result<bool, StoreError> {
        check_cert_name(name)?;
        let (inner, name) = (self.inner.clone(), name.to_owned());
        self.block(async move {
            let mut c = inner.conn().await?;
            let tx = inner.begin(&mut c).await?;
            let existed = inner
                .execute(
                    &tx,
                    "remove a certificate from",
                    "DELETE FROM certsmith_certs WHERE name = $1",
                    &[&name],
                )
                .await?
                == 1;
            inner
                .execute(
                    &tx,
                    "remove a pending order from",
                    "DELETE FROM certsmith_pending_orders WHERE name = $1",
                    &[&name],
                )
                .await?;
            if !keep_files {
                inner
                    .execute(
                        &tx,
                        "remove the versions from",
                        "DELETE FROM certsmith_versions WHERE name = $1",
                        &[&name],
                    )
                    .await?;
            }
            inner.commit(tx, "remove a certificate from").await?;
            Ok(existed)
        })
    }

    fn rename_cert(&self, from: &str, to: &str) -> Result<(), StoreError> {
        check_cert_name(from)?;
        check_cert_name(to)?;
        let (inner, from, to) = (self.inner.clone(), from.to_owned(), to.to_owned());
        self.block(async move {
            let mut c = inner.conn().await?;
            let tx = inner.begin(&mut c).await?;
            inner.check_key(&tx).await?;
            let taken = inner
                .query_opt(&tx, "check a name in", "SELECT 1 FROM certsmith_certs WHERE name = $1 UNION ALL SELECT 1 FROM certsmith_versions WHERE name = $1 LIMIT 1", &[&to])
                .await?
                .is_some();
            if taken {
                return Err(StoreError::Exists { name: to, location: inner.location.clone() });
            }
            let moved = inner.execute(&tx, "rename a certificate in", "UPDATE certsmith_certs SET name = $2, rev = rev + 1 WHERE name = $1", &[&from, &to]).await?;
            if moved == 0 {
                return Err(StoreError::io(
                    "rename",
                    &PathBuf::from(format!("{}#certs/{from}", inner.location)),
                    std::io::Error::from(std::io::ErrorKind::NotFound),
                ));
            }
            // Sealed values are bound to their row: seal them again under
            // the new name.
            for r in inner
                .query(&tx, "read the versions of", "SELECT version, privkey FROM certsmith_versions WHERE name = $1", &[&from])
                .await?
            {
                let version: i32 = r.get(0);
                let sealed: Option<Vec<u8>> = match r.get::<_, Option<Vec<u8>>>(1) {
                    Some(s) => Some(inner.seal(&inner.open(&s, &version_row(&from, version.unsigned_abs()))?, &version_row(&to, version.unsigned_abs()))?),
                    None => None,
                };
                inner
                    .execute(&tx, "rename a version in", "UPDATE certsmith_versions SET name = $3, privkey = $4 WHERE name = $1 AND version = $2", &[&from, &version, &to, &sealed])
                    .await?;
            }
            if let Some(r) = inner
                .query_opt(&tx, "read a pending order from", "SELECT doc FROM certsmith_pending_orders WHERE name = $1", &[&from])
                .await?
            {
                let doc = inner.seal(&inner.open(&r.get::<_, Vec<u8>>(0), &pending_row(&from))?, &pending_row(&to))?;
                inner
                    .execute(&tx, "rename a pending order in", "UPDATE certsmith_pending_orders SET name = $2, doc = $3 WHERE name = $1", &[&from, &to, &doc])
                    .await?;
            }
            inner.commit(tx, "rename a certificate in").await
        })
    }

    fn current_version(&self, name: &str) -> Result<Option<u32>, StoreError> {
        check_cert_name(name)?;
        let (inner, name) = (self.inner.clone(), name.to_owned());
        self.block(async move {
            let c = inner.conn().await?;
            let row = inner
                .query_opt(
                    &*c,
                    "read the current version from",
                    "SELECT current_version FROM certsmith_certs WHERE name = $1",
                    &[&name],
                )
                .await?;
            Ok(row
                .and_then(|r| r.get::<_, Option<i32>>(0))
                .map(i32::unsigned_abs))
        })
    }

    fn read_version(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<VersionFiles>, StoreError> {
        check_cert_name(name)?;
        let (inner, n) = (self.inner.clone(), name.to_owned());
        let read = self.block(async move {
            let c = inner.conn().await?;
            // One statement: the current version and its files together.
            let row = match version {
                Some(v) => inner
                    .query_opt(&*c, "read a version from", "SELECT version, cert_pem, chain_pem, fullchain_pem, privkey, csr_pem FROM certsmith_versions WHERE name = $1 AND version = $2", &[&n, &version_param(v)])
                    .await?,
                None => inner
                    .query_opt(&*c, "read a version from", "SELECT v.version, v.cert_pem, v.chain_pem, v.fullchain_pem, v.privkey, v.csr_pem FROM certsmith_certs c \
                       JOIN certsmith_versions v ON v.name = c.name AND v.version = c.current_version WHERE c.name = $1", &[&n])
                    .await?,
            };
            let Some(r) = row else { return Ok(None) };
            let version = r.get::<_, i32>(0).unsigned_abs();
            let privkey_pem = match r.get::<_, Option<Vec<u8>>>(4) {
                Some(sealed) => {
                    let plain = inner.open(&sealed, &version_row(&n, version))?;
                    Some(PrivateKeyPem::new(String::from_utf8(plain).map_err(|e| inner.corrupt(&format!("certs/{n}/versions/{version}"), e))?))
                }
                None => None,
            };
            Ok(Some(VersionFiles {
                version,
                files: CertFiles { cert_pem: r.get(1), chain_pem: r.get(2), fullchain_pem: r.get(3), privkey_pem, csr_pem: r.get(5) },
                dir: None,
            }))
        })?;
        Ok(read.map(|mut v| {
            if let Some(m) = &self.inner.mirror {
                let dir = m
                    .cert_dir(name)
                    .join("versions")
                    .join(v.version.to_string());
                v.dir = dir.is_dir().then_some(dir);
            }
            v
        }))
    }

    fn current_dir(&self, name: &str) -> Option<PathBuf> {
        // The local copy is brought up to date first: a machine that did
        // not issue the certificate (the next CI runner, another node)
        // gets its files where a web server and a deploy hook read them.
        let mirror = self.inner.mirror.as_ref()?;
        let current = mirror.cert_dir(name).join("current");
        match self.current_version(name) {
            Ok(Some(v))
                if !mirror
                    .cert_dir(name)
                    .join("versions")
                    .join(v.to_string())
                    .is_dir()
                    || std::fs::read_link(&current).ok()
                        != Some(PathBuf::from("versions").join(v.to_string())) =>
            {
                match self.read_version(name, Some(v)) {
                    Ok(Some(files)) => {
                        if let Err(e) = mirror.place_version(name, v, &files.files) {
                            log::warn!("cannot write the local copy of '{name}': {e}");
                        }
                    }
                    Ok(None) => {}
                    Err(e) => log::warn!("cannot read '{name}' for its local copy: {e}"),
                }
            }
            Ok(_) => {}
            Err(e) => log::warn!("cannot read '{name}' for its local copy: {e}"),
        }
        Some(current)
    }

    fn put_pending_order(&self, name: &str, order: &PendingOrder) -> Result<(), StoreError> {
        check_cert_name(name)?;
        let json = serde_json::to_vec(order)
            .map_err(|e| self.inner.corrupt(&format!("pending/{name}"), e))?;
        let (inner, name, url) = (self.inner.clone(), name.to_owned(), order.order_url.clone());
        self.block(async move {
            let mut c = inner.conn().await?;
            let tx = inner.begin(&mut c).await?;
            inner.check_key(&tx).await?;
            let doc = inner.seal(&json, &pending_row(&name))?;
            inner
                .execute(&tx, "record a pending order in", "INSERT INTO certsmith_pending_orders (name, order_url, doc) VALUES ($1, $2, $3) \
                  ON CONFLICT (name) DO UPDATE SET order_url = excluded.order_url, doc = excluded.doc", &[&name, &url, &doc])
                .await?;
            inner.commit(tx, "record a pending order in").await
        })
    }

    fn pending_order(&self, name: &str) -> Result<Option<PendingOrder>, StoreError> {
        check_cert_name(name)?;
        let (inner, name) = (self.inner.clone(), name.to_owned());
        self.block(async move {
            let c = inner.conn().await?;
            let row = inner
                .query_opt(
                    &*c,
                    "read a pending order from",
                    "SELECT doc FROM certsmith_pending_orders WHERE name = $1",
                    &[&name],
                )
                .await?;
            row.map(|r| {
                let plain = inner.open(&r.get::<_, Vec<u8>>(0), &pending_row(&name))?;
                serde_json::from_slice(&plain)
                    .map_err(|e| inner.corrupt(&format!("pending/{name}"), e))
            })
            .transpose()
        })
    }

    fn remove_pending_order(&self, name: &str, order_url: &str) -> Result<(), StoreError> {
        check_cert_name(name)?;
        let (inner, name, url) = (self.inner.clone(), name.to_owned(), order_url.to_owned());
        self.block(async move {
            let c = inner.conn().await?;
            inner
                .execute(
                    &*c,
                    "remove a pending order from",
                    REMOVE_PENDING_ORDER,
                    &[&name, &url],
                )
                .await
                .map(drop)
        })
    }

    fn record_rate_limit(&self, record: &RateLimitRecord) -> Result<(), StoreError> {
        let doc =
            serde_json::to_string(record).map_err(|e| self.inner.corrupt("rate_limits", e))?;
        let (inner, until) = (self.inner.clone(), record.until.clone());
        self.block(async move {
            let mut c = inner.conn().await?;
            let tx = inner.begin(&mut c).await?;
            inner
                .execute(&tx, "forget lifted rate limits in", "DELETE FROM certsmith_rate_limits WHERE until <= now() OR doc = $1", &[&doc])
                .await?;
            inner
                .execute(&tx, "record a rate limit in", "INSERT INTO certsmith_rate_limits (until, doc) VALUES ($1::text::timestamptz, $2)", &[&until, &doc])
                .await?;
            inner.commit(tx, "record a rate limit in").await
        })
    }

    fn rate_limits(&self) -> Result<Vec<RateLimitRecord>, StoreError> {
        let inner = self.inner.clone();
        self.block(async move {
            let c = inner.conn().await?;
            let rows = inner
                .query(
                    &*c,
                    "read the rate limits of",
                    "SELECT doc FROM certsmith_rate_limits ORDER BY id",
                    &[],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    serde_json::from_str(r.get(0)).map_err(|e| inner.corrupt("rate_limits", e))
                })
                .collect()
        })
    }

    fn put_journal_entry(&self, entry: &JournalEntry) -> Result<(), StoreError> {
        let doc = serde_json::to_string(entry).map_err(|e| self.inner.corrupt("journal", e))?;
        let (inner, id) = (self.inner.clone(), entry.id.clone());
        self.block(async move {
            let c = inner.conn().await?;
            inner
                .execute(&*c, "write a journal entry to", "INSERT INTO certsmith_journal (id, doc) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET doc = excluded.doc", &[&id, &doc])
                .await
                .map(drop)
        })
    }

    fn remove_journal_entry(&self, id: &str) -> Result<(), StoreError> {
        let (inner, id) = (self.inner.clone(), id.to_owned());
        self.block(async move {
            let c = inner.conn().await?;
            inner
                .execute(
                    &*c,
                    "remove a journal entry from",
                    "DELETE FROM certsmith_journal WHERE id = $1",
                    &[&id],
                )
                .await
                .map(drop)
        })
    }

    fn journal_entries(&self) -> Result<Vec<JournalEntry>, StoreError> {
        let inner = self.inner.clone();
        self.block(async move {
            let c = inner.conn().await?;
            let rows = inner
                .query(
                    &*c,
                    "read the journal of",
                    "SELECT id, doc FROM certsmith_journal ORDER BY id COLLATE \"C\"",
                    &[],
                )
                .await?;
            Ok(rows
                .iter()
                .filter_map(|r| match serde_json::from_str::<JournalEntry>(r.get(1)) {
                    Ok(e) => Some(e),
                    Err(err) => {
                        log::warn!(
                            "ignoring unreadable journal entry {}: {err}",
                            r.get::<_, String>(0)
                        );
                        None
                    }
                })
                .collect())
        })
    }

    fn journal_location(&self) -> String {
        format!("{} (table certsmith_journal)", self.inner.location)
    }

    fn lease(&self, scope: &str, wait: Duration) -> Result<Lease, StoreError> {
        self.wait_lease(scope.to_owned(), wait)
    }

    fn name_lease(&self, scope: &str, wait: Duration) -> Result<Lease, StoreError> {
        self.wait_lease(format!("name:{scope}"), wait)
    }

    fn cert_lease(&self, name: &str, ttl: Duration) -> Result<Option<Lease>, StoreError> {
        check_cert_name(name)?;
        let (inner, scope) = (self.inner.clone(), cert_scope(name));
        let s = scope.clone();
        let token = self.block(async move { inner.try_claim(&s, ttl).await })?;
        Ok(token.map(|t| {
            // Not renewed by itself: the worker renews it while it works
            // (a hung worker then loses it).
            let guard = PgLeaseGuard::new(self.clone(), scope.clone(), t, None);
            let (store, sc) = (self.clone(), scope.clone());
            Lease::new(
                t,
                format!("{} (lease {scope})", self.inner.location),
                Box::new(guard),
            )
            .with_renewer(Box::new(move |token| {
                let (inner, sc) = (store.inner.clone(), sc.clone());
                store.block(async move { inner.renew(&sc, token, ttl).await })
            }))
        }))
    }

    fn restore_cert(
        &self,
        name: &str,
        lineage: &Lineage,
        versions: &[VersionFiles],
        current: Option<u32>,
    ) -> Result<(), StoreError> {
        check_cert_name(name)?;
        let text = self.inner.lineage_text(name, lineage)?;
        let next = next_renewal(lineage);
        let rows: Vec<(u32, CertFiles)> = versions
            .iter()
            .map(|v| (v.version, copy_files(&v.files)))
            .collect();
        let (inner, name) = (self.inner.clone(), name.to_owned());
        self.block(async move {
            let mut c = inner.conn().await?;
            let tx = inner.begin(&mut c).await?;
            inner.check_key(&tx).await?;
            let taken = inner
                .query_opt(&tx, "check a name in", "SELECT 1 FROM certsmith_certs WHERE name = $1 UNION ALL SELECT 1 FROM certsmith_versions WHERE name = $1 LIMIT 1", &[&name])
                .await?
                .is_some();
            if taken {
                return Err(StoreError::Exists { name, location: inner.location.clone() });
            }
            for (version, f) in rows {
                let (cert, chain, full, csr) = (f.cert_pem, f.chain_pem, f.fullchain_pem, f.csr_pem);
                let key = f.privkey_pem.map(|k| k.expose().as_bytes().to_vec());
                let sealed = key.map(|k| inner.seal(&k, &version_row(&name, version))).transpose()?;
                inner
                    .execute(&tx, "store a version in", "INSERT INTO certsmith_versions (name, version, cert_pem, chain_pem, fullchain_pem, privkey, csr_pem) \
                      VALUES ($1, $2, $3, $4, $5, $6, $7)", &[&name, &version_param(version), &cert, &chain, &full, &sealed, &csr])
                    .await?;
            }
            inner
                .execute(&tx, "store a certificate in", "INSERT INTO certsmith_certs (name, lineage, current_version, next_renewal) VALUES ($1, $2, $3, $4::text::timestamptz)",
                    &[&name, &text, &current.map(version_param), &next])
                .await?;
            inner.commit(tx, "store a certificate in").await
        })
    }

    fn queries(&self) -> Option<u64> {
        Some(PgStore::queries(self))
    }
}
