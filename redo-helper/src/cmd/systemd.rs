//! systemd's service notification protocol (sd_notify(3)), for `Type=notify` units: the
//! service sends newline-separated `KEY=VALUE` assignments as one datagram to the Unix
//! socket named by `$NOTIFY_SOCKET` — `READY=1` when started, `STATUS=...` free text shown
//! by `systemctl status`, `STOPPING=1`, and `WATCHDOG=1` at least every `$WATCHDOG_USEC`
//! microseconds when the unit sets `WatchdogSec=`. A name starting with `@` is a socket in
//! the abstract namespace (the `@` stands for the leading NUL byte).
//!
//! Written here rather than taken from a crate: it is one `sendto` on an unbound datagram
//! socket. Without `$NOTIFY_SOCKET` (not started by systemd) every call does nothing.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// The notification socket of the service manager that started this process.
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`; None when it is unset or unusable (then nothing is sent).
    pub fn from_env() -> Option<Notifier> {
        let name = std::env::var_os("NOTIFY_SOCKET")?;
        match Self::connect(name.as_encoded_bytes()) {
            Ok(n) => Some(n),
            Err(e) => {
                log::warn!(
                    "NOTIFY_SOCKET {}: {e}; not notifying the service manager",
                    name.to_string_lossy()
                );
                None
            }
        }
    }

    fn connect(name: &[u8]) -> std::io::Result<Notifier> {
        let addr = match name.split_first() {
            Some((b'@', abstract_name)) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(abstract_name)?
            }
            Some((b'/', _)) => {
                SocketAddr::from_pathname(std::path::Path::new(std::ffi::OsStr::from_bytes(name)))?
            }
            _ => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "neither an absolute path nor an abstract name (@...)",
                ));
            }
        };
        let socket = UnixDatagram::unbound()?;
        // Never block the caller (an async task): a manager that does not read its socket
        // (a full queue) loses a STATUS line, the helper goes on.
        socket.set_nonblocking(true)?;
        Ok(Notifier { socket, addr })
    }

    /// Sends the assignments (`READY=1`, `STATUS=...`); a failure is logged, never fatal:
    /// the helper works the same without a service manager listening.
    pub fn notify(&self, assignments: &[&str]) {
        let message = assignments.join("\n");
        if let Err(e) = self.socket.send_to_addr(message.as_bytes(), &self.addr) {
            log::debug!("sd_notify {message:?}: {e}");
        }
    }
}

/// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC` (sd_watchdog_enabled(3)
/// recommends pinging at half the timeout), when it is set for this process
/// (`$WATCHDOG_PID` absent or ours).
pub fn watchdog_interval() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID")
        && pid.to_string_lossy().trim() != std::process::id().to_string()
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// A `STATUS=` text: the state and how far behind the server the archive is.
pub fn status_line(state: &str, lag_bytes: u64, flush_lsn: Option<String>) -> String {
    match flush_lsn {
        Some(lsn) => format!("STATUS={state}; lag {lag_bytes} bytes; flushed up to {lsn}"),
        None => format!("STATUS={state}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_and_an_abstract_socket() {
        let path = std::env::temp_dir().join(format!("rh_notify_{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::connect(path.as_os_str().as_bytes()).unwrap();
        n.notify(&["READY=1", "STATUS=streaming"]);
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=streaming");
        std::fs::remove_file(&path).unwrap();

        use std::os::linux::net::SocketAddrExt;
        let name = format!("rh_notify_abstract_{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        let n = Notifier::connect(format!("@{name}").as_bytes()).unwrap();
        n.notify(&["WATCHDOG=1"]);
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
    }

    #[test]
    fn a_relative_name_is_refused() {
        assert!(Notifier::connect(b"notify.sock").is_err());
        assert!(Notifier::connect(b"").is_err());
    }
}
