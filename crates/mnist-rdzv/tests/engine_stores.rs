//! The stores of workers started by other engines: our store served by a worker
//! ([`StoreServer`], env:// semantics) and the client of PyTorch's `TCPStore` (torchrun's
//! agent store), the latter against a real `torch.distributed.TCPStore` in Python.

use mnist_rdzv::{RdzvError, StoreClient, StoreEndpoint, StoreServer, TcpStoreClient};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(30)
}

#[test]
fn a_worker_serves_the_store_of_its_run() {
    let srv = StoreServer::start(0, "5.0").unwrap();
    let ep = format!("127.0.0.1:{}", srv.port());
    let reader = {
        let ep = ep.clone();
        std::thread::spawn(move || {
            let mut c = StoreEndpoint::parse(&ep)
                .connect("5.0", deadline())
                .unwrap();
            c.get("group", Duration::from_secs(30)).unwrap()
        })
    };
    let mut w = StoreClient::connect(&ep, "5.0", deadline()).unwrap();
    // A missing key times out without breaking the connection.
    assert_eq!(w.get("nothing", Duration::from_millis(50)).unwrap(), None);
    w.set("group", b"rank0 at 127.0.0.1:1").unwrap();
    assert_eq!(
        reader.join().unwrap().as_deref(),
        Some(&b"rank0 at 127.0.0.1:1"[..])
    );
    // A worker of another run on the same port is refused, naming both runs.
    let e = StoreClient::connect(&ep, "6.0", deadline())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("\"6.0\"") && e.contains("\"5.0\""), "{e}");
    // The port is taken while it runs.
    let e = StoreServer::start(srv.port(), "5.0")
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.starts_with(&format!(
            "cannot serve the store on port {}: port {} is in use",
            srv.port(),
            srv.port()
        )),
        "{e}"
    );
}

#[test]
fn a_port_without_a_tcpstore_is_named() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let t = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let _ = s.write_all(b"HTTP/1.0 400 Bad Request\r\n\r\n");
    });
    let e = TcpStoreClient::connect(&format!("127.0.0.1:{port}"), "p", deadline())
        .err()
        .unwrap();
    t.join().unwrap();
    assert!(matches!(e, RdzvError::Lost { .. }), "{e}");
    assert!(e.to_string().contains("no PyTorch TCPStore answers"), "{e}");
}

/// Python side: a real `TCPStore` server; it waits for our key, answers under another, and
/// waits for our "done" before it exits (so the store outlives our last read).
const PY: &str = r#"
import sys, datetime
from torch.distributed import TCPStore
s = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
             timeout=datetime.timedelta(seconds=60))
print(s.port, flush=True)
s.wait(["pre/fix/from-rust"])
v = s.get("pre/fix/from-rust")
s.set("pre/fix/from-python", v + b" and back")
s.wait(["pre/fix/done"])
print("ok", s.num_keys(), flush=True)
"#;

#[test]
fn talks_to_pytorchs_own_tcpstore() {
    let Some(py) = mnist_testkit::python("talks_to_pytorchs_own_tcpstore") else {
        return;
    };
    let mut child = Command::new(py)
        .args(["-c", PY])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let port: u16 = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("python said {line:?}"));
    let ep = format!("tcpstore://127.0.0.1:{port}/pre/fix");
    let mut c = StoreEndpoint::parse(&ep)
        .connect("any", deadline())
        .unwrap();
    // A wait that times out is cancelled and the connection stays usable.
    assert_eq!(
        c.get("from-python", Duration::from_millis(100)).unwrap(),
        None
    );
    c.set("from-rust", b"there").unwrap();
    let v = c.get("from-python", Duration::from_secs(30)).unwrap();
    assert_eq!(v.as_deref(), Some(&b"there and back"[..]));
    c.set("done", b"1").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "python exited {status}");
    // Three keys, all under the prefix (torch's wait/get saw them there).
    assert_eq!(line.trim(), "ok 3");
}
