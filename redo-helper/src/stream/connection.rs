//! A PostgreSQL frontend connection in replication mode, on `postgres-protocol` messages:
//! startup with `replication=true`, cleartext / MD5 / SCRAM-SHA-256 authentication, simple
//! queries, and raw message access for COPY streams. `postgres-protocol` 0.6 does not know
//! `CopyBothResponse` ('W', the reply to START_REPLICATION), so framing is checked here and
//! that one message is recognised before the crate's parser sees it.

use super::conninfo::ConnInfo;
use bytes::{Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::{backend::Message, frontend};
use std::fmt;
use std::io;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest backend message accepted (PostgreSQL's own limit for a CopyData is 1 GB).
const MAX_MESSAGE_LEN: usize = 1 << 30;
/// How much more buffer a partly received message may claim at a time: the declared length
/// is the server's word, so memory grows with the bytes that actually arrive.
const RECEIVE_RESERVE_STEP: usize = 1 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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
            ConnectionError::Auth { .. } => true,
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

pub(crate) struct PgConnection {
    stream: TcpStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    target: String,
    /// `server_version_num` or, when the server does not report it (17 does not, on a
    /// replication connection), `server_version`, from the start-up ParameterStatus messages.
    server_version: Option<(String, String)>,
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

/// Bytes [`PgConnection::receive_available`] takes from the socket in one call.
const RECEIVE_AVAILABLE_MAX: usize = 4 << 20;

impl PgConnection {
    /// Connects and authenticates as a physical replication client (`replication=true`).
    pub(crate) async fn connect_replication(info: &ConnInfo) -> Result<PgConnection> {
        let target = format!("{}:{}", info.host, info.port);
        let stream = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((info.host.as_str(), info.port)),
        )
        .await
        .map_err(|_| ConnectionError::Connect {
            target: target.clone(),
            source: io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
        })?
        .map_err(|source| ConnectionError::Connect {
            target: target.clone(),
            source,
        })?;
        let _ = stream.set_nodelay(true);
        let mut conn = PgConnection {
            stream,
            rbuf: BytesMut::with_capacity(1 << 16),
            wbuf: BytesMut::new(),
            target,
            server_version: None,
        };
        let params = [
            ("user", info.user.as_str()),
            ("replication", "true"),
            ("application_name", info.application_name.as_str()),
        ];
        frontend::startup_message(params.iter().copied(), &mut conn.wbuf)
            .map_err(|e| conn.io(e))?;
        conn.flush().await?;
        conn.authenticate(info).await?;
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

    async fn authenticate(&mut self, info: &ConnInfo) -> Result<()> {
        let mut scram: Option<ScramSha256> = None;
        loop {
            let msg = match self.read_message().await? {
                BackendMessage::Message(m) => m,
                BackendMessage::CopyBothResponse => {
                    return Err(self.protocol("CopyBothResponse during startup"));
                }
            };
            let need_password = || {
                info.password
                    .as_deref()
                    .map(str::as_bytes)
                    .ok_or_else(|| self.auth("the server asks for a password but none was given (password= in the connection string, or PGPASSWORD)"))
            };
            match msg {
                Message::AuthenticationOk => {}
                Message::AuthenticationCleartextPassword => {
                    let pw = need_password()?;
                    frontend::password_message(pw, &mut self.wbuf).map_err(|e| self.io(e))?;
                    self.flush().await?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let hash = md5_hash(info.user.as_bytes(), need_password()?, body.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.wbuf)
                        .map_err(|e| self.io(e))?;
                    self.flush().await?;
                }
                Message::AuthenticationSasl(body) => {
                    let mut mechanisms = body.mechanisms();
                    let mut scram_offered = false;
                    while let Some(m) = mechanisms.next().map_err(|e| self.io(e))? {
                        scram_offered |= m == SCRAM_SHA_256;
                    }
                    if !scram_offered {
                        return Err(self.auth("the server offers no SASL mechanism this client supports (SCRAM-SHA-256)"));
                    }
                    let s = ScramSha256::new(need_password()?, ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut self.wbuf)
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

    /// The next complete message already received, if any (no I/O).
    pub(crate) fn buffered_message(&mut self) -> Result<Option<BackendMessage>> {
        next_backend_message(&mut self.rbuf).map_err(|e| self.protocol(e))
    }

    /// Receives, without waiting, what the socket holds (at most [`RECEIVE_AVAILABLE_MAX`]),
    /// bypassing the runtime's readiness tracking (which does not report a socket whose
    /// receive low-water mark is not reached, see [`PgConnection::set_receive_low_water`]).
    /// Returns the bytes read.
    pub(crate) fn receive_available(&mut self) -> Result<usize> {
        use std::os::fd::AsRawFd;
        let fd = self.stream.as_raw_fd();
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
                self.rbuf.extend_from_slice(&chunk[..n as usize]);
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
        use std::os::fd::AsRawFd;
        let v = bytes.min(i32::MAX as usize) as libc::c_int;
        // SAFETY: setsockopt reads one c_int from a valid pointer.
        let rc = unsafe {
            libc::setsockopt(
                self.stream.as_raw_fd(),
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

    pub(crate) async fn terminate(mut self) {
        frontend::terminate(&mut self.wbuf);
        let _ = self.flush().await;
    }
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
