//! systemd's notification protocol (`sd_notify(3)`), the few lines of it comine needs: one
//! datagram of `KEY=VALUE` lines to the socket in `$NOTIFY_SOCKET` (a path, or `@name` in the
//! abstract namespace). Without the variable (not run by systemd, or `Type=simple`) every
//! call does nothing.
//!
//! `comine run` sends `READY=1` once it serves, `WATCHDOG=1` only while it makes progress
//! (so systemd's `WatchdogSec=` restarts a hung daemon), `STATUS=…` and `STOPPING=1`.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

/// Where notifications go; `None` when systemd did not ask for them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notifier {
    socket: NotifySocket,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum NotifySocket {
    Path(PathBuf),
    Abstract(Vec<u8>),
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`.
    pub fn from_env() -> Option<Notifier> {
        Self::from_value(&std::env::var_os("NOTIFY_SOCKET")?.to_string_lossy())
    }

    /// From a `$NOTIFY_SOCKET` value: `/run/systemd/notify` or `@abstract-name`.
    pub fn from_value(v: &str) -> Option<Notifier> {
        let socket = match v.strip_prefix('@') {
            Some(name) if !name.is_empty() => NotifySocket::Abstract(name.as_bytes().to_vec()),
            Some(_) => return None,
            None if v.starts_with('/') => NotifySocket::Path(PathBuf::from(v)),
            None => return None,
        };
        Some(Notifier { socket })
    }

    /// Sends one notification (`READY=1`, `WATCHDOG=1`, `STATUS=text`, …; several lines
    /// allowed).
    pub fn notify(&self, state: &str) -> std::io::Result<()> {
        let sock = UnixDatagram::unbound()?;
        match &self.socket {
            NotifySocket::Path(p) => sock.send_to(state.as_bytes(), p)?,
            NotifySocket::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                sock.send_to_addr(state.as_bytes(), &addr)?
            }
        };
        Ok(())
    }
}

/// How often systemd wants `WATCHDOG=1`: `$WATCHDOG_USEC` when `$WATCHDOG_PID` is unset or
/// this process. Notifying at half the interval, as `sd_watchdog_enabled(3)` advises, is the
/// caller's job.
pub fn watchdog_interval() -> Option<Duration> {
    watchdog_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

/// [`watchdog_interval`] with its inputs given.
pub fn watchdog_from(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok() != Some(me) {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_reach_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::from_value(path.to_str().unwrap()).unwrap();
        n.notify("READY=1\nSTATUS=serving").unwrap();
        let mut buf = [0u8; 64];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=serving");
    }

    #[test]
    fn notifications_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("comine-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        Notifier::from_value(&format!("@{name}"))
            .unwrap()
            .notify("WATCHDOG=1")
            .unwrap();
        let mut buf = [0u8; 16];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
    }

    #[test]
    fn only_systemd_values_are_taken() {
        assert!(Notifier::from_value("relative/path").is_none());
        assert!(Notifier::from_value("@").is_none());
        assert_eq!(
            watchdog_from(Some("60000000"), None, 7),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            watchdog_from(Some("60000000"), Some("7"), 7),
            Some(Duration::from_secs(60))
        );
        // The watchdog is meant for another process (a forking parent).
        assert_eq!(watchdog_from(Some("60000000"), Some("8"), 7), None);
        assert_eq!(watchdog_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_from(None, None, 7), None);
    }
}
