//! Several nodes: one `mnist-launch` per node with `--nnodes/--node-rank`, meeting through
//! node 0's TCP rendezvous. On loopback (every node on 127.0.0.1) and across network
//! namespaces (each node its own network stack, [`mnist_testkit::netns`]; needs root): training
//! in sync, the same parameters as one node with as many processes, and the failures (a
//! mismatch, a killed node, a cut network, an unreachable master, a wrong port, missing or
//! duplicate nodes) each named in one line.

mod common;

use common::*;
use mnist_testkit::netns::Netns;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Node 0 started with `--master-port 0`: the port it serves on.
fn served_port(n0: &Running) -> u16 {
    let l = n0.wait_line("serving the rendezvous");
    l.split("on port ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {l:?}"))
}

/// Training flags of the tests: synthetic data, CPU, one thread each.
fn train(data: &Path, out: &Path, extra: Vec<String>) -> Vec<String> {
    node_flags(data, out, 5, extra)
}

/// A launcher for node `rank` of `nnodes` on loopback, rendezvous at 127.0.0.1:`port`.
fn loopback(rank: usize, nnodes: usize, port: u16, nproc: usize, args: &[String]) -> Command {
    let mut c = Command::new(launcher_bin());
    c.args(args)
        .args(args![
            "--nnodes",
            nnodes,
            "--node-rank",
            rank,
            "--master-port",
            port,
            "--nproc",
            nproc
        ])
        .env("MNIST_STATUS_SECS", "2");
    c
}

/// Start node 0 (any free port) and the other nodes with `nprocs[i]` processes each; node i
/// writes into `<tmp>/n<i>`. Returns the nodes and the port.
fn start_loopback(
    tmp: &Path,
    data: &Path,
    nprocs: &[usize],
    extra: &[String],
) -> (Vec<Running>, u16) {
    let n = nprocs.len();
    let a = |i: usize| train(data, &tmp.join(format!("n{i}")), extra.to_vec());
    let n0 = spawn_named(loopback(0, n, 0, nprocs[0], &a(0)), "node 0");
    let port = served_port(&n0);
    let mut nodes = vec![n0];
    for (i, &p) in nprocs.iter().enumerate().skip(1) {
        nodes.push(spawn_named(
            loopback(i, n, port, p, &a(i)),
            &format!("node {i}"),
        ));
    }
    (nodes, port)
}

fn rank_logs(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("rank"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn nodes_train(nprocs: &[usize]) {
    let tmp = tempdir();
    let data = make_data(tmp.path(), 1920, 200);
    let extra = args![
        "--epochs",
        2,
        "--batch-size",
        32,
        "--lr",
        0.05,
        "--check-sync",
        1
    ];
    let (nodes, _) = start_loopback(tmp.path(), &data, nprocs, &extra);
    let ended: Vec<Output> = nodes.into_iter().map(Running::ok).collect();
    let world: usize = nprocs.iter().sum();
    let out0 = tmp.path().join("n0");
    let m = metrics(&out0);
    assert_eq!(m.len(), 2);
    assert_eq!(m[0]["world_size"], world);
    assert!(
        m[1]["test_loss"].as_f64().unwrap() < m[0]["test_loss"].as_f64().unwrap(),
        "{m:?}"
    );
    // Global ranks in node-rank order; each node keeps its own ranks' logs; only global
    // rank 0 writes the run's outputs.
    let mut first = 0;
    for (i, &p) in nprocs.iter().enumerate() {
        let dir = tmp.path().join(format!("n{i}"));
        let want: Vec<String> = (first..first + p).map(|r| format!("rank{r}.log")).collect();
        assert_eq!(rank_logs(&dir), want, "node {i}");
        for f in ["mnist_train.log", "mnist_model.pt", "metrics.jsonl"] {
            assert_eq!(dir.join(f).exists(), i == 0, "node {i}: {f}");
        }
        first += p;
    }
    assert!(
        ended[0].stdout.contains("Final best Test Accuracy"),
        "{}",
        ended[0].stdout
    );
    for (i, e) in ended.iter().enumerate().skip(1) {
        assert!(
            !e.stdout.contains("Train Epoch"),
            "node {i} echoed rank 0's lines"
        );
        assert!(
            e.stderr.contains(&format!(
                "node {i}: the job has {} nodes, {world} processes",
                nprocs.len()
            )),
            "{}",
            e.stderr
        );
    }
}

#[test]
fn two_nodes_train_in_sync_on_loopback() {
    nodes_train(&[1, 1]);
}

#[test]
fn three_nodes_with_different_process_counts_train_in_sync() {
    nodes_train(&[2, 1, 1]);
}

#[test]
fn two_nodes_of_two_equal_one_node_of_four() {
    // 6400 samples, 4 ranks x batch 32: 50 steps either way, the same global sample order.
    let tmp = tempdir();
    let data = make_data(tmp.path(), 6400, 200);
    let extra = args![
        "--epochs",
        1,
        "--batch-size",
        32,
        "--log-interval",
        25,
        "--compression",
        "none"
    ];
    let (nodes, _) = start_loopback(tmp.path(), &data, &[2, 2], &extra);
    for n in nodes {
        n.ok();
    }
    let single = tmp.path().join("single");
    let mut c = Command::new(launcher_bin());
    c.args(train(&data, &single, extra.clone()))
        .args(args!["--nproc", 4]);
    spawn_named(c, "one node x 4").ok();
    let a =
        mnist_train::resume::load(&mnist_train::resume::path_in(&tmp.path().join("n0"))).unwrap();
    let b = mnist_train::resume::load(&mnist_train::resume::path_in(&single)).unwrap();
    assert_eq!((a.step, b.step), (50, 50));
    let (d, m) = max_diff(&a.params, &b.params);
    println!(
        "2 nodes x 2 vs 1 node x 4 after 50 steps: max |param diff| {d:e}, max |param| {m:.3}"
    );
    assert!(
        d <= 1e-5 * m.max(1.0),
        "parameters differ: max diff {d} vs max |param| {m}"
    );
}

#[test]
fn mismatched_flags_are_named_on_every_node() {
    let tmp = tempdir();
    let data = make_data(tmp.path(), 640, 100);
    let n0 = spawn_named(
        loopback(0, 2, 0, 1, &train(&data, &tmp.path().join("n0"), vec![])),
        "node 0",
    );
    let port = served_port(&n0);
    let n1 = spawn_named(
        loopback(
            1,
            2,
            port,
            1,
            &train(
                &data,
                &tmp.path().join("n1"),
                args!["--compression", "fp16"],
            ),
        ),
        "node 1",
    );
    for e in [n0.wait(DEADLINE), n1.wait(DEADLINE)] {
        assert_ne!(e.status.code(), Some(0));
        assert!(
            e.stderr
                .contains("node 1: --compression fp16, node 0: none"),
            "{}",
            e.stderr
        );
        assert_eq!(
            e.stderr.matches("mnist-launch: error:").count(),
            1,
            "{}",
            e.stderr
        );
    }
}

#[test]
fn unreachable_master_is_named_with_the_os_error() {
    let tmp = tempdir();
    let data = make_data(tmp.path(), 640, 100);
    let port = free_port();
    let mut a = train(&data, &tmp.path().join("n1"), vec![]);
    a.extend(args!["--rendezvous-timeout", 2]);
    let e = spawn_named(loopback(1, 2, port, 1, &a), "node 1").wait(DEADLINE);
    assert_ne!(e.status.code(), Some(0));
    let line = e
        .stderr
        .lines()
        .find(|l| l.contains("mnist-launch: error:"))
        .unwrap_or_default()
        .to_string();
    assert!(
        line.contains(&format!("127.0.0.1:{port}")) && line.contains("connection refused"),
        "{}",
        e.stderr
    );
    // A name that does not resolve.
    let mut c = Command::new(launcher_bin());
    c.args(&a).args(args![
        "--nnodes",
        2,
        "--node-rank",
        1,
        "--master-addr",
        "no-such-host.invalid"
    ]);
    let e = spawn_named(c, "node 1").wait(DEADLINE);
    assert!(
        e.stderr.contains("no-such-host.invalid:29500") && e.stderr.contains("name not resolved"),
        "{}",
        e.stderr
    );
}

#[test]
fn node_0_names_the_nodes_that_never_came_and_duplicates() {
    let tmp = tempdir();
    let data = make_data(tmp.path(), 640, 100);
    let mut a = train(&data, &tmp.path().join("n0"), vec![]);
    a.extend(args!["--rendezvous-timeout", 3]);
    let e = spawn_named(loopback(0, 3, 0, 1, &a), "node 0").wait(DEADLINE);
    assert_ne!(e.status.code(), Some(0));
    assert!(
        e.stderr.contains("node rank(s) 1, 2 never joined"),
        "{}",
        e.stderr
    );

    let a = train(&data, &tmp.path().join("d"), vec![]);
    let n0 = spawn_named(loopback(0, 3, 0, 1, &a), "node 0");
    let port = served_port(&n0);
    let d1 = spawn_named(loopback(1, 3, port, 1, &a), "node 1");
    let d2 = spawn_named(loopback(1, 3, port, 1, &a), "node 1 again");
    for e in [n0.wait(DEADLINE), d1.wait(DEADLINE), d2.wait(DEADLINE)] {
        assert_ne!(e.status.code(), Some(0));
        assert!(
            e.stderr.contains("node rank 1 was given twice"),
            "{}",
            e.stderr
        );
    }
}

#[test]
fn the_master_port_in_use_is_named() {
    let tmp = tempdir();
    let data = make_data(tmp.path(), 640, 100);
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let e = spawn_named(
        loopback(0, 2, port, 1, &train(&data, &tmp.path().join("n0"), vec![])),
        "node 0",
    )
    .wait(DEADLINE);
    assert_ne!(e.status.code(), Some(0));
    assert!(
        e.stderr.contains(&format!("port {port} is in use")),
        "{}",
        e.stderr
    );
}

/// Wait until `dir/rank<r>.log` shows training.
fn wait_training(dir: &Path, rank: usize) {
    let deadline = Instant::now() + DEADLINE;
    let log = dir.join(format!("rank{rank}.log"));
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("Train Epoch")
    {
        assert!(Instant::now() < deadline, "rank {rank} never trained");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_killed_node_stops_the_others_within_10_s_naming_it() {
    let tmp = tempdir();
    let data = make_data(tmp.path(), 1920, 100);
    let extra = args!["--epochs", 200, "--batch-size", 32];
    let (mut nodes, _) = start_loopback(tmp.path(), &data, &[1, 1, 1], &extra);
    wait_training(&tmp.path().join("n0"), 0);
    let mut victim = nodes.remove(1);
    victim.child.kill().unwrap();
    let killed = Instant::now();
    let _ = victim.child.wait();
    for (i, n) in nodes.into_iter().enumerate() {
        let e = n.wait(DEADLINE);
        let secs = e.ended.duration_since(killed).as_secs_f64();
        println!("killed node (loopback): a node stopped {secs:.1} s after the kill");
        assert_ne!(e.status.code(), Some(0));
        assert!(
            secs <= 10.0,
            "node {} took {secs:.1} s to stop",
            if i == 0 { 0 } else { 2 }
        );
        let line = e
            .stderr
            .lines()
            .find(|l| l.contains("mnist-launch: error:"))
            .unwrap_or_default()
            .to_string();
        assert!(
            line.contains("node 1") && line.contains("127.0.0.1"),
            "{}",
            e.stderr
        );
    }
}

// ---- Separate network stacks (network namespaces; root only) ----

/// A launcher for node `i` inside namespace `i` of `ns`, master 10.77.0.1:`port`.
fn in_ns(ns: &Netns, i: usize, nnodes: usize, port: u16, args: &[String]) -> Command {
    let mut c = ns.command(i, launcher_bin());
    c.args(args).args(args![
        "--nnodes",
        nnodes,
        "--node-rank",
        i,
        "--master-addr",
        Netns::addr_of(0),
        "--master-port",
        port,
        "--nproc",
        1
    ]);
    c.env("MNIST_STATUS_SECS", "2");
    c
}

#[test]
fn netns_two_nodes_train_across_network_stacks() {
    let Some(ns) = Netns::create("netns_two_nodes_train_across_network_stacks", 2) else {
        return;
    };
    let tmp = tempdir();
    let data = make_data(tmp.path(), 1920, 200);
    let extra = args![
        "--epochs",
        4,
        "--batch-size",
        32,
        "--lr",
        0.05,
        "--check-sync",
        1
    ];
    let a = |i: usize| train(&data, &tmp.path().join(format!("n{i}")), extra.clone());
    let n0 = spawn_named(in_ns(&ns, 0, 2, 29500, &a(0)), "node 0");
    let mut c1 = in_ns(&ns, 1, 2, 29500, &a(1));
    c1.env("MNIST_SOCKET_IFNAME", "eth0")
        .env("MNIST_STATUS_SECS", "0.3");
    let n1 = spawn_named(c1, "node 1");
    let (e0, e1) = (n0.ok(), n1.ok());
    for e in [&e0, &e1] {
        assert!(
            e.stderr
                .contains("node 0 10.77.0.1 ranks 0-0; node 1 10.77.0.2 ranks 1-1"),
            "{}",
            e.stderr
        );
    }
    assert!(
        e1.stderr.contains("node 1: ranks 1-1 of 2 running"),
        "no status line:\n{}",
        e1.stderr
    );
    let status = e1
        .stderr
        .lines()
        .find(|l| l.contains("node 1: ranks 1-1 of 2 running") && l.contains("step"))
        .unwrap_or_default()
        .to_string();
    println!("status line: {status}");
    assert!(
        status.contains("eth0 rx") && status.contains("step"),
        "{status}"
    );
    let m = metrics(&tmp.path().join("n0"));
    assert_eq!(m[0]["world_size"], 2);
    assert!(m[1]["test_top1"].as_f64().unwrap() > 30.0, "{m:?}");
}

#[test]
fn netns_killed_node_and_cut_network_stop_the_others_naming_the_node() {
    let Some(ns) = Netns::create(
        "netns_killed_node_and_cut_network_stop_the_others_naming_the_node",
        3,
    ) else {
        return;
    };
    let tmp = tempdir();
    let data = make_data(tmp.path(), 1920, 100);
    let extra = args!["--epochs", 200, "--batch-size", 32];
    let a = |i: usize| train(&data, &tmp.path().join(format!("n{i}")), extra.clone());
    // A killed node (its launcher gets SIGKILL).
    let n0 = spawn_named(in_ns(&ns, 0, 2, 29500, &a(0)), "node 0");
    let mut n1 = spawn_named(in_ns(&ns, 1, 2, 29500, &a(1)), "node 1");
    wait_training(&tmp.path().join("n0"), 0);
    n1.child.kill().unwrap();
    let killed = Instant::now();
    let e = n0.wait(DEADLINE);
    let secs = e.ended.duration_since(killed).as_secs_f64();
    println!("killed node (namespaces): node 0 stopped {secs:.1} s after the kill");
    assert_ne!(e.status.code(), Some(0));
    assert!(
        secs <= 10.0,
        "node 0 took {secs:.1} s to stop:\n{}",
        e.stderr
    );
    let line = e
        .stderr
        .lines()
        .find(|l| l.contains("mnist-launch: error:"))
        .unwrap_or_default()
        .to_string();
    assert!(
        line.contains("lost node 1") && line.contains("10.77.0.2"),
        "{}",
        e.stderr
    );
    drop(n1);

    // A cut network: node 2's link goes down; both sides stop, each naming the other.
    let b = |i: usize| train(&data, &tmp.path().join(format!("cut{i}")), extra.clone());
    let n0 = spawn_named(in_ns(&ns, 0, 2, 29501, &b(0)), "node 0");
    let mut c = in_ns(&ns, 2, 2, 29501, &b(2));
    c.args(args!["--node-rank", 1]);
    let n2 = spawn_named(c, "node 1 (namespace 2)");
    wait_training(&tmp.path().join("cut0"), 0);
    ns.cut(2).unwrap();
    let cut = Instant::now();
    let (e0, e2) = (n0.wait(DEADLINE), n2.wait(DEADLINE));
    for (e, who) in [(&e0, "10.77.0.3"), (&e2, "10.77.0.1")] {
        assert_ne!(e.status.code(), Some(0));
        let secs = e.ended.duration_since(cut).as_secs_f64();
        println!(
            "cut network: stopped {secs:.1} s after the cut: {}",
            e.stderr
                .lines()
                .find(|l| l.contains("mnist-launch: error:"))
                .unwrap_or_default()
        );
        assert!(secs <= 12.0, "took {secs:.1} s to stop:\n{}", e.stderr);
        let line = e
            .stderr
            .lines()
            .find(|l| l.contains("mnist-launch: error:"))
            .unwrap_or_default()
            .to_string();
        assert!(
            line.contains("lost node") && line.contains(who),
            "{}",
            e.stderr
        );
    }
}

#[test]
fn netns_unreachable_master_wrong_port_and_mismatch_are_named() {
    let Some(ns) = Netns::create(
        "netns_unreachable_master_wrong_port_and_mismatch_are_named",
        2,
    ) else {
        return;
    };
    let tmp = tempdir();
    let data = make_data(tmp.path(), 640, 100);
    let mut a = train(&data, &tmp.path().join("n"), vec![]);
    a.extend(args!["--rendezvous-timeout", 4]);
    // Nobody at that address: no route (ARP gets no answer) or timed out.
    let mut c = ns.command(1, launcher_bin());
    c.args(&a).args(args![
        "--nnodes",
        2,
        "--node-rank",
        1,
        "--master-addr",
        "10.77.0.99",
        "--master-port",
        29500
    ]);
    let e = spawn_named(c, "node 1").wait(DEADLINE);
    assert_ne!(e.status.code(), Some(0));
    assert!(
        e.stderr.contains("10.77.0.99:29500")
            && (e.stderr.contains("no route to host") || e.stderr.contains("timed out")),
        "{}",
        e.stderr
    );
    // A wrong port: node 1 is refused, node 0 names node 1 as never come.
    let n0 = spawn_named(in_ns(&ns, 0, 2, 29500, &a), "node 0");
    n0.wait_line("serving the rendezvous");
    let n1 = spawn_named(in_ns(&ns, 1, 2, 29501, &a), "node 1");
    let (e0, e1) = (n0.wait(DEADLINE), n1.wait(DEADLINE));
    assert!(
        e1.stderr.contains("10.77.0.1:29501") && e1.stderr.contains("connection refused"),
        "{}",
        e1.stderr
    );
    assert!(
        e0.stderr.contains("node rank(s) 1 never joined"),
        "{}",
        e0.stderr
    );
    // Mismatched flags, named on both nodes.
    let n0 = spawn_named(in_ns(&ns, 0, 2, 29502, &a), "node 0");
    let mut b = a.clone();
    b.extend(args!["--lr", 0.1]);
    let n1 = spawn_named(in_ns(&ns, 1, 2, 29502, &b), "node 1");
    for e in [n0.wait(DEADLINE), n1.wait(DEADLINE)] {
        assert!(
            e.stderr.contains("node 1: --lr 0.1, node 0: 0.01"),
            "{}",
            e.stderr
        );
    }
}

#[test]
fn two_jobs_with_different_master_ports_do_not_interfere() {
    let tmp = tempdir();
    let data = make_data(tmp.path(), 1280, 100);
    let extra = args!["--epochs", 2, "--batch-size", 32, "--check-sync", 1];
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    // Both jobs start at once, with the same --rdzv-id, on the same machine.
    let (ja, pa) = start_loopback(&a, &data, &[1, 1], &extra);
    let (jb, pb) = start_loopback(&b, &data, &[1, 1], &extra);
    assert_ne!(pa, pb);
    for n in ja.into_iter().chain(jb) {
        n.ok();
    }
    for dir in [&a, &b] {
        let m = metrics(&dir.join("n0"));
        assert_eq!((m.len(), m[0]["world_size"].as_u64()), (2, Some(2)));
    }
}

#[test]
fn a_node_of_another_job_is_refused_and_a_late_node_is_told() {
    let tmp = tempdir();
    let data = make_data(tmp.path(), 640, 100);
    // A long job (it is stopped when the test ends), so the late node surely finds it running.
    let mut a = train(&data, &tmp.path().join("n"), args!["--epochs", 500]);
    a.extend(args!["--rendezvous-timeout", 30]);
    let mut n0 = spawn_named(loopback(0, 2, 0, 1, &a), "node 0");
    let port = served_port(&n0);
    let mut other = loopback(1, 2, port, 1, &a);
    other.args(["--rdzv-id", "another-job"]);
    let e = spawn_named(other, "node 1 of another job").wait(DEADLINE);
    assert_ne!(e.status.code(), Some(0));
    assert!(
        e.stderr.contains("belongs to another job") && e.stderr.contains("\"another-job\""),
        "{}",
        e.stderr
    );
    // The job itself is unaffected: its own node 1 joins and it trains.
    let n1 = spawn_named(loopback(1, 2, port, 1, &a), "node 1");
    n1.wait_line("the job has 2 nodes");
    let late = spawn_named(loopback(1, 2, port, 1, &a), "a late node 1").wait(DEADLINE);
    assert!(late.stderr.contains("came too late"), "{}", late.stderr);
    assert!(
        n0.child.try_wait().unwrap().is_none(),
        "the job stopped:\n{}",
        n0.stderr_so_far()
    );
    drop((n0, n1));
}
