//! The rendezvous over loopback: real server, real launcher-side clients on threads.

use mnist_rdzv::protocol::Fingerprint;
use mnist_rdzv::{
    join, Heartbeat, JoinRequest, NodeSession, RdzvError, Server, ServerConfig, StoreClient,
};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// Pings every 200 ms, lost after 5 s of silence: as generous as the product's default, so a
/// test thread starved on a loaded machine is not taken for a lost node.
const HB: Heartbeat = Heartbeat {
    interval: Duration::from_millis(200),
    timeout: Duration::from_secs(5),
};

fn fp(comp: &str) -> Fingerprint {
    Fingerprint(vec![
        ("--model".into(), "LeNet".into()),
        ("--compression".into(), comp.into()),
    ])
}

fn server(nnodes: usize, timeout_s: u64) -> Server {
    Server::start(ServerConfig {
        port: 0,
        rdzv_id: "job".into(),
        nnodes,
        reference: fp("none"),
        timeout: Duration::from_secs(timeout_s),
        heartbeat: HB,
        new_run_id: || "run-1".into(),
        min_nodes: nnodes,
        max_restarts: 0,
        resume: mnist_rdzv::ResumeProbe::never(),
    })
    .unwrap()
}

fn req(node: usize, nnodes: usize, nproc: usize, comp: &str) -> JoinRequest {
    JoinRequest {
        rdzv_id: "job".into(),
        node_rank: node,
        nnodes,
        nproc,
        host: format!("h{node}"),
        addr: String::new(),
        pid: std::process::id(),
        fingerprint: fp(comp),
    }
}

/// Join all `reqs` concurrently; results in the same order.
fn join_all(port: u16, reqs: Vec<JoinRequest>) -> Vec<Result<NodeSession, RdzvError>> {
    let ep = format!("127.0.0.1:{port}");
    let handles: Vec<_> = reqs
        .into_iter()
        .map(|r| {
            let ep = ep.clone();
            std::thread::spawn(move || join(&ep, r, Duration::from_secs(60), HB))
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn three_nodes_get_one_plan_in_node_rank_order() {
    let srv = server(3, 60);
    let res = join_all(
        srv.port(),
        vec![
            req(2, 3, 1, "none"),
            req(0, 3, 2, "none"),
            req(1, 3, 2, "none"),
        ],
    );
    let sessions: Vec<NodeSession> = res.into_iter().map(Result::unwrap).collect();
    for s in &sessions {
        assert_eq!(s.plan.run_id, "run-1");
        assert_eq!(s.plan.world_size, 5);
        assert_eq!(
            s.addr, "127.0.0.1",
            "default address: this end of the connection"
        );
    }
    assert_eq!(sessions[0].plan.ranks_of(2), 4..5);
    assert_eq!(sessions[0].plan.ranks_of(1), 2..4);
    for s in &sessions {
        s.leave(true, "");
    }
    assert!(srv.wait_finished(Duration::from_secs(30)));
    assert_eq!(srv.failure(), None);
}

#[test]
fn a_mismatch_is_named_on_every_node() {
    let srv = server(2, 60);
    let res = join_all(srv.port(), vec![req(0, 2, 1, "none"), req(1, 2, 1, "fp16")]);
    for r in res {
        let e = r.err().expect("must fail").to_string();
        assert!(
            e.contains("node 1: --compression fp16, node 0: none"),
            "{e}"
        );
    }
}

#[test]
fn duplicate_node_ranks_fail_the_job() {
    let srv = server(3, 60);
    let res = join_all(srv.port(), vec![req(1, 3, 1, "none"), req(1, 3, 1, "none")]);
    for r in res {
        let e = r.err().expect("must fail").to_string();
        assert!(e.contains("node rank 1 was given twice"), "{e}");
    }
}

#[test]
fn another_jobs_node_is_refused_alone_and_late_nodes_are_told() {
    let srv = server(1, 60);
    let mut other = req(0, 1, 1, "none");
    other.rdzv_id = "other-job".into();
    let e = join_all(srv.port(), vec![other])
        .remove(0)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("another job") && e.contains("other-job"), "{e}");
    let ok = join_all(srv.port(), vec![req(0, 1, 1, "none")])
        .remove(0)
        .unwrap();
    assert_eq!(ok.plan.world_size, 1);
    let e = join_all(srv.port(), vec![req(0, 1, 1, "none")])
        .remove(0)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("too late"), "{e}");
}

#[test]
fn missing_nodes_are_named_at_the_timeout() {
    let srv = server(3, 2);
    let e = join_all(srv.port(), vec![req(0, 3, 1, "none")])
        .remove(0)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("node rank(s) 1, 2 never joined"), "{e}");
}

#[test]
fn a_lost_node_aborts_the_others_naming_it() {
    let srv = server(3, 60);
    let mut s: Vec<NodeSession> = join_all(
        srv.port(),
        vec![
            req(0, 3, 1, "none"),
            req(1, 3, 1, "none"),
            req(2, 3, 1, "none"),
        ],
    )
    .into_iter()
    .map(Result::unwrap)
    .collect();
    // Node 2 vanishes without leaving (its launcher was killed: the socket closes).
    drop(s.pop());
    // Dropping only stops our threads' pings; the watcher still holds the socket, so this is
    // detected by the missing heartbeat.
    let deadline = Instant::now() + Duration::from_secs(30);
    for n in &s {
        let reason = loop {
            if let Some(r) = n.abort_reason() {
                break r;
            }
            assert!(
                Instant::now() < deadline,
                "node {} never heard of the loss",
                n.node_rank
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            reason.contains("lost node 2") && reason.contains("127.0.0.1"),
            "{reason}"
        );
    }
    // A failed node is named too.
    let srv = server(2, 60);
    let s: Vec<NodeSession> =
        join_all(srv.port(), vec![req(0, 2, 1, "none"), req(1, 2, 1, "none")])
            .into_iter()
            .map(Result::unwrap)
            .collect();
    s[1].leave(false, "worker rank 1 exited with code 1");
    let deadline = Instant::now() + Duration::from_secs(30);
    let reason = loop {
        if let Some(r) = s[0].abort_reason() {
            break r;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        reason.contains("node 1") && reason.contains("worker rank 1 exited with code 1"),
        "{reason}"
    );
}

#[test]
fn losing_node_0_is_seen_by_the_other_nodes() {
    // A stand-in for node 0's launcher that starts the job and then dies (its socket closes).
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let t = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        mnist_rdzv::wire::write_preamble(&mut s).unwrap();
        mnist_rdzv::wire::read_preamble(&mut s).unwrap();
        let _: mnist_rdzv::protocol::Hello = mnist_rdzv::wire::read_frame(&mut s).unwrap();
        let plan = mnist_rdzv::Plan {
            run_id: "r".into(),
            world_size: 1,
            nodes: vec![],
            round: 0,
            resume: false,
        };
        mnist_rdzv::wire::write_frame(&mut s, &mnist_rdzv::protocol::ToNode::Start(plan)).unwrap();
    });
    let s = join(
        &format!("127.0.0.1:{port}"),
        req(1, 2, 1, "none"),
        Duration::from_secs(10),
        HB,
    )
    .unwrap();
    t.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let reason = loop {
        if let Some(r) = s.abort_reason() {
            break r;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        reason.contains("lost node 0")
            && reason.contains(&format!("127.0.0.1:{port}"))
            && reason.contains("closed"),
        "{reason}"
    );
}

#[test]
fn store_waits_for_keys_and_refuses_other_runs() {
    let srv = server(1, 60);
    let _s = join_all(srv.port(), vec![req(0, 1, 1, "none")])
        .remove(0)
        .unwrap();
    let ep = format!("127.0.0.1:{}", srv.port());
    let deadline = Instant::now() + Duration::from_secs(10);
    let reader = {
        let ep = ep.clone();
        std::thread::spawn(move || {
            let mut c = StoreClient::connect(&ep, "run-1", deadline).unwrap();
            c.get("group", Duration::from_secs(30)).unwrap()
        })
    };
    let mut w = StoreClient::connect(&ep, "run-1", deadline).unwrap();
    assert_eq!(w.get("nothing", Duration::from_millis(100)).unwrap(), None);
    w.set("group", b"10.0.0.1:4242").unwrap();
    assert_eq!(
        reader.join().unwrap().as_deref(),
        Some(&b"10.0.0.1:4242"[..])
    );
    let e = StoreClient::connect(&ep, "run-0", deadline)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("another run"), "{e}");
}

#[test]
fn port_in_use_names_the_port() {
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let e = Server::start(ServerConfig {
        port,
        rdzv_id: "job".into(),
        nnodes: 2,
        reference: fp("none"),
        timeout: Duration::from_secs(5),
        heartbeat: HB,
        new_run_id: || "r".into(),
        min_nodes: 2,
        max_restarts: 0,
        resume: mnist_rdzv::ResumeProbe::never(),
    })
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains(&format!("port {port} is in use")) && e.contains("--master-port"),
        "{e}"
    );
}

#[test]
fn other_protocol_versions_and_other_programs_are_named() {
    // A server of another version: answers with its preamble.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let t = std::thread::spawn(move || {
        for (i, s) in l.incoming().take(2).enumerate() {
            let mut s = s.unwrap();
            let mut b = [0u8; 12];
            let _ = s.read_exact(&mut b);
            if i == 0 {
                let mut p = mnist_rdzv::wire::MAGIC.to_vec();
                p.extend_from_slice(&99u32.to_le_bytes());
                s.write_all(&p).unwrap();
            } else {
                s.write_all(b"SSH-2.0-OpenSSH_9.6\r\n").unwrap();
            }
        }
    });
    let ep = format!("127.0.0.1:{port}");
    let e = join(&ep, req(0, 1, 1, "none"), Duration::from_secs(10), HB)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("protocol version 99"), "{e}");
    let e = join(&ep, req(0, 1, 1, "none"), Duration::from_secs(10), HB)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("not an mnist-ddp rendezvous"), "{e}");
    t.join().unwrap();
}
