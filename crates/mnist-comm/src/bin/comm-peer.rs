//! Test peer: joins a group and runs one scripted scenario, so the integration tests can
//! drive real multi-process groups (see `tests/multiprocess.rs`).
//!
//! Usage: `comm-peer --rank R --world-size W --rendezvous FILE --run-id ID --scenario NAME
//! [--transport auto|shm|tcp|star] [--node-rank K --nnodes N --local-world-size L] [--timeout S] [--rendezvous-timeout S] [--out DIR]`.
//! Scenarios: `all` (all-reduce cases written to DIR, broadcast, all-gather), `mismatch`,
//! `die`, `hang`, `abort`. Prints `ERROR: ...` and exits 1 on a collective failure.

use half::{bf16, f16};
use mnist_comm::{connect, CommError, CommOptions, Communicator, ReduceOp, Transport};
use mnist_common::contract::WorkerIdentity;
use std::path::PathBuf;
use std::time::Duration;

/// Deterministic values in [-1, 1) for (rank, case): splitmix64, same as the tests' oracle.
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

struct Args {
    id: WorkerIdentity,
    scenario: String,
    transport: Transport,
    timeout: f64,
    out: Option<PathBuf>,
    /// The rank that dies, hangs or aborts in those scenarios.
    victim: usize,
}

fn parse() -> Result<Args, String> {
    let mut id = WorkerIdentity::single();
    let (mut scenario, mut transport, mut timeout, mut out) =
        (String::from("all"), Transport::Auto, 30.0, None);
    let mut local = None;
    let mut victim = 1;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<f64>().map_err(|e| format!("{flag} {v:?}: {e}"));
        match flag.as_str() {
            "--rank" => id.rank = num(&v)? as usize,
            "--world-size" => id.world_size = num(&v)? as usize,
            "--local-world-size" => local = Some(num(&v)? as usize),
            "--rendezvous" => id.rendezvous = Some(v.into()),
            "--run-id" => id.run_id = Some(v),
            "--node-rank" => id.node_rank = num(&v)? as usize,
            "--nnodes" => id.nnodes = num(&v)? as usize,
            "--rendezvous-timeout" => id.rendezvous_timeout_s = num(&v)?,
            "--timeout" => timeout = num(&v)?,
            "--scenario" => scenario = v,
            "--victim" => victim = num(&v)? as usize,
            "--out" => out = Some(v.into()),
            "--transport" => {
                transport = Transport::parse(&v)
                    .ok_or_else(|| format!("--transport {v:?}: expected auto, shm, tcp or star"))?
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    id.local_world_size = local.unwrap_or(id.world_size);
    Ok(Args {
        id,
        scenario,
        transport,
        timeout,
        out,
        victim,
    })
}

fn write(out: &Option<PathBuf>, name: String, bytes: &[u8]) {
    if let Some(dir) = out {
        if let Err(e) = std::fs::write(dir.join(&name), bytes) {
            eprintln!("cannot write {name}: {e}");
            std::process::exit(2);
        }
    }
}

/// The all-reduce cases: (dtype, average?, length); lengths cover empty, one, odd, and more
/// than one shared-memory slot.
const CASES: &[(&str, bool, usize)] = &[
    ("f32", false, 0),
    ("f32", false, 1),
    ("f32", true, 7),
    ("f32", false, 1001),
    ("f32", false, 300_001),
    ("f32", true, 300_001),
    ("f16", false, 3),
    ("f16", true, 600_001),
    ("bf16", false, 1001),
    ("bf16", true, 600_001),
];

fn run_all(c: &mut dyn Communicator, a: &Args) -> Result<(), CommError> {
    let r = c.rank();
    for (i, (dt, avg, n)) in CASES.iter().enumerate() {
        let op = if *avg {
            ReduceOp::Average
        } else {
            ReduceOp::Sum
        };
        let v = values(r, i, *n);
        let bytes: Vec<u8> = match *dt {
            "f32" => {
                let mut b = v;
                c.all_reduce_f32(&mut b, op)?;
                b.iter().flat_map(|x| x.to_le_bytes()).collect()
            }
            "f16" => {
                let mut b: Vec<f16> = v.iter().map(|x| f16::from_f32(*x)).collect();
                c.all_reduce_f16(&mut b, op)?;
                b.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect()
            }
            _ => {
                let mut b: Vec<bf16> = v.iter().map(|x| bf16::from_f32(*x)).collect();
                c.all_reduce_bf16(&mut b, op)?;
                b.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect()
            }
        };
        println!("CASE {i} {dt} {} {n}", if *avg { "avg" } else { "sum" });
        write(&a.out, format!("r{r}-c{i}.bin"), &bytes);
    }
    for (i, n) in [0usize, 5, 9 << 20].iter().enumerate() {
        let root = 1 % c.world_size();
        let mut b: Vec<u8> = if r == root {
            (0..*n).map(|k| (k * 31 + i) as u8).collect()
        } else {
            vec![0; *n]
        };
        c.broadcast(&mut b, root)?;
        write(&a.out, format!("r{r}-b{i}.bin"), &b);
    }
    let mine: Vec<u8> = (0..r * 777 + if r == 0 { 4_500_000 } else { 1 })
        .map(|k| (k + r) as u8)
        .collect();
    let all = c.all_gather_bytes(&mine)?;
    write(&a.out, format!("r{r}-g.bin"), &all.concat());
    println!(
        "GATHER {:?}",
        all.iter().map(|p| p.len()).collect::<Vec<_>>()
    );
    c.barrier()?;
    println!("BYTES_SENT {}", c.bytes_sent());
    Ok(())
}

fn scenario(c: &mut dyn Communicator, a: &Args) -> Result<(), CommError> {
    let r = c.rank();
    let mut b = vec![1.0f32; 10];
    match a.scenario.as_str() {
        "all" => run_all(c, a),
        "mismatch" => {
            c.all_reduce_f32(&mut b, ReduceOp::Sum)?;
            let mut b2 = vec![1.0f32; if r == 1 { 11 } else { 10 }];
            c.all_reduce_f32(&mut b2, ReduceOp::Sum)
        }
        "die" => {
            c.all_reduce_f32(&mut b, ReduceOp::Sum)?;
            if r == a.victim {
                std::process::exit(9);
            }
            c.all_reduce_f32(&mut b, ReduceOp::Sum)
        }
        "hang" => {
            c.all_reduce_f32(&mut b, ReduceOp::Sum)?;
            if r == a.victim {
                std::thread::sleep(Duration::from_secs(40));
            }
            c.all_reduce_f32(&mut b, ReduceOp::Sum)
        }
        "abort" => {
            c.all_reduce_f32(&mut b, ReduceOp::Sum)?;
            if r == 1 {
                c.abort("test abort from rank 1");
                std::thread::sleep(Duration::from_millis(300));
                std::process::exit(1);
            }
            c.all_reduce_f32(&mut b, ReduceOp::Sum)
        }
        other => {
            eprintln!("unknown scenario {other:?}");
            std::process::exit(2);
        }
    }
}

fn main() {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("comm-peer: {e}");
            std::process::exit(2);
        }
    };
    let opts = CommOptions {
        timeout: Duration::from_secs_f64(a.timeout),
        rendezvous_timeout: Duration::from_secs_f64(a.id.rendezvous_timeout_s),
        transport: a.transport,
        rank0_payload: (a.id.rank == 0).then(|| b"payload-from-rank-0".to_vec()),
    };
    let (mut c, payload) = match connect(&a.id, opts) {
        Ok(x) => x,
        Err(e) => {
            println!("ERROR: {e}");
            std::process::exit(1);
        }
    };
    println!("PAYLOAD {}", String::from_utf8_lossy(&payload));
    match scenario(c.as_mut(), &a) {
        Ok(()) => println!("OK"),
        Err(e) => {
            println!("ERROR: {e}");
            std::process::exit(1);
        }
    }
}
