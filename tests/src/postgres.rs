//! A real PostgreSQL server (Debian package `postgresql`) for the shared
//! store's tests: a fresh cluster made with `initdb` in a temporary
//! directory, `postgres` listening on 127.0.0.1 and a free port (its socket
//! in the same directory), password authentication (SCRAM) for one role,
//! and a database per test ([`Postgres::database`]).
//!
//! PostgreSQL refuses to run as root: as root, `initdb` and `postgres` run
//! as the `postgres` user (made by the Debian package), which then owns the
//! directory. Durability is off (`fsync=off`): the tests check certsmith's
//! transactions, not the disk. The server is a direct child (no `pg_ctl`
//! daemon), killed on drop and by the kernel when the test process dies.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::process::ServerProcess;
use crate::{HarnessError, free_port};

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The role the tests connect as.
pub const ROLE: &str = "certsmith";

/// A running PostgreSQL server; killed on drop.
#[derive(Debug)]
pub struct Postgres {
    child: ServerProcess,
    port: u16,
    password: String,
    bin: PathBuf,
    user: Option<(u32, u32)>,
    dir: tempfile::TempDir,
}

fn not_installed(path: &Path) -> HarnessError {
    HarnessError::Io {
        context: format!(
            "PostgreSQL is missing (looked for initdb and postgres in {}): run `apt-get install postgresql` (scripts/test installs it), or set PG_BIN to the directory of its programs",
            path.display()
        ),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    }
}

/// The directory of `initdb` and `postgres`: `PG_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin`.
fn bin_dir() -> Result<PathBuf, HarnessError> {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        let dir = PathBuf::from(dir);
        return if dir.join("postgres").is_file() {
            Ok(dir)
        } else {
            Err(not_installed(&dir))
        };
    }
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .map_err(|_| not_installed(root))?
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, b)| b)
        .ok_or_else(|| not_installed(root))
}

/// As root: the uid and gid of the `postgres` user, which the server runs as.
fn postgres_user() -> Result<Option<(u32, u32)>, HarnessError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|source| HarnessError::Io {
        context: "reading /etc/passwd".to_owned(),
        source,
    })?;
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"postgres") && f.len() > 3)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
        .map(Some)
        .ok_or_else(|| HarnessError::Io {
            context: "PostgreSQL refuses to run as root and there is no `postgres` user: run `apt-get install postgresql` (it creates one)".to_owned(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })
}

/// The server's directory: a temporary one, which the `postgres` user must
/// reach when the tests run as root. `scripts/test` gives the tests a
/// private TMPDIR (mode 0700), which it cannot: then it is made in /tmp.
fn server_dir(as_root: bool) -> Result<tempfile::TempDir, HarnessError> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = crate::temp_dir("certsmith-pg-")?;
    let reachable = |d: &Path| {
        d.ancestors()
            .skip(1)
            .all(|a| std::fs::metadata(a).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
    };
    if !as_root || reachable(dir.path()) {
        return Ok(dir);
    }
    let mut dir = tempfile::Builder::new()
        .prefix("certsmith-pg-")
        .tempdir_in("/tmp")
        .map_err(|source| HarnessError::Io {
            context: "creating a temporary directory in /tmp for PostgreSQL".into(),
            source,
        })?;
    if crate::keep_temp() {
        dir.disable_cleanup(true);
        eprintln!("certsmith-tests: keeping {}", dir.path().display());
    }
    Ok(dir)
}

impl Postgres {
    /// Makes a cluster and starts the server.
    pub fn start() -> Result<Postgres, HarnessError> {
        let bin = bin_dir()?;
        let user = postgres_user()?;
        let dir = server_dir(user.is_some())?;
        let io = |context: String| move |source| HarnessError::Io { context, source };
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .map_err(io(format!("chown {} to postgres", dir.path().display())))?;
        }
        let password = format!("pw-{}-{}", std::process::id(), free_port());
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, format!("{password}\n"))
            .map_err(io("writing the password file".to_owned()))?;
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid))
                .map_err(io("chown pwfile".to_owned()))?;
        }
        let data = dir.path().join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .args([
                "--auth=scram-sha-256",
                "--no-sync",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            ])
            .arg(format!("--username={ROLE}"))
            .arg(format!("--pwfile={}", pwfile.display()))
            .arg("-D")
            .arg(&data);
        if let Some((uid, gid)) = user {
            initdb.uid(uid).gid(gid);
        }
        let out = initdb
            .output()
            .map_err(io(format!("running {}", bin.join("initdb").display())))?;
        if !out.status.success() {
            return Err(HarnessError::Io {
                context: format!(
                    "initdb failed: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
                source: std::io::Error::other("initdb failed"),
            });
        }
        let port = free_port();
        let mut cmd = Command::new(bin.join("postgres"));
        cmd.arg("-D")
            .arg(&data)
            .args(["-c", "listen_addresses=127.0.0.1", "-p"])
            .arg(port.to_string())
            .arg("-k")
            .arg(dir.path())
            .args([
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ])
            .args(["-c", "max_connections=300", "-c", "shared_buffers=64MB"]);
        if let Some((uid, gid)) = user {
            cmd.uid(uid).gid(gid);
        }
        let log = dir.path().join("postgres.log");
        let child = ServerProcess::spawn("postgres", cmd, &log)?;
        let mut pg = Postgres {
            child,
            port,
            password,
            bin,
            user,
            dir,
        };
        pg.wait_ready()?;
        Ok(pg)
    }

    fn wait_ready(&mut self) -> Result<(), HarnessError> {
        let start = Instant::now();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        loop {
            if let Some(status) = self.child.exited() {
                return Err(self
                    .child
                    .not_ready(format!("it exited ({status})"), start.elapsed()));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                let ready = Command::new(self.bin.join("pg_isready"))
                    .args(["-h", "127.0.0.1", "-p"])
                    .arg(self.port.to_string())
                    .output()
                    .is_ok_and(|o| o.status.success());
                if ready {
                    return Ok(());
                }
            }
            if start.elapsed() > READY_TIMEOUT {
                return Err(self
                    .child
                    .not_ready(format!("port {} to accept", self.port), start.elapsed()));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Creates database `name` (owned by [`ROLE`]) and returns its URL,
    /// with the password.
    pub fn database(&self, name: &str) -> Result<String, HarnessError> {
        let out = Command::new(self.bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .args(["-U", ROLE, name])
            .env("PGPASSWORD", &self.password)
            .output()
            .map_err(|source| HarnessError::Io {
                context: "running createdb".to_owned(),
                source,
            })?;
        if !out.status.success() {
            return Err(HarnessError::Io {
                context: format!(
                    "createdb {name} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ),
                source: std::io::Error::other("createdb failed"),
            });
        }
        Ok(self.url(name))
    }

    /// The URL of database `name`, with the password.
    pub fn url(&self, name: &str) -> String {
        format!(
            "postgres://{ROLE}:{}@127.0.0.1:{}/{name}",
            self.password, self.port
        )
    }

    /// The password (to check it never shows).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// Runs one SQL statement with `psql` and returns its unaligned output
    /// (rows, `|`-separated).
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, HarnessError> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .args([
                "-U",
                ROLE,
                "-d",
                db,
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .env("PGPASSWORD", &self.password)
            .output()
            .map_err(|source| HarnessError::Io {
                context: "running psql".to_owned(),
                source,
            })?;
        if !out.status.success() {
            return Err(HarnessError::Io {
                context: format!(
                    "psql {sql:?} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ),
                source: std::io::Error::other("psql failed"),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// The server's directory (data, socket, log).
    pub fn temp_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The uid/gid the server runs as, when the tests run as root.
    pub fn server_user(&self) -> Option<(u32, u32)> {
        self.user
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        self.child.log()
    }
}
