//! How libnccl is found (feature build): with PyTorch's `nvidia-nccl-cu13` wheel, whose
//! library is only `libnccl.so.2`, a folder holding a `libnccl.so` symlink on
//! `LD_LIBRARY_PATH` makes NCCL usable; the wheel's own folder alone gives the explanatory
//! `Unavailable` message. Runs this test binary again as a child, since the dynamic loader
//! reads `LD_LIBRARY_PATH` only at start-up. Needs `MNIST_PYTHON` (a Python with torch's
//! NCCL wheel); without it the test records a visible skip.
#![cfg(feature = "nccl")]

use std::path::PathBuf;
use std::process::Command;

const CHILD_ENV: &str = "MNIST_NCCL_CHILD";

/// The wheel's `nvidia/nccl/lib` folder, asked from `$MNIST_PYTHON`.
fn wheel_lib_dir() -> Result<PathBuf, String> {
    let py = std::env::var("MNIST_PYTHON").map_err(|_| "MNIST_PYTHON not set".to_string())?;
    let out = Command::new(&py)
        .args([
            "-c",
            "import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], 'lib'))",
        ])
        .output()
        .map_err(|e| format!("cannot run {py}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{py} has no nvidia.nccl package"));
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if dir.join("libnccl.so.2").exists() {
        Ok(dir)
    } else {
        Err(format!("no libnccl.so.2 in {}", dir.display()))
    }
}

/// Run the `child` test of this binary with `LD_LIBRARY_PATH=dir` and `mode`; its stdout.
fn run_child(dir: &std::path::Path, mode: &str) -> String {
    let exe = std::env::current_exe().expect("test binary path");
    let out = Command::new(exe)
        .args(["--exact", "child", "--include-ignored", "--nocapture"])
        .env("LD_LIBRARY_PATH", dir)
        .env(CHILD_ENV, mode)
        .output()
        .expect("run child");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "child {mode} failed:\n{text}");
    for line in text
        .lines()
        .filter(|l| l.starts_with("available") || l.contains("unique id") || l.starts_with("NCCL"))
    {
        println!("child {mode}: {line}");
    }
    text
}

#[test]
fn symlink_folder_makes_the_wheel_library_loadable() {
    let lib = match wheel_lib_dir() {
        Ok(d) => d,
        Err(why) => {
            mnist_testkit::skip(
                "symlink_folder_makes_the_wheel_library_loadable",
                "nccl-wheel",
                &why,
            );
            return;
        }
    };
    let tmp = std::env::temp_dir().join(format!("mnist-nccl-link-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let link = tmp.join("libnccl.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(lib.join("libnccl.so.2"), &link).unwrap();
    let with_link = run_child(&tmp, "link");
    std::fs::remove_dir_all(&tmp).unwrap();
    assert!(with_link.contains("CHILD OK link"), "{with_link}");
    let soname_only = run_child(&lib, "soname");
    assert!(soname_only.contains("CHILD OK soname"), "{soname_only}");
}

/// A real NCCL id through the rendezvous file format, unchanged.
fn round_trip(id: &[u8]) {
    use mnist_common::rendezvous::{ReadOutcome, RendezvousRecord, FORMAT_VERSION};
    let rec = RendezvousRecord {
        format_version: FORMAT_VERSION,
        run_id: "r".into(),
        world_size: 2,
        host: "h".into(),
        addr: "127.0.0.1:1".into(),
        pid: 1,
        shm_name: None,
        payload: id.to_vec(),
    };
    let bytes = rec.encode().expect("encode");
    let ReadOutcome::Ready(back) = RendezvousRecord::judge(&bytes, "r") else {
        panic!("not ready")
    };
    assert_eq!(back.payload, id);
    println!("unique id round trip through the rendezvous record: ok");
}

/// The child side (ignored unless started by the test above).
#[test]
#[ignore = "started by symlink_folder_makes_the_wheel_library_loadable"]
fn child() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    let avail = mnist_nccl::available();
    println!("available(): {avail:?}");
    match mode.as_str() {
        "link" => {
            let (major, minor, patch) = mnist_nccl::nccl_version().expect("NCCL version");
            println!("NCCL version {major}.{minor}.{patch}");
            assert_eq!(major, 2);
            // NCCL itself loads; what is missing on a CPU machine is the driver.
            if let Err(mnist_nccl::NcclError::Unavailable(m)) = &avail {
                assert!(!m.contains("libnccl"), "{m}");
            }
            match mnist_nccl::new_unique_id() {
                Ok(id) => {
                    assert!(id.iter().any(|&b| b != 0), "all-zero unique id");
                    println!("unique id: {} bytes", id.len());
                    round_trip(&id);
                    // With NCCL loadable but no driver, joining still fails cleanly.
                    let e = mnist_nccl::NcclComm::init(&id, 0, 1, 0).unwrap_err();
                    if avail.is_err() {
                        assert!(matches!(e, mnist_nccl::NcclError::Unavailable(_)), "{e:?}");
                    }
                }
                Err(e) => {
                    assert!(matches!(e, mnist_nccl::NcclError::Nccl { .. }), "{e:?}");
                    println!("ncclGetUniqueId failed here: {e}");
                }
            }
        }
        "soname" => {
            assert!(mnist_nccl::nccl_version().is_err());
            let Err(mnist_nccl::NcclError::Unavailable(m)) = avail else {
                panic!("expected Unavailable, got {avail:?}")
            };
            assert!(m.contains("libnccl.so.2 is loadable but cudarc"), "{m}");
        }
        other => panic!("unknown child mode {other}"),
    }
    println!("CHILD OK {mode}");
}
