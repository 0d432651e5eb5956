//! Addresses: reaching the rendezvous with retries (and one clear line naming `HOST:PORT` and
//! the last OS error when it cannot be reached), and the IPv4 address of a network interface
//! (`MNIST_SOCKET_IFNAME`).

use crate::RdzvError;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest single connection attempt.
const ATTEMPT: Duration = Duration::from_secs(2);
/// Pause between attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Why one attempt failed, classified the way people search for it.
pub fn describe_connect_error(e: &io::Error) -> String {
    let class = match (e.kind(), e.raw_os_error()) {
        (io::ErrorKind::ConnectionRefused, _) => {
            "connection refused (nothing listens on that port)"
        }
        (_, Some(c)) if c == nix::libc::EHOSTUNREACH => "no route to host",
        (_, Some(c)) if c == nix::libc::ENETUNREACH => "network unreachable",
        (io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock, _) => "timed out",
        _ => "failed",
    };
    format!("{class}: {e}")
}

/// Resolve `endpoint` (`HOST:PORT`) to its socket addresses.
pub fn resolve(endpoint: &str) -> Result<Vec<SocketAddr>, String> {
    match endpoint.to_socket_addrs() {
        Ok(it) => {
            let v: Vec<SocketAddr> = it.collect();
            if v.is_empty() {
                Err("name not resolved: no address".into())
            } else {
                Ok(v)
            }
        }
        Err(e) => Err(format!("name not resolved: {e}")),
    }
}

/// Connect to `endpoint`, retrying until `deadline`; the error names the endpoint, how long
/// it tried and the last failure.
pub fn connect_retry(
    endpoint: &str,
    deadline: Instant,
    what: &str,
) -> Result<TcpStream, RdzvError> {
    let start = Instant::now();
    let mut last;
    loop {
        last = match resolve(endpoint) {
            Err(e) => e,
            Ok(addrs) => {
                let mut why = String::new();
                let mut ok = None;
                for a in addrs {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let t = ATTEMPT.min(left).max(Duration::from_millis(50));
                    match TcpStream::connect_timeout(&a, t) {
                        Ok(s) => {
                            ok = Some(s);
                            break;
                        }
                        Err(e) => why = describe_connect_error(&e),
                    }
                }
                if let Some(s) = ok {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                why
            }
        };
        if Instant::now() + RETRY_PAUSE >= deadline {
            return Err(RdzvError::Unreachable {
                endpoint: endpoint.to_string(),
                what: what.to_string(),
                secs: start.elapsed().as_secs_f64(),
                last,
            });
        }
        std::thread::sleep(RETRY_PAUSE);
    }
}

/// The IPv4 address of network interface `name` (for `MNIST_SOCKET_IFNAME`).
pub fn interface_ipv4(name: &str) -> Result<IpAddr, RdzvError> {
    let err = |problem: String| RdzvError::Interface {
        name: name.to_string(),
        problem,
    };
    let addrs =
        nix::ifaddrs::getifaddrs().map_err(|e| err(format!("cannot list interfaces: {e}")))?;
    let mut names = Vec::new();
    for ifa in addrs {
        if !names.contains(&ifa.interface_name) {
            names.push(ifa.interface_name.clone());
        }
        if ifa.interface_name != name {
            continue;
        }
        if let Some(sin) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()) {
            return Ok(IpAddr::V4(sin.ip()));
        }
    }
    Err(err(if names.iter().any(|n| n == name) {
        "has no IPv4 address".into()
    } else {
        format!("does not exist (interfaces: {})", names.join(", "))
    }))
}

/// The name of the interface holding IPv4 address `ip`, if any.
pub fn interface_of(ip: &str) -> Option<String> {
    let ip: std::net::Ipv4Addr = ip.parse().ok()?;
    nix::ifaddrs::getifaddrs().ok()?.find_map(|ifa| {
        let sin = ifa.address.as_ref()?.as_sockaddr_in()?.ip();
        (sin == ip).then(|| ifa.interface_name.clone())
    })
}

/// Accept connections on the non-blocking `listener` on a thread named `name` while `running()`
/// holds; each connection is served by `serve` on a thread of its own named `conn_name`.
pub(crate) fn spawn_acceptor(
    listener: TcpListener,
    name: &str,
    conn_name: &'static str,
    running: impl Fn() -> bool + Send + 'static,
    serve: impl Fn(TcpStream) + Send + Sync + 'static,
) -> io::Result<()> {
    let serve = Arc::new(serve);
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            while running() {
                match listener.accept() {
                    Ok((s, _)) => {
                        let serve = serve.clone();
                        let _ = std::thread::Builder::new()
                            .name(conn_name.into())
                            .spawn(move || serve(s));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        })
        .map(|_| ())
}

/// Server side of a new connection: blocking with our timeouts, preambles exchanged; false
/// when the peer is not a client of this protocol version (another version hears our
/// preamble and reports the mismatch itself).
pub(crate) fn open_served(s: &mut TcpStream) -> bool {
    let _ = s.set_nonblocking(false);
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    crate::wire::write_preamble(s).is_ok()
        && matches!(crate::wire::read_preamble(s), Ok(crate::wire::Preamble::Ok))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_interface_and_unknown_names() {
        assert_eq!(
            interface_ipv4("lo").unwrap(),
            IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
        );
        assert_eq!(interface_of("127.0.0.1").as_deref(), Some("lo"));
        let e = interface_ipv4("no-such-if0").unwrap_err().to_string();
        assert!(
            e.contains("no-such-if0") && e.contains("does not exist") && e.contains("lo"),
            "{e}"
        );
    }

    #[test]
    fn unreachable_endpoints_name_the_address_and_the_os_error() {
        // A port nobody listens on: bind one, learn its number, close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let ep = format!("127.0.0.1:{port}");
        let e = connect_retry(
            &ep,
            Instant::now() + Duration::from_millis(600),
            "the rendezvous",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(&ep) && e.contains("connection refused"), "{e}");
        let e = connect_retry(
            "no-such-host.invalid:29500",
            Instant::now() + Duration::from_millis(300),
            "the rendezvous",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("no-such-host.invalid:29500") && e.contains("name not resolved"),
            "{e}"
        );
    }
}
