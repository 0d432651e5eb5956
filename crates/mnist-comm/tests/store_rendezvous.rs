//! Group formation through the TCP rendezvous store of node 0's launcher (several machines):
//! rank 0 publishes its group address and payload (e.g. the NCCL unique id) under a key, the
//! others wait for it. In-process ranks on threads, a real `mnist_rdzv::Server`.

use mnist_comm::{connect, CommOptions, ReduceOp};
use mnist_common::contract::WorkerIdentity;
use mnist_rdzv::{Fingerprint, Heartbeat, JoinRequest, Server, ServerConfig};
use std::time::Duration;

/// A started one-node job on a fresh server: (server, its node's session, the endpoint, the
/// run id). The session keeps the node's heartbeats going while the test runs.
fn started_store() -> (Server, mnist_rdzv::NodeSession, String, String) {
    let srv = Server::start(ServerConfig {
        port: 0,
        rdzv_id: "job".into(),
        nnodes: 1,
        reference: Fingerprint::default(),
        timeout: Duration::from_secs(60),
        heartbeat: Heartbeat::default(),
        new_run_id: || "store-run".into(),
        min_nodes: 1,
        max_restarts: 0,
        resume: mnist_rdzv::ResumeProbe::never(),
    })
    .unwrap();
    let ep = format!("127.0.0.1:{}", srv.port());
    let node = mnist_rdzv::join(
        &ep,
        JoinRequest {
            rdzv_id: "job".into(),
            node_rank: 0,
            nnodes: 1,
            nproc: 1,
            host: "h".into(),
            addr: String::new(),
            pid: std::process::id(),
            fingerprint: Fingerprint::default(),
        },
        Duration::from_secs(30),
        Heartbeat::default(),
    )
    .unwrap();
    let run = node.plan.run_id.clone();
    (srv, node, ep, run)
}

fn identity(rank: usize, world: usize, store: &str, run: &str) -> WorkerIdentity {
    WorkerIdentity {
        rank,
        local_rank: 0,
        world_size: world,
        local_world_size: 1,
        node_rank: rank,
        nnodes: world,
        rendezvous: None,
        store: Some(store.to_string()),
        run_id: Some(run.to_string()),
        rendezvous_timeout_s: 30.0,
    }
}

#[test]
fn ranks_meet_through_the_store_and_get_rank_0s_payload() {
    let (_srv, _node, ep, run) = started_store();
    let world = 3;
    let handles: Vec<_> = (0..world)
        .map(|rank| {
            let id = identity(rank, world, &ep, &run);
            std::thread::spawn(move || {
                let opts = CommOptions {
                    rendezvous_timeout: Duration::from_secs(30),
                    rank0_payload: (rank == 0).then(|| b"nccl-unique-id".to_vec()),
                    ..CommOptions::default()
                };
                let (mut comm, payload) = connect(&id, opts).unwrap();
                let mut v = vec![rank as f32 + 1.0; 5];
                comm.all_reduce_f32(&mut v, ReduceOp::Sum).unwrap();
                (payload, v)
            })
        })
        .collect();
    for h in handles {
        let (payload, v) = h.join().unwrap();
        assert_eq!(payload, b"nccl-unique-id");
        assert_eq!(v, vec![6.0; 5]);
    }
}

#[test]
fn a_worker_of_another_run_is_refused_by_the_store() {
    let (_srv, _node, ep, _run) = started_store();
    let id = identity(1, 2, &ep, "some-older-run");
    let opts = CommOptions {
        rendezvous_timeout: Duration::from_secs(5),
        ..CommOptions::default()
    };
    let e = connect(&id, opts)
        .err()
        .expect("must be refused")
        .to_string();
    assert!(
        e.contains("some-older-run") && e.contains("another run"),
        "{e}"
    );
}
