//! The training loop in three parts: [`Trainer::new`] sets up data, model, optimizer, gradient
//! reducer and threads (and resumes); [`Trainer::train_epoch`] trains one epoch on this rank's
//! shard, averaging gradients across ranks every step and stepping SGD with the cosine learning
//! rate; [`Trainer::end_epoch`] reduces the epoch's figures, evaluates, and (rank 0) logs,
//! records metrics, keeps the best model and writes the resumable checkpoint.

use crate::board::{Board, StepSeries};
use crate::breakdown::{self, StepTimes};
use crate::dataset::TensorDataset;
use crate::evaluate::{correct_counts, evaluate, EvalResult};
use crate::fault::Injector;
use crate::flat::FlatParams;
use crate::guard::GradGuard;
use crate::metrics::{self, EpochRecord};
use crate::optim::Sgd;
use crate::phases::{Phase, StepMarks};
use crate::schedule::cosine_lr;
use crate::session::Session;
use crate::split::{BatchSplitter, StepOutput};
use crate::sync::{broadcast_tensor, GradReducer};
use crate::timeline::{Recording, Timeline};
use crate::{interrupt, resume, state, TrainError};
use mnist_comm::{Communicator, ReduceOp};
use mnist_common::contract::{METRICS_FILE, MODEL_FILE};
use mnist_common::panics;
use mnist_common::TrainConfig;
use mnist_data::{DistributedSampler, Split};
use mnist_models::net::{self, Dropout};
use mnist_models::Model;
use std::path::PathBuf;
use std::time::Instant;
use tch::{Kind, Tensor};

/// Train (or, with `--evaluate`, evaluate) as configured, in an established session.
pub fn run_session(cfg: &TrainConfig, s: &mut Session) -> Result<(), TrainError> {
    if let Some(file) = &cfg.evaluate {
        return evaluate_file(cfg, s, file);
    }
    let mut t = Trainer::new(cfg, s)?;
    for epoch in t.start_epoch..t.last_epoch {
        let stats = t.train_epoch(s, epoch)?;
        t.end_epoch(s, epoch, &stats)?;
    }
    t.finish(s)
}

/// Load `splits` for this rank: one copy per machine, shared by its CPU ranks
/// ([`crate::dataset::load_splits`]).
fn load_data(
    cfg: &TrainConfig,
    s: &mut Session,
    splits: &[Split],
) -> Result<Vec<TensorDataset>, TrainError> {
    let mut notes = Vec::new();
    let sets = crate::dataset::load_splits(
        &cfg.data,
        splits,
        s.device,
        &s.identity,
        s.comm.as_mut(),
        &mut |n| notes.push(n),
    )?;
    for n in notes {
        eprintln!("{n}");
    }
    Ok(sets)
}

fn evaluate_file(
    cfg: &TrainConfig,
    s: &mut Session,
    file: &std::path::Path,
) -> Result<(), TrainError> {
    let mut model = Model::new(cfg.model, s.device);
    state::load_into(&mut model, file)?;
    let test = load_data(cfg, s, &[Split::Test])?
        .pop()
        .expect("one split asked, one returned");
    let r = guarded("evaluation", || {
        evaluate(&model, &test, cfg.test_batch_size, s.comm.as_mut())
    })??;
    s.log.info(&format!(
        "Evaluating {} ({})",
        file.display(),
        cfg.model.name()
    ));
    log_test(s, &r);
    Ok(())
}

/// Run `f`, turning a libtorch error (which tch reports by panicking) into
/// [`TrainError::Torch`] naming `during`.
fn guarded<T>(during: &'static str, f: impl FnOnce() -> T) -> Result<T, TrainError> {
    panics::catch(f).map_err(|p| TrainError::from_panic(p, during))
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

/// What one epoch of training measured on this rank.
#[derive(Debug)]
pub struct EpochStats {
    /// The epoch's learning rate.
    pub lr: f64,
    /// Summed loss, top-1 and top-5 counts over this rank's samples (f64 tensor `[3]`, kept
    /// on the device so a step never waits for it).
    pub sums: Tensor,
    /// Samples this rank trained on.
    pub samples: usize,
    /// Seconds in the training loop.
    pub seconds: f64,
    /// CPU seconds this process (all its threads) used in the training loop, since the
    /// resume for an epoch resumed inside.
    pub cpu_seconds: f64,
    /// Gradient bytes this rank sent per step (metrics and checks not counted).
    pub bytes_per_step: f64,
    /// This rank's compute and gradient-reduction time per step ([`crate::breakdown`]).
    pub times: StepTimes,
    /// Rank 0 with `--tensorboard`: the loss of each step (else empty).
    pub steps: StepSeries,
}

/// A run's state from one epoch to the next.
pub struct Trainer<'c> {
    cfg: &'c TrainConfig,
    train_set: TensorDataset,
    test_set: TensorDataset,
    model: Model,
    flat: FlatParams,
    sgd: Sgd,
    reducer: GradReducer,
    threads: CpuThreads,
    splitter: BatchSplitter,
    sampler: DistributedSampler,
    /// Net's dropout stream (seeded from `--seed`, the rank and the epoch); None for LeNet
    /// and MLP.
    dropout: Option<Dropout>,
    /// Whether BatchNorm statistics are summed over ranks (`--sync-bn`).
    sync_bn: bool,
    ckpt_path: PathBuf,
    /// Where inside `start_epoch` a mid-epoch checkpoint left off (taken by the first epoch).
    resume_point: Option<ResumePoint>,
    faults: Injector,
    guard: GradGuard,
    trace: crate::trace::SampleTrace,
    /// Rank 0's curves, progress bar plan and run summary.
    report: crate::report::Reporter,
    /// Rank 0 with `--tensorboard`: the event file.
    board: Option<Board>,
    /// `--profile-steps`: this rank's timeline.
    timeline: Timeline,
    /// Whether the time breakdown is on (`MNIST_TIME_BREAKDOWN`, default on).
    timed: bool,
    /// First epoch (0-based) this run trains.
    pub start_epoch: usize,
    /// Epoch (exclusive) this run stops at.
    pub last_epoch: usize,
    /// Optimizer steps taken.
    pub step: u64,
    /// Best test accuracy so far (percent; negative before the first evaluation).
    pub best_acc: f64,
}

impl<'c> Trainer<'c> {
    /// Load the data, build the model (or resume it), give every rank rank 0's parameters,
    /// and set up the gradient reducer and the CPU threads.
    pub fn new(cfg: &'c TrainConfig, s: &mut Session) -> Result<Trainer<'c>, TrainError> {
        let (rank, world) = (s.comm.rank(), s.comm.world_size());
        let [train_set, test_set]: [TensorDataset; 2] =
            load_data(cfg, s, &[Split::Train, Split::Test])?
                .try_into()
                .expect("two splits asked, two returned");
        s.log.info(&format!(
            "Data: {} training and {} test images as bytes, normalised per batch; {}",
            train_set.len,
            test_set.len,
            if train_set.is_shared() {
                "one copy in shared memory for the ranks of this machine"
            } else {
                "this process's own copy"
            }
        ));

        tch::manual_seed(cfg.seed as i64);
        let mut model = Model::new(cfg.model, s.device);
        let mut flat = FlatParams::new(&mut model);
        let mut sgd = Sgd::new(cfg.momentum, cfg.weight_decay);
        let (mut start_epoch, mut step, mut best_acc) = (0usize, 0u64, -1.0f64);
        let mut resume_point = None;
        let ckpt_path = resume::path_in(&cfg.path);
        if rank == 0 {
            let n = resume::remove_stale_temporaries(&cfg.path);
            if n > 0 {
                s.log.info(&format!("Removed {n} temporary checkpoint file(s) left by a writer that died before its rename"));
            }
        }
        if cfg.resume {
            // Only rank 0's machine holds the file: rank 0 reads it, every rank gets it.
            let st = resume::load_shared(&ckpt_path, s.comm.as_mut())?;
            resume::check(cfg, world, s.elastic, &st, &ckpt_path)?;
            flat.params_from_slice(&st.params);
            load_buffers(&mut model, &st.buffers).map_err(|detail| TrainError::Resume {
                file: ckpt_path.clone(),
                detail,
            })?;
            sgd.set_momentum_buffer(
                st.momentum
                    .as_ref()
                    .map(|m| Tensor::from_slice(m).to_device(s.device)),
            );
            (start_epoch, step, best_acc) = (st.next_epoch, st.step, st.best_acc);
            let (mut offset, mut batches_done) = (st.epoch_offset, st.batches_done);
            if st.world_size != world {
                // Elastic: the samples the old layout trained form a prefix of the epoch's
                // order; the rest is re-sharded over this world, the per-rank batch stays.
                offset += batches_done * cfg.batch_size * st.world_size;
                batches_done = 0;
                s.log.info(&format!(
                    "Elastic: world size {world} (was {}): per-rank batch {}, global batch {} (was {}); epoch {} continues after sample {offset} of its order, the remaining {} re-sharded over {world} processes",
                    st.world_size,
                    cfg.batch_size,
                    cfg.batch_size * world,
                    cfg.batch_size * st.world_size,
                    st.next_epoch + 1,
                    train_set.len.saturating_sub(offset)
                ));
            }
            let within = if batches_done > 0 || offset > 0 {
                resume_point = Some(ResumePoint {
                    offset,
                    batches_done,
                    sums: st.epoch_sums,
                    seconds: st.epoch_seconds,
                });
                format!(", batch {}", batches_done + 1)
            } else {
                String::new()
            };
            s.log.info(&format!(
                "Resuming from {} at epoch {}{within} (step {step}; best so far {:.2}%)",
                ckpt_path.display(),
                start_epoch + 1,
                best_acc.max(0.0)
            ));
        }
        // Every rank starts from rank 0's parameters (and buffers).
        broadcast_tensor(s.comm.as_mut(), &mut flat.params, 0)?;
        crate::batchnorm::broadcast_buffers(&mut model, s.comm.as_mut())?;
        let sync_bn = cfg.sync_bn_for(world);
        if cfg.model.has_batch_norm() {
            s.log.info(&if sync_bn {
                format!("BatchNorm: batch statistics synchronised across {world} processes (SyncBatchNorm)")
            } else if world > 1 {
                "BatchNorm: each process normalises with its own batch; rank 0's running statistics are broadcast every step".to_string()
            } else {
                "BatchNorm: statistics of this process's batch".to_string()
            });
        }
        let cap = (cfg.bucket_cap_mb * 1024.0 * 1024.0) as usize;
        let reducer = GradReducer::new(
            flat.slots(),
            cap,
            &mnist_compress::CompressionParams {
                kind: cfg.compression,
                topk_ratio: cfg.topk_ratio,
                powersgd_rank: cfg.powersgd_rank,
                powersgd_start_iter: cfg.powersgd_start_iter,
                seed: cfg.seed,
            },
        );
        if s.comm.device().is_some() && !reducer.runs_on_device(s.comm.as_mut(), s.device) {
            s.log.info("Note: this compression method needs all-gathers; its collectives go through the CPU backend (host staging)");
        }
        let threads = CpuThreads::for_run(cfg, s)?;
        threads.training();
        let splitter = BatchSplitter::new(&model, &flat, threads.parts)?;
        s.log.info(&format!(
            "Model {}: {} parameters in {} bucket(s); {} process(es) on {:?}; compression {}{}",
            cfg.model.name(),
            flat.numel(),
            reducer.buckets().len(),
            world,
            s.device,
            reducer.method(),
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
        let last_epoch = cfg.stop_after.map_or(cfg.epochs, |n| n.min(cfg.epochs));
        let timeline = Timeline::new(cfg.profile_steps, rank, reducer.method());
        let board = match (&cfg.tensorboard, rank) {
            (Some(dir), 0) => {
                let b = Board::open(dir)?;
                s.log.info(&format!(
                    "TensorBoard: writing {} (view with: tensorboard --logdir {})",
                    b.path().display(),
                    dir.display()
                ));
                Some(b)
            }
            _ => None,
        };
        Ok(Trainer {
            cfg,
            train_set,
            test_set,
            model,
            flat,
            sgd,
            reducer,
            threads,
            splitter,
            sampler,
            // Set per epoch in `train_epoch`.
            dropout: cfg
                .model
                .has_batch_norm()
                .then(|| Dropout::new(cfg.seed, rank, 0)),
            sync_bn,
            ckpt_path,
            resume_point,
            faults: Injector::new(&s.faults, rank, s.restart_round),
            guard: GradGuard::new(rank, s.device),
            trace: crate::trace::SampleTrace::from_env(s.restart_round)?,
            report: Default::default(),
            board,
            timeline,
            timed: std::env::var(mnist_common::contract::ENV_TIME_BREAKDOWN)
                .map_or(true, |v| v.trim() != "0"),
            start_epoch,
            last_epoch,
            step,
            best_acc,
        })
    }

    /// Train epoch `epoch` (0-based) on this rank's shard: per batch, forward and backward
    /// (split across threads), average the gradients across ranks, step SGD. Stops between
    /// steps when the worker was told to ([`interrupt::pending`]).
    pub fn train_epoch(&mut self, s: &mut Session, epoch: usize) -> Result<EpochStats, TrainError> {
        let cfg = self.cfg;
        let (rank, world) = (s.comm.rank(), s.comm.world_size());
        // A mid-epoch checkpoint: start at its batch; rank 0 carries every rank's figures so
        // far (the epoch's totals are summed over ranks at its end). After a change of the
        // world size the epoch's rest (from `offset`) is sharded anew.
        let resumed = self.resume_point.take().unwrap_or_default();
        let offset = resumed.offset;
        let per_rank = self.sampler.num_samples_from(offset);
        let batches = per_rank.div_ceil(cfg.batch_size);
        let lr = cosine_lr(cfg.lr, epoch, cfg.epochs);
        let indices = self.sampler.indices_from(epoch as u64, offset);
        let order = Tensor::from_slice(&indices.iter().map(|&i| i as i64).collect::<Vec<_>>())
            .to_device(s.device);
        let plan = self.report.start_epoch(cfg, world, epoch, self.last_epoch);
        let bar = s.progress_bar(batches as u64, epoch + 1, plan);
        let mut grad_sent = 0u64;
        let mut sums = Tensor::zeros([3], (Kind::Double, s.device));
        if rank == 0 {
            sums += Tensor::from_slice(&resumed.sums).to_device(s.device);
        }
        if let Some(pb) = &bar {
            pb.set_position(resumed.batches_done as u64);
        }
        let mut times = StepTimes::default();
        // Rank 0 with --tensorboard: each step's loss, copied into one tensor on the loss's
        // device (no per-step tensors kept alive, no device sync inside the loop).
        let mut step_loss: Option<Tensor> = None;
        let mut losses_kept = 0i64;
        let mut steps = StepSeries {
            first_step: self.step,
            ..StepSeries::default()
        };
        let t0 = Instant::now();
        let cpu0 = process_cpu_seconds();
        for b in resumed.batches_done..batches {
            if let Some(signal) = interrupt::pending() {
                return Err(TrainError::Interrupted { signal });
            }
            let (tracing, mut calls) = (self.timeline.active(self.step), Vec::new());
            let mut parts = Vec::new();
            let mut marks = StepMarks::start_if(self.timed || tracing);
            if self.faults.before_step(self.step) {
                marks.mark(Phase::Delay);
            }
            if let Some(d) = self.dropout.as_mut() {
                // Each batch's masks are a function of seed, rank, epoch and batch (as is the
                // data order), so a run resumed at an epoch or inside one continues exactly.
                *d = Dropout::at_batch(cfg.seed, rank, epoch, b);
            }
            let lo = b * cfg.batch_size;
            let n = cfg.batch_size.min(per_rank - lo);
            let (loss, c1) = guarded("training step", || -> Result<_, TrainError> {
                let (x, y) = self.train_set.gather(&order.narrow(0, lo as i64, n as i64));
                marks.mark(Phase::Data);
                let out = match self.dropout.as_mut() {
                    // Net: one thread, BatchNorm statistics through the communicator.
                    Some(dropout) => {
                        self.flat.zero_grads();
                        if world > 1 && !self.sync_bn {
                            crate::batchnorm::broadcast_buffers(&mut self.model, s.comm.as_mut())?;
                        }
                        let sync = self.sync_bn;
                        let comm = s.comm.as_mut();
                        let mut reduce = |v: &mut [f64]| {
                            if sync {
                                crate::batchnorm::sum_over_ranks(comm, v)
                            } else {
                                Ok(())
                            }
                        };
                        let st =
                            net::train_step(&self.model, &x, &y, 1.0, Some(dropout), &mut reduce)?;
                        let (correct1, correct5) = tch::no_grad(|| correct_counts(&st.output, &y));
                        StepOutput {
                            loss: st.loss.to_kind(Kind::Float),
                            correct1,
                            correct5,
                            forward_end: None,
                            parts: Vec::new(),
                        }
                    }
                    None => self
                        .splitter
                        .forward_backward(&self.model, &mut self.flat, &x, &y)?,
                };
                if let Some(t) = out.forward_end {
                    marks.set(Phase::Forward, t);
                }
                parts = out.parts;
                marks.mark(Phase::Backward);
                if self.faults.corrupts_gradient(self.step) {
                    let _ = self.flat.grads.fill_(f64::NAN);
                }
                self.guard.observe(&self.flat.grads, self.step)?;
                if let (true, tch::Device::Cuda(d)) = (world > 1, s.device) {
                    // Kernels run asynchronously: finish this step's before timing the
                    // reduction, which waits for them anyway.
                    tch::Cuda::synchronize(d as i64);
                }
                marks.mark(Phase::Check);
                if world > 1 {
                    let before = s.comm.bytes_sent();
                    let mut rec;
                    let comm: &mut dyn Communicator = if tracing {
                        rec = Recording::new(s.comm.as_mut(), &mut calls);
                        &mut rec
                    } else {
                        s.comm.as_mut()
                    };
                    // SAFETY: the batch-split helpers only touch the gradient buffers inside
                    // `forward_backward`, which has returned; nothing else shares
                    // `flat.grads` on another thread.
                    unsafe { self.reducer.reduce(&mut self.flat.grads, comm) }?;
                    grad_sent += s.comm.bytes_sent() - before;
                    marks.mark(Phase::Reduce);
                }
                self.sgd
                    .step(&mut self.flat.params, &mut self.flat.grads, lr);
                sums += Tensor::stack(
                    &[
                        out.loss.to_kind(Kind::Double) * n as f64,
                        out.correct1.to_kind(Kind::Double),
                        out.correct5.to_kind(Kind::Double),
                    ],
                    0,
                );
                marks.mark(Phase::Optimizer);
                Ok((out.loss, out.correct1))
            })??;
            self.trace.record(self.step, epoch, &indices[lo..lo + n])?;
            times.push(marks.compute(), marks.reduce());
            if tracing {
                self.timeline
                    .step(self.step, &marks, &calls, &parts, times.len() - 1);
            }
            if self.board.is_some() {
                // Detached: the step's autograd graph is not kept alive until the epoch ends.
                let all = step_loss.get_or_insert_with(|| {
                    Tensor::zeros(
                        [(batches - resumed.batches_done).max(1) as i64],
                        (Kind::Float, loss.device()),
                    )
                });
                tch::no_grad(|| {
                    all.narrow(0, losses_kept, 1)
                        .copy_(&loss.detach().reshape([1]))
                });
                losses_kept += 1;
                steps.wall_time.push(mnist_tensorboard::now());
            }
            self.step += 1;
            if cfg.checkpoint_every > 0
                && self.step.is_multiple_of(cfg.checkpoint_every as u64)
                && b + 1 < batches
            {
                let point = ResumePoint {
                    offset,
                    batches_done: b + 1,
                    sums: [0.0; 3],
                    seconds: resumed.seconds + t0.elapsed().as_secs_f64(),
                };
                self.save_within_epoch(s, epoch, point, &sums)?;
            }
            if cfg.check_sync > 0 && self.step.is_multiple_of(cfg.check_sync as u64) {
                self.guard.check()?;
                // With SyncBatchNorm the running statistics must agree too.
                let buffers = if self.sync_bn {
                    self.model.buffer_values().concat()
                } else {
                    Vec::new()
                };
                check_sync(&self.flat, &buffers, s.comm.as_mut(), self.step)?;
            }
            if b % cfg.log_interval == 0 && rank == 0 {
                let l = loss.double_value(&[]);
                let acc = 100.0 * c1.int64_value(&[]) as f64 / n as f64;
                let msg = format!(
                    "Train Epoch: {} [{}/{} ({:.0}%)]\tLoss: {:.6}\tAcc: {:.2}%",
                    epoch + 1,
                    offset + (lo + n) * world,
                    offset + per_rank * world,
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
            } else if b % cfg.log_interval == 0 {
                // The other ranks note their progress in their own rank<N>.log (a node without
                // rank 0 shows it in its launcher's status line).
                s.log.info(&format!(
                    "rank {rank}: epoch {} step {}/{batches}",
                    epoch + 1,
                    b + 1
                ));
            }
            if let Some(pb) = &bar {
                pb.inc(1);
            }
        }
        self.guard.check()?;
        let seconds = resumed.seconds + t0.elapsed().as_secs_f64();
        let cpu_seconds = process_cpu_seconds() - cpu0;
        if let Some(pb) = bar {
            pb.finish_and_clear();
        }
        Ok(EpochStats {
            lr,
            sums,
            // Rank 0 also counts the places trained before a change of the world size.
            samples: per_rank + if rank == 0 { offset } else { 0 },
            seconds,
            cpu_seconds,
            bytes_per_step: grad_sent as f64 / (batches - resumed.batches_done).max(1) as f64,
            times,
            steps: StepSeries {
                loss: match &step_loss {
                    Some(all) => crate::flat::tensor_to_vec(&all.narrow(0, 0, losses_kept)),
                    None => Vec::new(),
                },
                ..steps
            },
        })
    }

    /// Reduce the epoch's figures over ranks and evaluate; on rank 0 log them, save the model
    /// when it is the best so far, append to `metrics.jsonl` and write the resumable checkpoint.
    pub fn end_epoch(
        &mut self,
        s: &mut Session,
        epoch: usize,
        stats: &EpochStats,
    ) -> Result<(), TrainError> {
        let cfg = self.cfg;
        let (rank, world) = (s.comm.rank(), s.comm.world_size());
        // What `none` would send per step (ring all-reduce of the f32 gradient).
        let dense_bytes = (2 * self.flat.numel() * 4 * (world - 1) / world) as f64;
        let compression_ratio =
            (world > 1 && stats.bytes_per_step > 0.0).then(|| dense_bytes / stats.bytes_per_step);
        let mut totals: Vec<f32> = {
            let v = crate::flat::tensor_to_vec(&stats.sums);
            vec![v[0], v[1], v[2], stats.samples as f32]
        };
        s.comm.all_reduce_f32(&mut totals, ReduceOp::Sum)?;
        let all_times = if self.timed {
            breakdown::gather(s.comm.as_mut(), &stats.times)?
        } else {
            Vec::new()
        };
        self.timeline.epoch_times(&all_times);
        let ntrain = totals[3] as f64;
        let (train_loss, train_top1, train_top5) = (
            totals[0] as f64 / ntrain,
            100.0 * totals[1] as f64 / ntrain,
            100.0 * totals[2] as f64 / ntrain,
        );
        if world > 1 && !self.sync_bn {
            // Evaluate and save with rank 0's running statistics, as the next step would use.
            crate::batchnorm::broadcast_buffers(&mut self.model, s.comm.as_mut())?;
        }
        self.threads.evaluation();
        let eval_start = Instant::now();
        let test = guarded("evaluation", || {
            evaluate(
                &self.model,
                &self.test_set,
                cfg.test_batch_size,
                s.comm.as_mut(),
            )
        });
        self.threads.training();
        let test = test??;
        if self
            .step
            .checked_sub(1)
            .is_some_and(|s| self.timeline.active(s))
        {
            self.timeline.evaluation(eval_start);
        }
        let trace = if self.timeline.due(self.step, epoch + 1 == self.last_epoch) {
            self.timeline.write(s.comm.as_mut(), &cfg.path)?
        } else {
            None
        };
        if rank != 0 {
            self.best_acc = self.best_acc.max(test.top1());
            return Ok(());
        }
        let images_per_second = ntrain / stats.seconds;
        s.log.info(&format!(
            "Train Epoch: {} done: Average loss: {:.4}, Accuracy: {:.2}%, lr {:.6}, {:.2}s ({:.0} images/s)",
            epoch + 1,
            train_loss,
            train_top1,
            stats.lr,
            stats.seconds,
            images_per_second
        ));
        let time = breakdown::summarize(&all_times);
        if self.timed {
            s.log.info(&time.log_line());
        }
        if let Some(r) = compression_ratio {
            s.log.info(&format!(
                "Gradient traffic ({}): {:.0} bytes/step/rank, compression ratio {r:.1}x vs none",
                self.reducer.method(),
                stats.bytes_per_step
            ));
        }
        log_test(s, &test);
        if test.top1() > self.best_acc {
            self.best_acc = test.top1();
            let file = cfg.path.join(MODEL_FILE);
            state::save(&self.model, &file)?;
            s.log.info(&format!(
                "Save model with best accuracy: {:.2}% to {}",
                self.best_acc,
                file.display()
            ));
        }
        s.log.info(&format!(
            "Current best test accuracy: {:.2}%",
            self.best_acc
        ));
        if let (Some(path), Some(w)) = (trace, cfg.profile_steps) {
            s.log.info(&format!(
                "Timeline of steps {}..{} on every rank: {} (open in ui.perfetto.dev or chrome://tracing)",
                w.start,
                w.end,
                path.display()
            ));
        }
        let rec = EpochRecord {
            epoch: epoch + 1,
            lr: stats.lr,
            train_loss,
            train_top1,
            train_top5,
            test_loss: test.avg_loss(),
            test_top1: test.top1(),
            test_top5: test.top5(),
            epoch_seconds: stats.seconds,
            epoch_cpu_seconds: stats.cpu_seconds,
            images_per_second,
            world_size: world,
            compression: self.reducer.method().to_string(),
            bytes_sent_per_step: stats.bytes_per_step,
            compression_ratio,
            restarts: s.restart_round,
            time,
        };
        metrics::append(&cfg.path.join(METRICS_FILE), &rec).map_err(|e| TrainError::OutputDir {
            path: cfg.path.clone(),
            source: e,
        })?;
        self.report.end_epoch(cfg, &s.log);
        if let Some(b) = self.board.as_mut() {
            b.epoch(&stats.steps, self.step, &rec)?;
        }
        let state = self.resume_state(world, epoch + 1, ResumePoint::default());
        resume::save_with_hook(&self.ckpt_path, &state, || {
            self.faults.in_checkpoint_write(self.step)
        })
    }

    /// The checkpoint of this moment: `next_epoch` with `point` (0 batches done: its start).
    fn resume_state(
        &self,
        world: usize,
        next_epoch: usize,
        point: ResumePoint,
    ) -> resume::ResumeState {
        let cfg = self.cfg;
        resume::ResumeState {
            model: cfg.model.name().into(),
            epochs: cfg.epochs,
            seed: cfg.seed,
            world_size: world,
            batch_size: Some(cfg.batch_size),
            next_epoch,
            epoch_offset: point.offset,
            batches_done: point.batches_done,
            epoch_sums: point.sums,
            epoch_seconds: point.seconds,
            step: self.step,
            best_acc: self.best_acc,
            params: self.flat.params_to_vec(),
            buffers: self.model.buffer_values().concat(),
            momentum: self.sgd.momentum_buffer().map(crate::flat::tensor_to_vec),
        }
    }

    /// `--checkpoint-every`: sum the epoch's figures so far over the ranks (every rank takes
    /// part) and let rank 0 write the checkpoint at `point` inside `epoch`.
    fn save_within_epoch(
        &mut self,
        s: &mut Session,
        epoch: usize,
        mut point: ResumePoint,
        sums: &Tensor,
    ) -> Result<(), TrainError> {
        // Never write a checkpoint with a gradient the guard has not cleared (GPU: deferred).
        self.guard.check()?;
        let mut v = crate::flat::tensor_to_vec(&sums.to_kind(Kind::Float));
        s.comm.all_reduce_f32(&mut v, ReduceOp::Sum)?;
        if s.comm.rank() != 0 {
            return Ok(());
        }
        point.sums = [v[0] as f64, v[1] as f64, v[2] as f64];
        let state = self.resume_state(s.comm.world_size(), epoch, point);
        resume::save_with_hook(&self.ckpt_path, &state, || {
            self.faults.in_checkpoint_write(self.step)
        })?;
        s.log.file_only(&format!(
            "Checkpoint: epoch {}, {} batch(es) done, step {} -> {}",
            epoch + 1,
            state.batches_done,
            self.step,
            self.ckpt_path.display()
        ));
        Ok(())
    }

    /// Log the end of the run and wait for every rank.
    pub fn finish(mut self, s: &mut Session) -> Result<(), TrainError> {
        let cfg = self.cfg;
        if self.last_epoch < cfg.epochs {
            s.log.info(&format!(
                "Stopped after epoch {} of {} (--stop-after-epochs); continue with --resume",
                self.last_epoch, cfg.epochs
            ));
        } else {
            s.log.info(&format!(
                "Final best Test Accuracy: {:.2}%",
                self.best_acc.max(0.0)
            ));
        }
        if s.comm.rank() == 0 {
            let sent = s.comm.bytes_sent();
            let resumed = cfg.resume || s.restart_round > 0;
            self.report.finish(cfg, &s.log, s.started, sent, resumed);
        }
        s.comm.barrier()?;
        Ok(())
    }
}

/// A position inside an epoch that a mid-epoch checkpoint records.
#[derive(Clone, Copy, Debug, Default)]
struct ResumePoint {
    /// Places of the epoch's order trained before the current shard layout (world size).
    offset: usize,
    /// Batches of the epoch every rank has trained in the current layout.
    batches_done: usize,
    /// Over all ranks, summed loss, top-1 and top-5 counts of those batches.
    sums: [f64; 3],
    /// Seconds spent on them.
    seconds: f64,
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

/// Copy the flat buffer values of a resumable checkpoint into `model`.
fn load_buffers(model: &mut Model, flat: &[f32]) -> Result<(), String> {
    let sizes: Vec<usize> = model.buffers().iter().map(|b| b.tensor.numel()).collect();
    if flat.len() != sizes.iter().sum::<usize>() {
        return Err(format!(
            "it holds {} buffer values but model {} has {}",
            flat.len(),
            model.kind().name(),
            sizes.iter().sum::<usize>()
        ));
    }
    let mut rest = flat;
    let mut values = Vec::new();
    for n in sizes {
        let (head, tail) = rest.split_at(n);
        values.push(head.to_vec());
        rest = tail;
    }
    model.load_buffer_values(&values).map_err(|e| e.to_string())
}

/// Compare a checksum of the parameters (and `buffers`) across ranks; a mismatch is an error
/// on every rank.
fn check_sync(
    flat: &FlatParams,
    buffers: &[f32],
    comm: &mut dyn Communicator,
    step: u64,
) -> Result<(), TrainError> {
    let sum = flat
        .params_to_vec()
        .iter()
        .chain(buffers)
        .fold(0xcbf29ce484222325u64, |h, v| {
            (h ^ v.to_bits() as u64).wrapping_mul(0x100000001b3)
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

/// CPU seconds used so far by this process, all threads together (0 where the clock cannot
/// be read).
fn process_cpu_seconds() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into our local.
    if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) } != 0 {
        return 0.0;
    }
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}
