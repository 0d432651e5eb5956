//! `mnist-launch plot`: two generated runs drawn into one PNG (text present even with no font
//! configuration in the environment) or SVG; bad input is exit 2 with one line naming the
//! folder or file.

use std::path::Path;
use std::process::{Command, Output};

const LAUNCH: &str = env!("CARGO_BIN_EXE_mnist-launch");

/// A run folder with `epochs` epoch records of a run with `compression` over `world` processes.
fn generated_run(dir: &Path, epochs: usize, compression: &str, world: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let text: String = (1..=epochs)
        .map(|e| {
            let f = e as f64;
            format!(
                "{{\"epoch\":{e},\"lr\":{},\"train_loss\":{},\"train_top1\":90.0,\"train_top5\":99.0,\"test_loss\":{},\"test_top1\":{},\"test_top5\":99.9,\"epoch_seconds\":2.0,\"images_per_second\":{},\"world_size\":{world},\"compression\":\"{compression}\",\"bytes_sent_per_step\":1000.0,\"compression_ratio\":2.0,\"restarts\":0}}\n",
                0.01 / f,
                1.0 / f,
                0.8 / f,
                100.0 - 8.0 / f,
                3000.0 + 100.0 * f
            )
        })
        .collect();
    std::fs::write(dir.join("metrics.jsonl"), text).unwrap();
}

/// `mnist-launch plot ARGS…` with an environment that names no font at all: no HOME, no
/// XDG folders, fontconfig pointed at files that do not exist.
fn plot(args: &[&Path], cwd: &Path) -> Output {
    Command::new(LAUNCH)
        .arg("plot")
        .args(args)
        .current_dir(cwd)
        .env_clear()
        .env("FONTCONFIG_FILE", "/nonexistent/fonts.conf")
        .env("FONTCONFIG_PATH", "/nonexistent")
        .env("XDG_DATA_DIRS", "/nonexistent")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn two_runs_make_one_png_with_text_and_one_svg_with_both_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("none-2"), tmp.path().join("fp16-4"));
    generated_run(&a, 4, "none", 2);
    generated_run(&b, 3, "fp16", 4);
    let png = tmp.path().join("compare.png");
    let o = plot(&[&a, &b, Path::new("-o"), &png], tmp.path());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("wrote"), "{}", text(&o.stdout));
    let mut reader = png::Decoder::new(std::fs::File::open(&png).unwrap())
        .read_info()
        .unwrap();
    let mut rgb = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut rgb).unwrap();
    assert_eq!((info.width, info.height), (1280, 960));
    // The title band holds the title's glyphs: dark pixels, drawn with the embedded font.
    let band = &rgb[..36 * info.width as usize * 3];
    let ink = band
        .chunks(3)
        .filter(|p| p.iter().map(|&c| c as u32).sum::<u32>() < 384)
        .count();
    assert!(ink > 300, "only {ink} dark pixels in the title band");

    // The default output is compare.png in the current folder; .svg by extension.
    let o = plot(&[&a, &b], tmp.path());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(tmp.path().join("compare.png").is_file());
    let svg = tmp.path().join("c.svg");
    let o = plot(&[&a, &b, Path::new("--output"), &svg], tmp.path());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let s = std::fs::read_to_string(&svg).unwrap();
    for label in ["none, 2 processes", "fp16, 4 processes", "2 runs compared"] {
        assert!(s.contains(label), "the SVG lacks {label:?}");
    }
}

/// Exit 2 and exactly one line on stderr that contains `needle`; no picture written.
fn refused(o: &Output, needle: &str, out: &Path) {
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("mnist-launch: error: ") && err.contains(needle),
        "{err}"
    );
    assert!(!out.exists(), "{} was written", out.display());
}

#[test]
fn bad_input_is_exit_2_with_one_line_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    generated_run(&good, 2, "none", 2);
    let out = tmp.path().join("out.png");

    let empty = tmp.path().join("not-a-run");
    std::fs::create_dir_all(&empty).unwrap();
    let o = plot(&[&good, &empty, Path::new("-o"), &out], tmp.path());
    refused(&o, &format!("{}: no metrics.jsonl", empty.display()), &out);

    let missing = tmp.path().join("no-such-folder");
    let o = plot(&[&missing, Path::new("-o"), &out], tmp.path());
    refused(
        &o,
        &format!("{}: no metrics.jsonl", missing.display()),
        &out,
    );

    let bad = tmp.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("metrics.jsonl"), "{\"epoch\":1,\"lr\":0.1,\"train_loss\":1.0,\"test_loss\":1.0,\"test_top1\":10.0,\"images_per_second\":1.0,\"world_size\":1,\"compression\":\"none\"}\nnot json\n").unwrap();
    let o = plot(&[&good, &bad, Path::new("-o"), &out], tmp.path());
    refused(
        &o,
        &format!(
            "{}, line 2: not an epoch record",
            bad.join("metrics.jsonl").display()
        ),
        &out,
    );

    let jpg = tmp.path().join("out.jpg");
    let o = plot(&[&good, Path::new("-o"), &jpg], tmp.path());
    refused(
        &o,
        "out.jpg: expected a file name ending in .png or .svg",
        &jpg,
    );
}
