//! The pictures themselves: curves.png decodes to the expected size and has text (drawn with
//! the embedded font) in its title band, curves.svg names its panels, both are replaced
//! atomically, and a comparison overlays several runs with a legend per run.

use mnist_viz::chart::{self, Format, Series};
use mnist_viz::metrics::Run;
use std::path::Path;

/// Write a run's `metrics.jsonl` of `epochs` epochs into `dir`.
fn fake_run(dir: &Path, epochs: usize, compression: &str, world: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let mut text = String::new();
    for e in 1..=epochs {
        let f = e as f64;
        text += &format!(
            r#"{{"epoch":{e},"lr":{},"train_loss":{},"train_top1":90.0,"train_top5":99.0,"test_loss":{},"test_top1":{},"test_top5":99.9,"epoch_seconds":2.0,"images_per_second":{},"world_size":{world},"compression":"{compression}","bytes_sent_per_step":1000.0,"compression_ratio":null,"restarts":0}}"#,
            0.01 / f,
            1.0 / f,
            0.8 / f,
            100.0 - 8.0 / f,
            3000.0 + 100.0 * f
        );
        text.push('\n');
    }
    std::fs::write(dir.join("metrics.jsonl"), text).unwrap();
}

/// RGB pixels and size of a PNG file's bytes.
fn decode(bytes: &[u8]) -> (Vec<u8>, u32, u32) {
    let dec = png::Decoder::new(bytes);
    let mut reader = dec.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    buf.truncate(info.buffer_size());
    (buf, info.width, info.height)
}

/// Pixels clearly darker than the white background in rows `rows` of an RGB image `width` wide.
fn ink(rgb: &[u8], width: u32, rows: std::ops::Range<u32>) -> usize {
    let w = width as usize;
    rgb[rows.start as usize * w * 3..rows.end as usize * w * 3]
        .chunks(3)
        .filter(|p| p.iter().map(|&c| c as u32).sum::<u32>() < 3 * 128)
        .count()
}

/// Names of the files in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn curves_are_written_as_png_and_svg_with_text() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    fake_run(&dir, 5, "fp16", 2);
    // An older picture is replaced whole.
    std::fs::write(dir.join("curves.png"), "stale").unwrap();
    let [png_path, svg_path] = mnist_viz::curves::write(&dir, "LeNet").unwrap();
    assert_eq!(png_path, dir.join("curves.png"));
    assert_eq!(
        names(&dir),
        ["curves.png", "curves.svg", "metrics.jsonl"],
        "no temporary files are left behind"
    );
    let (rgb, w, h) = decode(&std::fs::read(&png_path).unwrap());
    assert_eq!((w, h), chart::SIZE);
    // The title band (above the panels' captions) holds nothing but the title's glyphs.
    let title_ink = ink(&rgb, w, 0..36);
    assert!(
        title_ink > 300,
        "only {title_ink} dark pixels in the title band"
    );
    // Every panel has its lines and labels: each quarter of the picture has ink.
    for (cols, rows) in [(0..w / 2, 40..h / 2), (w / 2..w, h / 2..h)] {
        let n = (rows.start..rows.end)
            .flat_map(|y| cols.clone().map(move |x| (x, y)))
            .filter(|&(x, y)| {
                let i = ((y * w + x) * 3) as usize;
                rgb[i..i + 3].iter().map(|&c| c as u32).sum::<u32>() < 3 * 128
            })
            .count();
        assert!(n > 1000, "a panel has only {n} dark pixels");
    }
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
    for text in [
        "Training curves: LeNet, 2 processes, compression fp16",
        "Loss (solid: test, dashed: train)",
        "Test accuracy (top-1)",
        "Learning rate (cosine schedule)",
        "Training throughput (all processes)",
        "images per second",
        "accuracy (%)",
        "epoch",
    ] {
        assert!(svg.contains(text), "the SVG lacks {text:?}");
    }
}

/// The glyphs come from the embedded font: the same figure with an empty title has no ink in
/// the title band, with a title it has, and the text's width grows with its length.
#[test]
fn title_pixels_are_text_drawn_with_the_embedded_font() {
    let tmp = tempfile::tempdir().unwrap();
    fake_run(tmp.path(), 3, "none", 1);
    let run = Run::read(tmp.path()).unwrap();
    let series = [Series {
        label: run.label(),
        epochs: &run.epochs,
    }];
    let band = |title: &str| {
        let bytes = chart::render(Format::Png, title, &series, Path::new("t.png")).unwrap();
        let (rgb, w, _) = decode(&bytes);
        ink(&rgb, w, 0..36)
    };
    let (none, short, long) = (band(""), band("Loss"), band("Loss Loss Loss Loss"));
    assert_eq!(none, 0, "an empty title must leave the band blank");
    assert!(short > 30, "{short}");
    assert!(long > 3 * short, "{short} vs {long}");
}

#[test]
fn a_comparison_overlays_runs_with_a_legend_each() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    fake_run(&a, 4, "none", 2);
    fake_run(&b, 3, "powersgd", 4);
    fake_run(&c, 4, "none", 2);
    let runs: Vec<Run> = [&a, &b, &c].iter().map(|d| Run::read(d).unwrap()).collect();
    assert_eq!(
        mnist_viz::compare::labels(&runs),
        [
            "none, 2 processes (a)",
            "powersgd, 4 processes",
            "none, 2 processes (c)"
        ]
    );
    let svg = tmp.path().join("out.svg");
    mnist_viz::compare::write(&[a.clone(), b.clone(), c.clone()], &svg).unwrap();
    let text = std::fs::read_to_string(&svg).unwrap();
    for l in [
        "3 runs compared",
        "powersgd, 4 processes",
        "none, 2 processes (a)",
    ] {
        assert!(text.contains(l), "the SVG lacks {l:?}");
    }
    let png = tmp.path().join("out.png");
    mnist_viz::compare::write(&[a.clone(), b.clone()], &png).unwrap();
    let (_, w, h) = decode(&std::fs::read(&png).unwrap());
    assert_eq!((w, h), chart::SIZE);
}

#[test]
fn bad_inputs_are_errors_naming_the_folder_or_file() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    fake_run(&good, 2, "fp16", 2);
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let bad = tmp.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("metrics.jsonl"), "{\"epoch\": 1}\n").unwrap();
    let out = tmp.path().join("o.png");
    let e = mnist_viz::compare::write(&[good.clone(), empty.clone()], &out).unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("{}: no metrics.jsonl", empty.display())),
        "{e}"
    );
    let e = mnist_viz::compare::write(std::slice::from_ref(&bad), &out).unwrap_err();
    assert!(
        e.to_string().starts_with(&format!(
            "{}, line 1: not an epoch record (missing field `lr`",
            bad.join("metrics.jsonl").display()
        )),
        "{e}"
    );
    let e = mnist_viz::compare::write(std::slice::from_ref(&good), &tmp.path().join("o.gif"))
        .unwrap_err();
    assert!(e
        .to_string()
        .ends_with("expected a file name ending in .png or .svg"));
    assert!(!out.exists(), "no picture after a failure");
    let e = mnist_viz::compare::write(&[good], &tmp.path().join("no/such/dir/o.png")).unwrap_err();
    assert!(e.to_string().contains("no/such/dir"), "{e}");
}
