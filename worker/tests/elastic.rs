//! Failures across machines (network namespaces, one per node; root only, skipped visibly
//! elsewhere): `--max-restarts` restarts every node's workers in a new rendezvous round from
//! node 0's checkpoint (which rank 0 broadcasts to the other nodes), and `--nnodes MIN:MAX`
//! lets the survivors of a lost node continue with fewer ranks (and a node that arrives late
//! join at the next round with more), re-sharding the rest of the epoch so every sample is
//! trained exactly once.

mod common;

use common::*;
use mnist_testkit::netns::Netns;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A launcher for node `i` inside namespace `i`, master 10.77.0.1:`port`, `nproc` processes.
fn in_ns(ns: &Netns, i: usize, nnodes: &str, port: u16, nproc: usize, args: &[String]) -> Command {
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
        nproc
    ]);
    for v in [
        "RANK",
        "WORLD_SIZE",
        "MNIST_RUN_ID",
        "MNIST_STORE",
        "MNIST_FAULT",
    ] {
        c.env_remove(v);
    }
    c
}

/// Training flags: synthetic data, CPU, one thread, every step logged.
fn train(data: &Path, out: &Path, extra: Vec<String>) -> Vec<String> {
    node_flags(data, out, 1, extra)
}

/// The pid of the worker whose `--path` is `out`.
fn worker_pid(out: &Path) -> u32 {
    processes_with(&out.display().to_string())
        .into_iter()
        .find(|(_, argv)| argv[0].ends_with("mnist-worker"))
        .map(|(pid, _)| pid)
        .unwrap_or_else(|| panic!("no worker with --path {}", out.display()))
}

#[test]
fn netns_a_worker_killed_on_node_1_restarts_both_nodes_and_matches_an_uninterrupted_run() {
    let Some(ns) = Netns::create(
        "netns_a_worker_killed_on_node_1_restarts_both_nodes_and_matches_an_uninterrupted_run",
        2,
    ) else {
        return;
    };
    let tmp = tempdir();
    let data = make_data(tmp.path(), 1280, 200);
    // 2 ranks × batch 32 on 1280 images: 20 steps per epoch, a checkpoint every 3 steps.
    let extra = args![
        "--epochs",
        2,
        "--batch-size",
        32,
        "--checkpoint-every",
        3,
        "--max-restarts",
        1
    ];
    let dir = |run: &str, i: usize| tmp.path().join(format!("{run}{i}"));
    let a = |run: &str, i: usize| train(&data, &dir(run, i), extra.clone());
    // Uninterrupted.
    let n0 = spawn(in_ns(&ns, 0, "2", 29510, 1, &a("a", 0)));
    let n1 = spawn(in_ns(&ns, 1, "2", 29510, 1, &a("a", 1)));
    n0.wait(DEADLINE).ok("uninterrupted node 0");
    n1.wait(DEADLINE).ok("uninterrupted node 1");

    // Rank 1 (node 1) is slowed in round 0 only, so the kill lands inside epoch 2.
    let n0 = spawn(in_ns(&ns, 0, "2", 29511, 1, &a("b", 0)));
    let mut c1 = in_ns(&ns, 1, "2", 29511, 1, &a("b", 1));
    c1.env(mnist_common::contract::ENV_FAULT, "1:0:slow=150ms");
    let n1 = spawn(c1);
    wait_for_log(&dir("b", 1).join("rank1.log"), "rank 1: epoch 2 step 4/20");
    let pid1 = worker_pid(&dir("b", 1));
    let killed = Instant::now();
    assert!(Command::new("kill")
        .args(["-KILL", &pid1.to_string()])
        .status()
        .unwrap()
        .success());
    let o0 = n0
        .wait(DEADLINE)
        .ok("node 0 with a worker killed on node 1");
    let o1 = n1.wait(DEADLINE).ok("node 1 with its worker killed");
    println!(
        "2 netns nodes: finished {:.1}s after the kill",
        killed.elapsed().as_secs_f64()
    );
    for (i, o) in [&o0, &o1].iter().enumerate() {
        let l = o
            .stderr
            .lines()
            .find(|l| l.contains(&format!("node {i}: restart 1 of 1 (--max-restarts)")))
            .unwrap_or_else(|| panic!("node {i}: no restart line:\n{}", o.stderr));
        assert!(
            l.contains("node 1") && l.contains("SIGKILL"),
            "node {i}: {l}"
        );
    }
    assert!(
        o0.stderr
            .contains("round 1 starts with 2 node(s) (0, 1), 2 processes, resuming"),
        "{}",
        o0.stderr
    );
    // Node 1 holds no checkpoint: its rank resumed from rank 0's broadcast.
    assert!(!dir("b", 1).join("checkpoint.bin").exists());
    let log0 = std::fs::read_to_string(dir("b", 0).join("rank0.log")).unwrap();
    let second = log0
        .split("---- mnist-launch: restart round 1 ----")
        .nth(1)
        .unwrap_or_else(|| panic!("no round marker:\n{log0}"));
    assert!(
        second.contains("Resuming from") && second.contains("at epoch 2, batch "),
        "{second}"
    );
    // Same end as the uninterrupted run, to the bit.
    let ck = |d: &Path| mnist_train::resume::load(&mnist_train::resume::path_in(d)).unwrap();
    let (sa, sb) = (ck(&dir("a", 0)), ck(&dir("b", 0)));
    assert_eq!((sa.next_epoch, sa.step), (sb.next_epoch, sb.step));
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert!(bits(&sa.params) == bits(&sb.params), "parameters differ");
    assert_eq!(sa.momentum, sb.momentum);
    assert_eq!(
        std::fs::read(dir("a", 0).join("mnist_model.pt")).unwrap(),
        std::fs::read(dir("b", 0).join("mnist_model.pt")).unwrap(),
        "the final model files differ"
    );
    let m = metrics(&dir("b", 0));
    assert_eq!(
        (m[0]["restarts"].as_u64(), m[1]["restarts"].as_u64()),
        (Some(0), Some(1)),
        "{m:?}"
    );
}

/// One trace line: (restart round, step, epoch, the dataset indices trained).
type Line = (u32, u64, usize, Vec<usize>);

/// Every trace line of `dir`'s `samples-*.txt`.
fn read_trace(dir: &Path) -> Vec<Line> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        for line in std::fs::read_to_string(e.path()).unwrap().lines() {
            let f: Vec<&str> = line.split(' ').collect();
            assert_eq!(f.len(), 4, "bad trace line {line:?}");
            v.push((
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
                f[3].split(',').map(|i| i.parse().unwrap()).collect(),
            ));
        }
    }
    v
}

/// How often each sample was trained per epoch, counting only steps that the job kept: a
/// later round resumes at its first step, so an earlier round's steps from there on were
/// rolled back.
fn samples_per_epoch(trace: &[Line]) -> BTreeMap<usize, Vec<u32>> {
    let mut rounds: BTreeMap<u32, Vec<&Line>> = BTreeMap::new();
    for t in trace {
        rounds.entry(t.0).or_default().push(t);
    }
    let mut kept: Vec<&Line> = Vec::new();
    for lines in rounds.values() {
        let first = lines.iter().map(|t| t.1).min().unwrap();
        kept.retain(|t| t.1 < first);
        kept.extend(lines.iter().copied());
    }
    let mut per: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
    for t in kept {
        let counts = per.entry(t.2).or_default();
        for &i in &t.3 {
            if counts.len() <= i {
                counts.resize(i + 1, 0);
            }
            counts[i] += 1;
        }
    }
    per
}

/// Three nodes (node 0 with two processes); node 1's launcher is killed inside epoch 1 (so the survivors' node ranks, 0
/// and 2, are not 0 … n-1 any more). Returns the outputs of nodes 0 and 2 and the trace
/// folder.
/// How node 1 is lost.
#[derive(Clone, Copy, PartialEq)]
enum Loss {
    /// Its launcher is killed (SIGKILL): its connection closes at once.
    Kill,
    /// Its network is cut: only the heartbeat timeout tells.
    Cut,
}

fn three_nodes_lose_one(
    test: &str,
    nnodes: &str,
    tmp: &Path,
) -> Option<(Output, Output, std::path::PathBuf)> {
    three_nodes_lose_node_1(test, nnodes, tmp, Loss::Kill).map(|(a, b, _, t)| (a, b, t))
}

/// [`three_nodes_lose_one`] with the way node 1 is lost; also returns node 1's output.
fn three_nodes_lose_node_1(
    test: &str,
    nnodes: &str,
    tmp: &Path,
    loss: Loss,
) -> Option<(Output, Output, Output, std::path::PathBuf)> {
    let ns = Netns::create(test, 3)?;
    // 1200 images on 4 ranks (node 0 runs two) × batch 16: 19 steps; a checkpoint every 3
    // steps leaves a multiple of 3 × 64 images trained, so the 3 ranks left take the rest
    // without padding (a padded place would be a repeat).
    let data = make_data(tmp, 1200, 200);
    let trace = tmp.join("trace");
    std::fs::create_dir_all(&trace).unwrap();
    let extra = args![
        "--epochs",
        2,
        "--batch-size",
        16,
        "--checkpoint-every",
        3,
        "--max-restarts",
        1,
        "--rendezvous-timeout",
        60
    ];
    let dir = |i: usize| tmp.join(format!("n{i}"));
    let mut nodes = Vec::new();
    for i in 0..3 {
        let nproc = if i == 0 { 2 } else { 1 };
        let mut c = in_ns(
            &ns,
            i,
            nnodes,
            29520,
            nproc,
            &train(&data, &dir(i), extra.clone()),
        );
        c.env(mnist_common::contract::ENV_SAMPLE_TRACE, &trace);
        if i == 1 {
            // Slow in round 0 only: the kill lands inside epoch 1.
            c.env(mnist_common::contract::ENV_FAULT, "2:0:slow=100ms");
        }
        nodes.push(spawn(c));
    }
    wait_for_log(&dir(1).join("rank2.log"), "rank 2: epoch 1 step 11/19");
    let n2 = nodes.pop().unwrap();
    let mut victim = nodes.pop().unwrap();
    match loss {
        Loss::Kill => victim.child.kill().unwrap(),
        Loss::Cut => ns.cut(1).unwrap(),
    }
    let n2 = n2.wait(DEADLINE);
    let n0 = nodes.pop().unwrap().wait(DEADLINE);
    if loss == Loss::Kill {
        let _ = victim.child.wait();
    }
    let n1 = victim.wait(DEADLINE);
    drop(ns);
    Some((n0, n2, n1, trace))
}

#[test]
fn netns_three_nodes_2_to_3_lose_one_and_finish_on_two_seeing_every_sample_once() {
    let test = "netns_three_nodes_2_to_3_lose_one_and_finish_on_two_seeing_every_sample_once";
    let tmp = tempdir();
    let Some((o0, o2, trace)) = three_nodes_lose_one(test, "2:3", tmp.path()) else {
        return;
    };
    let o0 = o0.ok("node 0 after losing node 1");
    let o2 = o2.ok("node 2 after losing node 1");
    assert!(
        o0.stderr.contains("lost node 1")
            && o0
                .stderr
                .contains("round 1 starts with 2 node(s) (0, 2), 3 processes"),
        "{}",
        o0.stderr
    );
    // Node 2 now holds global rank 2 (it had 3).
    assert!(
        o2.stderr
            .contains("node 2: round 1: the job continues with 2 node(s), 3 processes (was 4)")
            && o2.stderr.contains("node 2 10.77.0.3 ranks 2-2"),
        "{}",
        o2.stderr
    );
    let log0 = std::fs::read_to_string(tmp.path().join("n0/rank0.log")).unwrap();
    assert!(
        log0.contains("Elastic: world size 3 (was 4): per-rank batch 16, global batch 48 (was 64); epoch 1 continues after sample "),
        "{log0}"
    );
    let m = metrics(&tmp.path().join("n0"));
    assert_eq!(m.len(), 2, "{m:?}");
    assert_eq!(
        (m[0]["world_size"].as_u64(), m[1]["world_size"].as_u64()),
        (Some(3), Some(3))
    );
    // Every sample of each epoch trained exactly once by the steps the job kept.
    assert_every_sample_once(&trace, 1200);
}

/// The exactly-once check of an elastic run's trace (see [`samples_per_epoch`]): both
/// epochs, every one of `samples` trained once, and some line of round 1.
fn assert_every_sample_once(trace: &Path, samples: usize) {
    let t = read_trace(trace);
    assert!(t.iter().any(|l| l.0 == 1), "no line of round 1");
    let per = samples_per_epoch(&t);
    assert_eq!(per.keys().copied().collect::<Vec<_>>(), vec![0, 1]);
    for (epoch, counts) in &per {
        assert_eq!(
            counts.len(),
            samples,
            "epoch {epoch}: samples missing at the end"
        );
        let wrong: Vec<(usize, u32)> = counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c != 1)
            .map(|(i, &c)| (i, c))
            .take(10)
            .collect();
        assert!(wrong.is_empty(), "epoch {epoch}: (sample, times) {wrong:?}");
    }
}

#[test]
fn netns_three_nodes_2_to_3_survive_a_node_cut_off_the_network() {
    let test = "netns_three_nodes_2_to_3_survive_a_node_cut_off_the_network";
    let tmp = tempdir();
    let Some((o0, o2, o1, trace)) = three_nodes_lose_node_1(test, "2:3", tmp.path(), Loss::Cut)
    else {
        return;
    };
    let o0 = o0.ok("node 0 after node 1 was cut off");
    o2.ok("node 2 after node 1 was cut off");
    assert!(
        o0.stderr.contains("lost node 1")
            && o0.stderr.contains("no heartbeat for 5 s")
            && o0.stderr.contains("round 1 starts with 2 node(s) (0, 2)"),
        "{}",
        o0.stderr
    );
    // The cut node stops by itself, naming node 0.
    assert_eq!(o1.status.code(), Some(1), "{}", o1.stderr);
    assert!(o1.stderr.contains("lost node 0"), "{}", o1.stderr);
    assert_every_sample_once(&trace, 1200);
}

#[test]
fn netns_three_nodes_3_to_3_stop_when_one_is_lost_saying_why() {
    let test = "netns_three_nodes_3_to_3_stop_when_one_is_lost_saying_why";
    let tmp = tempdir();
    let Some((o0, o2, _)) = three_nodes_lose_one(test, "3", tmp.path()) else {
        return;
    };
    for (i, o) in [(0, o0), (2, o2)] {
        assert_eq!(o.status.code(), Some(1), "node {i}:\n{}", o.stderr);
        let err = o
            .stderr
            .lines()
            .find(|l| l.starts_with("mnist-launch: error:"))
            .unwrap_or_else(|| panic!("node {i}: no error line:\n{}", o.stderr));
        assert!(
            err.contains("lost node 1")
                && err.contains("2 node(s) remain and --nnodes needs at least 3: not restarting"),
            "node {i}: {err}"
        );
    }
}

/// The trace bookkeeping itself: a rolled-back step counts once, a repeat is seen.
#[test]
fn rolled_back_steps_are_not_counted_and_repeats_are() {
    let t = vec![
        (0, 0, 0, vec![0, 1]),
        (0, 1, 0, vec![2, 3]),
        (0, 2, 0, vec![4, 5]),
        (1, 1, 0, vec![2, 3]),
        (1, 2, 0, vec![4, 5]),
    ];
    assert_eq!(samples_per_epoch(&t)[&0], vec![1; 6]);
    let mut bad = t.clone();
    bad.push((1, 3, 0, vec![0]));
    assert_eq!(samples_per_epoch(&bad)[&0][0], 2);
}

/// Start `cmd` with its stderr going to `file` (read while it runs).
fn spawn_logged(mut cmd: Command, file: &Path) -> std::process::Child {
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(file).unwrap());
    cmd.spawn().unwrap()
}

/// Wait for `child` within [`DEADLINE`]; its exit code.
fn wait_child(child: &mut std::process::Child, what: &str) -> Option<i32> {
    let t0 = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code();
        }
        if t0.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} ran longer than {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills the children still running when a test fails.
struct KillOnDrop(Vec<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for c in &mut self.0 {
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

#[test]
fn netns_a_late_node_is_held_and_joins_at_the_next_round_growing_the_world() {
    let Some(ns) = Netns::create(
        "netns_a_late_node_is_held_and_joins_at_the_next_round_growing_the_world",
        3,
    ) else {
        return;
    };
    let tmp = tempdir();
    // 1200 images, batch 20: 30 steps per epoch on 2 ranks, 20 on 3; a checkpoint every 3
    // steps leaves a multiple of 3 × 40 images trained, so 3 ranks take the rest unpadded.
    let data = make_data(tmp.path(), 1200, 200);
    let trace = tmp.path().join("trace");
    std::fs::create_dir_all(&trace).unwrap();
    let extra = args![
        "--epochs",
        2,
        "--batch-size",
        20,
        "--checkpoint-every",
        3,
        "--max-restarts",
        1,
        "--rendezvous-timeout",
        8
    ];
    let dir = |i: usize| tmp.path().join(format!("n{i}"));
    let err = |i: usize| tmp.path().join(format!("stderr{i}.txt"));
    let node = |i: usize| {
        let mut c = in_ns(
            &ns,
            i,
            "2:3",
            29530,
            1,
            &train(&data, &dir(i), extra.clone()),
        );
        c.env(mnist_common::contract::ENV_SAMPLE_TRACE, &trace);
        if i == 1 {
            c.env(mnist_common::contract::ENV_FAULT, "1:0:slow=200ms");
        }
        c
    };
    let mut kids = KillOnDrop(Vec::new());
    kids.0.push(spawn_logged(node(0), &err(0)));
    kids.0.push(spawn_logged(node(1), &err(1)));
    // Round 0 starts with two nodes when the rendezvous timeout ends.
    wait_for_log(&dir(1).join("rank1.log"), "rank 1: epoch 1 step 1/30");
    kids.0.push(spawn_logged(node(2), &err(2)));
    wait_for_log(&err(0), "arrived while round 0 runs with 2 node(s)");
    // Past the checkpoint of step 6 (slowed rank 1 needs 6 s for the epoch).
    wait_for_log(&dir(1).join("rank1.log"), "rank 1: epoch 1 step 7/30");
    // A failure starts the next round; the held node joins it.
    let pid1 = worker_pid(&dir(1));
    assert!(Command::new("kill")
        .args(["-KILL", &pid1.to_string()])
        .status()
        .unwrap()
        .success());
    for (i, c) in kids.0.iter_mut().enumerate() {
        let code = wait_child(c, &format!("node {i}"));
        assert_eq!(
            code,
            Some(0),
            "node {i}:\n{}",
            std::fs::read_to_string(err(i)).unwrap_or_default()
        );
    }
    let e0 = std::fs::read_to_string(err(0)).unwrap();
    assert!(
        e0.contains("round 1 starts with 3 node(s) (0, 1, 2), 3 processes, resuming"),
        "{e0}"
    );
    let log0 = std::fs::read_to_string(dir(0).join("rank0.log")).unwrap();
    assert!(
        log0.contains("Elastic: world size 3 (was 2): per-rank batch 20, global batch 60 (was 40)"),
        "{log0}"
    );
    assert!(dir(2).join("rank2.log").exists());
    assert_every_sample_once(&trace, 1200);
}

#[test]
fn restarts_used_up_across_nodes_end_every_node_with_the_root_cause() {
    let tmp = tempdir();
    let data = make_data(tmp.path(), 640, 100);
    let extra = args![
        "--epochs",
        1,
        "--batch-size",
        32,
        "--checkpoint-every",
        2,
        "--max-restarts",
        1
    ];
    let dir = |i: usize| tmp.path().join(format!("n{i}"));
    let err = |i: usize| tmp.path().join(format!("stderr{i}.txt"));
    // Two nodes on loopback; node 0 takes any free port and prints it.
    let node = |i: usize, port: u16| {
        let mut c = Command::new(launcher_bin());
        c.args(train(&data, &dir(i), extra.clone())).args(args![
            "--nnodes",
            2,
            "--node-rank",
            i,
            "--master-port",
            port,
            "--nproc",
            1
        ]);
        for v in ["RANK", "WORLD_SIZE", "MNIST_RUN_ID", "MNIST_STORE"] {
            c.env_remove(v);
        }
        // Rank 1 exits with code 7 at step 3 of every round.
        c.env(mnist_common::contract::ENV_FAULT, "1:3:exit-code=7@*");
        c
    };
    let mut kids = KillOnDrop(vec![spawn_logged(node(0, 0), &err(0))]);
    wait_for_log(&err(0), "serving the rendezvous");
    let e0 = std::fs::read_to_string(err(0)).unwrap();
    let port: u16 = e0
        .split("on port ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {e0}"));
    kids.0.push(spawn_logged(node(1, port), &err(1)));
    for (i, c) in kids.0.iter_mut().enumerate() {
        assert_eq!(wait_child(c, &format!("node {i}")), Some(1), "node {i}");
    }
    let line = |i: usize| {
        let e = std::fs::read_to_string(err(i)).unwrap();
        e.lines()
            .find(|l| l.starts_with("mnist-launch: error:"))
            .unwrap_or_else(|| panic!("node {i}: no error line:\n{e}"))
            .to_string()
    };
    let (l0, l1) = (line(0), line(1));
    assert!(
        l1.contains("worker rank 1 (pid ")
            && l1.contains("exited with code 7")
            && l1.contains("after 1 restart(s): --max-restarts exhausted"),
        "{l1}"
    );
    assert!(
        l0.contains("node 1")
            && l0.contains("exited with code 7")
            && l0.contains("(--max-restarts 1 used up)"),
        "{l0}"
    );
    // One restart happened on both nodes; node 1's error file names the root cause.
    for i in 0..2 {
        let e = std::fs::read_to_string(err(i)).unwrap();
        assert_eq!(
            e.matches(&format!("node {i}: restart 1 of 1")).count(),
            1,
            "{e}"
        );
    }
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir(1).join("error.json")).unwrap()).unwrap();
    assert_eq!(
        (
            v["root_cause"]["rank"].as_u64(),
            v["root_cause"]["exit_code"].as_i64()
        ),
        (Some(1), Some(7)),
        "{v}"
    );
    assert_eq!(v["rounds"].as_array().map(Vec::len), Some(2), "{v}");
}

#[test]
fn a_hung_rank_on_node_1_is_found_by_its_peer_and_both_nodes_restart() {
    let tmp = tempdir();
    let data = make_data(tmp.path(), 640, 100);
    let extra = args![
        "--epochs",
        1,
        "--batch-size",
        32,
        "--checkpoint-every",
        2,
        "--max-restarts",
        1,
        "--timeout",
        10
    ];
    let dir = |i: usize| tmp.path().join(format!("n{i}"));
    let err = |i: usize| tmp.path().join(format!("stderr{i}.txt"));
    let node = |i: usize, port: u16| {
        let mut c = Command::new(launcher_bin());
        c.args(train(&data, &dir(i), extra.clone())).args(args![
            "--nnodes",
            2,
            "--node-rank",
            i,
            "--master-port",
            port,
            "--nproc",
            1
        ]);
        for v in ["RANK", "WORLD_SIZE", "MNIST_RUN_ID", "MNIST_STORE"] {
            c.env_remove(v);
        }
        // Rank 1 blocks forever at step 5 of round 0, its connections open.
        c.env(mnist_common::contract::ENV_FAULT, "1:5:hang");
        c
    };
    let mut kids = KillOnDrop(vec![spawn_logged(node(0, 0), &err(0))]);
    wait_for_log(&err(0), "serving the rendezvous");
    let e0 = std::fs::read_to_string(err(0)).unwrap();
    let port: u16 = e0
        .split("on port ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {e0}"));
    kids.0.push(spawn_logged(node(1, port), &err(1)));
    for (i, c) in kids.0.iter_mut().enumerate() {
        let code = wait_child(c, &format!("node {i}"));
        assert_eq!(
            code,
            Some(0),
            "node {i}:\n{}",
            std::fs::read_to_string(err(i)).unwrap_or_default()
        );
    }
    for i in 0..2 {
        let e = std::fs::read_to_string(err(i)).unwrap();
        let l = e
            .lines()
            .find(|l| l.contains(&format!("node {i}: restart 1 of 1")))
            .unwrap_or_else(|| panic!("node {i}: no restart line:\n{e}"));
        // Rank 0 timed out in a collective waiting for rank 1, and says so on both nodes.
        assert!(
            l.contains("rank 0 reported: ")
                && l.contains("timed out after ")
                && l.contains("waiting for rank(s) [1]"),
            "{l}"
        );
    }
    let m = metrics(&dir(0));
    assert_eq!(m[0]["restarts"].as_u64(), Some(1), "{m:?}");
}
