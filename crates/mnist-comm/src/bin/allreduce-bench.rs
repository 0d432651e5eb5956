//! All-reduce benchmark: starts a group of itself (this process is rank 0, the others are
//! children) and times `all_reduce_f32` for a list of sizes. `scripts/bench-allreduce.sh`
//! runs it next to PyTorch gloo.
//!
//! Usage: `allreduce-bench [--world N] [--nodes K] [--transport auto|shm|tcp|star]
//! [--sizes 4096,65536,...]`. `--nodes K` puts the ranks on K fake nodes of this host
//! (contiguous, as even as possible), so `--transport auto` runs the hierarchical path: shared
//! memory inside each node, the TCP ring between node leaders. `tcp` is the ring alone (every
//! rank its own node), `star` the former star through rank 0.
//! Prints one line per size: `SIZE <bytes> <latency µs> <busbw GB/s> <iterations> <ring GB/s>`,
//! where busbw = bytes / time · 2(n−1)/n as nccl-tests defines it (n ranks) and the ring
//! figure is the same with n = the number of ring members (nodes; every rank with `tcp`): what
//! each leader's link carries per second.

use mnist_comm::{connect, CommOptions, Communicator, ReduceOp, Transport};
use mnist_common::contract::WorkerIdentity;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Iterations for a size: about 2 GiB of payload, between 20 and 20,000.
fn iterations(bytes: usize) -> usize {
    ((2usize << 30) / bytes.max(1)).clamp(20, 20_000)
}

fn run(c: &mut dyn Communicator, sizes: &[usize], members: usize) -> Result<(), String> {
    let w = c.world_size() as f64;
    let m = members as f64;
    for &bytes in sizes {
        let mut buf = vec![1.0f32; bytes / 4];
        let iters = iterations(bytes);
        for _ in 0..(iters / 10).max(3) {
            c.all_reduce_f32(&mut buf, ReduceOp::Sum)
                .map_err(|e| e.to_string())?;
        }
        c.barrier().map_err(|e| e.to_string())?;
        let t = Instant::now();
        for _ in 0..iters {
            c.all_reduce_f32(&mut buf, ReduceOp::Sum)
                .map_err(|e| e.to_string())?;
        }
        let secs = t.elapsed().as_secs_f64() / iters as f64;
        let busbw = bytes as f64 / secs * 2.0 * (w - 1.0) / w / 1e9;
        let ringbw = bytes as f64 / secs * 2.0 * (m - 1.0).max(1.0) / m / 1e9;
        if c.rank() == 0 {
            println!(
                "SIZE {bytes} {:.2} {busbw:.3} {iters} {ringbw:.3}",
                secs * 1e6
            );
        }
    }
    Ok(())
}

fn main() {
    let mut world = 2usize;
    let mut transport = "shm".to_string();
    let mut nodes = 1usize;
    let mut sizes: Vec<usize> = vec![4 << 10, 64 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20];
    let mut id: Option<WorkerIdentity> = None;
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i + 1 < args.len() {
        let v = &args[i + 1];
        match args[i].as_str() {
            "--world" => world = v.parse().unwrap_or(2),
            "--transport" => transport = v.clone(),
            "--nodes" => nodes = v.parse().unwrap_or(1),
            "--sizes" => sizes = v.split(',').filter_map(|s| s.trim().parse().ok()).collect(),
            "--child" => {
                // --child RANK:RENDEZVOUS:RUN_ID
                let mut p = v.splitn(3, ':');
                let rank = p.next().and_then(|r| r.parse().ok()).unwrap_or(0);
                let mut ident = WorkerIdentity::single();
                ident.rank = rank;
                ident.rendezvous = p.next().map(Into::into);
                ident.run_id = p.next().map(Into::into);
                id = Some(ident);
            }
            other => {
                eprintln!("allreduce-bench: unknown flag {other}");
                std::process::exit(2);
            }
        }
        i += 2;
    }
    let Some(t) = Transport::parse(&transport) else {
        eprintln!("allreduce-bench: --transport {transport:?}: expected auto, shm, tcp or star");
        std::process::exit(2);
    };
    if nodes == 0 || nodes > world {
        eprintln!("allreduce-bench: --nodes {nodes}: expected 1 to --world ({world})");
        std::process::exit(2);
    }
    let mut kids = Vec::new();
    let mut id = id.unwrap_or_else(|| {
        let run_id = format!("bench-{}", std::process::id());
        let rdv = std::env::temp_dir().join(format!("mnist-bench-{run_id}.rdv"));
        for r in 1..world {
            let spec = format!("{r}:{}:{run_id}", rdv.display());
            let child = Command::new(&args[0])
                .args([
                    "--world",
                    &world.to_string(),
                    "--transport",
                    &transport,
                    "--nodes",
                    &nodes.to_string(),
                    "--child",
                    &spec,
                ])
                .args([
                    "--sizes",
                    &sizes
                        .iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                ])
                .stdout(Stdio::null())
                .spawn();
            match child {
                Ok(c) => kids.push(c),
                Err(e) => {
                    eprintln!("allreduce-bench: cannot start rank {r}: {e}");
                    std::process::exit(1);
                }
            }
        }
        let mut ident = WorkerIdentity::single();
        ident.rendezvous = Some(rdv);
        ident.run_id = Some(run_id);
        ident
    });
    id.world_size = world;
    let node_of = |r: usize| r * nodes / world;
    id.node_rank = node_of(id.rank);
    id.nnodes = nodes;
    id.local_world_size = (0..world).filter(|&r| node_of(r) == id.node_rank).count();
    let opts = CommOptions {
        timeout: Duration::from_secs(60),
        rendezvous_timeout: Duration::from_secs(30),
        transport: t,
        rank0_payload: None,
    };
    let result = connect(&id, opts)
        .map_err(|e| e.to_string())
        .and_then(|(mut c, _)| {
            let members = match t {
                Transport::Tcp => world,
                Transport::Auto => nodes,
                _ => world,
            };
            run(c.as_mut(), &sizes, members)
        });
    for mut k in kids {
        let _ = k.wait();
    }
    if let Err(e) = result {
        eprintln!("allreduce-bench: rank {}: {e}", id.rank);
        std::process::exit(1);
    }
}
