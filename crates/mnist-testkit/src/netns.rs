//! Separate network stacks for multi-machine tests: [`Netns::create`] makes one network
//! namespace per "node", each with its own `eth0` (10.77.0.1, .2, … /24) joined by veth pairs
//! to a bridge inside a further "switch" namespace, so nothing touches the host's own network
//! and all traffic stays inside namespaces the test made. Commands run inside a node with
//! [`Netns::command`] (`ip netns exec`). Everything is removed in `Drop`, also when the test
//! fails. Needs root and `ip` (CI runs as root); elsewhere the test is skipped visibly.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The network namespaces of one test.
pub struct Netns {
    prefix: String,
    switch: String,
    nodes: Vec<String>,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Run `ip args…`; an error names the command and what `ip` said.
pub fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args)
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program} {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    /// `n` node namespaces on one bridge, or `None` after recording a skip of `test` (not
    /// root, or no `ip`). Panics when the set-up itself fails (after cleaning up).
    pub fn create(test: &str, n: usize) -> Option<Netns> {
        if !crate::root(test, "network namespaces need root (CI runs as root)") {
            return None;
        }
        crate::program(test, "ip")?;
        let prefix = format!(
            "mnddp-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let mut ns = Netns {
            switch: format!("{prefix}-sw"),
            prefix,
            nodes: Vec::new(),
        };
        if let Err(e) = ns.build(n) {
            drop(ns);
            panic!("{test}: cannot set up network namespaces: {e}");
        }
        Some(ns)
    }

    fn build(&mut self, n: usize) -> Result<(), String> {
        ip(&["netns", "add", &self.switch])?;
        // Registered at once, so Drop removes what exists whatever fails next.
        let sw = self.switch.clone();
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        ip(&["-n", &sw, "link", "set", "lo", "up"])?;
        for i in 0..n {
            let node = format!("{}-n{i}", self.prefix);
            ip(&["netns", "add", &node])?;
            self.nodes.push(node.clone());
            let port = format!("p{i}");
            ip(&[
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &node,
            ])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &sw, "link", "set", &port, "up"])?;
            ip(&[
                "-n",
                &node,
                "addr",
                "add",
                &format!("{}/24", Self::addr_of(i)),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &node, "link", "set", "eth0", "up"])?;
            ip(&["-n", &node, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// The address of node `i` (10.77.0.(i+1)).
    pub fn addr_of(i: usize) -> String {
        format!("10.77.0.{}", i + 1)
    }

    /// The name of node `i`'s namespace.
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i]
    }

    /// `program args…` to be run inside node `i` (`ip netns exec`).
    pub fn command(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.nodes[i]]).arg(program);
        c
    }

    /// Cut node `i` off the network (its switch port goes down): packets are dropped
    /// silently, as when a cable is pulled.
    pub fn cut(&self, i: usize) -> Result<(), String> {
        ip(&["-n", &self.switch, "link", "set", &format!("p{i}"), "down"])
    }

    /// Shape node `i`'s outgoing traffic to `rate` (e.g. `100mbit`) with a token bucket.
    pub fn shape(&self, i: usize, rate: &str) -> Result<(), String> {
        run(
            "ip",
            &[
                "netns",
                "exec",
                &self.nodes[i],
                "tc",
                "qdisc",
                "replace",
                "dev",
                "eth0",
                "root",
                "tbf",
                "rate",
                rate,
                "burst",
                "256kb",
                "latency",
                "50ms",
            ],
        )
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for node in self.nodes.iter().chain(std::iter::once(&self.switch)) {
            let _ = ip(&["netns", "del", node]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed() -> String {
        let o = Command::new("ip").args(["netns", "list"]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    #[test]
    fn namespaces_are_made_reachable_and_removed_even_on_panic() {
        let Some(ns) = Netns::create("netns_harness", 2) else {
            return;
        };
        let names: Vec<String> = (0..2).map(|i| ns.name(i).to_string()).collect();
        assert!(names.iter().all(|n| listed().contains(n.as_str())));
        // Node 0 sees node 1's address on its own link, and its own address.
        let o = ns
            .command(0, "ip")
            .args(["-4", "addr", "show", "dev", "eth0"])
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&o.stdout).contains("10.77.0.1/24"));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _ns = ns;
            panic!("a failing test");
        }));
        assert!(r.is_err());
        let l = listed();
        assert!(names.iter().all(|n| !l.contains(n.as_str())), "{l}");
    }
}
