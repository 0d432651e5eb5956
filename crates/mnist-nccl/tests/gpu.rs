//! GPU tests (feature build): real all-reduce and broadcast on device buffers made with
//! cudarc's driver API, and the timeout path. Each records a visible skip (`mnist_testkit`) and
//! returns when [`mnist_nccl::available`] fails, so they pass on CPU machines.
#![cfg(feature = "nccl")]

use cudarc::driver::{CudaContext, CudaSlice, DevicePtr};
use half::{bf16, f16};
use mnist_nccl::{available, new_unique_id, NcclComm, NcclDType, NcclError, NcclOp};
use std::time::{Duration, Instant};

fn gpu_or_skip(test: &str) -> bool {
    match available() {
        Ok(()) => true,
        Err(e) => {
            mnist_testkit::skip(test, "gpu", &format!("no CUDA GPU: {e}"));
            false
        }
    }
}

fn device_count() -> usize {
    cudarc::driver::result::device::get_count().map_or(0, |n| n.max(0) as usize)
}

/// Raw device address of a cudarc buffer.
fn addr<T>(buf: &CudaSlice<T>, ctx: &std::sync::Arc<CudaContext>) -> u64 {
    let stream = ctx.default_stream();
    let (p, _sync) = buf.device_ptr(&stream);
    p
}

/// Upload `host`, run `f` on its device address, download the result.
fn on_device<T>(ordinal: usize, host: &[T], f: impl FnOnce(u64)) -> Vec<T>
where
    T: cudarc::driver::DeviceRepr + Default + Clone,
{
    let ctx = CudaContext::new(ordinal).expect("context");
    let stream = ctx.default_stream();
    let buf = stream.clone_htod(host).expect("htod");
    f(addr(&buf, &ctx));
    stream.clone_dtoh(&buf).expect("dtoh")
}

#[test]
fn world_of_one_all_reduce_and_broadcast_are_the_identity() {
    if !gpu_or_skip("world_of_one_all_reduce_and_broadcast_are_the_identity") {
        return;
    }
    let id = new_unique_id().expect("unique id");
    let comm = NcclComm::init(&id, 0, 1, 0).expect("init");
    assert_eq!((comm.rank(), comm.world_size()), (0, 1));
    let xs: Vec<f32> = (0..1000).map(|i| i as f32 * 0.25 - 7.0).collect();
    for op in [NcclOp::Sum, NcclOp::Avg] {
        // SAFETY: the buffer holds xs.len() f32 on GPU 0 and lives through the call.
        let got = on_device(0, &xs, |p| unsafe {
            comm.all_reduce_in_place(p, xs.len(), NcclDType::F32, op)
                .expect("all_reduce f32")
        });
        assert_eq!(got, xs, "{op:?}");
    }
    let h: Vec<u16> = xs.iter().map(|&x| f16::from_f32(x).to_bits()).collect();
    // SAFETY: as above, for u16 bit patterns of f16.
    let got = on_device(0, &h, |p| unsafe {
        comm.all_reduce_in_place(p, h.len(), NcclDType::F16, NcclOp::Sum)
            .expect("all_reduce f16")
    });
    assert_eq!(got, h);
    let b: Vec<u16> = xs.iter().map(|&x| bf16::from_f32(x).to_bits()).collect();
    // SAFETY: as above, for bf16 bits; broadcast from the only rank.
    let got = on_device(0, &b, |p| unsafe {
        comm.all_reduce_in_place(p, b.len(), NcclDType::BF16, NcclOp::Avg)
            .expect("all_reduce bf16");
        comm.broadcast_in_place(p, b.len(), NcclDType::BF16, 0)
            .expect("broadcast bf16");
    });
    assert_eq!(got, b);
    // SAFETY: count 0 touches nothing.
    unsafe { comm.all_reduce_in_place(0, 0, NcclDType::F32, NcclOp::Sum) }.expect("empty");
    // SAFETY: root 1 is outside a world of one, so the call is refused before the (bogus)
    // pointer is handed to NCCL; that refusal is what this checks.
    let bad = unsafe { comm.broadcast_in_place(8, 1, NcclDType::F32, 1) };
    assert!(matches!(bad, Err(NcclError::InvalidArgument(_))), "{bad:?}");
    println!("world of one: f32/f16/bf16 all-reduce and broadcast ok");
}

#[test]
fn two_ranks_sum_and_average_across_two_gpus() {
    if !gpu_or_skip("two_ranks_sum_and_average_across_two_gpus") {
        return;
    }
    if device_count() < 2 {
        let why = format!(
            "two ranks need two GPUs, {} visible (NCCL refuses two ranks on one GPU)",
            device_count()
        );
        mnist_testkit::skip("two_ranks_sum_and_average_across_two_gpus", "gpu2", &why);
        return;
    }
    let id = new_unique_id().expect("unique id");
    let n = 1 << 20;
    let input =
        |r: usize| -> Vec<f32> { (0..n).map(|i| ((i * 7 + r * 13) % 101) as f32).collect() };
    let results: Vec<(Vec<f32>, Vec<f32>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|rank| {
                s.spawn(move || {
                    let comm = NcclComm::init(&id, rank, 2, rank).expect("init");
                    let x = input(rank);
                    // SAFETY: n f32 on this rank's GPU, alive through the call.
                    let sum = on_device(rank, &x, |p| unsafe {
                        comm.all_reduce_in_place(p, n, NcclDType::F32, NcclOp::Sum)
                            .expect("sum")
                    });
                    // SAFETY: as above.
                    let avg = on_device(rank, &x, |p| unsafe {
                        comm.all_reduce_in_place(p, n, NcclDType::F32, NcclOp::Avg)
                            .expect("avg")
                    });
                    (sum, avg)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("rank thread"))
            .collect()
    });
    let (a, b) = (input(0), input(1));
    for (sum, avg) in &results {
        for i in 0..n {
            assert_eq!(sum[i], a[i] + b[i], "sum at {i}");
            assert_eq!(avg[i], (a[i] + b[i]) / 2.0, "avg at {i}");
        }
    }
    println!("two ranks: sum and average of {n} f32 match the host oracle");
}

#[test]
fn init_times_out_and_aborts_when_a_peer_never_joins() {
    if !gpu_or_skip("init_times_out_and_aborts_when_a_peer_never_joins") {
        return;
    }
    let id = new_unique_id().expect("unique id");
    let t0 = Instant::now();
    let r = NcclComm::init_with_timeout(&id, 0, 2, 0, Duration::from_secs(3));
    let took = t0.elapsed();
    match r {
        Err(NcclError::Timeout {
            rank: 0,
            op: "init",
            seconds,
        }) => assert_eq!(seconds, 3.0),
        other => panic!("expected an init timeout, got {other:?}"),
    }
    assert!(took < Duration::from_secs(30), "took {took:?}");
    println!("init without its peer timed out after {took:?} and was aborted");
}
