//! The exclusive claim on the listen address (issue 12 item 4): the reactors
//! of one process share the port (SO_REUSEPORT), a second process may not.
//!
//! Owns: binding the reactors' listening sockets, the guard socket that keeps
//! other processes off the address, the check after listening, and finding
//! the owner of a conflicting listener through `/proc`. Must not accept
//! connections or know about TLS.
//!
//! How: the kernel lets a socket bind an address in use only if every socket
//! already there and the new one agree. Before the reactors bind, a *guard*
//! socket is bound with SO_REUSEADDR and without SO_REUSEPORT, and never
//! listens (so it receives no connections). The reactors bind with
//! SO_REUSEADDR and SO_REUSEPORT: the kernel lets them share the address
//! with each other (SO_REUSEPORT, same user) and with the guard (both
//! SO_REUSEADDR, the guard not listening). Another process's guard then
//! finds listening sockets without its own SO_REUSEPORT and fails with
//! EADDRINUSE, before it has loaded any key. Two processes starting at the
//! same instant can both bind their guards before either listens; the check
//! after listening (`/proc/net/tcp{,6}`: a listening socket on an
//! overlapping address that is not one of ours) closes that window, at the
//! cost of both failing in that race rather than both serving.
//!
//! A process that listens without the guard (an older keycore, another
//! program using SO_REUSEPORT as the same user) is found by the check after
//! listening, not by the guard.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};

/// Listen backlog of each reactor's socket (glommio's own `bind` uses the
/// same); the kernel caps it at `net.core.somaxconn`.
const BACKLOG: i32 = 1024;

/// Why the address could not be claimed or listened on. Names the address;
/// the OS error is the source.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// Another process listens on an overlapping address (the message
    /// names it: pid and command, or why it cannot be named).
    #[error("{message}")]
    InUse {
        /// The address asked for.
        addr: SocketAddr,
        /// "address in use: ADDR is already being listened on, held by ...".
        message: String,
    },
    /// A socket call on the guard or a reactor's listener failed.
    #[error("{what} {addr}")]
    Socket {
        /// "bind", "listen on", ...
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The bound guard reports a non-IP address.
    #[error("claimed address {0} is not an IP socket")]
    NotIp(SocketAddr),
}

/// The guard on one address, held for the server's life. Dropping it
/// releases the address for the next process once the reactors' listeners
/// are closed too.
#[derive(Debug)]
pub struct PortClaim {
    /// Held, never used: its bound address is the claim.
    _guard: socket2::Socket,
    addr: SocketAddr,
}

impl PortClaim {
    /// Claim `addr` (port 0: a free port, the same for every reactor).
    /// Fails with "address in use" naming the owner's pid when another
    /// process listens on an overlapping address.
    pub fn take(addr: SocketAddr) -> Result<PortClaim, PortError> {
        let sock = |what| move |source| PortError::Socket { what, addr, source };
        let guard = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )
        .map_err(sock("socket for"))?;
        guard
            .set_reuse_address(true)
            .map_err(sock("SO_REUSEADDR on"))?;
        if let Err(e) = guard.bind(&addr.into()) {
            if e.raw_os_error() == Some(libc::EADDRINUSE) {
                return Err(PortError::InUse {
                    addr,
                    message: in_use_message(addr, &listeners_on(addr)),
                });
            }
            return Err(sock("bind")(e));
        }
        let addr = guard
            .local_addr()
            .map_err(sock("local address of"))?
            .as_socket()
            .ok_or(PortError::NotIp(addr))?;
        Ok(PortClaim {
            _guard: guard,
            addr,
        })
    }

    /// The claimed address (the port filled in).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A listening socket for one reactor, sharing the claimed address with
    /// the other reactors, and its inode (for [`Self::check_sole_owner`]).
    pub fn listener(&self) -> Result<(std::net::TcpListener, u64), PortError> {
        let addr = self.addr;
        let sock = |what| move |source| PortError::Socket { what, addr, source };
        let s = socket2::Socket::new(
            socket2::Domain::for_address(self.addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .map_err(sock("socket for"))?;
        s.set_reuse_address(true).map_err(sock("SO_REUSEADDR on"))?;
        s.set_reuse_port(true).map_err(sock("SO_REUSEPORT on"))?;
        s.bind(&self.addr.into()).map_err(sock("bind"))?;
        s.listen(BACKLOG).map_err(sock("listen on"))?;
        let inode = inode_of(s.as_raw_fd()).map_err(sock("fstat of the listener on"))?;
        // SAFETY: the fd is ours, open, and handed over exactly once.
        let l = unsafe { std::net::TcpListener::from_raw_fd(s.into_raw_fd()) };
        Ok((l, inode))
    }

    /// After every reactor listens: fail if any other listening socket
    /// overlaps the address (the start-up race the guard cannot see, or a
    /// process that listens without a guard). `ours` are the reactors'
    /// socket inodes.
    pub fn check_sole_owner(&self, ours: &HashSet<u64>) -> Result<(), PortError> {
        let foreign: Vec<Listener> = listeners_on(self.addr)
            .into_iter()
            .filter(|l| !ours.contains(&l.inode))
            .collect();
        if foreign.is_empty() {
            return Ok(());
        }
        Err(PortError::InUse {
            addr: self.addr,
            message: in_use_message(self.addr, &foreign),
        })
    }
}

/// One listening socket found in `/proc/net/tcp{,6}`.
#[derive(Debug, Clone, PartialEq)]
struct Listener {
    addr: SocketAddr,
    inode: u64,
}

/// "address in use", with the owners found (pid and command name) or why
/// none could be named.
fn in_use_message(addr: SocketAddr, found: &[Listener]) -> String {
    let inodes: HashSet<u64> = found.iter().map(|l| l.inode).collect();
    let owners = owners_of(&inodes);
    let who = if owners.is_empty() {
        "owner pid unknown (the listening socket belongs to a process this user cannot inspect, or it closed meanwhile)".to_string()
    } else {
        let list: Vec<String> = owners
            .iter()
            .map(|(pid, comm)| format!("pid {pid} ({comm})"))
            .collect();
        format!("held by {}", list.join(", "))
    };
    format!(
        "address in use: {addr} is already being listened on, {who}; a second server on the same address would split the connections with it (stop the other process or choose another port)"
    )
}

/// Listening TCP sockets whose address overlaps `addr` (same port, and the
/// same IP or either one a wildcard).
fn listeners_on(addr: SocketAddr) -> Vec<Listener> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            out.extend(parse_listeners(&text).filter(|l| overlaps(addr, l.addr)));
        }
    }
    out
}

/// The LISTEN rows (state 0A) of a `/proc/net/tcp` or `tcp6` table.
fn parse_listeners(text: &str) -> impl Iterator<Item = Listener> + '_ {
    text.lines().skip(1).filter_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || f[3] != "0A" {
            return None;
        }
        let (ip, port) = f[1].split_once(':')?;
        let port = u16::from_str_radix(port, 16).ok()?;
        let ip = parse_proc_ip(ip)?;
        let inode = f[9].parse().ok()?;
        Some(Listener {
            addr: SocketAddr::new(ip, port),
            inode,
        })
    })
}

/// An address as `/proc/net/tcp*` prints it: 32-bit words in host byte
/// order, as hex.
fn parse_proc_ip(hex: &str) -> Option<IpAddr> {
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(0)?))),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            let v6 = Ipv6Addr::from(b);
            Some(match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            })
        }
        _ => None,
    }
}

/// Whether two listening addresses take connections for a common address.
/// A wildcard of either family is treated as overlapping everything (a
/// dual-stack `[::]` does; a v6-only one would not, and is reported anyway:
/// a false "in use" is a clear start-up error, a missed one a silent split).
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// The inode of a socket fd (what `/proc/net/tcp` lists).
fn inode_of(fd: i32) -> std::io::Result<u64> {
    // SAFETY: fstat on an fd we own, into a zeroed struct it fills.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.st_ino)
}

/// Processes holding any of `inodes` (pid, command name), found through
/// `/proc/PID/fd`. Processes of other users are not readable and are
/// skipped. Start-up error path only.
fn owners_of(inodes: &HashSet<u64>) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    if inodes.is_empty() {
        return out;
    }
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .ok()
                .and_then(|t| {
                    let t = t.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?;
                    t.parse::<u64>().ok()
                })
                .is_some_and(|ino| inodes.contains(&ino))
        });
        if holds {
            let comm = std::fs::read_to_string(p.path().join("comm"))
                .map(|c| c.trim().to_string())
                .unwrap_or_else(|_| "?".into());
            out.push((pid, comm));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_rows_parse() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:0967 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 12345 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:0967 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 999 1\n";
        let l: Vec<_> = parse_listeners(v4).collect();
        assert_eq!(
            l,
            vec![Listener {
                addr: "127.0.0.1:2407".parse().unwrap(),
                inode: 12345
            }]
        );
        let v6 = "header\n   0: 00000000000000000000000000000000:0967 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 777 1\n   1: 0000000000000000FFFF00000100007F:0968 00000000000000000000000000000000:0000 0A 0 0 0 0 0 778 1\n";
        let l: Vec<_> = parse_listeners(v6).collect();
        assert_eq!(l[0].addr, "[::]:2407".parse().unwrap());
        assert_eq!(l[1].addr, "127.0.0.1:2408".parse().unwrap());
    }

    #[test]
    fn overlap_rules() {
        let a: SocketAddr = "127.0.0.1:2407".parse().unwrap();
        assert!(overlaps(a, "0.0.0.0:2407".parse().unwrap()));
        assert!(overlaps(a, "[::]:2407".parse().unwrap()));
        assert!(overlaps("0.0.0.0:2407".parse().unwrap(), a));
        assert!(!overlaps(a, "127.0.0.2:2407".parse().unwrap()));
        assert!(!overlaps(a, "127.0.0.1:2408".parse().unwrap()));
    }

    #[test]
    fn reactors_share_the_port_and_a_second_claim_is_refused_naming_this_pid() {
        let claim = PortClaim::take("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_ne!(claim.addr().port(), 0);
        let (l1, i1) = claim.listener().expect("first reactor");
        let (l2, i2) = claim.listener().expect("second reactor shares the port");
        claim
            .check_sole_owner(&[i1, i2].into_iter().collect())
            .expect("only our own listeners");
        // A second server (its guard) on the same address: refused, naming
        // the process that listens (this one).
        let e = PortClaim::take(claim.addr()).unwrap_err().to_string();
        assert!(e.contains("address in use"), "{e}");
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        // The wildcard overlaps too.
        let any = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), claim.addr().port());
        assert!(PortClaim::take(any).is_err());
        // The post-listen check sees a listener that is not ours.
        let e = claim
            .check_sole_owner(&[i1].into_iter().collect())
            .unwrap_err()
            .to_string();
        assert!(e.contains("address in use"), "{e}");
        // Connections reach the reactors (the guard never listens).
        let _c = std::net::TcpStream::connect(claim.addr()).expect("connect");
        drop((l1, l2));
    }

    #[test]
    fn a_port_is_free_again_once_the_claim_and_listeners_are_gone() {
        let claim = PortClaim::take("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = claim.addr();
        let l = claim.listener().unwrap();
        drop(l);
        drop(claim);
        let again = PortClaim::take(addr).expect("free again");
        let _l = again.listener().expect("listen again");
    }
}
