//! The training loop: set up threads, device, communicator, data and model; then per epoch
//! train on this rank's shard, average gradients across ranks, step SGD with the cosine
//! learning rate, evaluate, and (rank 0) log, record metrics and keep the best model.

use crate::dataset::TensorDataset;
use crate::evaluate::{evaluate, EvalResult};
use crate::flat::FlatParams;
use crate::host::{as_bytes_mut, with_host_slice};
use crate::metrics::{self, EpochRecord};
use crate::optim::Sgd;
use crate::schedule::cosine_lr;
use crate::session::Session;
use crate::split::BatchSplitter;
use crate::sync::GradReducer;
use crate::{resume, state, TrainError};
use mnist_comm::{Communicator, ReduceOp};
use mnist_common::{ModelKind, TrainConfig};
use mnist_data::{DistributedSampler, Split};
use mnist_models::{Arch, Model};
use std::time::Instant;
use tch::{Kind, Tensor};

/// File name of the best model inside `--path`.
pub const MODEL_FILE: &str = "mnist_model.pt";
/// File name of the log inside `--path`.
pub const LOG_FILE: &str = "mnist_train.log";
/// File name of the per-epoch metrics inside `--path`.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// The network for a configured model kind.
pub fn arch(kind: ModelKind) -> Arch {
    match kind {
        ModelKind::LeNet => Arch::LeNet,
        ModelKind::Mlp => Arch::Mlp,
    }
}

/// Train (or, with `--evaluate`, evaluate) as configured, in an established session.
pub fn run_session(cfg: &TrainConfig, s: &mut Session) -> Result<(), TrainError> {
    if let Some(file) = &cfg.evaluate {
        return evaluate_file(cfg, s, file);
    }
    train(cfg, s)
}

fn load_data(
    cfg: &TrainConfig,
    s: &mut Session,
    split: Split,
) -> Result<TensorDataset, TrainError> {
    let data = mnist_data::load_split(&cfg.data, split)?;
    TensorDataset::new(&data, s.device)
}

fn evaluate_file(
    cfg: &TrainConfig,
    s: &mut Session,
    file: &std::path::Path,
) -> Result<(), TrainError> {
    let mut model = Model::new(arch(cfg.model), s.device);
    state::load_into(&mut model, file)?;
    let test = load_data(cfg, s, Split::Test)?;
    let r = evaluate(&model, &test, cfg.test_batch_size, s.comm.as_mut())?;
    s.log.info(&format!(
        "Evaluating {} ({})",
        file.display(),
        cfg.model.name()
    ));
    log_test(s, &r);
    Ok(())
}

fn log_test(s: &Session, r: &EvalResult) {
    s.log.info(&format!(
        "Test set: Average loss: {:.4}, Accuracy: {}/{} ({:.2}%), Top-5: {:.2}%",
        r.avg_loss(),
        r.correct1,
        r.count,
        r.top1(),
        r.top5()
    ));
}

fn train(cfg: &TrainConfig, s: &mut Session) -> Result<(), TrainError> {
    let (rank, world) = (s.comm.rank(), s.comm.world_size());
    let train_set = load_data(cfg, s, Split::Train)?;
    let test_set = load_data(cfg, s, Split::Test)?;

    tch::manual_seed(cfg.seed as i64);
    let mut model = Model::new(arch(cfg.model), s.device);
    let mut flat = FlatParams::new(&mut model);
    let mut sgd = Sgd::new(cfg.momentum, cfg.weight_decay);
    let (mut start_epoch, mut step, mut best_acc) = (0usize, 0u64, -1.0f64);
    let ckpt_path = resume::path_in(&cfg.path);
    if cfg.resume {
        let st = resume::load(&ckpt_path)?;
        check_resumable(cfg, world, &st, &ckpt_path)?;
        flat.params_from_slice(&st.params);
        sgd.set_momentum_buffer(
            st.momentum
                .as_ref()
                .map(|m| Tensor::from_slice(m).to_device(s.device)),
        );
        (start_epoch, step, best_acc) = (st.next_epoch, st.step, st.best_acc);
        s.log.info(&format!(
            "Resuming from {} at epoch {} (best so far {:.2}%)",
            ckpt_path.display(),
            start_epoch + 1,
            best_acc.max(0.0)
        ));
    }
    // Every rank starts from rank 0's parameters.
    let mut staging = Vec::new();
    if let Some(nccl) = &s.nccl {
        crate::gpu_sync::broadcast(nccl, &mut flat.params)?;
    } else if world > 1 {
        let comm = s.comm.as_mut();
        with_host_slice(&mut flat.params, &mut staging, |p| {
            comm.broadcast(as_bytes_mut(p), 0)
        })?;
    }
    let nccl_grads = s.nccl.is_some() && crate::gpu_sync::on_device(cfg.compression);
    if s.nccl.is_some() && !nccl_grads {
        s.log.info("Note: this compression method needs all-gathers; its collectives go through the CPU backend (host staging)");
    }
    let compressor = mnist_compress::build(&mnist_compress::CompressionParams {
        kind: cfg.compression,
        topk_ratio: cfg.topk_ratio,
        powersgd_rank: cfg.powersgd_rank,
        powersgd_start_iter: cfg.powersgd_start_iter,
        seed: cfg.seed,
    });
    let compression_name = compressor.name();
    let cap = (cfg.bucket_cap_mb * 1024.0 * 1024.0) as usize;
    let mut reducer = GradReducer::new(flat.slots(), cap, compressor);
    let threads = CpuThreads::for_run(cfg, s)?;
    threads.training();
    let mut splitter = BatchSplitter::new(&model, &flat, threads.parts)?;
    s.log.info(&format!(
        "Model {}: {} parameters in {} bucket(s); {} process(es) on {:?}; compression {}{}",
        cfg.model.name(),
        flat.numel(),
        reducer.buckets().len(),
        world,
        s.device,
        compression_name,
        if threads.parts > 1 {
            format!(
                "; each batch split across {} threads of {} intra-op thread(s)",
                threads.parts, threads.intra_op
            )
        } else {
            String::new()
        }
    ));

    let sampler = DistributedSampler::try_new(train_set.len, world, rank, true, cfg.seed)?;
    let per_rank = sampler.num_samples();
    let batches = per_rank.div_ceil(cfg.batch_size);
    let last_epoch = cfg.stop_after.map_or(cfg.epochs, |n| n.min(cfg.epochs));
    for epoch in start_epoch..last_epoch {
        let lr = cosine_lr(cfg.lr, epoch, cfg.epochs);
        let order = Tensor::from_slice(
            &sampler
                .indices(epoch as u64)
                .iter()
                .map(|&i| i as i64)
                .collect::<Vec<_>>(),
        )
        .to_device(s.device);
        let bar = s.progress_bar(batches as u64, epoch + 1);
        // Gradient traffic only (not metrics or --check-sync collectives).
        let mut grad_sent = 0u64;
        let mut stats = Tensor::zeros([3], (Kind::Double, s.device));
        let t0 = Instant::now();
        for b in 0..batches {
            let lo = b * cfg.batch_size;
            let n = cfg.batch_size.min(per_rank - lo);
            let (x, y) = train_set.gather(&order.narrow(0, lo as i64, n as i64));
            let out = splitter.forward_backward(&model, &mut flat, &x, &y)?;
            let (loss, c1, c5) = (out.loss, out.correct1, out.correct5);
            if nccl_grads {
                let nccl = s.nccl.as_ref().expect("checked above");
                grad_sent += crate::gpu_sync::reduce(nccl, &mut flat.grads, cfg.compression)?;
            } else if world > 1 {
                let before = s.comm.bytes_sent();
                reducer.reduce(&mut flat.grads, s.comm.as_mut())?;
                grad_sent += s.comm.bytes_sent() - before;
            }
            sgd.step(&mut flat.params, &mut flat.grads, lr);
            step += 1;
            let batch_stats = Tensor::stack(
                &[
                    loss.to_kind(Kind::Double) * n as f64,
                    c1.to_kind(Kind::Double),
                    c5.to_kind(Kind::Double),
                ],
                0,
            );
            stats += batch_stats;
            if cfg.check_sync > 0 && step % cfg.check_sync as u64 == 0 {
                check_sync(&mut flat, s.comm.as_mut(), step)?;
            }
            if b % cfg.log_interval == 0 && rank == 0 {
                let l = loss.double_value(&[]);
                let acc = 100.0 * c1.int64_value(&[]) as f64 / n as f64;
                let seen = (lo + n) * world;
                let msg = format!(
                    "Train Epoch: {} [{}/{} ({:.0}%)]\tLoss: {:.6}\tAcc: {:.2}%",
                    epoch + 1,
                    seen,
                    per_rank * world,
                    100.0 * (b + 1) as f64 / batches as f64,
                    l,
                    acc
                );
                match &bar {
                    Some(pb) => {
                        pb.set_message(format!("loss {l:.4} acc {acc:.1}%"));
                        s.log.file_only(&msg);
                    }
                    None => s.log.info(&msg),
                }
            }
            if let Some(pb) = &bar {
                pb.inc(1);
            }
        }
        let train_secs = t0.elapsed().as_secs_f64();
        if let Some(pb) = bar {
            pb.finish_and_clear();
        }
        let bytes_per_step = grad_sent as f64 / batches as f64;
        // What `none` would send per step (ring all-reduce of the f32 gradient).
        let dense_bytes = (2 * flat.numel() * 4 * (world - 1) / world) as f64;
        let compression_ratio =
            (world > 1 && bytes_per_step > 0.0).then(|| dense_bytes / bytes_per_step);
        let mut tstats: Vec<f32> = {
            let v = crate::flat::tensor_to_vec(&stats);
            vec![v[0], v[1], v[2], per_rank as f32]
        };
        s.comm.all_reduce_f32(&mut tstats, ReduceOp::Sum)?;
        let ntrain = tstats[3] as f64;
        threads.evaluation();
        let test = evaluate(&model, &test_set, cfg.test_batch_size, s.comm.as_mut());
        threads.training();
        let test = test?;
        if rank == 0 {
            s.log.info(&format!(
                "Train Epoch: {} done: Average loss: {:.4}, Accuracy: {:.2}%, lr {:.6}, {:.2}s ({:.0} images/s)",
                epoch + 1,
                tstats[0] as f64 / ntrain,
                100.0 * tstats[1] as f64 / ntrain,
                lr,
                train_secs,
                ntrain / train_secs
            ));
            if let Some(r) = compression_ratio {
                s.log.info(&format!(
                    "Gradient traffic ({compression_name}): {bytes_per_step:.0} bytes/step/rank, compression ratio {r:.1}x vs none"
                ));
            }
            log_test(s, &test);
            if test.top1() > best_acc {
                best_acc = test.top1();
                let file = cfg.path.join(MODEL_FILE);
                mnist_checkpoint::save_state_dict(&file, &state::named_tensors(&model))?;
                s.log.info(&format!(
                    "Save model with best accuracy: {:.2}% to {}",
                    best_acc,
                    file.display()
                ));
            }
            s.log
                .info(&format!("Current best test accuracy: {:.2}%", best_acc));
            metrics::append(
                &cfg.path.join(METRICS_FILE),
                &EpochRecord {
                    epoch: epoch + 1,
                    lr,
                    train_loss: tstats[0] as f64 / ntrain,
                    train_top1: 100.0 * tstats[1] as f64 / ntrain,
                    train_top5: 100.0 * tstats[2] as f64 / ntrain,
                    test_loss: test.avg_loss(),
                    test_top1: test.top1(),
                    test_top5: test.top5(),
                    epoch_seconds: train_secs,
                    images_per_second: ntrain / train_secs,
                    world_size: world,
                    compression: compression_name.to_string(),
                    bytes_sent_per_step: bytes_per_step,
                    compression_ratio,
                },
            )
            .map_err(|e| TrainError::OutputDir {
                path: cfg.path.clone(),
                source: e,
            })?;
            resume::save(
                &ckpt_path,
                &resume::ResumeState {
                    model: cfg.model.name().into(),
                    epochs: cfg.epochs,
                    seed: cfg.seed,
                    world_size: world,
                    next_epoch: epoch + 1,
                    step,
                    best_acc,
                    params: flat.params_to_vec(),
                    momentum: sgd.momentum_buffer().map(crate::flat::tensor_to_vec),
                },
            )?;
        } else {
            best_acc = best_acc.max(test.top1());
        }
    }
    if last_epoch < cfg.epochs {
        s.log.info(&format!(
            "Stopped after epoch {last_epoch} of {} (--stop-after-epochs); continue with --resume",
            cfg.epochs
        ));
    } else {
        s.log.info(&format!(
            "Final best Test Accuracy: {:.2}%",
            best_acc.max(0.0)
        ));
    }
    s.comm.barrier()?;
    Ok(())
}

/// How this process uses its CPU threads: while training, each batch is split into `parts`
/// threads of `intra_op` libtorch threads each; evaluation uses all `total` as intra-op threads.
struct CpuThreads {
    total: usize,
    parts: usize,
    intra_op: usize,
}

impl CpuThreads {
    fn for_run(cfg: &TrainConfig, s: &Session) -> Result<CpuThreads, TrainError> {
        let total = s.threads.max(1);
        if s.device != tch::Device::Cpu {
            if cfg.batch_threads.is_some_and(|n| n > 1) {
                return Err(TrainError::Device(format!(
                    "--batch-threads splits batches across CPU threads; this run is on {:?} (leave it out)",
                    s.device
                )));
            }
            return Ok(CpuThreads {
                total,
                parts: 1,
                intra_op: total,
            });
        }
        let parts = cfg.batch_parts(total);
        Ok(CpuThreads {
            total,
            parts,
            intra_op: (total / parts).max(1),
        })
    }

    fn training(&self) {
        tch::set_num_threads(self.intra_op as i32);
    }

    fn evaluation(&self) {
        tch::set_num_threads(self.total as i32);
    }
}

fn check_resumable(
    cfg: &TrainConfig,
    world: usize,
    st: &resume::ResumeState,
    file: &std::path::Path,
) -> Result<(), TrainError> {
    let bad = |what: String| {
        Err(TrainError::Resume {
            file: file.into(),
            detail: what,
        })
    };
    if st.model != cfg.model.name() {
        return bad(format!(
            "it holds a {} model but --model is {}",
            st.model,
            cfg.model.name()
        ));
    }
    if st.epochs != cfg.epochs {
        return bad(format!(
            "it was made with --epochs {} but --epochs is {} (the cosine schedule would differ)",
            st.epochs, cfg.epochs
        ));
    }
    if st.seed != cfg.seed || st.world_size != world {
        return bad(format!(
            "it was made with --seed {} and {} process(es); this run has --seed {} and {} (the data order would differ)",
            st.seed, st.world_size, cfg.seed, world
        ));
    }
    if st.next_epoch >= cfg.epochs {
        return bad(format!(
            "training already finished all {} epochs",
            cfg.epochs
        ));
    }
    Ok(())
}

/// Compare a checksum of the parameters across ranks; a mismatch is an error on every rank.
fn check_sync(
    flat: &mut FlatParams,
    comm: &mut dyn Communicator,
    step: u64,
) -> Result<(), TrainError> {
    let mut staging = Vec::new();
    let sum = with_host_slice(&mut flat.params, &mut staging, |p| {
        p.iter().fold(0xcbf29ce484222325u64, |h, v| {
            (h ^ v.to_bits() as u64).wrapping_mul(0x100000001b3)
        })
    });
    let all = comm.all_gather_bytes(&sum.to_le_bytes())?;
    if all.iter().any(|b| b.as_slice() != sum.to_le_bytes()) {
        let detail = all
            .iter()
            .enumerate()
            .map(|(r, b)| format!("rank {r}: {:02x?}", b))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(TrainError::OutOfSync { step, detail });
    }
    Ok(())
}
