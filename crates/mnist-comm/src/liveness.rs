//! Is a peer still alive? Process checks for peers on this host and EOF checks on the TCP
//! connections made at the rendezvous (which stay open for the whole run).

use std::net::TcpStream;
use std::os::fd::AsRawFd;

/// Whether process `pid` on this host is running (a zombie counts as dead).
pub(crate) fn pid_alive(pid: u32) -> bool {
    let Ok(p) = i32::try_from(pid) else {
        return false;
    };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None) {
        Ok(()) | Err(nix::errno::Errno::EPERM) => {}
        Err(_) => return false,
    }
    // kill(pid, 0) succeeds on an unreaped zombie; /proc tells the state.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next());
            !matches!(state, Some('Z') | Some('X'))
        }
        Err(_) => true,
    }
}

/// Whether the peer closed `sock` (EOF or a reset), without consuming anything.
pub(crate) fn socket_closed(sock: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    // SAFETY: recv on a valid, owned socket descriptor into a 1-byte stack buffer we own;
    // MSG_PEEK leaves the data in place and MSG_DONTWAIT keeps it from blocking.
    let n = unsafe {
        libc::recv(
            sock.as_raw_fd(),
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n == 0 {
        return true;
    }
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
        );
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_pid_is_alive_and_absurd_pid_is_not() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(i32::MAX as u32));
    }
}
