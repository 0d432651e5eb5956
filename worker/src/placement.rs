//! Who this worker is: its flags over what the engine that started it says
//! ([`mnist_env::resolve`]), turned into the launcher ↔ worker contract's
//! [`WorkerIdentity`]. Under env:// semantics (Slurm, `mpirun`, Kubeflow) global rank 0
//! serves the run's store at `MASTER_ADDR:MASTER_PORT` itself.

use mnist_common::contract::{WorkerIdentity, ENV_RENDEZVOUS_ADDR};
use mnist_env::{Explicit, Meeting, Placement};
use mnist_rdzv::StoreServer;
use std::net::{IpAddr, TcpListener, ToSocketAddrs};

/// The master's host as an IPv4 address of this machine that is not loopback, when it is one:
/// under env:// semantics rank 0 runs on the master, so the others reach it there (its host
/// name may resolve to 127.0.x.x, as in many containers and Debian's /etc/hosts). `None` when
/// the name does not resolve, resolves to loopback (one machine) or to an address this machine
/// cannot bind (a forwarded or load-balanced address): then the default rule applies.
pub fn master_ip_here(host: &str) -> Option<IpAddr> {
    let ip = (host, 0)
        .to_socket_addrs()
        .ok()?
        .map(|a| a.ip())
        .find(|ip| ip.is_ipv4() && !ip.is_loopback() && !ip.is_unspecified())?;
    TcpListener::bind((ip, 0)).ok().map(|_| ip)
}

/// A resolved identity, with the store rank 0 serves (kept alive for the whole run).
pub struct Resolved {
    /// The worker's identity.
    pub identity: WorkerIdentity,
    /// How it was found, for the first log line.
    pub placement: Placement,
    /// The store this process serves, if it is rank 0 under env:// semantics.
    pub server: Option<StoreServer>,
}

/// Why the placement failed, and whether it is bad input (flags, variables) or not.
pub enum Failure {
    /// The flags or the environment cannot work (exit 2).
    Input(anyhow::Error),
    /// The store could not be served (exit 1).
    Serve(anyhow::Error),
}

/// Resolve `flags` against the process environment and, on rank 0 under env:// semantics,
/// start the store.
pub fn resolve(flags: &Explicit, rendezvous_timeout_s: f64) -> Result<Resolved, Failure> {
    let env: mnist_env::Env = std::env::vars().collect();
    let mut p = mnist_env::resolve(flags, &env)
        .map_err(|e| Failure::Input(anyhow::Error::new(e).context("cannot place this worker")))?;
    // Rank 0 runs on the master (env://: it serves the store there; torchrun: its agent,
    // group rank 0, hosts the store at MASTER_ADDR), which the others already reach.
    let master_host = match &p.meeting {
        Some(Meeting::Serve { host, .. } | Meeting::TorchStore { host, .. }) => Some(host),
        _ => None,
    };
    if let Some(host) = master_host {
        if p.rank == 0 && p.world_size > 1 && std::env::var_os(ENV_RENDEZVOUS_ADDR).is_none() {
            if let Some(ip) = master_ip_here(host) {
                // Before any thread starts: mnist-comm reads it when rank 0 publishes where
                // the group's data connections go.
                std::env::set_var(ENV_RENDEZVOUS_ADDR, ip.to_string());
                p.notes.push(format!(
                    "rank 0 takes the address the others reach the master at, {ip}, for the group's connections"
                ));
            }
        }
    }
    let mut server = None;
    if let Some(Meeting::Serve { port, .. }) = &p.meeting {
        if p.rank == 0 && p.world_size > 1 {
            let run_id = p.run_id.as_deref().unwrap_or_default();
            let s = StoreServer::start(*port, run_id).map_err(|e| {
                Failure::Serve(anyhow::Error::new(e).context(format!(
                    "rank 0 serves the store of run {run_id} ({}; set MASTER_PORT to a free port)",
                    p.meeting.as_ref().map(|m| m.to_string()).unwrap_or_default()
                )))
            })?;
            server = Some(s);
        }
    }
    let (rendezvous, store) = match &p.meeting {
        Some(Meeting::File(f)) => (Some(f.clone()), None),
        Some(m) => (None, m.store_endpoint(p.rank)),
        None => (None, None),
    };
    let identity = WorkerIdentity {
        rank: p.rank,
        local_rank: p.local_rank,
        world_size: p.world_size,
        local_world_size: p.local_world_size,
        node_rank: p.node_rank,
        nnodes: p.nnodes,
        rendezvous,
        store,
        run_id: p.run_id.clone(),
        rendezvous_timeout_s,
    };
    Ok(Resolved {
        identity,
        placement: p,
        server,
    })
}

#[cfg(test)]
mod tests {
    use super::master_ip_here;

    #[test]
    fn the_master_address_counts_only_when_it_is_this_machines_and_routable() {
        // Loopback (one machine): the default rule stays.
        assert_eq!(master_ip_here("127.0.0.1"), None);
        assert_eq!(master_ip_here("localhost"), None);
        // Not an address of this machine (TEST-NET-1): cannot be bound, so not taken.
        assert_eq!(master_ip_here("192.0.2.1"), None);
        // A name that does not resolve.
        assert_eq!(master_ip_here("no-such-host.invalid"), None);
        // An address this machine has (its interfaces' first non-loopback IPv4, if any).
        let ip = std::net::UdpSocket::bind("0.0.0.0:0")
            .and_then(|s| s.connect("192.0.2.1:9").map(|_| s))
            .and_then(|s| s.local_addr())
            .map(|a| a.ip())
            .ok()
            .filter(|ip| !ip.is_loopback() && !ip.is_unspecified());
        if let Some(ip) = ip {
            assert_eq!(master_ip_here(&ip.to_string()), Some(ip));
        }
    }
}
