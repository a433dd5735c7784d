//! A PostgreSQL frontend connection in replication mode, on `postgres-protocol` messages:
//! TLS negotiation (SSLRequest) as libpq does it for each `sslmode`, startup with
//! `replication=true`, authentication (cleartext, MD5, SCRAM-SHA-256 and SCRAM-SHA-256-PLUS
//! with `tls-server-end-point` channel binding) under the `require_auth`/`channel_binding`
//! rules, simple queries, and raw message access for COPY streams. `postgres-protocol` 0.6
//! does not know `CopyBothResponse` ('W', the reply to START_REPLICATION), so framing is
//! checked here and that one message is recognised before the crate's parser sees it.
//!
//! The order of attempts follows libpq's `PQconnectPoll` (fe-connect.c): `prefer` sends an
//! SSLRequest and goes on in plaintext when the server answers 'N', and starts over without
//! TLS when the handshake fails or the server refuses the encrypted connection with an
//! error; `allow` starts in plaintext and starts over with TLS when the server refuses that;
//! `require` and the `verify-*` modes never fall back. TLS is not used over a Unix-domain
//! socket, in any mode (libpq neither).

use super::conninfo::{AuthMethod, ChannelBindingMode, ConnInfo, Host, SslMode};
use super::pgpass::{self, PassKey};
use super::tls;
use bytes::{Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{
    ChannelBinding, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramSha256,
};
use postgres_protocol::message::{backend::Message, frontend};
use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// Largest backend message accepted (PostgreSQL's own limit for a CopyData is 1 GB).
const MAX_MESSAGE_LEN: usize = 1 << 30;
/// How much more buffer a partly received message may claim at a time: the declared length
/// is the server's word, so memory grows with the bytes that actually arrive.
const RECEIVE_RESERVE_STEP: usize = 1 << 20;
/// The SSLRequest code (`NEGOTIATE_SSL_CODE`, pqcomm.h: 1234 << 16 | 5679).
const NEGOTIATE_SSL_CODE: i32 = 80877103;

/// Takes the next complete backend message off `rbuf`, if one is there: the framing is
/// checked here (length within bounds, room reserved as bytes arrive), CopyBothResponse
/// recognised, the rest parsed by `postgres-protocol`. Errors are the protocol violation.
pub(crate) fn next_backend_message(
    rbuf: &mut BytesMut,
) -> std::result::Result<Option<BackendMessage>, String> {
    if rbuf.len() < 5 {
        return Ok(None);
    }
    let tag = rbuf[0];
    let len = u32::from_be_bytes([rbuf[1], rbuf[2], rbuf[3], rbuf[4]]) as usize;
    if !(4..=MAX_MESSAGE_LEN).contains(&len) {
        return Err(format!(
            "message '{}' with invalid length {len}",
            tag as char
        ));
    }
    if rbuf.len() <= len {
        reserve_for_message(rbuf, len + 1);
        return Ok(None);
    }
    if tag == b'W' {
        let _ = rbuf.split_to(len + 1);
        return Ok(Some(BackendMessage::CopyBothResponse));
    }
    match Message::parse(rbuf) {
        Ok(Some(m)) => Ok(Some(BackendMessage::Message(m))),
        Ok(None) => Err("incomplete message after framing check".into()),
        Err(e) => Err(format!("cannot parse message '{}': {e}", tag as char)),
    }
}

/// Every backend message framed in `data` (for the fuzz target): stops at the first error
/// or incomplete message.
pub(crate) fn parse_backend_messages(data: &[u8]) -> usize {
    let mut buf = BytesMut::from(data);
    let mut n = 0;
    while let Ok(Some(_)) = next_backend_message(&mut buf) {
        n += 1;
    }
    n
}

/// Makes room in `buf` towards a message of `total` bytes, at most
/// [`RECEIVE_RESERVE_STEP`] beyond what is already buffered.
fn reserve_for_message(buf: &mut BytesMut, total: usize) {
    let missing = total.saturating_sub(buf.len());
    buf.reserve(missing.min(RECEIVE_RESERVE_STEP));
}

/// An ErrorResponse from the server.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct ServerError {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " (detail: {d})")?;
        }
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

impl ServerError {
    fn from_fields(
        mut fields: impl FallibleIterator<Item = (u8, String), Error = io::Error>,
    ) -> ServerError {
        let mut e = ServerError::default();
        while let Ok(Some((t, v))) = fields.next() {
            match t {
                b'V' => e.severity = v,
                b'S' if e.severity.is_empty() => e.severity = v,
                b'C' => e.code = v,
                b'M' => e.message = v,
                b'D' => e.detail = Some(v),
                b'H' => e.hint = Some(v),
                _ => {}
            }
        }
        e
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectionError {
    #[error("cannot connect to {target}: {source}")]
    Connect { target: String, source: io::Error },
    #[error("connecting to {target} timed out after {secs}s (connect_timeout)")]
    Timeout { target: String, secs: u64 },
    #[error("connection to {target} failed: {source}")]
    Io { target: String, source: io::Error },
    #[error("connection to {target} closed by the server")]
    Closed { target: String },
    #[error("{target}: {error}")]
    Server { target: String, error: ServerError },
    #[error("authentication to {target} failed: {reason}")]
    Auth { target: String, reason: String },
    #[error("protocol violation from {target}: {reason}")]
    Protocol { target: String, reason: String },
    #[error("{target}: {source}")]
    TlsSetup {
        target: String,
        source: tls::TlsSetupError,
    },
    #[error(
        "{target}: the server does not support SSL, but sslmode={mode} requires it (ssl = on in postgresql.conf, or a weaker sslmode)"
    )]
    TlsRefused { target: String, mode: &'static str },
    #[error("TLS handshake with {target} failed: {reason}")]
    TlsHandshake {
        target: String,
        reason: String,
        /// The peers disagree (a certificate that does not verify, no common protocol):
        /// retrying cannot help; a dropped connection during the handshake can.
        permanent: bool,
    },
}

impl ConnectionError {
    /// SQLSTATE of a server error, if this is one.
    pub(crate) fn sqlstate(&self) -> Option<&str> {
        match self {
            ConnectionError::Server { error, .. } => Some(error.code.as_str()),
            _ => None,
        }
    }

    /// Errors that retrying cannot fix (bad credentials, missing privilege, misconfiguration).
    pub(crate) fn is_permanent(&self) -> bool {
        match self {
            ConnectionError::Auth { .. }
            | ConnectionError::TlsSetup { .. }
            | ConnectionError::TlsRefused { .. } => true,
            ConnectionError::TlsHandshake { permanent, .. } => *permanent,
            ConnectionError::Server { error, .. } => {
                // 28xxx invalid authorization, 42501 insufficient privilege,
                // 55000 object not in prerequisite state (e.g. wal_level=minimal).
                // 53300 with max_wal_senders = 0 (as wal_level = minimal requires) never clears.
                error.code.starts_with("28")
                    || error.code == "42501"
                    || error.code == "55000"
                    || (error.code == "53300"
                        && error.message.contains("max_wal_senders (currently 0)"))
            }
            _ => false,
        }
    }
}

/// What the connection read next.
pub(crate) enum BackendMessage {
    Message(Message),
    /// 'W': the server switched to COPY BOTH (after START_REPLICATION).
    CopyBothResponse,
}

/// One result set of a simple query, all values as text.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ResultSet {
    pub rows: Vec<Vec<Option<String>>>,
}

impl ResultSet {
    pub(crate) fn value(&self, row: usize, col: usize) -> Option<&str> {
        self.rows
            .get(row)
            .and_then(|r| r.get(col))
            .and_then(|v| v.as_deref())
    }
}

/// The socket under the connection.
enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// The byte stream the protocol runs on: the socket, or TLS over it.
enum Transport {
    Plain(Socket),
    Tls(Box<tokio_rustls::client::TlsStream<Socket>>),
}

impl Socket {
    fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        match self {
            Socket::Tcp(s) => s.as_raw_fd(),
            Socket::Unix(s) => s.as_raw_fd(),
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl Transport {
    fn raw_fd(&self) -> std::os::fd::RawFd {
        match self {
            Transport::Plain(s) => s.raw_fd(),
            Transport::Tls(s) => s.get_ref().0.raw_fd(),
        }
    }
}

/// How one connection attempt treats TLS.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum TlsAttempt {
    /// No SSLRequest.
    Plain,
    /// SSLRequest; plaintext on the same connection if the server says no.
    IfOffered,
    /// SSLRequest; an error if the server says no.
    Required,
}

pub(crate) struct PgConnection {
    stream: Transport,
    rbuf: BytesMut,
    wbuf: BytesMut,
    target: String,
    /// `server_version_num` or, when the server does not report it (17 does not, on a
    /// replication connection), `server_version`, from the start-up ParameterStatus messages.
    server_version: Option<(String, String)>,
    /// What protects the session, for logs and `redo-helper probe`.
    security: SessionSecurity,
}

/// How a session is protected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SessionSecurity {
    /// TLS protocol version and cipher suite; None for plaintext.
    pub tls: Option<String>,
    /// The authentication the server asked for: "SCRAM-SHA-256-PLUS", "SCRAM-SHA-256",
    /// "md5", "password" or "none".
    pub auth: &'static str,
}

impl fmt::Display for SessionSecurity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.tls {
            Some(t) => write!(f, "{t}, ")?,
            None => write!(f, "no TLS, ")?,
        }
        write!(f, "authentication {}", self.auth)
    }
}

pub(crate) type Result<T> = std::result::Result<T, ConnectionError>;

pub(crate) fn decode_data_row(
    body: &postgres_protocol::message::backend::DataRowBody,
) -> io::Result<Vec<Option<String>>> {
    let buf = body.buffer();
    body.ranges()
        .map(|r| Ok(r.map(|r| String::from_utf8_lossy(&buf[r]).into_owned())))
        .collect()
}

/// Sends the SSLRequest on `socket` and, when the server agrees, runs the TLS handshake.
/// Returns the stream to go on with and, over TLS, the `tls-server-end-point` data (Err
/// when it cannot be computed for this certificate).
async fn negotiate_tls(
    mut socket: Socket,
    info: &ConnInfo,
    tls: TlsAttempt,
    target: &str,
) -> Result<(Transport, Option<std::result::Result<Vec<u8>, String>>)> {
    let io_err = |source| ConnectionError::Io {
        target: target.to_string(),
        source,
    };
    let mut request = [0u8; 8];
    request[..4].copy_from_slice(&8i32.to_be_bytes());
    request[4..].copy_from_slice(&NEGOTIATE_SSL_CODE.to_be_bytes());
    socket.write_all(&request).await.map_err(io_err)?;
    // Exactly one byte: whatever follows 'S' must be the server's TLS handshake, read by
    // rustls (bytes buffered here before it would be unencrypted injection, CVE-2021-23222).
    let answer = socket.read_u8().await.map_err(io_err)?;
    match answer {
        b'S' => {}
        b'N' if tls == TlsAttempt::IfOffered => return Ok((Transport::Plain(socket), None)),
        b'N' => {
            return Err(ConnectionError::TlsRefused {
                target: target.to_string(),
                mode: info.sslmode.as_str(),
            });
        }
        // 'E' is a server too old to know SSLRequest (before 7.0).
        other => {
            return Err(ConnectionError::Protocol {
                target: target.to_string(),
                reason: format!("unexpected answer {:?} to SSLRequest", other as char),
            });
        }
    }
    let host_name = match &info.host {
        Host::Tcp(h) => h.as_str(),
        Host::Socket(_) => "localhost",
    };
    let setup = tls::setup(info, host_name).map_err(|source| ConnectionError::TlsSetup {
        target: target.to_string(),
        source,
    })?;
    let connector = tokio_rustls::TlsConnector::from(setup.config);
    let stream = connector
        .connect(setup.server_name, socket)
        .await
        .map_err(|e| {
            let rustls_error = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .cloned();
            ConnectionError::TlsHandshake {
                target: target.to_string(),
                permanent: rustls_error.is_some(),
                reason: rustls_error.map_or_else(|| e.to_string(), |r| r.to_string()),
            }
        })?;
    let end_point = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| "the server sent no certificate".to_string())
        .and_then(|c| tls::end_point_hash(c));
    Ok((Transport::Tls(Box::new(stream)), Some(end_point)))
}

/// Bytes [`PgConnection::receive_available`] takes from the socket in one call.
const RECEIVE_AVAILABLE_MAX: usize = 4 << 20;

/// What authentication needs to know about the connection it runs on.
struct AuthContext<'a> {
    info: &'a ConnInfo,
    tls: bool,
    unix_socket: bool,
    /// `tls-server-end-point` data, when TLS is in use (Err: it cannot be computed).
    end_point: Option<std::result::Result<Vec<u8>, String>>,
}

impl PgConnection {
    /// Connects and authenticates as a physical replication client (`replication=true`),
    /// within `connect_timeout`.
    pub(crate) async fn connect_replication(info: &ConnInfo) -> Result<PgConnection> {
        match info.connect_timeout {
            None => Self::connect_per_sslmode(info).await,
            Some(limit) => tokio::time::timeout(limit, Self::connect_per_sslmode(info))
                .await
                .map_err(|_| ConnectionError::Timeout {
                    target: info.target(),
                    secs: limit.as_secs(),
                })?,
        }
    }

    /// The attempts `sslmode` makes, in libpq's order (see the module documentation).
    async fn connect_per_sslmode(info: &ConnInfo) -> Result<PgConnection> {
        if matches!(info.host, Host::Socket(_)) {
            return Self::connect_once(info, TlsAttempt::Plain).await;
        }
        let is_server_refusal = |e: &ConnectionError| matches!(e, ConnectionError::Server { .. });
        match info.sslmode {
            SslMode::Disable => Self::connect_once(info, TlsAttempt::Plain).await,
            SslMode::Allow => match Self::connect_once(info, TlsAttempt::Plain).await {
                Err(e) if is_server_refusal(&e) => {
                    log::info!("{e}; sslmode=allow: trying again with TLS");
                    Self::connect_once(info, TlsAttempt::Required).await
                }
                r => r,
            },
            SslMode::Prefer => match Self::connect_once(info, TlsAttempt::IfOffered).await {
                Err(
                    e @ (ConnectionError::TlsHandshake { .. } | ConnectionError::Server { .. }),
                ) => {
                    // libpq retries a refusal only when it came over TLS; after the server
                    // declined TLS, the retry is the same plaintext attempt and fails alike.
                    log::warn!("{e}; sslmode=prefer: trying again without TLS");
                    Self::connect_once(info, TlsAttempt::Plain).await
                }
                r => r,
            },
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                Self::connect_once(info, TlsAttempt::Required).await
            }
        }
    }

    /// One connection: socket, TLS negotiation, startup and authentication.
    async fn connect_once(info: &ConnInfo, tls: TlsAttempt) -> Result<PgConnection> {
        let target = info.target();
        let connect_err = |source| ConnectionError::Connect {
            target: target.clone(),
            source,
        };
        let socket = match &info.host {
            Host::Socket(dir) => Socket::Unix(
                UnixStream::connect(info.socket_path(dir))
                    .await
                    .map_err(connect_err)?,
            ),
            Host::Tcp(name) => {
                let stream = match info.hostaddr {
                    Some(addr) => TcpStream::connect((addr, info.port)).await,
                    None => TcpStream::connect((name.as_str(), info.port)).await,
                }
                .map_err(connect_err)?;
                let _ = stream.set_nodelay(true);
                Socket::Tcp(stream)
            }
        };
        let (stream, end_point) = if tls == TlsAttempt::Plain {
            (Transport::Plain(socket), None)
        } else {
            negotiate_tls(socket, info, tls, &target).await?
        };
        let tls_description = match &stream {
            Transport::Tls(s) => {
                let session = s.get_ref().1;
                Some(format!(
                    "{} {}",
                    session
                        .protocol_version()
                        .and_then(|v| v.as_str())
                        .unwrap_or("TLS"),
                    session
                        .negotiated_cipher_suite()
                        .and_then(|c| c.suite().as_str())
                        .unwrap_or("")
                ))
            }
            Transport::Plain(_) => None,
        };
        let mut conn = PgConnection {
            stream,
            rbuf: BytesMut::with_capacity(1 << 16),
            wbuf: BytesMut::new(),
            target,
            server_version: None,
            security: SessionSecurity {
                tls: tls_description,
                auth: "none",
            },
        };
        let params = [
            ("user", info.user.as_str()),
            ("replication", "true"),
            ("application_name", info.application_name.as_str()),
        ];
        frontend::startup_message(params.iter().copied(), &mut conn.wbuf)
            .map_err(|e| conn.io(e))?;
        conn.flush().await?;
        let ctx = AuthContext {
            info,
            tls: end_point.is_some(),
            unix_socket: matches!(info.host, Host::Socket(_)),
            end_point,
        };
        conn.authenticate(&ctx).await?;
        log::info!("connected to {}: {}", conn.target, conn.security);
        Ok(conn)
    }

    fn io(&self, source: io::Error) -> ConnectionError {
        ConnectionError::Io {
            target: self.target.clone(),
            source,
        }
    }

    pub(crate) fn protocol(&self, reason: impl Into<String>) -> ConnectionError {
        ConnectionError::Protocol {
            target: self.target.clone(),
            reason: reason.into(),
        }
    }

    pub(crate) fn server_error(
        &self,
        body: &postgres_protocol::message::backend::ErrorResponseBody,
    ) -> ConnectionError {
        let fields = body.fields().map(|f| {
            Ok((
                f.type_(),
                String::from_utf8_lossy(f.value_bytes()).into_owned(),
            ))
        });
        ConnectionError::Server {
            target: self.target.clone(),
            error: ServerError::from_fields(fields),
        }
    }

    fn auth(&self, reason: impl Into<String>) -> ConnectionError {
        ConnectionError::Auth {
            target: self.target.clone(),
            reason: reason.into(),
        }
    }

    async fn flush(&mut self) -> Result<()> {
        let buf = self.wbuf.split();
        self.stream.write_all(&buf).await.map_err(|e| self.io(e))?;
        self.stream.flush().await.map_err(|e| self.io(e))
    }

    /// What protects this session.
    pub(crate) fn security(&self) -> &SessionSecurity {
        &self.security
    }

    /// May the server ask for `method` here? `require_auth` when given (libpq 16's check
    /// in `check_expected_areq`), otherwise the helper's default: no cleartext password over
    /// unencrypted TCP. And `channel_binding=require` allows SASL only.
    fn check_request(&self, ctx: &AuthContext<'_>, method: AuthMethod) -> Result<()> {
        if let Some(r) = &ctx.info.require_auth {
            if !r.allows(method) {
                return Err(self.auth(format!(
                    "authentication method requirement \"{}\" failed: server requested {}",
                    r.text,
                    method.request()
                )));
            }
        } else if method == AuthMethod::Password && !ctx.tls && !ctx.unix_socket {
            return Err(self.auth(
                "the server asks for the password in cleartext over an unencrypted connection, \
                 where anyone on the network path can read it: refused. Use TLS (sslmode=verify-full \
                 and hostssl in pg_hba.conf), or scram-sha-256 authentication on the server, or \
                 allow it explicitly with require_auth=password",
            ));
        }
        if ctx.info.channel_binding == ChannelBindingMode::Require
            && method != AuthMethod::ScramSha256
        {
            return Err(self.auth(format!(
                "channel binding required but not supported by server's authentication request (the server requested {})",
                method.request()
            )));
        }
        Ok(())
    }

    /// The password: given (connection string or PGPASSWORD), else from the password file.
    fn password(&self, info: &ConnInfo) -> Result<Vec<u8>> {
        if let Some(p) = &info.password {
            return Ok(p.expose().as_bytes().to_vec());
        }
        let missing = "the server asks for a password but none was given (put it in ~/.pgpass or the file PGPASSFILE names, or in PGPASSWORD)";
        let Some(path) = &info.passfile else {
            return Err(self.auth(missing));
        };
        let port = info.port.to_string();
        let host = info.pgpass_host();
        let key = PassKey {
            host: &host,
            port: &port,
            database: info.pgpass_database(),
            user: &info.user,
        };
        match pgpass::password_from_file(path, &key) {
            Ok(Some(p)) => Ok(p.into_bytes()),
            Ok(None) => Err(self.auth(format!(
                "{missing}; no entry for {host}:{port}:{}:{} in \"{}\"",
                key.database,
                info.user,
                path.display()
            ))),
            Err(ignored) => {
                log::warn!("{ignored}");
                Err(self.auth(format!("{missing}; {ignored}, so it was ignored")))
            }
        }
    }

    async fn authenticate(&mut self, ctx: &AuthContext<'_>) -> Result<()> {
        let info = ctx.info;
        let mut scram: Option<ScramSha256> = None;
        let mut scram_finished = false;
        let mut channel_bound = false;
        let mut requested = false;
        loop {
            let msg = match self.read_message().await? {
                BackendMessage::Message(m) => m,
                BackendMessage::CopyBothResponse => {
                    return Err(self.protocol("CopyBothResponse during startup"));
                }
            };
            match msg {
                Message::AuthenticationOk => {
                    if !requested {
                        self.check_request(ctx, AuthMethod::None).map_err(|_| {
                            let why = if info.channel_binding == ChannelBindingMode::Require {
                                "channel binding required, but server authenticated client without channel binding".to_string()
                            } else {
                                format!(
                                    "authentication method requirement \"{}\" failed: server did not complete authentication",
                                    info.require_auth.as_ref().map_or("", |r| r.text.as_str())
                                )
                            };
                            self.auth(why)
                        })?;
                    }
                    // A server that skips SCRAM's final message never proved it knows the
                    // password (a man in the middle could do that).
                    if scram.is_some() && !scram_finished {
                        return Err(self.auth("server did not complete SCRAM authentication"));
                    }
                    if info.channel_binding == ChannelBindingMode::Require && !channel_bound {
                        return Err(self.auth(
                            "channel binding required, but server authenticated client without channel binding",
                        ));
                    }
                }
                Message::AuthenticationCleartextPassword => {
                    requested = true;
                    self.check_request(ctx, AuthMethod::Password)?;
                    self.security.auth = "password";
                    let pw = self.password(info)?;
                    frontend::password_message(&pw, &mut self.wbuf).map_err(|e| self.io(e))?;
                    self.flush().await?;
                }
                Message::AuthenticationMd5Password(body) => {
                    requested = true;
                    self.check_request(ctx, AuthMethod::Md5)?;
                    self.security.auth = "md5";
                    let pw = self.password(info)?;
                    let hash = md5_hash(info.user.as_bytes(), &pw, body.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.wbuf)
                        .map_err(|e| self.io(e))?;
                    self.flush().await?;
                }
                Message::AuthenticationSasl(body) => {
                    requested = true;
                    self.check_request(ctx, AuthMethod::ScramSha256)?;
                    let mut mechanisms = body.mechanisms();
                    let (mut plain, mut plus) = (false, false);
                    while let Some(m) = mechanisms.next().map_err(|e| self.io(e))? {
                        plain |= m == SCRAM_SHA_256;
                        plus |= m == SCRAM_SHA_256_PLUS;
                    }
                    let (mechanism, binding) = self.choose_scram(ctx, plain, plus)?;
                    channel_bound = mechanism == SCRAM_SHA_256_PLUS;
                    self.security.auth = mechanism;
                    let s = ScramSha256::new(&self.password(info)?, binding);
                    frontend::sasl_initial_response(mechanism, s.message(), &mut self.wbuf)
                        .map_err(|e| self.io(e))?;
                    self.flush().await?;
                    scram = Some(s);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let Some(s) = scram.as_mut() else {
                        return Err(self.protocol("SASL continue without SASL start"));
                    };
                    s.update(body.data())
                        .map_err(|e| self.auth(format!("SCRAM: {e}")))?;
                    let reply = s.message().to_vec();
                    frontend::sasl_response(&reply, &mut self.wbuf).map_err(|e| self.io(e))?;
                    self.flush().await?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let Some(s) = scram.as_mut() else {
                        return Err(self.protocol("SASL final without SASL start"));
                    };
                    s.finish(body.data())
                        .map_err(|e| self.auth(format!("SCRAM server signature: {e}")))?;
                    scram_finished = true;
                }
                Message::ErrorResponse(body) => return Err(self.server_error(&body)),
                Message::ReadyForQuery(_) => return Ok(()),
                Message::ParameterStatus(body) => {
                    let name = body.name().map_err(|e| self.io(e))?;
                    let numeric = name == "server_version_num";
                    let have_numeric = self
                        .server_version
                        .as_ref()
                        .is_some_and(|(n, _)| n == "server_version_num");
                    if numeric || (name == "server_version" && !have_numeric) {
                        let value = body.value().map_err(|e| self.io(e))?.to_string();
                        self.server_version = Some((name.to_string(), value));
                    }
                }
                Message::BackendKeyData(_) | Message::NoticeResponse(_) => {}
                Message::AuthenticationGss
                | Message::AuthenticationKerberosV5
                | Message::AuthenticationSspi
                | Message::AuthenticationScmCredential
                | Message::AuthenticationGssContinue(_) => {
                    return Err(self.auth("the server asks for an authentication method this client does not support (GSS/SSPI/Kerberos)"));
                }
                _ => return Err(self.protocol("unexpected message during authentication")),
            }
        }
    }

    /// The server's PostgreSQL major version, from what it reported at start-up.
    pub(crate) fn server_version(
        &self,
    ) -> std::result::Result<crate::wal::PgVersion, crate::wal::VersionError> {
        match &self.server_version {
            Some((name, v)) if name == "server_version_num" => {
                crate::wal::PgVersion::from_server_version_num(v)
            }
            Some((_, v)) => crate::wal::PgVersion::from_server_version(v),
            None => Err(crate::wal::VersionError::ServerVersionMissing),
        }
    }

    /// The SCRAM mechanism and channel binding flag, as libpq's `pg_SASL_init` chooses
    /// them: SCRAM-SHA-256-PLUS when TLS is in use, binding is not disabled and the server
    /// offers it; otherwise SCRAM-SHA-256 with 'y' (we could bind, the server did not offer
    /// it: the server detects a downgrade by a man in the middle who removed PLUS) or 'n'.
    fn choose_scram(
        &self,
        ctx: &AuthContext<'_>,
        plain: bool,
        plus: bool,
    ) -> Result<(&'static str, ChannelBinding)> {
        let mode = ctx.info.channel_binding;
        if mode != ChannelBindingMode::Disable
            && plus
            && let Some(end_point) = &ctx.end_point
        {
            match end_point {
                Ok(hash) => {
                    return Ok((
                        SCRAM_SHA_256_PLUS,
                        ChannelBinding::tls_server_end_point(hash.clone()),
                    ));
                }
                Err(e) if mode == ChannelBindingMode::Require => {
                    return Err(self.auth(format!("channel binding is required, but {e}")));
                }
                // Offered, but not computable here: plain SCRAM with 'n' (not 'y', which
                // would tell the server that a downgrade happened).
                Err(e) => {
                    log::warn!("no channel binding: {e}");
                    if plain {
                        return Ok((SCRAM_SHA_256, ChannelBinding::unsupported()));
                    }
                }
            }
        }
        if mode == ChannelBindingMode::Require {
            return Err(self.auth(if ctx.end_point.is_none() {
                "channel binding is required, but SSL is not in use (sslmode=verify-full, and hostssl in pg_hba.conf)"
            } else {
                "channel binding is required, but server did not offer an authentication method that supports channel binding"
            }));
        }
        if !plain {
            return Err(self
                .auth("the server offers no SASL mechanism this client supports (SCRAM-SHA-256)"));
        }
        let binding = if ctx.end_point.is_some() && mode != ChannelBindingMode::Disable {
            ChannelBinding::unrequested()
        } else {
            ChannelBinding::unsupported()
        };
        Ok((SCRAM_SHA_256, binding))
    }

    /// The next complete message already received, if any (no I/O).
    pub(crate) fn buffered_message(&mut self) -> Result<Option<BackendMessage>> {
        next_backend_message(&mut self.rbuf).map_err(|e| self.protocol(e))
    }

    /// Receives, without waiting, what the socket holds (at most [`RECEIVE_AVAILABLE_MAX`]),
    /// bypassing the runtime's readiness tracking (which does not report a socket whose
    /// receive low-water mark is not reached, see [`PgConnection::set_receive_low_water`]).
    /// Returns the bytes read.
    pub(crate) fn receive_available(&mut self) -> Result<usize> {
        let fd = self.stream.raw_fd();
        let mut total = 0;
        let mut chunk = [0u8; 64 * 1024];
        loop {
            // SAFETY: recv writes at most chunk.len() bytes into the stack buffer.
            let n = unsafe {
                libc::recv(
                    fd,
                    chunk.as_mut_ptr() as *mut libc::c_void,
                    chunk.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                let received = &chunk[..n as usize];
                match &mut self.stream {
                    Transport::Plain(_) => self.rbuf.extend_from_slice(received),
                    Transport::Tls(tls) => decrypt_into(tls.get_mut().1, received, &mut self.rbuf)
                        .map_err(|e| ConnectionError::Io {
                            target: self.target.clone(),
                            source: e,
                        })?,
                }
                total += n as usize;
                // Enough for one flush; the rest stays in the socket until the next call.
                if total >= RECEIVE_AVAILABLE_MAX {
                    return Ok(total);
                }
                continue;
            }
            if n == 0 {
                return Err(ConnectionError::Closed {
                    target: self.target.clone(),
                });
            }
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(total),
                io::ErrorKind::Interrupted => continue,
                _ => Err(self.io(e)),
            };
        }
    }

    /// Sets the socket's receive low-water mark (SO_RCVLOWAT): the kernel wakes the reader
    /// only once this many bytes are queued. A streaming client that reads on a timer
    /// anyway then sleeps through the thousands of small messages a second a busy server
    /// sends (one per WAL flush), instead of being woken for each. Best effort.
    pub(crate) fn set_receive_low_water(&self, bytes: usize) {
        let v = bytes.min(i32::MAX as usize) as libc::c_int;
        // SAFETY: setsockopt reads one c_int from a valid pointer.
        let rc = unsafe {
            libc::setsockopt(
                self.stream.raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVLOWAT,
                &v as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            log::debug!("SO_RCVLOWAT {bytes}: {}", std::io::Error::last_os_error());
        }
    }

    /// Reads the next complete backend message.
    pub(crate) async fn read_message(&mut self) -> Result<BackendMessage> {
        loop {
            if let Some(m) = self.buffered_message()? {
                return Ok(m);
            }
            let n = self
                .stream
                .read_buf(&mut self.rbuf)
                .await
                .map_err(|e| self.io(e))?;
            if n == 0 {
                return Err(ConnectionError::Closed {
                    target: self.target.clone(),
                });
            }
        }
    }

    /// Sends a simple query without waiting for the answer.
    pub(crate) async fn send_query(&mut self, sql: &str) -> Result<()> {
        frontend::query(sql, &mut self.wbuf).map_err(|e| self.io(e))?;
        self.flush().await
    }

    /// Runs a simple query and returns its result sets (replication commands return text).
    pub(crate) async fn simple_query(&mut self, sql: &str) -> Result<Vec<ResultSet>> {
        self.send_query(sql).await?;
        let mut sets = Vec::new();
        let mut current: Option<ResultSet> = None;
        let mut error = None;
        loop {
            match self.read_message().await? {
                BackendMessage::CopyBothResponse => {
                    return Err(self.protocol(format!("unexpected COPY BOTH after {sql:?}")));
                }
                BackendMessage::Message(m) => match m {
                    Message::RowDescription(_) => current = Some(ResultSet::default()),
                    Message::DataRow(body) => {
                        let row = decode_data_row(&body)
                            .map_err(|e| self.protocol(format!("bad DataRow: {e}")))?;
                        current
                            .get_or_insert_with(ResultSet::default)
                            .rows
                            .push(row);
                    }
                    Message::CommandComplete(_) | Message::EmptyQueryResponse => {
                        if let Some(s) = current.take() {
                            sets.push(s);
                        }
                    }
                    Message::ErrorResponse(body) => error = Some(self.server_error(&body)),
                    Message::ReadyForQuery(_) => {
                        return match error {
                            Some(e) => Err(e),
                            None => Ok(sets),
                        };
                    }
                    Message::NoticeResponse(_) | Message::ParameterStatus(_) => {}
                    _ => {
                        return Err(
                            self.protocol(format!("unexpected message in reply to {sql:?}"))
                        );
                    }
                },
            }
        }
    }

    /// Sends one CopyData message.
    pub(crate) async fn send_copy_data(&mut self, data: &[u8]) -> Result<()> {
        let body = frontend::CopyData::new(Bytes::copy_from_slice(data)).map_err(|e| self.io(e))?;
        body.write(&mut self.wbuf);
        self.flush().await
    }

    /// Ends the COPY (START_REPLICATION's stream) from our side.
    pub(crate) async fn send_copy_done(&mut self) -> Result<()> {
        frontend::copy_done(&mut self.wbuf);
        self.flush().await
    }

    pub(crate) async fn terminate(mut self) {
        frontend::terminate(&mut self.wbuf);
        let _ = self.flush().await;
    }
}

/// Feeds TLS records received outside the TLS stream (see
/// [`PgConnection::receive_available`]) to the session and appends the plaintext they hold
/// to `out`. The session state is the stream's own, so the stream's next read carries on
/// where this stopped.
fn decrypt_into(
    session: &mut rustls::ClientConnection,
    mut ciphertext: &[u8],
    out: &mut BytesMut,
) -> io::Result<()> {
    use std::io::Read;
    let mut plain = [0u8; 16 * 1024];
    while !ciphertext.is_empty() {
        session.read_tls(&mut ciphertext)?;
        session
            .process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        loop {
            match session.reader().read(&mut plain) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&plain[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_declared_length_does_not_reserve_memory_up_front() {
        // A header claiming a 1 GB message: the buffer grows by one step, not by 1 GB.
        let mut buf = BytesMut::with_capacity(64);
        buf.extend_from_slice(&[b'd', 0x40, 0, 0, 0]);
        reserve_for_message(&mut buf, MAX_MESSAGE_LEN + 1);
        assert!(
            buf.capacity() <= 2 * RECEIVE_RESERVE_STEP,
            "{}",
            buf.capacity()
        );
        // A small message gets exactly what it needs.
        let mut buf = BytesMut::new();
        reserve_for_message(&mut buf, 100);
        assert!(buf.capacity() >= 100);
    }
}
