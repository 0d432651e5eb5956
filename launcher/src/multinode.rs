//! This node's part in a job spanning several machines: node 0 serves the rendezvous on the
//! master port ([`mnist_rdzv::Server`]), every node (node 0 included) registers through it and
//! gets the job's [`mnist_rdzv::Plan`]; the session then carries heartbeats until the node's
//! workers end. After a restart order ([`mnist_rdzv::Event::Restart`]) the node registers
//! again ([`Node::rejoin`]) and gets the next round's plan; node 0's server stays up.

use crate::args::{LaunchConfig, MultiNode};
use crate::spec::Layout;
use mnist_rdzv::{
    Heartbeat, JoinRequest, NodeSession, RdzvError, ResumeProbe, Server, ServerConfig,
};
use std::time::Duration;

/// How long node 0 keeps serving, after its own workers ended, for the other nodes to finish.
const LINGER: Duration = Duration::from_secs(120);

/// A joined node.
pub struct Node {
    /// The session with the rendezvous (plan, abort reason).
    pub session: NodeSession,
    /// Node 0's server.
    server: Option<Server>,
    /// The node's settings.
    pub multi: MultiNode,
    /// Its registration (sent again for each round).
    req: JoinRequest,
    /// How long to wait for a round to form.
    timeout: Duration,
}

/// Serve the rendezvous (node 0; `resume` tells its server whether a restarted round can
/// resume) and join it; returns when every node has joined.
pub fn start(cfg: &LaunchConfig, m: &MultiNode, resume: ResumeProbe) -> Result<Node, RdzvError> {
    let timeout = Duration::from_secs_f64(cfg.rendezvous_timeout_s);
    let mut endpoint = m.endpoint.clone();
    let server = if m.node_rank == 0 {
        let srv = Server::start(ServerConfig {
            port: m.port,
            rdzv_id: m.rdzv_id.clone(),
            nnodes: m.nnodes,
            reference: m.fingerprint.clone(),
            timeout,
            heartbeat: Heartbeat::default(),
            new_run_id: crate::spec::new_run_id,
            min_nodes: m.min_nodes,
            max_restarts: cfg.max_restarts,
            resume,
        })?;
        if m.port == 0 {
            if let Some((host, _)) = endpoint.rsplit_once(':') {
                endpoint = format!("{host}:{}", srv.port());
            }
        }
        eprintln!(
            "mnist-launch: node 0: serving the rendezvous of {} nodes on port {} (every interface; --rdzv-id {})",
            if m.min_nodes < m.nnodes {
                format!("{} to {}", m.min_nodes, m.nnodes)
            } else {
                m.nnodes.to_string()
            },
            srv.port(),
            m.rdzv_id
        );
        Some(srv)
    } else {
        None
    };
    eprintln!(
        "mnist-launch: node {}: joining the rendezvous at {endpoint} (waiting up to {:.0} s for {} nodes)",
        m.node_rank,
        timeout.as_secs_f64(),
        m.nnodes
    );
    let req = JoinRequest {
        rdzv_id: m.rdzv_id.clone(),
        node_rank: m.node_rank,
        nnodes: m.nnodes,
        nproc: cfg.nproc,
        host: mnist_rdzv::hostname(),
        addr: m.local_addr.clone().unwrap_or_default(),
        pid: std::process::id(),
        fingerprint: m.fingerprint.clone(),
    };
    // Node 0 must not give up before its own server does (the server names missing nodes).
    let wait = if server.is_some() {
        timeout + Duration::from_secs(5)
    } else {
        timeout
    };
    let session = match mnist_rdzv::join(&endpoint, req.clone(), wait, Heartbeat::default()) {
        Ok(s) => s,
        Err(e) => {
            if let Some(srv) = &server {
                // Let the other nodes read why before this process (and the server) exits.
                srv.wait_closed(Duration::from_secs(5));
            }
            return Err(e);
        }
    };
    let mut multi = m.clone();
    multi.endpoint = endpoint;
    let req = JoinRequest {
        addr: session.addr.clone(),
        ..req
    };
    Ok(Node {
        session,
        server,
        multi,
        req,
        timeout: wait,
    })
}

impl Node {
    /// After a restart order: register again (a new connection) and wait for the next
    /// round's plan.
    pub fn rejoin(&mut self) -> Result<(), RdzvError> {
        let session = mnist_rdzv::join(
            &self.multi.endpoint,
            self.req.clone(),
            self.timeout,
            Heartbeat::default(),
        )?;
        self.session = session;
        Ok(())
    }

    /// Where this node's workers sit in the job.
    pub fn layout(&self) -> Layout {
        let plan = &self.session.plan;
        let ranks = plan.ranks_of(self.multi.node_rank);
        // The workers' GROUP_RANK is the node's place in this round: after a node is lost
        // the survivors' --node-rank values need not be 0 … n-1 any more.
        let group_rank = plan
            .nodes
            .iter()
            .position(|n| n.node_rank == self.multi.node_rank)
            .unwrap_or(0);
        Layout {
            first_rank: ranks.start,
            world_size: plan.world_size,
            node_rank: group_rank,
            nnodes: plan.nodes.len(),
            store: Some(self.multi.endpoint.clone()),
            advertised_addr: Some(self.session.addr.clone()),
        }
    }

    /// One line describing the job, for the start-up log.
    pub fn describe(&self) -> String {
        let plan = &self.session.plan;
        let nodes: Vec<String> = plan
            .nodes
            .iter()
            .map(|n| {
                format!(
                    "node {} {} ranks {}-{}",
                    n.node_rank,
                    n.addr,
                    n.first_rank,
                    n.first_rank + n.nproc - 1
                )
            })
            .collect();
        format!(
            "{} nodes, {} processes: {}",
            plan.nodes.len(),
            plan.world_size,
            nodes.join("; ")
        )
    }

    /// This node's workers ended: tell the others (a failure aborts them); node 0 keeps
    /// serving until every node has left or is lost.
    pub fn finish(&self, ok: bool, detail: &str) {
        self.session.leave(ok, detail);
        if let Some(srv) = &self.server {
            if !srv.wait_finished(LINGER) {
                eprintln!(
                    "mnist-launch: warning: node 0 stops serving the rendezvous; some node did not finish within {} s of node 0's workers",
                    LINGER.as_secs()
                );
            }
        }
    }
}
