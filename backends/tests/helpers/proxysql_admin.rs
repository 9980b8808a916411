//! A stand-in for ProxySQL 2.7's admin interface (MySQL protocol, port 6032), for the
//! router driver's tests: ProxySQL is not installable here, and its admin interface speaks
//! a narrow dialect that MariaDB would not catch (issue 10: mysql_async's connect query
//! and its pool's `COM_RESET_CONNECTION` are refused by a real ProxySQL 2.7.2).
//!
//! It answers the way ProxySQL's source does (`lib/Admin_Handler.cpp`,
//! `lib/MySQL_Session.cpp`, `lib/MySQL_Protocol.cpp`, v2.7):
//! - handshake as server version `8.0.11` with `mysql_native_password`, the capability
//!   flags ProxySQL sends (no SSL, no compression, no connect attributes), the password
//!   checked;
//! - `COM_QUERY`, `COM_PING`, `COM_INIT_DB`, `COM_SET_OPTION`, `COM_QUIT` accepted;
//!   `COM_STMT_PREPARE`/`EXECUTE`/`RESET` and `COM_FIELD_LIST` refused with
//!   `Command not supported`; `COM_RESET_CONNECTION` refused with ProxySQL's message;
//!   `COM_CHANGE_USER` (which ProxySQL leaves unanswered) recorded and the connection
//!   closed, so a client fails instead of hanging;
//! - queries: the statements the admin answers itself (`BEGIN`/`COMMIT`/`ROLLBACK`,
//!   `SET NAMES`/`SET AUTOCOMMIT`, `USE`, `select @@version_comment limit 1`,
//!   `SELECT @@version`), the `SELECT @@<variable>` rewrite that only works for one lone
//!   variable (anything after it is SQLite's `near "…": syntax error`), other `SET` as
//!   an unknown global variable, and SQL on `mysql_users`, `runtime_mysql_users` and
//!   `disk.mysql_users` (`INSERT`/`REPLACE`/`INSERT OR REPLACE`, `DELETE`, `SELECT` with
//!   one `=` or `LIKE` condition) on an in-memory table with ProxySQL's keys
//!   (`PRIMARY KEY (username, backend)`, `UNIQUE (username, frontend)`);
//! - `LOAD MYSQL USERS TO RUNTIME` (runtime holds each active user as a frontend row and
//!   a backend row, as ProxySQL shows it), `SAVE MYSQL USERS TO DISK`, `SAVE MYSQL USERS
//!   FROM RUNTIME`, `LOAD MYSQL USERS FROM DISK` and their documented aliases;
//! - a multi-statement query runs its first statement only, the rest silently ignored
//!   (SQLite's `prepare_v2`), recorded here as refused so tests notice.
//!
//! Every command is recorded with the error it got ([`Received`]). Anything the stand-in
//! does not know is answered with an error and recorded too: a driver test that asserts
//! "nothing refused" fails on it rather than passing on a guess.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub const ADMIN_USER: &str = "radmin";
pub const ADMIN_PASSWORD: &str = "radmin-test-pw";

/// What ProxySQL's admin handshake says it is (`mysql-server_version`, 2.6+ default).
const SERVER_VERSION: &str = "8.0.11";
/// `SELECT @@version` on the admin.
const PROXYSQL_VERSION: &str = "2.7.2-46-g2a6b3e1";

// Capability flags ProxySQL 2.7 sends: `mysql-server_capabilities` (lower word) plus
// LONG_FLAG/RESERVED, and its extended capabilities (upper word).
const CAPS_LOWER: u32 = 0x1 | 0x2 | 0x4 | 0x8 | 0x200 | 0x1000 | 0x2000 | 0x4000 | 0x8000;
const CAPS_UPPER: u32 = 0x1_0000 | 0x2_0000 | 0x4_0000 | 0x8_0000 | 0x80_0000 | 0x8000_0000;
const CLIENT_CONNECT_WITH_DB: u32 = 0x8;
const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
const CLIENT_PLUGIN_AUTH: u32 = 0x8_0000;
const CLIENT_PLUGIN_AUTH_LENENC: u32 = 0x20_0000;
const SERVER_STATUS_AUTOCOMMIT: u16 = 0x2;

/// `mysql_users` columns of ProxySQL 2.7, in table order, with their defaults.
const COLUMNS: &[(&str, Option<&str>)] = &[
    ("username", None),
    ("password", None),
    ("active", Some("1")),
    ("use_ssl", Some("0")),
    ("default_hostgroup", Some("0")),
    ("default_schema", None),
    ("schema_locked", Some("0")),
    ("transaction_persistent", Some("1")),
    ("fast_forward", Some("0")),
    ("backend", Some("1")),
    ("frontend", Some("1")),
    ("max_connections", Some("10000")),
    ("attributes", Some("")),
    ("comment", Some("")),
];

fn col(name: &str) -> Option<usize> {
    COLUMNS
        .iter()
        .position(|(c, _)| c.eq_ignore_ascii_case(name))
}

/// One row of `mysql_users`: every value as text (the admin answers text only).
pub type Row = Vec<Option<String>>;

/// One command the stand-in received and what it answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// `COM_QUERY <sql>`, `COM_PING`, `COM_RESET_CONNECTION`, …
    pub command: String,
    /// The error message sent back (or why it was ignored); `None` when accepted.
    pub refused: Option<String>,
}

#[derive(Debug, Default)]
struct Tables {
    memory: Vec<Row>,
    runtime: Vec<Row>,
    disk: Vec<Row>,
}

#[derive(Default)]
struct Shared {
    tables: Mutex<Tables>,
    log: Mutex<Vec<Received>>,
    changed: Notify,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    fn record(&self, command: String, refused: Option<String>) {
        lock(&self.log).push(Received { command, refused });
        self.changed.notify_waiters();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running stand-in on a loopback port; stopped (listener and every session) on
/// [`ProxySqlAdmin::stop`] or drop. Its tables survive a stop, like ProxySQL's disk file.
pub struct ProxySqlAdmin {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl ProxySqlAdmin {
    /// Starts on an OS-chosen loopback port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("addr: {e}"));
        let admin = ProxySqlAdmin {
            addr,
            shared: Arc::new(Shared::default()),
        };
        admin.serve(listener);
        admin
    }

    /// The admin URL a driver is configured with.
    pub fn url(&self) -> String {
        format!("mysql://{ADMIN_USER}:{ADMIN_PASSWORD}@{}", self.addr)
    }

    /// `host:port`, the driver's label for this endpoint.
    pub fn label(&self) -> String {
        self.addr.to_string()
    }

    fn serve(&self, listener: TcpListener) {
        let shared = self.shared.clone();
        let accept = tokio::spawn(async move {
            let mut id = 0u32;
            while let Ok((stream, _)) = listener.accept().await {
                id += 1;
                let session = tokio::spawn(session(shared.clone(), stream, id));
                lock(&shared.tasks).push(session);
            }
        });
        lock(&self.shared.tasks).push(accept);
    }

    /// Stops listening and ends every open session; when it returns, the listener is
    /// closed (the port refuses connections) and every session's socket too.
    pub async fn stop(&self) {
        let tasks: Vec<JoinHandle<()>> = lock(&self.shared.tasks).drain(..).collect();
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
    }

    /// Starts again on the same port, as ProxySQL restarts: memory from disk, runtime
    /// loaded from memory.
    pub async fn restart(&self) {
        self.stop().await;
        {
            let mut t = lock(&self.shared.tables);
            t.memory = t.disk.clone();
            t.runtime = load_to_runtime(&t.memory);
        }
        let listener = TcpListener::bind(self.addr)
            .await
            .unwrap_or_else(|e| panic!("rebind {}: {e}", self.addr));
        self.serve(listener);
    }

    /// Empties every layer (a ProxySQL replaced by a fresh one, its disk file gone).
    pub fn wipe(&self) {
        *lock(&self.shared.tables) = Tables::default();
    }

    /// Puts a user into every layer directly (as another client would have left it).
    pub fn put_user(&self, username: &str) {
        let mut row: Row = COLUMNS.iter().map(|(_, d)| d.map(str::to_owned)).collect();
        row[0] = Some(username.to_owned());
        row[1] = Some("*0000000000000000000000000000000000000000".to_owned());
        let mut t = lock(&self.shared.tables);
        t.memory.retain(|r| r[0] != row[0]);
        t.memory.push(row);
        t.disk = t.memory.clone();
        t.runtime = load_to_runtime(&t.memory);
    }

    /// Every command received so far.
    pub fn received(&self) -> Vec<Received> {
        lock(&self.shared.log).clone()
    }

    /// The SQL of every `COM_QUERY` received so far.
    pub fn queries(&self) -> Vec<String> {
        self.received()
            .into_iter()
            .filter_map(|r| r.command.strip_prefix("COM_QUERY ").map(str::to_owned))
            .collect()
    }

    /// Every command answered with an error (or partly ignored).
    pub fn refused(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.refused.is_some())
            .collect()
    }

    pub fn clear_log(&self) {
        lock(&self.shared.log).clear();
    }

    /// Waits until a received command satisfies `pred` (commands a client sends in the
    /// background, such as a pool's reset). Panics after 30 s: a guard against a hang,
    /// not a timing check.
    pub async fn wait_for(&self, pred: impl Fn(&Received) -> bool) -> Received {
        let wait = async {
            loop {
                let notified = self.shared.changed.notified();
                if let Some(r) = self.received().into_iter().find(|r| pred(r)) {
                    return r;
                }
                notified.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .unwrap_or_else(|_| panic!("{}: expected command never arrived", self.addr))
    }

    /// Rows of a layer (`"memory"`, `"runtime"`, `"disk"`) for one user, as
    /// `column → value` pairs of the columns named.
    pub fn rows(&self, layer: &str, username: &str) -> Vec<Row> {
        let t = lock(&self.shared.tables);
        let rows = match layer {
            "memory" => &t.memory,
            "runtime" => &t.runtime,
            "disk" => &t.disk,
            other => panic!("no layer {other}"),
        };
        rows.iter()
            .filter(|r| r[0].as_deref() == Some(username))
            .cloned()
            .collect()
    }

    /// One column of a row returned by [`ProxySqlAdmin::rows`].
    pub fn value<'a>(row: &'a Row, column: &str) -> Option<&'a str> {
        col(column).and_then(|i| row[i].as_deref())
    }
}

impl Drop for ProxySqlAdmin {
    fn drop(&mut self) {
        for task in lock(&self.shared.tasks).drain(..) {
            task.abort();
        }
    }
}

/// Runtime as ProxySQL dumps it: every active user as a frontend row and a backend row.
fn load_to_runtime(memory: &[Row]) -> Vec<Row> {
    let (fe, be) = (col("frontend").unwrap_or(0), col("backend").unwrap_or(0));
    let active = col("active").unwrap_or(0);
    let mut out = Vec::new();
    for row in memory.iter().filter(|r| r[active].as_deref() == Some("1")) {
        for (f, b) in [("1", "0"), ("0", "1")] {
            let wanted = if f == "1" { fe } else { be };
            if row[wanted].as_deref() == Some("1") {
                let mut r = row.clone();
                r[fe] = Some(f.into());
                r[be] = Some(b.into());
                out.push(r);
            }
        }
    }
    out
}

// ------------------------------------------------------------------ protocol

struct Conn {
    stream: TcpStream,
    seq: u8,
}

impl Conn {
    async fn read_packet(&mut self) -> Option<Vec<u8>> {
        let mut header = [0u8; 4];
        self.stream.read_exact(&mut header).await.ok()?;
        let len =
            usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
        self.seq = header[3].wrapping_add(1);
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body).await.ok()?;
        Some(body)
    }

    async fn write_packet(&mut self, body: &[u8]) -> std::io::Result<()> {
        let len = u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes();
        let mut pkt = vec![len[0], len[1], len[2], self.seq];
        pkt.extend_from_slice(body);
        self.seq = self.seq.wrapping_add(1);
        self.stream.write_all(&pkt).await
    }

    async fn ok(&mut self, affected: u64) -> std::io::Result<()> {
        let mut b = vec![0x00];
        lenenc_int(&mut b, affected);
        lenenc_int(&mut b, 0);
        b.extend_from_slice(&SERVER_STATUS_AUTOCOMMIT.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        self.write_packet(&b).await
    }

    async fn err(&mut self, code: u16, state: &str, msg: &str) -> std::io::Result<()> {
        let mut b = vec![0xff];
        b.extend_from_slice(&code.to_le_bytes());
        b.push(b'#');
        b.extend_from_slice(state.as_bytes());
        b.extend_from_slice(msg.as_bytes());
        self.write_packet(&b).await
    }

    async fn eof(&mut self) -> std::io::Result<()> {
        let mut b = vec![0xfe];
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&SERVER_STATUS_AUTOCOMMIT.to_le_bytes());
        self.write_packet(&b).await
    }

    /// A text result set the way ProxySQL's `SQLite3_to_MySQL` sends it: every column
    /// `VAR_STRING`, utf8, classic EOF packets.
    async fn result_set(&mut self, names: &[String], rows: &[Row]) -> std::io::Result<()> {
        let mut b = Vec::new();
        lenenc_int(&mut b, names.len() as u64);
        self.write_packet(&b).await?;
        for name in names {
            let mut d = Vec::new();
            for s in ["def", "", "", "", name.as_str(), ""] {
                lenenc_str(&mut d, s.as_bytes());
            }
            d.push(0x0c);
            d.extend_from_slice(&33u16.to_le_bytes());
            d.extend_from_slice(&15u32.to_le_bytes());
            d.push(0xfd);
            d.extend_from_slice(&1u16.to_le_bytes());
            d.push(0x1f);
            d.extend_from_slice(&[0, 0]);
            self.write_packet(&d).await?;
        }
        self.eof().await?;
        for row in rows {
            let mut r = Vec::new();
            for v in row {
                match v {
                    Some(s) => lenenc_str(&mut r, s.as_bytes()),
                    None => r.push(0xfb),
                }
            }
            self.write_packet(&r).await?;
        }
        self.eof().await
    }
}

fn lenenc_int(b: &mut Vec<u8>, n: u64) {
    if n < 251 {
        b.push(n as u8);
    } else if n < 1 << 16 {
        b.push(0xfc);
        b.extend_from_slice(&(n as u16).to_le_bytes());
    } else if n < 1 << 24 {
        b.push(0xfd);
        b.extend_from_slice(&(n as u32).to_le_bytes()[..3]);
    } else {
        b.push(0xfe);
        b.extend_from_slice(&n.to_le_bytes());
    }
}

fn lenenc_str(b: &mut Vec<u8>, s: &[u8]) {
    lenenc_int(b, s.len() as u64);
    b.extend_from_slice(s);
}

fn cstr(buf: &[u8], pos: &mut usize) -> Option<Vec<u8>> {
    let rest = buf.get(*pos..)?;
    let end = rest.iter().position(|&c| c == 0)?;
    *pos += end + 1;
    Some(rest[..end].to_vec())
}

fn scramble() -> [u8; 20] {
    use rand::Rng;
    let mut rng = rand::rng();
    let mut s = [0u8; 20];
    for c in &mut s {
        // Printable and never NUL, as ProxySQL's proxy_create_random_string.
        *c = rng.random_range(0x21u8..0x7f);
    }
    s
}

/// `mysql_native_password`: SHA1(pw) XOR SHA1(scramble + SHA1(SHA1(pw))).
fn native_token(password: &str, scramble: &[u8]) -> Vec<u8> {
    let once = Sha1::digest(password.as_bytes());
    let twice = Sha1::digest(once);
    let mut h = Sha1::new();
    h.update(scramble);
    h.update(twice);
    let mix = h.finalize();
    once.iter().zip(mix.iter()).map(|(a, b)| a ^ b).collect()
}

async fn session(shared: Arc<Shared>, stream: TcpStream, id: u32) {
    let mut c = Conn { stream, seq: 0 };
    let scramble = scramble();
    let mut hs = vec![10u8];
    hs.extend_from_slice(SERVER_VERSION.as_bytes());
    hs.push(0);
    hs.extend_from_slice(&id.to_le_bytes());
    hs.extend_from_slice(&scramble[..8]);
    hs.push(0);
    let caps = CAPS_LOWER | CAPS_UPPER;
    hs.extend_from_slice(&(caps as u16).to_le_bytes());
    hs.push(33);
    hs.extend_from_slice(&SERVER_STATUS_AUTOCOMMIT.to_le_bytes());
    hs.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
    hs.push(21);
    hs.extend_from_slice(&[0u8; 10]);
    hs.extend_from_slice(&scramble[8..]);
    hs.push(0);
    hs.extend_from_slice(b"mysql_native_password\0");
    if c.write_packet(&hs).await.is_err() {
        return;
    }
    let Some(resp) = c.read_packet().await else {
        return;
    };
    if !handshake_ok(&resp, &scramble) {
        let msg = format!(
            "ProxySQL Error: Access denied for user '{}'@'127.0.0.1' (using password: YES)",
            user_of(&resp)
        );
        shared.record("handshake".into(), Some(msg.clone()));
        let _ = c.err(1045, "28000", &msg).await;
        return;
    }
    if c.ok(0).await.is_err() {
        return;
    }
    while let Some(pkt) = c.read_packet().await {
        let Some((&cmd, body)) = pkt.split_first() else {
            return;
        };
        let sent = match cmd {
            0x01 => {
                shared.record("COM_QUIT".into(), None);
                return;
            }
            0x02 => {
                shared.record("COM_INIT_DB".into(), None);
                c.ok(0).await
            }
            0x0e => {
                shared.record("COM_PING".into(), None);
                c.ok(0).await
            }
            0x1b => {
                shared.record("COM_SET_OPTION".into(), None);
                c.eof().await
            }
            0x03 => {
                let sql = String::from_utf8_lossy(body).into_owned();
                query(&shared, &mut c, sql).await
            }
            0x04 | 0x16 | 0x17 | 0x1a => {
                let name = match cmd {
                    0x04 => "COM_FIELD_LIST",
                    0x16 => "COM_STMT_PREPARE",
                    0x17 => "COM_STMT_EXECUTE",
                    _ => "COM_STMT_RESET",
                };
                let msg = "Command not supported";
                shared.record(name.into(), Some(msg.into()));
                c.err(1045, "28000", msg).await
            }
            0x1f => {
                let msg = "Received unsupported 'COM_RESET_CONNECTION' for session type \
                           'PROXYSQL_SESSION_ADMIN'";
                shared.record("COM_RESET_CONNECTION".into(), Some(msg.into()));
                // ProxySQL sends it with sequence id 2.
                c.seq = 2;
                c.err(1047, "28000", msg).await
            }
            0x11 => {
                shared.record(
                    "COM_CHANGE_USER".into(),
                    Some("ProxySQL's admin never answers it (the client would hang)".into()),
                );
                return;
            }
            other => {
                let msg = format!("unknown command {other:#04x} (not known to the stand-in)");
                shared.record(format!("COM_{other:#04x}"), Some(msg.clone()));
                c.err(1045, "28000", &msg).await
            }
        };
        if sent.is_err() {
            return;
        }
    }
}

fn user_of(resp: &[u8]) -> String {
    let mut pos = 32;
    cstr(resp, &mut pos)
        .map(|u| String::from_utf8_lossy(&u).into_owned())
        .unwrap_or_default()
}

fn handshake_ok(resp: &[u8], scramble: &[u8]) -> bool {
    let Some(caps) = resp
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    else {
        return false;
    };
    let mut pos = 32;
    let Some(user) = cstr(resp, &mut pos) else {
        return false;
    };
    let token = if caps & CLIENT_PLUGIN_AUTH_LENENC != 0 {
        // Not offered by ProxySQL: a client that sends it anyway is refused.
        return false;
    } else if caps & CLIENT_SECURE_CONNECTION != 0 {
        let Some(&len) = resp.get(pos) else {
            return false;
        };
        let start = pos + 1;
        pos = start + usize::from(len);
        match resp.get(start..pos) {
            Some(t) => t.to_vec(),
            None => return false,
        }
    } else {
        return false;
    };
    if caps & CLIENT_CONNECT_WITH_DB != 0 && cstr(resp, &mut pos).is_none() {
        return false;
    }
    if caps & CLIENT_PLUGIN_AUTH != 0 {
        match cstr(resp, &mut pos) {
            Some(p) if p == b"mysql_native_password" => {}
            _ => return false,
        }
    }
    user == ADMIN_USER.as_bytes() && token == native_token(ADMIN_PASSWORD, scramble)
}

// ------------------------------------------------------------------ queries

enum Answer {
    Ok(u64),
    Rows(Vec<String>, Vec<Row>),
    Err(String),
}

async fn query(shared: &Shared, c: &mut Conn, sql: String) -> std::io::Result<()> {
    // ProxySQL's remove_spaces + trailing ';'/' ' stripping (bug #925).
    let mut q = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    while q.ends_with(';') || q.ends_with(' ') {
        q.pop();
    }
    let (answer, ignored) = answer(shared, &q);
    let command = format!("COM_QUERY {sql}");
    match answer {
        Answer::Ok(n) => {
            shared.record(command, ignored);
            c.ok(n).await
        }
        Answer::Rows(names, rows) => {
            shared.record(command, ignored);
            c.result_set(&names, &rows).await
        }
        Answer::Err(msg) => {
            // SQLite errors come back prefixed, as code 1045 / 28000.
            let msg = format!("ProxySQL Admin Error: {msg}");
            shared.record(command, Some(msg.clone()));
            c.err(1045, "28000", &msg).await
        }
    }
}

fn starts_ci(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// The answer, and a note when part of the query was silently ignored.
fn answer(shared: &Shared, q: &str) -> (Answer, Option<String>) {
    // Statements the admin answers OK without running them.
    for ok in [
        "BEGIN",
        "START TRANSACTION",
        "COMMIT",
        "ROLLBACK",
        "SET character_set_results",
        "SET SQL_AUTO_IS_NULL",
        "SET NAMES",
        "SET AUTOCOMMIT",
        "USE ",
    ] {
        if starts_ci(q, ok) {
            return (Answer::Ok(0), None);
        }
    }
    if q.eq_ignore_ascii_case("select @@version_comment limit 1") {
        return (
            Answer::Rows(
                vec!["'(ProxySQL Admin Module)'".into()],
                vec![vec![Some("(ProxySQL Admin Module)".into())]],
            ),
            None,
        );
    }
    if starts_ci(q, "SELECT @@version") && !starts_ci(q, "SELECT @@version_") {
        return (
            Answer::Rows(
                vec!["@@version".into()],
                vec![vec![Some(PROXYSQL_VERSION.into())]],
            ),
            None,
        );
    }
    // `^SELECT\s+@@name\s*` is replaced by a global_variables lookup; what follows the
    // name stays and reaches SQLite.
    if starts_ci(q, "SELECT @@") {
        let rest = &q["SELECT @@".len()..];
        let end = rest
            .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_' || ch == '-'))
            .unwrap_or(rest.len());
        let (name, tail) = rest.split_at(end);
        let tail = tail.trim_start();
        if !tail.is_empty() {
            return (Answer::Err(near(tail)), None);
        }
        let rows = if name.eq_ignore_ascii_case("max_allowed_packet") {
            vec![vec![Some("67108864".into())]]
        } else {
            // `variable_name='wait_timeout'` is not a variable of the admin (those are
            // `mysql-…`/`admin-…`): no row.
            Vec::new()
        };
        return (Answer::Rows(vec![format!("@@{name}")], rows), None);
    }
    if starts_ci(q, "SET ") {
        let var = q[4..].split('=').next().unwrap_or("").trim();
        return (
            Answer::Err(format!("ERROR: Unknown global variable: '{var}'.")),
            None,
        );
    }
    // One statement: SQLite runs the first and ignores the rest without an error.
    let (first, ignored) = split_first_statement(q);
    let ignored = ignored.map(|rest| format!("ignored after the first statement: {rest}"));
    let upper = first.to_ascii_uppercase();
    let mut t = lock(&shared.tables);
    let answer = match upper.as_str() {
        "LOAD MYSQL USERS TO RUNTIME"
        | "LOAD MYSQL USERS TO RUN"
        | "LOAD MYSQL USERS FROM MEMORY"
        | "LOAD MYSQL USERS FROM MEM" => {
            t.runtime = load_to_runtime(&t.memory);
            Answer::Ok(0)
        }
        "SAVE MYSQL USERS TO DISK"
        | "SAVE MYSQL USERS FROM MEMORY"
        | "SAVE MYSQL USERS FROM MEM" => {
            t.disk = t.memory.clone();
            Answer::Ok(0)
        }
        "SAVE MYSQL USERS TO MEMORY"
        | "SAVE MYSQL USERS TO MEM"
        | "SAVE MYSQL USERS FROM RUNTIME"
        | "SAVE MYSQL USERS FROM RUN" => {
            // Runtime's frontend and backend rows become one row again.
            let (fe, be) = (col("frontend").unwrap_or(0), col("backend").unwrap_or(0));
            let mut merged: Vec<Row> = Vec::new();
            for r in &t.runtime {
                match merged.iter_mut().find(|m| m[0] == r[0]) {
                    Some(m) => {
                        if r[fe].as_deref() == Some("1") {
                            m[fe] = Some("1".into());
                        }
                        if r[be].as_deref() == Some("1") {
                            m[be] = Some("1".into());
                        }
                    }
                    None => merged.push(r.clone()),
                }
            }
            t.memory = merged;
            Answer::Ok(0)
        }
        "LOAD MYSQL USERS TO MEMORY" | "LOAD MYSQL USERS TO MEM" | "LOAD MYSQL USERS FROM DISK" => {
            t.memory = t.disk.clone();
            Answer::Ok(0)
        }
        _ => match tokenize(first) {
            Ok(tokens) => sql(&mut t, &tokens),
            Err(e) => Answer::Err(e),
        },
    };
    (answer, ignored)
}

/// SQLite's message for an unexpected token at the start of `tail`.
fn near(tail: &str) -> String {
    let token: String = match tail.chars().next() {
        Some(ch) if ch.is_ascii_alphanumeric() || ch == '_' => tail
            .chars()
            .take_while(|ch| ch.is_ascii_alphanumeric() || *ch == '_')
            .collect(),
        Some(ch) => ch.to_string(),
        None => String::new(),
    };
    format!("near \"{token}\": syntax error")
}

fn split_first_statement(q: &str) -> (&str, Option<&str>) {
    let mut in_str = false;
    for (i, ch) in q.char_indices() {
        match ch {
            '\'' => in_str = !in_str,
            ';' if !in_str => {
                let rest = q[i + 1..].trim();
                return (&q[..i], (!rest.is_empty()).then_some(rest));
            }
            _ => {}
        }
    }
    (q, None)
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Num(String),
    Null,
    Punct(char),
}

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let ch = chars[i];
        if ch.is_whitespace() {
            i += 1;
        } else if ch == '\'' {
            let mut v = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err("unrecognized token: \"'\"".into()),
                    Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                        v.push('\'');
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(c) => {
                        v.push(*c);
                        i += 1;
                    }
                }
            }
            out.push(Tok::Str(v));
        } else if ch.is_ascii_digit()
            || (ch == '-' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            let start = i;
            i += 1;
            while chars.get(i).is_some_and(char::is_ascii_digit) {
                i += 1;
            }
            out.push(Tok::Num(chars[start..i].iter().collect()));
        } else if ch.is_ascii_alphabetic() || ch == '_' {
            let start = i;
            while chars
                .get(i)
                .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
            {
                i += 1;
            }
            let w: String = chars[start..i].iter().collect();
            out.push(if w.eq_ignore_ascii_case("NULL") {
                Tok::Null
            } else {
                Tok::Word(w)
            });
        } else if "(),=*".contains(ch) {
            out.push(Tok::Punct(ch));
            i += 1;
        } else {
            return Err(format!("near \"{ch}\": syntax error"));
        }
    }
    Ok(out)
}

struct Parser<'a> {
    toks: &'a [Tok],
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn near(&self) -> String {
        match self.peek() {
            Some(Tok::Word(w) | Tok::Num(w)) => format!("near \"{w}\": syntax error"),
            Some(Tok::Str(s)) => format!("near \"'{s}'\": syntax error"),
            Some(Tok::Null) => "near \"NULL\": syntax error".into(),
            Some(Tok::Punct(c)) => format!("near \"{c}\": syntax error"),
            None => "incomplete input".into(),
        }
    }

    fn kw(&mut self, k: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(k)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect_kw(&mut self, k: &str) -> Result<(), String> {
        if self.kw(k) { Ok(()) } else { Err(self.near()) }
    }

    fn punct(&mut self, p: char) -> bool {
        if self.peek() == Some(&Tok::Punct(p)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect_punct(&mut self, p: char) -> Result<(), String> {
        if self.punct(p) {
            Ok(())
        } else {
            Err(self.near())
        }
    }

    fn ident(&mut self) -> Result<String, String> {
        match self.peek() {
            Some(Tok::Word(w)) => {
                let w = w.clone();
                self.pos += 1;
                Ok(w)
            }
            _ => Err(self.near()),
        }
    }

    fn literal(&mut self) -> Result<Option<String>, String> {
        let v = match self.peek() {
            Some(Tok::Str(s) | Tok::Num(s)) => Some(s.clone()),
            Some(Tok::Null) => None,
            _ => return Err(self.near()),
        };
        self.pos += 1;
        Ok(v)
    }

    fn end(&self) -> Result<(), String> {
        if self.pos == self.toks.len() {
            Ok(())
        } else {
            Err(self.near())
        }
    }
}

enum Cond {
    All,
    Eq(usize, Option<String>),
    Like(usize, String),
}

impl Cond {
    fn parse(p: &mut Parser<'_>, table: &str) -> Result<Cond, String> {
        if !p.kw("WHERE") {
            return Ok(Cond::All);
        }
        let name = p.ident()?;
        let i = col(&name).ok_or_else(|| format!("no such column: {name}"))?;
        let _ = table;
        if p.punct('=') {
            Ok(Cond::Eq(i, p.literal()?))
        } else if p.kw("LIKE") {
            match p.literal()? {
                Some(pat) => Ok(Cond::Like(i, pat)),
                None => Ok(Cond::Eq(usize::MAX, None)),
            }
        } else {
            Err(p.near())
        }
    }

    fn matches(&self, row: &Row) -> bool {
        match self {
            Cond::All => true,
            Cond::Eq(i, v) => v.is_some() && row.get(*i) == Some(v),
            Cond::Like(i, pat) => row
                .get(*i)
                .and_then(|v| v.as_deref())
                .is_some_and(|v| like(v.as_bytes(), pat.as_bytes())),
        }
    }
}

/// SQLite's LIKE: `%`, `_`, ASCII case-insensitive.
fn like(v: &[u8], p: &[u8]) -> bool {
    match p.split_first() {
        None => v.is_empty(),
        Some((b'%', rest)) => (0..=v.len()).any(|i| like(&v[i..], rest)),
        Some((b'_', rest)) => !v.is_empty() && like(&v[1..], rest),
        Some((c, rest)) => v
            .split_first()
            .is_some_and(|(d, vr)| d.eq_ignore_ascii_case(c) && like(vr, rest)),
    }
}

fn table<'a>(t: &'a mut Tables, name: &str) -> Result<(&'a mut Vec<Row>, bool), String> {
    match name.to_ascii_lowercase().as_str() {
        "mysql_users" | "main.mysql_users" => Ok((&mut t.memory, true)),
        "runtime_mysql_users" | "main.runtime_mysql_users" => Ok((&mut t.runtime, false)),
        "disk.mysql_users" => Ok((&mut t.disk, true)),
        _ => Err(format!("no such table: {name}")),
    }
}

fn sql(t: &mut Tables, toks: &[Tok]) -> Answer {
    let mut p = Parser { toks, pos: 0 };
    let result = if p.kw("SELECT") {
        select(t, &mut p)
    } else if p.kw("DELETE") {
        delete(t, &mut p)
    } else if p.kw("REPLACE") {
        insert(t, &mut p, true)
    } else if p.kw("INSERT") {
        if p.kw("OR") {
            p.expect_kw("REPLACE")
                .and_then(|()| insert(t, &mut p, true))
        } else {
            insert(t, &mut p, false)
        }
    } else {
        Err(p.near())
    };
    result.unwrap_or_else(Answer::Err)
}

fn select(t: &mut Tables, p: &mut Parser<'_>) -> Result<Answer, String> {
    let distinct = p.kw("DISTINCT");
    let mut cols = Vec::new();
    if p.punct('*') {
        cols.extend(0..COLUMNS.len());
    } else {
        loop {
            let name = p.ident()?;
            cols.push(col(&name).ok_or_else(|| format!("no such column: {name}"))?);
            if !p.punct(',') {
                break;
            }
        }
    }
    p.expect_kw("FROM")?;
    let name = p.ident()?;
    let (rows, _) = table(t, &name)?;
    let cond = Cond::parse(p, &name)?;
    p.end()?;
    let mut out: Vec<Row> = Vec::new();
    for row in rows.iter().filter(|r| cond.matches(r)) {
        let picked: Row = cols.iter().map(|&i| row[i].clone()).collect();
        if !(distinct && out.contains(&picked)) {
            out.push(picked);
        }
    }
    let names = cols.iter().map(|&i| COLUMNS[i].0.to_owned()).collect();
    Ok(Answer::Rows(names, out))
}

fn delete(t: &mut Tables, p: &mut Parser<'_>) -> Result<Answer, String> {
    p.expect_kw("FROM")?;
    let name = p.ident()?;
    let (rows, writable) = table(t, &name)?;
    if !writable {
        return Err(format!("stand-in: writes to {name} are not modelled"));
    }
    let cond = Cond::parse(p, &name)?;
    p.end()?;
    let before = rows.len();
    rows.retain(|r| !cond.matches(r));
    Ok(Answer::Ok((before - rows.len()) as u64))
}

fn insert(t: &mut Tables, p: &mut Parser<'_>, replace: bool) -> Result<Answer, String> {
    {
        p.expect_kw("INTO")?;
        let name = p.ident()?;
        let (rows, writable) = table(t, &name)?;
        if !writable {
            return Err(format!("stand-in: writes to {name} are not modelled"));
        }
        p.expect_punct('(')?;
        let mut cols = Vec::new();
        loop {
            let c = p.ident()?;
            cols.push(col(&c).ok_or_else(|| format!("table {name} has no column named {c}"))?);
            if !p.punct(',') {
                break;
            }
        }
        p.expect_punct(')')?;
        p.expect_kw("VALUES")?;
        p.expect_punct('(')?;
        let mut vals = Vec::new();
        loop {
            vals.push(p.literal()?);
            if !p.punct(',') {
                break;
            }
        }
        p.expect_punct(')')?;
        p.end()?;
        if vals.len() != cols.len() {
            return Err(format!("{} values for {} columns", vals.len(), cols.len()));
        }
        let mut row: Row = COLUMNS.iter().map(|(_, d)| d.map(str::to_owned)).collect();
        for (&i, v) in cols.iter().zip(vals) {
            row[i] = v;
        }
        if row[0].is_none() {
            return Err("NOT NULL constraint failed: mysql_users.username".into());
        }
        let (fe, be) = (col("frontend").unwrap_or(0), col("backend").unwrap_or(0));
        let pk = |r: &Row| r[0] == row[0] && r[be] == row[be];
        let uq = |r: &Row| r[0] == row[0] && r[fe] == row[fe];
        if replace {
            rows.retain(|r| !pk(r) && !uq(r));
        } else if rows.iter().any(pk) {
            return Err(
                "UNIQUE constraint failed: mysql_users.username, mysql_users.backend".into(),
            );
        } else if rows.iter().any(uq) {
            return Err(
                "UNIQUE constraint failed: mysql_users.username, mysql_users.frontend".into(),
            );
        }
        rows.push(row);
        Ok(Answer::Ok(1))
    }
}
