//! What a person sees of a run: a few start-up lines (the whole configuration only in the log
//! file and `config.json`), the progress bar's images/s and ETAs, the end-of-run summary, and
//! `curves.png` / `curves.svg` beside the metrics.

mod common;

use common::*;
use std::path::Path;

/// The value of the summary row `label` in `stdout` (the text after the label).
fn summary_row<'a>(stdout: &'a str, label: &str) -> Option<&'a str> {
    let start = stdout.find("| Run summary")?;
    stdout[start..]
        .lines()
        .filter_map(|l| l.split_once(" | ").map(|(_, m)| m))
        .find_map(|m| m.strip_prefix(&format!("  {label} ")))
        .map(str::trim)
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn start_up_lines_config_json_summary_and_curves() {
    let tmp = tempdir();
    let data = make_data(tmp.path(), 640, 200);
    let out = tmp.path().join("run");
    let o = worker(args![
        "--data",
        data.display(),
        "--path",
        out.display(),
        "--epochs",
        2,
        "--batch-size",
        32,
        "--lr",
        0.05,
        "--log-interval",
        10
    ])
    .ok("training");

    // The console opens with short readable lines, not the configuration as JSON.
    let head: Vec<&str> = o
        .stdout
        .lines()
        .take_while(|l| !l.contains("Train Epoch"))
        .collect();
    assert!(
        head.iter().all(|l| l.len() < 220 && !l.contains('{')),
        "{head:#?}"
    );
    for needle in [
        "| Run: LeNet on CPU, 1 process with 1 thread each",
        "| Gradients: none (single process), compression none; 2 epochs of 32 images per process",
        &format!(
            "| Folders: data {}, output {}",
            data.display(),
            out.display()
        ),
    ] {
        assert!(o.stdout.contains(needle), "no {needle:?} in {head:#?}");
    }
    // The whole configuration is in the log file and in config.json.
    let log = std::fs::read_to_string(out.join("mnist_train.log")).unwrap();
    assert!(log.contains("| Config: {\"model\":\"LeNet\""), "{log}");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["config"]["epochs"], 2);
    assert_eq!(cfg["config"]["lr"], 0.05);
    assert_eq!(cfg["config"]["data"], data.display().to_string());
    assert_eq!(cfg["run"]["world_size"], 1);
    assert_eq!(cfg["run"]["device"], "CPU");

    // The summary agrees with metrics.jsonl.
    let m = metrics(&out);
    let best = m
        .iter()
        .max_by(|a, b| {
            let (x, y) = (a["test_top1"].as_f64(), b["test_top1"].as_f64());
            x.partial_cmp(&y)
                .unwrap()
                .then(b["epoch"].as_u64().cmp(&a["epoch"].as_u64()))
        })
        .unwrap();
    assert_eq!(
        summary_row(&o.stdout, "best accuracy"),
        Some(
            format!(
                "{:.2}% (epoch {})",
                best["test_top1"].as_f64().unwrap(),
                best["epoch"]
            )
            .as_str()
        ),
        "{}",
        o.stdout
    );
    assert_eq!(summary_row(&o.stdout, "epochs"), Some("2 of 2"));
    for (label, files) in [
        ("model", vec!["mnist_model.pt"]),
        ("log", vec!["mnist_train.log"]),
        ("configuration", vec!["config.json"]),
        ("curves", vec!["curves.png", "curves.svg"]),
    ] {
        let want: Vec<String> = files
            .iter()
            .map(|f| out.join(f).display().to_string())
            .collect();
        assert_eq!(
            summary_row(&o.stdout, label),
            Some(want.join(", ").as_str()),
            "{}",
            o.stdout
        );
    }
    assert!(summary_row(&o.stdout, "wall time").is_some());
    assert!(summary_row(&o.stdout, "images/s").is_some());
    assert!(
        summary_row(&o.stdout, "trace").is_none(),
        "no trace was asked for"
    );

    // The pictures are complete files; nothing temporary is left.
    let png = std::fs::read(out.join("curves.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000);
    let svg = std::fs::read_to_string(out.join("curves.svg")).unwrap();
    assert!(svg.contains("Test accuracy (top-1)") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(
        names(&out),
        [
            "checkpoint.bin",
            "config.json",
            "curves.png",
            "curves.svg",
            "metrics.jsonl",
            "mnist_model.pt",
            "mnist_train.log"
        ]
    );

    // An evaluation in the same folder leaves the training run's config.json alone.
    let before = std::fs::read(out.join("config.json")).unwrap();
    evaluate(&data, &out, &out.join("mnist_model.pt"));
    assert_eq!(std::fs::read(out.join("config.json")).unwrap(), before);
}

#[test]
fn the_progress_bar_shows_images_per_second_and_both_etas() {
    let tmp = tempdir();
    let data = make_data(tmp.path(), 640, 200);
    let out = tmp.path().join("run");
    let mut a = with_base(args![
        "--data",
        data.display(),
        "--path",
        out.display(),
        "--epochs",
        2,
        "--batch-size",
        32
    ]);
    // BASE says `--progress never`; the last value given wins.
    a.extend(args!["--progress", "always"]);
    let o = run(&worker_bin(), a).ok("training");
    // Drawn on stderr (a pipe here) with carriage returns and clear-line sequences.
    let bar = o
        .stderr
        .split(['\r', '\n'])
        .find(|l| l.contains("epoch 1/2 ["))
        .unwrap_or_else(|| panic!("no bar for epoch 1 of 2 in {:?}", o.stderr));
    assert!(bar.contains(" images/s "), "{bar:?}");
    assert!(bar.contains(" eta ") && bar.contains(" (run "), "{bar:?}");
    // The per-step lines go to the log file only while the bar owns the console.
    assert!(!o.stdout.contains("Train Epoch: 1 ["), "{}", o.stdout);
    assert!(
        summary_row(&o.stdout, "best accuracy").is_some(),
        "{}",
        o.stdout
    );
}

/// A run stopped after one epoch and resumed: the curves cover both epochs (five markers per
/// epoch: test and train loss, accuracy, learning rate, images/s) and the summary says the
/// wall time is this attempt's.
#[test]
fn a_resumed_run_draws_every_epoch_and_says_whose_wall_time() {
    let tmp = tempdir();
    let data = make_data(tmp.path(), 320, 100);
    let out = tmp.path().join("run");
    let train = |extra: Vec<String>| {
        let mut a = args![
            "--data",
            data.display(),
            "--path",
            out.display(),
            "--epochs",
            2,
            "--batch-size",
            32
        ];
        a.extend(extra);
        worker(a)
    };
    let markers = || {
        std::fs::read_to_string(out.join("curves.svg"))
            .unwrap()
            .matches("<circle")
            .count()
    };
    let first = train(args!["--stop-after-epochs", 1]).ok("first epoch");
    assert_eq!(summary_row(&first.stdout, "epochs"), Some("1 of 2"));
    assert_eq!(markers(), 5);
    let second = train(args!["--resume"]).ok("resumed");
    assert_eq!(summary_row(&second.stdout, "epochs"), Some("2 of 2"));
    assert!(
        summary_row(&second.stdout, "wall time").is_some_and(|w| w.ends_with("(this attempt)")),
        "{}",
        second.stdout
    );
    assert_eq!(markers(), 10);
}
