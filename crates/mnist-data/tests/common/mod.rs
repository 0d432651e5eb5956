//! A tiny HTTP/1.1 file server on 127.0.0.1 for the download tests (loopback only).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// A running server: its base URL and the paths requested so far.
pub struct Server {
    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub origin: String,
    /// Request paths, in order.
    pub hits: Arc<Mutex<Vec<String>>>,
}

/// Serves `files` (URL path → body) with 200, anything else with 404, on a background thread.
pub fn serve(files: HashMap<String, Vec<u8>>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&hits);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            handle(stream, &files, &log);
        }
    });
    Server { origin, hits }
}

/// Answer one request; the path is recorded before the response is written, so a client that
/// has read the response always finds its request counted.
fn handle(
    stream: TcpStream,
    files: &HashMap<String, Vec<u8>>,
    log: &Mutex<Vec<String>>,
) -> Option<()> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut request = String::new();
    reader.read_line(&mut request).ok()?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 || line == "\r\n" {
            break;
        }
    }
    let path = request.split(' ').nth(1)?.to_string();
    log.lock().ok()?.push(path.clone());
    let mut stream = stream;
    match files.get(&path) {
        Some(body) => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).ok()?;
            stream.write_all(body).ok()?;
        }
        None => {
            let body = "not found";
            let head = format!(
                "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(head.as_bytes()).ok()?;
        }
    }
    stream.flush().ok()?;
    Some(())
}

/// A base URL on which nothing listens (a port just bound and released).
#[allow(dead_code)] // Used by download.rs only; each test binary compiles this module.
pub fn dead_origin() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    origin
}
