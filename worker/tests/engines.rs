//! The worker started by the engines people run, for real, each compared with the same job
//! under `mnist-launch`: torchrun (always, from the project's Python: one node, and two agents
//! meeting through c10d on loopback), Open MPI's `mpirun` and Slurm's `srun` (when installed;
//! Slurm also needs root, for the cluster the test starts with
//! `scripts/engines/slurm-cluster.sh`). A missing engine is a visible skip (mnist-testkit).
//! Small synthetic data, one epoch: each run takes a few seconds.

mod common;

use common::*;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

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

/// A port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

/// The same training under `mnist-launch --nproc 2`: the reference every engine must match.
fn reference(j: &Job) -> Vec<f32> {
    let out = j.dir.join("ref");
    let mut a = train_args(&j.data, &out);
    a.extend(args!["--nproc", 2]);
    run(&launcher_bin(), a).ok("mnist-launch --nproc 2");
    checkpoint_params(&out)
}

/// Every rank's first line says it found `engine` and its rank of `world`; rank 0 finished
/// training; the parameters equal the reference's.
fn check(what: &str, o: &Output, out: &Path, engine: &str, world: usize, want: &[f32]) {
    let all = format!("{}\n{}", o.stdout, o.stderr);
    for r in 0..world {
        let line = format!("rank {r} of {world},");
        assert!(
            all.lines()
                .any(|l| l.contains(&format!("Worker environment: {engine}")) && l.contains(&line)),
            "{what}: no environment line for rank {r} naming {engine:?}:\n{all}"
        );
    }
    assert!(
        o.stdout.contains("Final best Test Accuracy"),
        "{what}: rank 0 did not finish:\n{all}"
    );
    let (d, m) = max_diff(&checkpoint_params(out), want);
    assert!(
        d <= 1e-6 * m.max(1.0),
        "{what}: parameters differ from mnist-launch's by {d} (max |p| {m})"
    );
    eprintln!("{what}: ok in {:.1} s, max |diff| vs mnist-launch {d:e}", o.secs);
}

#[test]
fn torchrun_one_node_uses_its_agent_store() {
    let Some(py) = python("torchrun_one_node_uses_its_agent_store") else {
        return;
    };
    let j = job();
    let want = reference(&j);
    let out = j.dir.join("torchrun");
    let mut cmd = Command::new(py);
    cmd.args(args![
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        2,
        "--master-port",
        free_port(),
        "--no-python",
        worker_bin().display()
    ])
    .args(train_args(&j.data, &out));
    let o = spawn(cmd).wait(DEADLINE).ok("torchrun --nproc-per-node 2");
    assert!(o.stdout.contains("torchrun's TCPStore"), "{}", o.stdout);
    check("torchrun", &o, &out, "torchrun", 2, &want);
}

#[test]
fn torchrun_two_agents_meet_through_c10d() {
    let Some(py) = python("torchrun_two_agents_meet_through_c10d") else {
        return;
    };
    let j = job();
    let want = reference(&j);
    let port = free_port();
    let agent = |n: usize| {
        let mut cmd = Command::new(&py);
        cmd.args(args![
            "-m",
            "torch.distributed.run",
            "--nnodes",
            2,
            "--nproc-per-node",
            1,
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            format!("127.0.0.1:{port}"),
            "--rdzv-id",
            format!("engines-{}", std::process::id()),
            "--no-python",
            worker_bin().display()
        ])
        .args(train_args(&j.data, &j.dir.join(format!("agent{n}"))));
        spawn(cmd)
    };
    let (a0, a1) = (agent(0), agent(1));
    let (o0, o1) = (a0.wait(DEADLINE), a1.wait(DEADLINE));
    let (o0, o1) = (o0.ok("torchrun agent 0"), o1.ok("torchrun agent 1"));
    // Which agent got group rank 0 is torchrun's choice.
    let (rank0, out) = if o0.stdout.contains("Final best Test Accuracy") {
        (&o0, j.dir.join("agent0"))
    } else {
        (&o1, j.dir.join("agent1"))
    };
    let both = Output {
        status: rank0.status,
        stdout: format!("{}\n{}", o0.stdout, o1.stdout),
        stderr: format!("{}\n{}", o0.stderr, o1.stderr),
        secs: o0.secs.max(o1.secs),
    };
    assert!(both.stdout.contains("node 1 of 2"), "{}", both.stdout);
    check("torchrun c10d, 2 agents", &both, &out, "torchrun", 2, &want);
}

#[test]
fn mpirun_two_ranks() {
    let Some(mpirun) = mnist_testkit::program("mpirun_two_ranks", "mpirun") else {
        return;
    };
    let j = job();
    let want = reference(&j);
    let out = j.dir.join("mpi");
    let mut cmd = Command::new(mpirun);
    cmd.args(["--allow-run-as-root", "--oversubscribe", "-np", "2"])
        .arg(worker_bin())
        .args(train_args(&j.data, &out));
    let o = spawn(cmd).wait(DEADLINE).ok("mpirun -np 2");
    assert!(o.stdout.contains("20000 + FNV-1a(ompi-"), "{}", o.stdout);
    check("mpirun", &o, &out, "Open MPI", 2, &want);
}

/// A Slurm cluster of this machine, stopped (by the script, by pid) when dropped.
struct Slurm {
    dir: PathBuf,
    conf: String,
}

impl Slurm {
    fn start(test: &str, dir: &Path) -> Option<Slurm> {
        mnist_testkit::program(test, "srun")?;
        mnist_testkit::program(test, "slurmctld")
            .or_else(|| Path::new("/usr/sbin/slurmctld").is_file().then(PathBuf::new))?;
        if !mnist_testkit::root(test, "the Slurm cluster's slurmd runs jobs as root") {
            return None;
        }
        let script = mnist_testkit::repo_root().join("scripts/engines/slurm-cluster.sh");
        let dir = dir.join("slurm");
        let o = spawn({
            let mut c = Command::new(&script);
            c.args(["start"])
                .arg(&dir)
                .env("SLURM_CHECK_CTLD_PORT", free_port().to_string())
                .env("SLURM_CHECK_SLURMD_PORT", free_port().to_string());
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
}

impl Drop for Slurm {
    fn drop(&mut self) {
        let script = mnist_testkit::repo_root().join("scripts/engines/slurm-cluster.sh");
        let _ = Command::new(script).arg("stop").arg(&self.dir).status();
    }
}

#[test]
fn srun_two_tasks() {
    let j = job();
    let Some(slurm) = Slurm::start("srun_two_tasks", &j.dir) else {
        return;
    };
    let want = reference(&j);
    let out = j.dir.join("srun");
    let mut cmd = Command::new("srun");
    cmd.env("SLURM_CONF", &slurm.conf)
        .args(["--ntasks", "2", "--time", "5"])
        .arg(worker_bin())
        .args(train_args(&j.data, &out));
    let o = spawn(cmd).wait(DEADLINE).ok("srun --ntasks 2");
    assert!(o.stdout.contains("master localhost:"), "{}", o.stdout);
    check("srun", &o, &out, "Slurm", 2, &want);
}
