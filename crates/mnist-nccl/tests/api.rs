//! Tests that run on any machine, with or without the `nccl` feature: the stub's errors, the
//! feature build's no-panic `Unavailable` path, argument checks, and a real-sized NCCL unique
//! id travelling through the rendezvous file format.

use mnist_common::rendezvous::{ReadOutcome, RendezvousRecord, FORMAT_VERSION};
use mnist_nccl::{available, new_unique_id, NcclComm, NcclError, UNIQUE_ID_BYTES};

/// A 128-byte id: NCCL's when it can make one, else bytes shaped like one (a socket address
/// up front, zero padding, every byte value somewhere).
fn some_unique_id() -> Vec<u8> {
    match new_unique_id() {
        Ok(id) => id.to_vec(),
        Err(e) => {
            println!("using a synthetic id: {e}");
            let mut id = vec![0u8; UNIQUE_ID_BYTES];
            id[..8].copy_from_slice(&[0x02, 0x00, 0x9c, 0x40, 127, 0, 0, 1]);
            for (i, b) in id.iter_mut().enumerate().skip(64) {
                *b = (i * 37 % 256) as u8;
            }
            id
        }
    }
}

#[test]
fn unique_id_round_trips_through_the_rendezvous_payload() {
    let id = some_unique_id();
    assert_eq!(id.len(), UNIQUE_ID_BYTES);
    let rec = RendezvousRecord {
        format_version: FORMAT_VERSION,
        run_id: "nccl-test".into(),
        world_size: 2,
        host: "h".into(),
        addr: "127.0.0.1:29500".into(),
        pid: 7,
        shm_name: None,
        payload: id.clone(),
    };
    let bytes = rec.encode().expect("encode");
    let ReadOutcome::Ready(back) = RendezvousRecord::judge(&bytes, "nccl-test") else {
        panic!("record not judged ready");
    };
    assert_eq!(back.payload, id);
    // A payload of the right size is never rejected as an id; a cut one is (feature build).
    let whole = NcclComm::init_with_timeout(&back.payload, 0, 2, 0, short());
    assert!(
        !matches!(whole, Err(NcclError::InvalidId { .. })),
        "{whole:?}"
    );
    let cut = NcclComm::init(&back.payload[..UNIQUE_ID_BYTES - 1], 0, 2, 0);
    if cfg!(feature = "nccl") {
        assert_eq!(cut.unwrap_err(), NcclError::InvalidId { len: 127 });
    } else {
        assert!(matches!(cut, Err(NcclError::NotCompiled(_))));
    }
}

fn short() -> std::time::Duration {
    std::time::Duration::from_secs(2)
}

#[cfg(not(feature = "nccl"))]
#[test]
fn without_the_feature_everything_is_not_compiled() {
    let want = NcclError::NotCompiled(
        "built without the `nccl` feature; rebuild with --features mnist-worker/nccl".into(),
    );
    assert_eq!(available().unwrap_err(), want);
    assert_eq!(new_unique_id().unwrap_err(), want);
    assert_eq!(mnist_nccl::nccl_version().unwrap_err(), want);
    assert_eq!(NcclComm::init(&[0; 128], 0, 1, 0).unwrap_err(), want);
    let msg = want.to_string();
    assert!(msg.contains("--features mnist-worker/nccl"), "{msg}");
}

#[cfg(feature = "nccl")]
#[test]
fn with_the_feature_unavailability_is_an_error_not_a_panic() {
    match available() {
        Ok(()) => println!("CUDA and NCCL are available here"),
        Err(NcclError::Unavailable(msg)) => {
            println!("unavailable: {msg}");
            assert!(
                msg.contains("libcuda") || msg.contains("libnccl") || msg.contains("cu"),
                "{msg}"
            );
            // Every constructor says the same instead of panicking inside cudarc.
            let e = NcclComm::init(&[0; UNIQUE_ID_BYTES], 0, 1, 0).unwrap_err();
            assert!(matches!(e, NcclError::Unavailable(_)), "{e:?}");
        }
        Err(other) => panic!("expected Unavailable, got {other:?}"),
    }
}

#[cfg(feature = "nccl")]
#[test]
fn bad_arguments_are_rejected_before_touching_cuda() {
    let id = [0u8; UNIQUE_ID_BYTES];
    assert_eq!(
        NcclComm::init(&[], 0, 1, 0).unwrap_err(),
        NcclError::InvalidId { len: 0 }
    );
    for (rank, world) in [(0, 0), (2, 2), (5, 1)] {
        let e = NcclComm::init(&id, rank, world, 0).unwrap_err();
        let NcclError::InvalidArgument(m) = e else {
            panic!("rank {rank} world {world}: {e:?}")
        };
        assert!(m.contains(&format!("rank {rank}")), "{m}");
    }
}

#[test]
fn communicator_can_move_to_another_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<NcclComm>();
    assert_send::<NcclError>();
}
