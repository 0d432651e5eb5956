//! Detection on variable sets captured from the real engines (`tests/fixtures/*.env`, see
//! each file's header), on multi-node sets built from them, and on contradictions.

use super::*;

fn parse(text: &str) -> Env {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l.split_once('=').expect("KEY=VALUE");
            (k.to_string(), v.to_string())
        })
        .collect()
}

macro_rules! fixture {
    ($name:literal) => {
        parse(include_str!(concat!("../tests/fixtures/", $name, ".env")))
    };
}

fn env(pairs: &[(&str, &str)]) -> Env {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn with(mut base: Env, pairs: &[(&str, &str)]) -> Env {
    for (k, v) in pairs {
        base.insert(k.to_string(), v.to_string());
    }
    base
}

fn without(mut base: Env, keys: &[&str]) -> Env {
    for k in keys {
        base.remove(*k);
    }
    base
}

fn ok(e: &Env) -> Placement {
    detect(e).unwrap_or_else(|err| panic!("{err}"))
}

fn err(e: &Env) -> String {
    match detect(e) {
        Ok(p) => panic!("expected an error, got {}", p.summary()),
        Err(x) => x.to_string(),
    }
}

/// (rank, local rank, world, local world, node rank, nodes)
fn pos(p: &Placement) -> [usize; 6] {
    [
        p.rank,
        p.local_rank,
        p.world_size,
        p.local_world_size,
        p.node_rank,
        p.nnodes,
    ]
}

#[test]
fn nothing_is_a_lone_process() {
    let p = ok(&env(&[("HOME", "/root"), ("PATH", "/bin")]));
    assert_eq!(p, Placement::alone());
    assert!(p
        .summary()
        .starts_with("environment: none (a single process) -> rank 0 of 1"));
}

#[test]
fn torchrun_standalone_uses_the_agent_store() {
    for (r, f) in [
        (0, fixture!("torchrun-standalone-rank0")),
        (1, fixture!("torchrun-standalone-rank1")),
    ] {
        let p = ok(&f);
        assert_eq!(p.engine, Engine::Torchrun);
        assert_eq!(pos(&p), [r, r, 2, 2, 0, 1]);
        assert_eq!(p.run_id.as_deref(), Some("torchrun-none-29500-a0"));
        assert_eq!(
            p.meeting,
            Some(Meeting::TorchStore {
                host: "127.0.0.1".into(),
                port: 29500,
                prefix: "mnist-ddp/torchrun-none-29500-a0".into()
            })
        );
        assert_eq!(
            p.meeting.as_ref().unwrap().store_endpoint(r).as_deref(),
            Some("tcpstore://127.0.0.1:29500/mnist-ddp/torchrun-none-29500-a0")
        );
        let s = p.summary();
        assert!(
            s.contains("RANK=") && s.contains("TORCHELASTIC_USE_AGENT_STORE=True"),
            "{s}"
        );
    }
}

#[test]
fn torchrun_c10d_two_agents() {
    let cases = [
        (fixture!("torchrun-c10d-rank0"), [0, 0, 4, 2, 0, 2]),
        (fixture!("torchrun-c10d-rank1"), [1, 1, 4, 2, 0, 2]),
        (fixture!("torchrun-c10d-rank2"), [2, 0, 4, 2, 1, 2]),
        (fixture!("torchrun-c10d-rank3"), [3, 1, 4, 2, 1, 2]),
    ];
    for (f, want) in cases {
        let p = ok(&f);
        assert_eq!(pos(&p), want);
        // The agent store is not the rendezvous endpoint: torchrun's leader agent picked it.
        match p.meeting {
            Some(Meeting::TorchStore { ref host, port, .. }) => {
                assert_eq!(host, "localhost");
                assert_eq!(port, 34083);
            }
            ref m => panic!("{m:?}"),
        }
        assert_eq!(p.run_id.as_deref(), Some("torchrun-job7-34083-a0"));
    }
}

#[test]
fn kubeflow_pytorchjob_is_env_url_one_process_per_pod() {
    // What the training operator sets on replica Worker-0 of a 3-replica PyTorchJob.
    let e = env(&[
        ("MASTER_ADDR", "mnist-master-0"),
        ("MASTER_PORT", "23456"),
        ("WORLD_SIZE", "3"),
        ("RANK", "2"),
        ("PYTHONUNBUFFERED", "1"),
    ]);
    let p = ok(&e);
    assert_eq!(p.engine, Engine::EnvUrl);
    assert_eq!(pos(&p), [2, 0, 3, 1, 2, 3]);
    assert_eq!(p.run_id.as_deref(), Some("env-mnist-master-0-23456"));
    let m = p.meeting.clone().unwrap();
    assert_eq!(m.store_endpoint(2).as_deref(), Some("mnist-master-0:23456"));
    assert_eq!(m.store_endpoint(0).as_deref(), Some("127.0.0.1:23456"));
    // Without the agent store torchrun's workers also serve the store themselves.
    let f = with(
        fixture!("torchrun-standalone-rank0"),
        &[("TORCHELASTIC_USE_AGENT_STORE", "False")],
    );
    assert!(matches!(
        ok(&f).meeting,
        Some(Meeting::Serve { port: 29500, .. })
    ));
}

#[test]
fn open_mpi_on_one_machine() {
    for (r, f) in [(0, fixture!("mpirun-rank0")), (1, fixture!("mpirun-rank1"))] {
        let p = ok(&f);
        assert_eq!(p.engine, Engine::OpenMpi);
        assert_eq!(pos(&p), [r, r, 2, 2, 0, 1]);
        assert_eq!(p.run_id.as_deref(), Some("ompi-1658912769"));
        let port = default_port("ompi-1658912769");
        assert_eq!(
            p.meeting,
            Some(Meeting::Serve {
                host: "127.0.0.1".into(),
                port,
                port_from: "20000 + FNV-1a(ompi-1658912769) mod 12000".into()
            })
        );
        assert!((20000..32000).contains(&port));
    }
}

#[test]
fn open_mpi_across_machines_needs_master_addr() {
    let two = with(
        fixture!("mpirun-rank1"),
        &[
            ("OMPI_COMM_WORLD_SIZE", "4"),
            ("OMPI_COMM_WORLD_RANK", "3"),
            ("OMPI_MCA_orte_num_nodes", "2"),
        ],
    );
    let e = err(&two);
    assert!(
        e.contains("MASTER_ADDR is not set") && e.contains("2 machines"),
        "{e}"
    );
    let p = ok(&with(
        two,
        &[("MASTER_ADDR", "10.0.0.1"), ("MASTER_PORT", "29400")],
    ));
    assert_eq!(pos(&p), [3, 1, 4, 2, 1, 2]);
    assert!(
        p.summary().contains("master 10.0.0.1:29400"),
        "{}",
        p.summary()
    );
}

#[test]
fn slurm_srun_one_node() {
    for (r, f) in [(0, fixture!("srun-rank0")), (1, fixture!("srun-rank1"))] {
        let p = ok(&f);
        assert_eq!(p.engine, Engine::Slurm);
        assert_eq!(pos(&p), [r, r, 2, 2, 0, 1]);
        assert_eq!(p.run_id.as_deref(), Some("1.0"));
        match &p.meeting {
            Some(Meeting::Serve { host, port, .. }) => {
                assert_eq!(host, "localhost");
                assert_eq!(*port, default_port("1.0"));
            }
            m => panic!("{m:?}"),
        }
    }
    // A step of a batch job, and srun --mpi=pmi2 whose PMI variables agree.
    assert_eq!(pos(&ok(&fixture!("sbatch-srun-rank1"))), [1, 1, 2, 2, 0, 1]);
    let p = ok(&fixture!("srun-pmi2-rank1"));
    assert_eq!((p.engine, p.rank), (Engine::Slurm, 1));
    assert!(p.notes.iter().any(|n| n.contains("pmi2")));
    // MASTER_ADDR/MASTER_PORT win over the defaults.
    let p = ok(&with(
        fixture!("srun-rank1"),
        &[("MASTER_ADDR", "head"), ("MASTER_PORT", "4242")],
    ));
    assert_eq!(
        p.meeting.unwrap().store_endpoint(1).as_deref(),
        Some("head:4242")
    );
}

/// A task of a 4-node step, built from a captured one.
fn slurm_multi(rank: &str, local: &str, node: &str) -> Env {
    with(
        fixture!("srun-rank0"),
        &[
            ("SLURM_STEP_NODELIST", "gpu-[01-03],login2"),
            ("SLURM_STEP_TASKS_PER_NODE", "2(x3),1"),
            ("SLURM_STEP_NUM_TASKS", "7"),
            ("SLURM_NTASKS", "7"),
            ("SLURM_STEP_NUM_NODES", "4"),
            ("SLURM_PROCID", rank),
            ("SLURM_LOCALID", local),
            ("SLURMD_NODENAME", node),
            ("SLURM_JOB_ID", "812"),
            ("SLURM_STEP_ID", "3"),
        ],
    )
}

#[test]
fn slurm_several_nodes() {
    let p = ok(&slurm_multi("5", "1", "gpu-03"));
    assert_eq!(pos(&p), [5, 1, 7, 2, 2, 4]);
    assert_eq!(p.run_id.as_deref(), Some("812.3"));
    assert!(matches!(&p.meeting, Some(Meeting::Serve { host, .. }) if host == "gpu-01"));
    let p = ok(&slurm_multi("6", "0", "login2"));
    assert_eq!(pos(&p), [6, 0, 7, 1, 3, 4]);
    // Without SLURMD_NODENAME in the list, SLURM_NODEID says the node.
    let e = without(slurm_multi("2", "0", "x"), &["SLURMD_NODENAME"]);
    assert_eq!(
        pos(&ok(&with(e, &[("SLURM_NODEID", "1")]))),
        [2, 0, 7, 2, 1, 4]
    );
}

#[test]
fn slurm_contradictions_name_the_variables() {
    let e = err(&slurm_multi("4", "0", "gpu-01"));
    assert!(
        e.contains("SLURM_PROCID=4") && e.contains("--distribution=block"),
        "{e}"
    );
    let e = err(&slurm_multi("1", "2", "gpu-01"));
    assert!(
        e.contains("SLURM_LOCALID=2") && e.contains("2 task(s)"),
        "{e}"
    );
    let e = err(&with(
        slurm_multi("1", "1", "gpu-01"),
        &[("SLURM_STEP_NUM_TASKS", "8")],
    ));
    assert!(
        e.contains("adds up to 7") && e.contains("SLURM_STEP_NUM_TASKS=8"),
        "{e}"
    );
    let e = err(&with(
        slurm_multi("1", "1", "gpu-01"),
        &[("SLURM_STEP_NODELIST", "gpu-[01-02]")],
    ));
    assert!(e.contains("names 2 node(s)") && e.contains("4"), "{e}");
    let e = err(&with(
        slurm_multi("1", "1", "gpu-01"),
        &[("SLURM_STEP_NODELIST", "gpu-[01-02")],
    ));
    assert!(
        e.starts_with("SLURM_STEP_NODELIST=\"gpu-[01-02\"") && e.contains("never closed"),
        "{e}"
    );
    let e = err(&with(
        slurm_multi("1", "1", "gpu-01"),
        &[("SLURM_STEP_TASKS_PER_NODE", "2(x3")],
    ));
    assert!(e.contains("SLURM_STEP_TASKS_PER_NODE"), "{e}");
    let e = err(&with(fixture!("srun-rank1"), &[("SLURM_PROCID", "2")]));
    assert!(
        e.contains("SLURM_PROCID=2 is not below SLURM_STEP_NUM_TASKS=2"),
        "{e}"
    );
    let e = err(&with(fixture!("srun-rank1"), &[("SLURM_PROCID", "one")]));
    assert_eq!(e, "SLURM_PROCID=\"one\": expected a non-negative integer");
    let e = err(&with(fixture!("srun-pmi2-rank1"), &[("PMI_RANK", "0")]));
    assert!(e.contains("SLURM_PROCID=1 but PMI_RANK=0"), "{e}");
    let e = err(&with(fixture!("srun-rank1"), &[("MASTER_PORT", "70000")]));
    assert!(e.starts_with("MASTER_PORT=\"70000\""), "{e}");
    let e = err(&without(fixture!("srun-rank1"), &["SLURM_LOCALID"]));
    assert!(e.contains("SLURM_LOCALID is not set"), "{e}");
}

#[test]
fn mpirun_inside_a_batch_script_wins_over_the_inherited_slurm_variables() {
    // Both ranks inherit SLURM_PROCID=0 and SLURM_NTASKS=2 from the batch script.
    for (r, f) in [
        (0, fixture!("sbatch-mpirun-rank0")),
        (1, fixture!("sbatch-mpirun-rank1")),
    ] {
        let p = ok(&f);
        assert_eq!(p.engine, Engine::OpenMpi);
        assert_eq!(pos(&p), [r, r, 2, 2, 0, 1]);
        assert!(
            p.notes.iter().any(|n| n.contains("batch script")),
            "{:?}",
            p.notes
        );
    }
    // mpirun's daemons on other nodes are srun tasks: their Slurm variables are ignored too.
    let daemon = with(
        fixture!("sbatch-mpirun-rank1"),
        &[
            ("SLURM_STEP_ID", "0"),
            ("SLURM_STEP_TASKS_PER_NODE", "1"),
            ("SLURM_STEP_NODELIST", "localhost"),
        ],
    );
    let p = ok(&daemon);
    assert_eq!((p.engine, p.rank), (Engine::OpenMpi, 1));
    assert!(
        p.notes.iter().any(|n| n.contains("mpirun's daemon")),
        "{:?}",
        p.notes
    );
    // A PMI launcher inside a Slurm step with another process count wins as well.
    let hydra = with(
        fixture!("srun-rank0"),
        &[
            ("PMI_RANK", "3"),
            ("PMI_SIZE", "4"),
            ("MPI_LOCALRANKID", "3"),
            ("MPI_LOCALNRANKS", "4"),
        ],
    );
    let p = ok(&hydra);
    assert_eq!((p.engine, pos(&p)), (Engine::Pmi, [3, 3, 4, 4, 0, 1]));
}

#[test]
fn a_batch_script_alone_is_not_a_job_of_its_own() {
    let p = ok(&fixture!("sbatch-script"));
    assert_eq!(pos(&p), [0, 0, 1, 1, 0, 1]);
    assert_eq!(p.engine, Engine::Alone);
    assert!(
        p.notes[0].contains("SLURM_JOB_ID=2 without SLURM_STEP_ID"),
        "{:?}",
        p.notes
    );
}

#[test]
fn pmi_alone() {
    let p = ok(&env(&[
        ("PMI_RANK", "1"),
        ("PMI_SIZE", "2"),
        ("PMI_FD", "9"),
    ]));
    assert_eq!((p.engine, pos(&p)), (Engine::Pmi, [1, 1, 2, 2, 0, 1]));
    assert_eq!(p.run_id.as_deref(), Some("pmi-127.0.0.1-29500"));
    let e = err(&env(&[("PMI_RANK", "1")]));
    assert_eq!(e, "PMI: PMI_SIZE is not set (PMI_RANK is set)");
    let e = err(&env(&[
        ("PMI_RANK", "1"),
        ("PMI_SIZE", "2"),
        ("OMPI_COMM_WORLD_RANK", "0"),
        ("OMPI_COMM_WORLD_SIZE", "2"),
        ("OMPI_COMM_WORLD_LOCAL_RANK", "0"),
        ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
        ("OMPI_MCA_ess_base_jobid", "7"),
    ]));
    assert!(
        e.contains("OMPI_COMM_WORLD_RANK=0") && e.contains("PMI_RANK=1"),
        "{e}"
    );
}

#[test]
fn torchrun_contradictions() {
    let e = err(&with(
        fixture!("torchrun-standalone-rank1"),
        &[("RANK", "2")],
    ));
    assert!(e.contains("RANK=2 is not below WORLD_SIZE=2"), "{e}");
    let e = err(&with(
        fixture!("torchrun-standalone-rank1"),
        &[("LOCAL_WORLD_SIZE", "1")],
    ));
    assert!(
        e.contains("LOCAL_RANK=1 is not below LOCAL_WORLD_SIZE=1"),
        "{e}"
    );
    let e = err(&with(
        fixture!("torchrun-c10d-rank2"),
        &[("GROUP_RANK", "2")],
    ));
    assert!(
        e.contains("GROUP_RANK=2 is not below GROUP_WORLD_SIZE=2"),
        "{e}"
    );
    let e = err(&without(
        fixture!("torchrun-standalone-rank1"),
        &["WORLD_SIZE"],
    ));
    assert!(e.contains("WORLD_SIZE is not set"), "{e}");
    let e = err(&without(
        fixture!("torchrun-standalone-rank1"),
        &["MASTER_PORT"],
    ));
    assert!(
        e.contains("MASTER_PORT is not set (MASTER_ADDR is set)"),
        "{e}"
    );
    let e = err(&without(
        fixture!("torchrun-c10d-rank2"),
        &["GROUP_RANK", "GROUP_WORLD_SIZE"],
    ));
    assert!(e.contains("GROUP_RANK is not set"), "{e}");
    let e = err(&with(
        fixture!("torchrun-standalone-rank1"),
        &[("WORLD_SIZE", "x")],
    ));
    assert_eq!(e, "WORLD_SIZE=\"x\": expected a non-negative integer");
}

#[test]
fn the_inner_engine_wins() {
    // srun torchrun …: torchrun started the worker inside a Slurm task.
    let mut e = fixture!("srun-rank1");
    e.extend(fixture!("torchrun-standalone-rank0"));
    let p = ok(&e);
    assert_eq!((p.engine, p.rank), (Engine::Torchrun, 0));
    // srun mnist-launch …: our launcher's contract wins over both.
    let e = with(
        e,
        &[
            ("MNIST_RUN_ID", "r1"),
            ("MNIST_STORE", "10.0.0.1:29500"),
            ("RANK", "3"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "2"),
            ("GROUP_RANK", "1"),
            ("MNIST_NNODES", "2"),
        ],
    );
    let p = ok(&e);
    assert_eq!((p.engine, pos(&p)), (Engine::Launcher, [3, 1, 4, 2, 1, 2]));
    assert_eq!(p.meeting, Some(Meeting::Store("10.0.0.1:29500".into())));
    assert_eq!(p.run_id.as_deref(), Some("r1"));
}

#[test]
fn flags_override_the_environment() {
    let f = Explicit {
        rank: Some(1),
        world_size: Some(2),
        rendezvous: Some("/tmp/r".into()),
        run_id: Some("x".into()),
        ..Explicit::default()
    };
    let p = resolve(&f, &Env::new()).unwrap();
    assert_eq!((p.engine, pos(&p)), (Engine::Flags, [1, 1, 2, 2, 0, 1]));
    assert_eq!(p.meeting, Some(Meeting::File("/tmp/r".into())));
    // Over Slurm's: the flag wins and the log says so.
    let p = resolve(
        &Explicit {
            rank: Some(0),
            local_rank: Some(0),
            ..Explicit::default()
        },
        &fixture!("srun-rank1"),
    )
    .unwrap();
    assert_eq!((p.engine, p.rank), (Engine::Slurm, 0));
    assert!(
        p.summary()
            .contains("--rank 0 overrides the environment's 1"),
        "{}",
        p.summary()
    );
    // Missing pieces are named.
    let e = resolve(
        &Explicit {
            world_size: Some(2),
            ..Explicit::default()
        },
        &Env::new(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("needs a meeting point") && e.contains("MASTER_ADDR"),
        "{e}"
    );
    let e = resolve(
        &Explicit {
            world_size: Some(2),
            store: Some("h:1".into()),
            ..Explicit::default()
        },
        &Env::new(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("--run-id"), "{e}");
    let e = resolve(
        &Explicit {
            rank: Some(2),
            world_size: Some(2),
            ..Explicit::default()
        },
        &Env::new(),
    )
    .unwrap_err()
    .to_string();
    assert_eq!(e, "--rank 2 is not below --world-size 2");
    let e = resolve(
        &Explicit {
            node_rank: Some(1),
            ..Explicit::default()
        },
        &Env::new(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("--node-rank 1 (GROUP_RANK) is not below --nnodes 1"),
        "{e}"
    );
    // RANK/WORLD_SIZE without MASTER_*: a rendezvous flag completes them.
    let e = env(&[("RANK", "1"), ("WORLD_SIZE", "2")]);
    assert!(resolve(&Explicit::default(), &e)
        .unwrap_err()
        .to_string()
        .contains("meeting point"));
    let p = resolve(
        &Explicit {
            rendezvous: Some("/tmp/f".into()),
            run_id: Some("r".into()),
            ..Explicit::default()
        },
        &e,
    )
    .unwrap();
    assert_eq!((p.engine, p.rank), (Engine::EnvUrl, 1));
}

#[test]
fn default_port_is_stable_and_in_range() {
    assert_eq!(default_port("1.0"), default_port("1.0"));
    assert_ne!(default_port("1.0"), default_port("2.0"));
    for id in [
        "",
        "a",
        "812.3",
        "ompi-1658912769",
        "torchrun-none-29500-a0",
    ] {
        assert!((20000..32000).contains(&default_port(id)), "{id}");
    }
    // Pinned to the published FNV-1a 64 values, so the documented rule cannot drift.
    assert_eq!(vars::fnv1a(""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(vars::fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
}

#[test]
fn launcher_under_srun_one_task_per_node() {
    let e = with(
        fixture!("srun-rank1"),
        &[
            ("SLURM_STEP_NODELIST", "node[1-2]"),
            ("SLURM_STEP_TASKS_PER_NODE", "1(x2)"),
            ("SLURM_LOCALID", "0"),
            ("SLURMD_NODENAME", "node2"),
        ],
    );
    let n = slurm::launcher_nodes(&e).unwrap().unwrap();
    assert_eq!(
        (n.nnodes, n.node_rank, n.master_addr.as_str()),
        (2, 1, "node1")
    );
    assert_eq!(n.master_port, default_port("1.0"));
    assert_eq!(n.run_id, "1.0");
    let e = slurm::launcher_nodes(&fixture!("srun-rank1"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("--ntasks-per-node 1"), "{e}");
    assert_eq!(
        slurm::launcher_nodes(&fixture!("sbatch-script")).unwrap(),
        None
    );
}
