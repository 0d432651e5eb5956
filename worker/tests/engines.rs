//! The worker started by the engines people run, for real, each compared with the same job
//! under `mnist-launch`: torchrun (always, from the project's Python: one node, and two agents
//! meeting through c10d on loopback), Open MPI's `mpirun` and Slurm (when installed; Slurm
//! also needs root, for the two-node cluster of this machine the test starts with
//! `scripts/engines/slurm-cluster.sh`: `srun --ntasks 2 mnist-worker`, `srun --nodes 2
//! --ntasks-per-node 1 mnist-launch` and `sbatch examples/slurm/mnist.sbatch`). A missing
//! engine is a visible skip (mnist-testkit) naming the program. Every run asserts the
//! worker's first line (the environment it detected), a finished epoch and parameters equal
//! to `mnist-launch --nproc 2`'s. Small synthetic data, one epoch: a few seconds a run.

mod common;

use common::*;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Flags of every run: the data, one epoch, CPU, one thread per rank.
fn train_args(data: &Path, out: &Path) -> Vec<String> {
    with_base(args![
        "--data",
        data.display(),
        "--path",
        out.display(),
        "--epochs",
        1,
        "--batch-size",
        32,
        "--backend",
        "cpu"
    ])
}

struct Job {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    dir: PathBuf,
}

fn job() -> Job {
    let tmp = tempdir();
    let data = make_data(tmp.path(), 640, 200);
    let dir = tmp.path().to_path_buf();
    Job {
        _tmp: tmp,
        data,
        dir,
    }
}

/// The same training under `mnist-launch --nproc 2` (run once per test binary, on the same
/// generated data): the reference every engine must match.
fn reference() -> &'static [f32] {
    static PARAMS: OnceLock<Vec<f32>> = OnceLock::new();
    PARAMS.get_or_init(|| {
        let j = job();
        let out = j.dir.join("ref");
        let mut a = train_args(&j.data, &out);
        a.extend(args!["--nproc", 2]);
        run(&launcher_bin(), a).ok("mnist-launch --nproc 2");
        checkpoint_params(&out)
    })
}

/// Every rank's environment line names `engine` and its rank of `world` and is that rank's
/// first log line (in `<out>/rank<r>.log` when `mnist-launch` started the workers, else the
/// engine's merged output, whose first log line must be one of them); rank 0 finished its
/// epoch and tested; the parameters equal the reference's.
fn check(what: &str, o: &Output, out: &Path, engine: &str, world: usize) {
    let all = format!("{}\n{}", o.stdout, o.stderr);
    let env_line = |l: &str| l.contains(&format!("| Worker environment: {engine}"));
    for r in 0..world {
        let line = format!("-> rank {r} of {world},");
        let rank_log = std::fs::read_to_string(out.join(format!("rank{r}.log"))).ok();
        match rank_log {
            Some(log) => {
                let first = log.lines().find(|l| has_log_prefix(l)).unwrap_or("");
                assert!(
                    env_line(first) && first.contains(&line),
                    "{what}: rank{r}.log's first log line is not its environment line naming {engine:?}: {first:?}"
                );
            }
            None => assert!(
                all.lines().any(|l| env_line(l) && l.contains(&line)),
                "{what}: no environment line for rank {r} naming {engine:?}:\n{all}"
            ),
        }
    }
    let first = o.stdout.lines().find(|l| has_log_prefix(l)).unwrap_or("");
    assert!(
        env_line(first),
        "{what}: the first log line is not the environment line: {first:?}"
    );
    assert!(
        o.stdout.contains("Train Epoch: 1 done"),
        "{what}: rank 0 did not finish its epoch:\n{all}"
    );
    let acc = o
        .stdout
        .lines()
        .find(|l| l.contains("| Test set:"))
        .unwrap_or_else(|| panic!("{what}: no test line:\n{all}"));
    let (d, m) = max_diff(&checkpoint_params(out), reference());
    assert!(
        d <= 1e-6 * m.max(1.0),
        "{what}: parameters differ from mnist-launch's by {d} (max |p| {m})"
    );
    let env = o.stdout.lines().find(|l| env_line(l)).unwrap_or("");
    eprintln!(
        "{what}: ok in {:.1} s, max |diff| vs mnist-launch {d:e}\n  first line: {env}\n  {acc}",
        o.secs
    );
}

/// `examples/torchrun.sh` with the project's Python as torchrun and the tests' worker.
fn torchrun_example(py: &Path) -> Command {
    let mut cmd = Command::new(mnist_testkit::repo_root().join("examples/torchrun.sh"));
    cmd.env(
        "TORCHRUN",
        format!("{} -m torch.distributed.run", py.display()),
    )
    .env("MNIST_WORKER", worker_bin());
    cmd
}

/// `examples/torchrun.sh`: `torchrun --nproc-per-node 2 --no-python mnist-worker …`.
#[test]
fn torchrun_one_node_uses_its_agent_store() {
    let Some(py) = python("torchrun_one_node_uses_its_agent_store") else {
        return;
    };
    let j = job();
    let out = j.dir.join("torchrun");
    let mut cmd = torchrun_example(&py);
    cmd.env("NPROC", "2")
        .env("MASTER_PORT", free_port().to_string())
        .args(train_args(&j.data, &out));
    let o = spawn(cmd)
        .wait(DEADLINE)
        .ok("examples/torchrun.sh (torchrun --nproc-per-node 2)");
    assert!(o.stdout.contains("torchrun's TCPStore"), "{}", o.stdout);
    check("torchrun --nproc-per-node 2", &o, &out, "torchrun", 2);
}

/// `NNODES=2 examples/torchrun.sh` twice: two torchrun agents meeting through c10d on
/// loopback, one worker each.
#[test]
fn torchrun_two_agents_meet_through_c10d() {
    let Some(py) = python("torchrun_two_agents_meet_through_c10d") else {
        return;
    };
    let j = job();
    let port = free_port();
    let agent = |n: usize| {
        let mut cmd = torchrun_example(&py);
        cmd.env("NNODES", "2")
            .env("NPROC", "1")
            .env("MASTER", format!("127.0.0.1:{port}"))
            .env("RDZV_ID", format!("engines-{}", std::process::id()))
            .args(train_args(&j.data, &j.dir.join(format!("agent{n}"))));
        spawn(cmd)
    };
    let (a0, a1) = (agent(0), agent(1));
    let (o0, o1) = (a0.wait(DEADLINE), a1.wait(DEADLINE));
    let (o0, o1) = (o0.ok("torchrun agent 0"), o1.ok("torchrun agent 1"));
    // Which agent got group rank 0 is torchrun's choice; rank 0 tests the model.
    let (rank0, out) = if o0.stdout.contains("| Test set:") {
        (&o0, j.dir.join("agent0"))
    } else {
        (&o1, j.dir.join("agent1"))
    };
    let both = Output {
        status: rank0.status,
        stdout: format!("{}\n{}", o0.stdout, o1.stdout),
        stderr: format!("{}\n{}", o0.stderr, o1.stderr),
        secs: o0.secs.max(o1.secs),
        ended: o0.ended.max(o1.ended),
    };
    assert!(both.stdout.contains("node 1 of 2"), "{}", both.stdout);
    check("torchrun c10d, 2 agents", &both, &out, "torchrun", 2);
}

#[test]
fn mpirun_two_ranks() {
    let Some(mpirun) = mnist_testkit::program("mpirun_two_ranks", "mpirun") else {
        return;
    };
    let j = job();
    let out = j.dir.join("mpi");
    let mut cmd = Command::new(mpirun);
    cmd.args(["--allow-run-as-root", "--oversubscribe", "-np", "2"])
        .arg(worker_bin())
        .args(train_args(&j.data, &out));
    let o = spawn(cmd).wait(DEADLINE).ok("mpirun -np 2");
    assert!(o.stdout.contains("20000 + FNV-1a(ompi-"), "{}", o.stdout);
    check("mpirun", &o, &out, "Open MPI", 2);
}

/// A Slurm cluster of this machine (two nodes, 127.0.0.1 and 127.0.0.2, two CPUs each),
/// stopped (by the script, by pid) when dropped.
struct Slurm {
    dir: PathBuf,
    conf: String,
}

impl Slurm {
    fn start(test: &str, dir: &Path) -> Option<Slurm> {
        for p in ["srun", "sbatch", "sinfo", "slurmctld", "slurmd", "munged"] {
            // The daemons live in /usr/sbin, which a user's PATH may lack.
            let sbin = Path::new("/usr/sbin").join(p);
            if mnist_testkit::find_on_path(p).is_none() && !sbin.is_file() {
                mnist_testkit::skip(test, p, &format!("`{p}` not found on PATH or in /usr/sbin"));
                return None;
            }
        }
        if !mnist_testkit::root(test, "the Slurm cluster's slurmd runs jobs as root") {
            return None;
        }
        let script = mnist_testkit::repo_root().join("scripts/engines/slurm-cluster.sh");
        let dir = dir.join("slurm");
        // Node i listens on the slurmd port + i - 1: pick a base whose neighbour is free too.
        let slurmd_port = loop {
            let p = free_port();
            if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
                break p;
            }
        };
        let o = spawn({
            let mut c = Command::new(&script);
            c.args(["start"])
                .arg(&dir)
                .args(["2", "2"])
                .env("SLURM_CHECK_CTLD_PORT", free_port().to_string())
                .env("SLURM_CHECK_SLURMD_PORT", slurmd_port.to_string());
            c
        })
        .wait(DEADLINE);
        let s = Slurm {
            conf: dir.join("slurm.conf").display().to_string(),
            dir,
        };
        let o = o.ok("slurm-cluster.sh start");
        assert!(o.stdout.contains("SLURM_CONF="), "{}", o.stdout);
        Some(s)
    }

    /// `program` with this cluster's configuration.
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf);
        for v in [
            "SLURM_JOB_ID",
            "SLURM_JOBID",
            "SLURM_STEP_ID",
            "SLURM_PROCID",
        ] {
            c.env_remove(v);
        }
        c
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        let script = mnist_testkit::repo_root().join("scripts/engines/slurm-cluster.sh");
        let _ = Command::new(script).arg("stop").arg(&self.dir).status();
    }
}

/// One cluster, three ways users start a job on it: `srun` starting the workers, `srun`
/// starting one `mnist-launch` per node (node count, node rank and master from Slurm, no
/// node flag), and the example batch script (two nodes, `NPROC=1`).
#[test]
fn slurm_srun_workers_launchers_and_sbatch_example() {
    let test = "slurm_srun_workers_launchers_and_sbatch_example";
    let j = job();
    let Some(slurm) = Slurm::start(test, &j.dir) else {
        return;
    };

    let out = j.dir.join("srun");
    let mut cmd = slurm.command("srun");
    cmd.args(["--ntasks", "2", "--time", "5"])
        .arg(worker_bin())
        .args(train_args(&j.data, &out));
    let o = spawn(cmd).wait(DEADLINE).ok("srun --ntasks 2 mnist-worker");
    assert!(o.stdout.contains("master 127.0.0.1:"), "{}", o.stdout);
    check("srun --ntasks 2 mnist-worker", &o, &out, "Slurm", 2);

    let out = j.dir.join("srun-launch");
    let mut cmd = slurm.command("srun");
    cmd.args(["--nodes", "2", "--ntasks-per-node", "1", "--time", "5"])
        .arg(launcher_bin())
        .args(["--nproc", "1"])
        .args(train_args(&j.data, &out));
    let o = spawn(cmd)
        .wait(DEADLINE)
        .ok("srun --nodes 2 --ntasks-per-node 1 mnist-launch --nproc 1");
    for n in 0..2 {
        let note = format!("Slurm: node {n} of 2, rendezvous at 127.0.0.1:");
        assert!(o.stderr.contains(&note), "no {note:?}:\n{}", o.stderr);
    }
    check(
        "srun --nodes 2 --ntasks-per-node 1 mnist-launch --nproc 1",
        &o,
        &out,
        "mnist-launch",
        2,
    );

    let out = j.dir.join("sbatch");
    let script = mnist_testkit::repo_root().join("examples/slurm/mnist.sbatch");
    let mut cmd = slurm.command("sbatch");
    cmd.current_dir(&j.dir)
        .env("NPROC", "1")
        .env("MNIST_BIN", worker_bin().parent().unwrap())
        .args(["--wait", "--output", "sbatch-%j.out"])
        .arg(&script)
        .args(train_args(&j.data, &out));
    let o = spawn(cmd).wait(DEADLINE).ok("sbatch --wait mnist.sbatch");
    let job_out = std::fs::read_dir(&j.dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("sbatch-")
        })
        .unwrap_or_else(|| panic!("sbatch wrote no output file:\n{}\n{}", o.stdout, o.stderr));
    let text = std::fs::read_to_string(&job_out).unwrap();
    assert!(
        text.contains("on 2 node(s): 127.0.0.[1-2]"),
        "{}:\n{text}",
        job_out.display()
    );
    // The batch output holds the launchers' stderr and the workers' stdout together.
    let job = Output {
        status: o.status,
        stdout: text
            .lines()
            .filter(|l| has_log_prefix(l))
            .collect::<Vec<_>>()
            .join("\n"),
        stderr: text.clone(),
        secs: o.secs,
        ended: o.ended,
    };
    check(
        "sbatch examples/slurm/mnist.sbatch",
        &job,
        &out,
        "mnist-launch",
        2,
    );
}

/// The variables a Kubernetes pod gets (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT; one
/// process per pod), for two "pods" with their own network stacks (mnist-testkit's network
/// namespaces): rank 0 must hand the others the master's address for the group's connections,
/// not what its host name resolves to (127.0.0.1 in many containers, and here).
#[test]
fn env_vars_across_two_network_namespaces() {
    let Some(ns) = mnist_testkit::netns::Netns::create("env_vars_across_two_network_namespaces", 2)
    else {
        return;
    };
    let j = job();
    let master = mnist_testkit::netns::Netns::addr_of(0);
    let pod = |rank: usize| {
        // Through env(1): spawn() clears RANK and WORLD_SIZE of the test's own environment.
        let mut c = ns.command(rank, "env");
        c.args(args![
            format!("RANK={rank}"),
            "WORLD_SIZE=2",
            format!("MASTER_ADDR={master}"),
            "MASTER_PORT=29500",
            worker_bin().display()
        ])
        .args(train_args(&j.data, &j.dir.join(format!("pod{rank}"))));
        spawn(c)
    };
    let (p0, p1) = (pod(0), pod(1));
    let (o0, o1) = (p0.wait(DEADLINE), p1.wait(DEADLINE));
    let (o0, o1) = (o0.ok("pod 0"), o1.ok("pod 1"));
    assert!(
        o0.stdout.contains(&format!(
            "rank 0 takes the address the others reach the master at, {master}"
        )),
        "{}",
        o0.stdout
    );
    let both = Output {
        status: o0.status,
        stdout: format!("{}\n{}", o0.stdout, o1.stdout),
        stderr: format!("{}\n{}", o0.stderr, o1.stderr),
        secs: o0.secs.max(o1.secs),
        ended: o0.ended.max(o1.ended),
    };
    check(
        "env:// pods in two network namespaces",
        &both,
        &j.dir.join("pod0"),
        "env:// variables",
        2,
    );
}
