//! Multi-process tests: real groups of `comm-peer` processes over both transports, checked
//! against an independent oracle (the same seeded inputs summed here in f64), plus the
//! failure paths: mismatch, a dying peer, a hung peer, abort, rendezvous timeouts, a stale
//! rendezvous file, and nothing left behind in /dev/shm.

use half::{bf16, f16};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Same generator as `comm-peer`.
fn values(rank: usize, case: usize, n: usize) -> Vec<f32> {
    let mut s = (rank as u64) * 1_000_003 + (case as u64) * 7919 + 1;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

struct Group {
    dir: PathBuf,
    rdv: PathBuf,
    run_id: String,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// How long a group may take before the test gives up on it: generous for a loaded 2-core
/// machine, and longer than comm-peer's default 30 s collective timeout, so that a failure
/// detected by the wrong mechanism (the timeout instead of liveness) shows in its message
/// rather than as a kill. Tests check what failed and how, never how fast.
const DEADLINE: Duration = Duration::from_secs(90);

impl Group {
    fn new(tag: &str) -> Group {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let run_id = format!("t{}-{n}-{tag}", std::process::id());
        let dir = std::env::temp_dir().join(format!("comm-test-{run_id}"));
        std::fs::create_dir_all(&dir).unwrap();
        Group {
            rdv: dir.join("rendezvous"),
            dir,
            run_id,
        }
    }

    fn spawn(&self, rank: usize, world: usize, scenario: &str, extra: &[&str]) -> (Child, Instant) {
        self.spawn_with(rank, world, scenario, extra, &[])
    }

    fn spawn_with(
        &self,
        rank: usize,
        world: usize,
        scenario: &str,
        extra: &[&str],
        env: &[(&str, String)],
    ) -> (Child, Instant) {
        let child = Command::new(env!("CARGO_BIN_EXE_comm-peer"))
            .args([
                "--rank",
                &rank.to_string(),
                "--world-size",
                &world.to_string(),
            ])
            .args([
                "--rendezvous",
                self.rdv.to_str().unwrap(),
                "--run-id",
                &self.run_id,
            ])
            .args(["--scenario", scenario, "--out", self.dir.to_str().unwrap()])
            .args(extra)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        (child, Instant::now())
    }

    /// Wait for the ranks in `need` (at most [`DEADLINE`]), then kill the others.
    fn wait(&self, mut kids: Vec<(Child, Instant)>, need: &[usize]) -> Vec<Out> {
        let deadline = Instant::now() + DEADLINE;
        let mut done = vec![false; kids.len()];
        while Instant::now() < deadline && need.iter().any(|&i| !done[i]) {
            for (i, (c, _)) in kids.iter_mut().enumerate() {
                if !done[i] && c.try_wait().unwrap().is_some() {
                    done[i] = true;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        kids.into_iter()
            .map(|(mut c, _)| {
                let _ = c.kill();
                let o = c.wait_with_output().unwrap();
                Out {
                    code: o.status.code(),
                    stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
                    stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
                }
            })
            .collect()
    }

    fn run(&self, world: usize, scenario: &str, extra: &[&str], need: &[usize]) -> Vec<Out> {
        let kids = (0..world)
            .map(|r| self.spawn(r, world, scenario, extra))
            .collect();
        self.wait(kids, need)
    }

    /// Run with ranks on fake nodes: `nodes[r]` is rank r's node rank (contiguous, as the
    /// launcher assigns them), passed as the launcher does (GROUP_RANK, MNIST_NNODES,
    /// LOCAL_WORLD_SIZE are read by comm-peer's flags).
    fn run_nodes(
        &self,
        nodes: &[usize],
        scenario: &str,
        extra: &[&str],
        need: &[usize],
    ) -> Vec<Out> {
        let world = nodes.len();
        let nnodes = nodes.iter().max().unwrap() + 1;
        let kids = (0..world)
            .map(|r| {
                let local = nodes.iter().filter(|&&k| k == nodes[r]).count();
                let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
                args.extend([
                    "--node-rank".into(),
                    nodes[r].to_string(),
                    "--nnodes".into(),
                    nnodes.to_string(),
                    "--local-world-size".into(),
                    local.to_string(),
                ]);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                self.spawn(r, world, scenario, &args)
            })
            .collect();
        self.wait(kids, need)
    }

    fn assert_clean(&self) {
        assert!(
            !self.rdv.exists(),
            "rendezvous file {} left behind",
            self.rdv.display()
        );
        let shm = Path::new("/dev/shm").join(mnist_comm::shm_name_for(&self.run_id));
        assert!(!shm.exists(), "{} left behind", shm.display());
        for k in 0..8 {
            let name = mnist_common::contract::shm_node_name_for(&self.run_id, k);
            let node = Path::new("/dev/shm").join(name);
            assert!(!node.exists(), "{} left behind", node.display());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn check_close(got: f32, exp: f64, scale: f64, rel: f64, what: &str) {
    let err = (got as f64 - exp).abs();
    assert!(
        err <= rel * scale + 1e-30,
        "{what}: got {got}, expected {exp} (error {err:e}, allowed {:e})",
        rel * scale
    );
}

fn check_all(world: usize, transport: &str) {
    check_all_on(&vec![0; world], transport);
}

/// The "all" scenario on ranks placed on fake nodes `nodes`, checked against the oracle.
fn check_all_on(nodes: &[usize], transport: &str) {
    let world = nodes.len();
    let hier = nodes.iter().any(|&k| k != 0);
    // Members of the TCP ring: the node leaders, or every rank when `tcp` forces the ring.
    let ring = if transport == "tcp" {
        world
    } else {
        nodes.iter().max().unwrap() + 1
    };
    // Roundings to a half-precision type on the way: one per ring step that adds (the ring
    // sends partial sums in the element type, as NCCL and gloo do: m members, m − 1), one in
    // shared memory when a node holds several ranks, at least one.
    let several_local = (0..ring).any(|k| nodes.iter().filter(|&&n| n == k).count() > 1);
    let roundings = ring.saturating_sub(1).max(1) + usize::from(hier && several_local);
    let g = Group::new(&format!("all-{transport}-{world}"));
    let need = (0..world).collect::<Vec<_>>();
    let args = ["--transport", transport];
    let outs = if hier {
        g.run_nodes(nodes, "all", &args, &need)
    } else {
        g.run(world, "all", &args, &need)
    };
    for (r, o) in outs.iter().enumerate() {
        assert_eq!(
            o.code,
            Some(0),
            "rank {r} failed:\n{}\n{}",
            o.stdout,
            o.stderr
        );
        assert!(
            o.stdout.contains("PAYLOAD payload-from-rank-0"),
            "rank {r}: {}",
            o.stdout
        );
    }
    let mut cases = 0;
    for line in outs[0].stdout.lines().filter(|l| l.starts_with("CASE ")) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (i, dt, avg, n): (usize, &str, bool, usize) = (
            f[1].parse().unwrap(),
            f[2],
            f[3] == "avg",
            f[4].parse().unwrap(),
        );
        let quant = |v: f32| match dt {
            "f16" => f16::from_f32(v).to_f32(),
            "bf16" => bf16::from_f32(v).to_f32(),
            _ => v,
        };
        let inputs: Vec<Vec<f32>> = (0..world)
            .map(|r| values(r, i, n).into_iter().map(quant).collect())
            .collect();
        let first = std::fs::read(g.dir.join(format!("r0-c{i}.bin"))).unwrap();
        for r in 0..world {
            let bytes = std::fs::read(g.dir.join(format!("r{r}-c{i}.bin"))).unwrap();
            assert_eq!(bytes, first, "case {i}: rank {r} differs from rank 0");
        }
        let got: Vec<f32> = match dt {
            "f32" => first
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            "f16" => first
                .chunks_exact(2)
                .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
            _ => first
                .chunks_exact(2)
                .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
        };
        assert_eq!(got.len(), n, "case {i}: length");
        let div = if avg { world as f64 } else { 1.0 };
        for (k, gv) in got.iter().enumerate() {
            let exp: f64 = inputs.iter().map(|v| v[k] as f64).sum::<f64>() / div;
            let abs: f64 = inputs.iter().map(|v| (v[k] as f64).abs()).sum::<f64>() / div;
            let what = format!("case {i} ({dt}, avg={avg}, n={n}) element {k}");
            // Intermediate sums rounded to the element type make half-precision errors scale
            // with the inputs' sizes (no intermediate sum exceeds `abs`), not only the
            // result's; each rounding is at most half a unit in the last place (2^-11 for
            // f16, 2^-8 for bf16), and the bound allows two of them at least.
            let half_scale = if roundings > 1 { abs } else { exp.abs() };
            let units = roundings.max(2) as f64;
            match dt {
                "f32" => check_close(*gv, exp, abs, 1e-6, &what),
                "f16" => check_close(*gv, exp, half_scale.max(6e-5), units / 2048.0, &what),
                _ => check_close(*gv, exp, half_scale.max(1e-30), units / 256.0, &what),
            }
        }
        cases += 1;
    }
    assert_eq!(
        cases, 10,
        "expected 10 all-reduce cases:\n{}",
        outs[0].stdout
    );
    let root = 1 % world;
    for (i, n) in [0usize, 5, 9 << 20].iter().enumerate() {
        let exp: Vec<u8> = (0..*n).map(|k| (k * 31 + i) as u8).collect();
        for r in 0..world {
            assert!(
                std::fs::read(g.dir.join(format!("r{r}-b{i}.bin"))).unwrap() == exp,
                "broadcast {i} from {root} wrong on rank {r}"
            );
        }
    }
    let exp: Vec<u8> = (0..world)
        .flat_map(|r| (0..r * 777 + if r == 0 { 4_500_000 } else { 1 }).map(move |k| (k + r) as u8))
        .collect();
    for r in 0..world {
        assert!(
            std::fs::read(g.dir.join(format!("r{r}-g.bin"))).unwrap() == exp,
            "all_gather wrong on rank {r}"
        );
    }
    g.assert_clean();
}

#[test]
fn shm_two_ranks_match_the_oracle() {
    check_all(2, "shm");
}

#[test]
fn shm_three_ranks_match_the_oracle() {
    check_all(3, "auto");
}

/// Hierarchical: shared memory inside each fake node, the TCP ring between leaders; uneven
/// nodes, 2-3 nodes, 3-6 ranks. Same oracle as the single-node runs.
#[test]
fn hierarchical_layouts_match_the_oracle() {
    for nodes in [&[0, 0, 1, 1][..], &[0, 1, 1], &[0, 0, 0, 1, 2, 2]] {
        check_all_on(nodes, "auto");
    }
}

/// The ring alone between 2..8 single-rank nodes (what `--transport tcp` forces).
#[test]
fn ring_of_up_to_eight_nodes_matches_the_oracle() {
    for world in [5, 8] {
        check_all(world, "tcp");
    }
}

/// A killed non-leader (rank 1 on node 0) and a killed leader (rank 2, leader of node 1) are
/// detected by liveness, not the timeout, and named on every other rank; the ranks across
/// the ring also get the leader's address.
#[test]
fn hierarchical_lost_rank_is_named_everywhere() {
    for (victim, others) in [(1usize, [0usize, 2, 3]), (2, [0, 1, 3])] {
        let g = Group::new(&format!("hier-die-{victim}"));
        let v = victim.to_string();
        let outs = g.run_nodes(&[0, 0, 1, 1], "die", &["--victim", &v], &others);
        for r in others {
            let o = &outs[r];
            assert_eq!(o.code, Some(1), "rank {r}:\n{}\n{}", o.stdout, o.stderr);
            assert!(
                o.stdout.contains(&format!("peer rank {victim}"))
                    && !o.stdout.contains("timed out"),
                "rank {r} (victim {victim}):\n{}",
                o.stdout
            );
        }
        if victim == 2 {
            assert!(
                outs[0].stdout.contains("(127.0.0.1:"),
                "address named:\n{}",
                outs[0].stdout
            );
        }
        g.assert_clean();
    }
}

/// A hung non-leader (rank 1) is timed out by its leader, which tells the ring; a hung leader
/// (rank 2) is timed out by its ring neighbour (naming its address) and by its own node's rank,
/// which waits longer than the ring so that a leader can say why first.
#[test]
fn hierarchical_hung_rank_times_out_naming_it() {
    for (victim, others) in [(1usize, [0usize, 2, 3]), (2, [0, 1, 3])] {
        let g = Group::new(&format!("hier-hang-{victim}"));
        let v = victim.to_string();
        let outs = g.run_nodes(
            &[0, 0, 1, 1],
            "hang",
            &["--victim", &v, "--timeout", "2"],
            &others,
        );
        for r in others {
            let o = &outs[r];
            assert_eq!(o.code, Some(1), "rank {r}:\n{}\n{}", o.stdout, o.stderr);
            assert!(
                o.stdout.contains("timed out") && o.stdout.contains(&format!("[{victim}]")),
                "rank {r} (victim {victim}):\n{}",
                o.stdout
            );
        }
        g.assert_clean();
    }
}

#[test]
fn tcp_two_ranks_match_the_oracle() {
    check_all(2, "tcp");
}

#[test]
fn tcp_three_ranks_match_the_oracle() {
    check_all(3, "tcp");
}

/// Run a failure scenario on 3 ranks; every rank in `need` must fail with all of `words`
/// (which name the mechanism: "peer rank 1" only comes from liveness or abort detection, a
/// timeout says "timed out"). Returns the ranks' output.
fn check_failure(
    scenario: &str,
    transport: &str,
    extra: &[&str],
    need: &[usize],
    words: &[&str],
) -> Vec<Out> {
    let g = Group::new(&format!("{scenario}-{transport}"));
    let mut args = vec!["--transport", transport];
    args.extend_from_slice(extra);
    let outs = g.run(3, scenario, &args, need);
    for &r in need {
        let o = &outs[r];
        assert_eq!(
            o.code,
            Some(1),
            "rank {r} should fail:\n{}\n{}",
            o.stdout,
            o.stderr
        );
        for w in words {
            assert!(
                o.stdout.contains(w),
                "rank {r} error lacks {w:?}:\n{}",
                o.stdout
            );
        }
    }
    g.assert_clean();
    outs
}

#[test]
fn mismatch_fails_on_every_rank() {
    for t in ["shm", "tcp"] {
        check_failure(
            "mismatch",
            t,
            &[],
            &[0, 1, 2],
            &["mismatch", "rank 1: #2 all_reduce(11 x f32"],
        );
    }
}

#[test]
fn dead_peer_is_detected_and_named() {
    for t in ["shm", "tcp"] {
        check_failure("die", t, &[], &[0, 2], &["peer rank 1"]);
    }
}

#[test]
fn hung_peer_times_out_naming_it() {
    for t in ["shm", "tcp"] {
        let outs = check_failure(
            "hang",
            t,
            &["--timeout", "2"],
            &[0, 2],
            &["timed out", "[1]"],
        );
        // The error reports how long the rank waited: --timeout 2 applied, not the default
        // 30 s (a bound on what the rank says, not on how fast this machine is).
        for r in [0, 2] {
            let waited: f64 = outs[r]
                .stdout
                .split("timed out after ")
                .nth(1)
                .and_then(|s| s.split('s').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("rank {r}: no wait time in:\n{}", outs[r].stdout));
            assert!(
                (2.0..30.0).contains(&waited),
                "rank {r} ({t}) waited {waited} s with --timeout 2"
            );
        }
    }
}

#[test]
fn abort_reaches_the_peers() {
    for t in ["shm", "tcp"] {
        check_failure(
            "abort",
            t,
            &[],
            &[0, 2],
            &["peer rank 1", "test abort from rank 1"],
        );
    }
}

#[test]
fn rendezvous_timeouts_name_the_missing_ranks() {
    let g = Group::new("rdv-guest");
    let kid = g.spawn(1, 2, "all", &["--rendezvous-timeout", "1"]);
    let o = &g.wait(vec![kid], &[0])[0];
    assert_eq!(o.code, Some(1));
    assert!(
        o.stdout
            .contains("rank 0 never published the rendezvous file"),
        "{}",
        o.stdout
    );
    assert!(o.stdout.contains(g.rdv.to_str().unwrap()), "{}", o.stdout);
    g.assert_clean();

    let g = Group::new("rdv-host");
    let kid = g.spawn(0, 3, "all", &["--rendezvous-timeout", "1"]);
    let o = &g.wait(vec![kid], &[0])[0];
    assert_eq!(o.code, Some(1));
    assert!(
        o.stdout.contains("rank(s) [1, 2] did not join within 1 s"),
        "{}",
        o.stdout
    );
    g.assert_clean();
}

#[test]
fn stale_rendezvous_file_is_ignored() {
    use mnist_common::rendezvous::{RendezvousRecord, FORMAT_VERSION};
    let g = Group::new("stale");
    let stale = RendezvousRecord {
        format_version: FORMAT_VERSION,
        run_id: "some-older-run".into(),
        world_size: 2,
        host: "elsewhere".into(),
        addr: "127.0.0.1:9".into(),
        pid: 1,
        shm_name: None,
        payload: b"stale payload".to_vec(),
    };
    stale.publish(&g.rdv).unwrap();
    let (mut guest, started) = g.spawn(1, 2, "mismatch", &[]);
    // The host starts only once the guest has seen (and ignored) the stale file: wait for
    // that line on its stderr, read on a thread that keeps the rest for the checks below.
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = guest.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("ignoring stale rendezvous file") => break,
            Ok(_) => {}
            Err(e) => {
                let _ = guest.kill();
                panic!("the guest never reported the stale file ({e})");
            }
        }
    }
    let host = g.spawn(0, 2, "mismatch", &[]);
    let outs = g.wait(vec![host, (guest, started)], &[0, 1]);
    let guest_stderr = reader.join().unwrap();
    assert!(
        guest_stderr.contains("some-older-run"),
        "the stale file's run id is named: {guest_stderr}"
    );
    assert!(
        outs[1].stdout.contains("PAYLOAD payload-from-rank-0"),
        "{}",
        outs[1].stdout
    );
    assert!(outs[1].stdout.contains("mismatch"), "{}", outs[1].stdout);
    g.assert_clean();
}
