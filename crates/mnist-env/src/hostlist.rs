//! Slurm's host-list syntax, expanded in Rust (containers often lack `scontrol show
//! hostnames`): `gpu-[01-03,07],login2` is `gpu-01 gpu-02 gpu-03 gpu-07 login2`.
//!
//! - Items are separated by commas outside brackets.
//! - A bracket holds comma-separated numbers and ranges `lo-hi`; the numbers keep the width of
//!   `lo` (`[08-10]` is `08 09 10`, `[8-10]` is `8 9 10`), as Slurm prints them.
//! - Several brackets in one item multiply, the first varying slowest
//!   (`r[1-2]n[1-2]` is `r1n1 r1n2 r2n1 r2n2`).
//! - Nested or unbalanced brackets, empty items, reversed ranges, non-digits inside brackets
//!   and lists of more than [`MAX_HOSTS`] hosts are errors naming the problem.

/// The most hosts one list may expand to (a guard against `[0-999999999]`).
pub const MAX_HOSTS: usize = 65_536;

/// A host list that cannot be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("host list {list:?}: {problem}")]
pub struct HostListError {
    /// The list as given.
    pub list: String,
    /// What is wrong with it.
    pub problem: String,
}

/// One piece of an item: literal text, or the numbers of a bracket (already formatted).
enum Piece {
    Text(String),
    Choices(Vec<String>),
}

/// Expand `list` into host names, in order.
pub fn expand(list: &str) -> Result<Vec<String>, HostListError> {
    let err = |problem: String| HostListError {
        list: list.to_string(),
        problem,
    };
    let mut hosts = Vec::new();
    for item in split_top_level(list).map_err(err)? {
        let pieces = parse_item(item).map_err(err)?;
        let count = pieces.iter().try_fold(1usize, |n, p| match p {
            Piece::Text(_) => Some(n),
            Piece::Choices(c) => n.checked_mul(c.len()),
        });
        match count {
            Some(n) if hosts.len() + n <= MAX_HOSTS => {}
            _ => return Err(err(format!("expands to more than {MAX_HOSTS} hosts"))),
        }
        let mut names = vec![String::new()];
        for p in &pieces {
            names = match p {
                Piece::Text(t) => names.into_iter().map(|n| n + t).collect(),
                Piece::Choices(c) => names
                    .iter()
                    .flat_map(|n| c.iter().map(move |x| format!("{n}{x}")))
                    .collect(),
            };
        }
        hosts.extend(names);
    }
    Ok(hosts)
}

/// The items of a list: split on commas outside brackets.
fn split_top_level(list: &str) -> Result<Vec<&str>, String> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in list.char_indices() {
        match c {
            '[' => {
                if depth > 0 {
                    return Err(format!("nested '[' at byte {i}"));
                }
                depth = 1;
            }
            ']' => {
                if depth == 0 {
                    return Err(format!("']' without '[' at byte {i}"));
                }
                depth = 0;
            }
            ',' if depth == 0 => {
                items.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth > 0 {
        return Err("'[' is never closed".into());
    }
    items.push(&list[start..]);
    for (n, it) in items.iter().enumerate() {
        if it.trim().is_empty() {
            return Err(format!("item {} is empty", n + 1));
        }
        if it.chars().any(char::is_whitespace) {
            return Err(format!("item {it:?} contains white space"));
        }
    }
    Ok(items)
}

fn parse_item(item: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut rest = item;
    while let Some(open) = rest.find('[') {
        if open > 0 {
            pieces.push(Piece::Text(rest[..open].to_string()));
        }
        let close = rest[open..]
            .find(']')
            .map(|c| open + c)
            .ok_or_else(|| format!("'[' in {item:?} is never closed"))?;
        pieces.push(Piece::Choices(parse_bracket(item, &rest[open + 1..close])?));
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_string()));
    }
    Ok(pieces)
}

fn parse_bracket(item: &str, inner: &str) -> Result<Vec<String>, String> {
    if inner.is_empty() {
        return Err(format!("empty brackets in {item:?}"));
    }
    let mut out = Vec::new();
    for part in inner.split(',') {
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo, hi),
            None => (part, part),
        };
        let num = |s: &str| -> Result<u64, String> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "{part:?} in {item:?} is not a number or a range lo-hi"
                ));
            }
            s.parse()
                .map_err(|_| format!("{s:?} in {item:?} is too large"))
        };
        let (a, b) = (num(lo)?, num(hi)?);
        if a > b {
            return Err(format!("range {part:?} in {item:?} runs backwards"));
        }
        if b - a >= MAX_HOSTS as u64 || out.len() + (b - a) as usize >= MAX_HOSTS {
            return Err(format!("expands to more than {MAX_HOSTS} hosts"));
        }
        let width = lo.len();
        out.extend((a..=b).map(|n| format!("{n:0width$}")));
    }
    Ok(out)
}

/// Parse Slurm's tasks-per-node list (`SLURM_STEP_TASKS_PER_NODE`, `SLURM_TASKS_PER_NODE`):
/// `2(x3),1` is `[2, 2, 2, 1]`. `var` names the variable in errors.
pub fn tasks_per_node(var: &str, value: &str) -> Result<Vec<usize>, String> {
    let bad = |why: &str| format!("{var}={value:?}: {why} (expected counts like 2(x3),1)");
    let mut out = Vec::new();
    for part in value.split(',') {
        let (count, times) = match part.split_once("(x") {
            Some((c, t)) => {
                let t = t.strip_suffix(')').ok_or_else(|| bad("'(x' without ')'"))?;
                (c, t)
            }
            None => (part, "1"),
        };
        let count: usize = count
            .parse()
            .map_err(|_| bad(&format!("{count:?} is not a count")))?;
        let times: usize = times
            .parse()
            .map_err(|_| bad(&format!("{times:?} is not a repeat count")))?;
        if times == 0 || times > MAX_HOSTS || out.len() + times > MAX_HOSTS {
            return Err(bad("bad repeat count"));
        }
        out.extend(std::iter::repeat_n(count, times));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(list: &str) -> Vec<String> {
        expand(list).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn plain_ranges_and_lists() {
        assert_eq!(ok("localhost"), ["localhost"]);
        assert_eq!(
            ok("gpu-[01-03,07],login2"),
            ["gpu-01", "gpu-02", "gpu-03", "gpu-07", "login2"]
        );
        assert_eq!(ok("n[8-10]"), ["n8", "n9", "n10"]);
        assert_eq!(ok("n[08-10]"), ["n08", "n09", "n10"]);
        assert_eq!(ok("n[001-2]"), ["n001", "n002"]);
        assert_eq!(ok("n[5]"), ["n5"]);
        assert_eq!(ok("a,b,c"), ["a", "b", "c"]);
        assert_eq!(ok("[1-2]x"), ["1x", "2x"]);
    }

    #[test]
    fn several_brackets_multiply_first_slowest() {
        assert_eq!(
            ok("rack[1-2]-node[01-02]"),
            [
                "rack1-node01",
                "rack1-node02",
                "rack2-node01",
                "rack2-node02"
            ]
        );
        assert_eq!(ok("a[1,3]b[7]c,z[0-1]"), ["a1b7c", "a3b7c", "z0", "z1"]);
    }

    #[test]
    fn errors_name_the_problem() {
        let e = |l: &str| expand(l).unwrap_err().to_string();
        assert!(
            e("gpu-[01-[02-03]]").contains("nested"),
            "{}",
            e("gpu-[01-[02-03]]")
        );
        assert!(e("gpu-[01-03").contains("never closed"));
        assert!(e("gpu-01]").contains("without '['"));
        assert!(e("gpu-[03-01]").contains("backwards"));
        assert!(e("gpu-[a-b]").contains("not a number"));
        assert!(e("gpu-[]").contains("empty brackets"));
        assert!(e("a,,b").contains("item 2 is empty"));
        assert!(e("a,").contains("empty"));
        assert!(e("").contains("empty"));
        assert!(e("n[0-99999999]").contains("more than"));
        assert!(e("n[0-999]m[0-999]").contains("more than"));
        assert!(e("a b").contains("white space"));
        assert!(e("n[1-]").contains("not a number"));
        assert!(e("gpu-[01-03").starts_with("host list \"gpu-[01-03\""));
    }

    #[test]
    fn tasks_per_node_repeats() {
        assert_eq!(tasks_per_node("V", "2(x3),1").unwrap(), [2, 2, 2, 1]);
        assert_eq!(tasks_per_node("V", "4").unwrap(), [4]);
        assert_eq!(tasks_per_node("V", "1(x2)").unwrap(), [1, 1]);
        for bad in ["", "x", "2(x3", "2(x0)", "2(xa)", "-1", "2,,1"] {
            let e = tasks_per_node("SLURM_STEP_TASKS_PER_NODE", bad).unwrap_err();
            assert!(e.starts_with("SLURM_STEP_TASKS_PER_NODE="), "{e}");
        }
    }
}
