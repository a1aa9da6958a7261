//! `ringtrain show-batch` with the real binaries: a PNG grid of augmented training images and
//! their labels, reproducible per seed, and clear errors.

use std::path::Path;
use std::time::Duration;

use ringtrain_tests::{ringtrain, synthetic_folder, Output};

fn show(data: &Path, out: &Path, extra: &[&str], log: &str) -> Output {
    let mut args = vec![
        "show-batch",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    ringtrain(
        &args,
        &out.with_extension("cache"),
        log,
        Duration::from_secs(300),
    )
}

/// Width, height and the gray level of every pixel (the grid may be RGB or gray).
fn decode(path: &Path) -> (u32, u32, Vec<u8>) {
    let f = std::fs::File::open(path).unwrap();
    let mut r = png::Decoder::new(std::io::BufReader::new(f))
        .read_info()
        .unwrap();
    let mut buf = vec![0; r.output_buffer_size().unwrap()];
    let info = r.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    let gray = buf[..info.buffer_size()]
        .chunks(channels)
        .map(|p| p[0])
        .collect();
    (info.width, info.height, gray)
}

#[test]
fn writes_a_labelled_grid_of_augmented_images_reproducibly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synthetic_folder(&data, 3, 12).unwrap();
    let a = tmp.path().join("a.png");
    let out = show(&data, &a, &["--rows", "3", "--scale", "2"], "show_batch_a");
    assert!(out.success(), "{}\n{}", out.stdout, out.stderr);
    // One line naming the file, the 9 images and their labels (class folder names).
    let line = out.stdout.lines().last().unwrap();
    assert!(
        line.starts_with(&format!("{}: 9 augmented", a.display())),
        "{line}"
    );
    let labels: Vec<&str> = line.rsplit("labels: ").next().unwrap().split(' ').collect();
    assert_eq!(labels.len(), 9, "{line}");
    assert!(
        labels.iter().all(|l| ["c0", "c1", "c2"].contains(l)),
        "{line}"
    );
    let (w, h, px) = decode(&a);
    assert!(w >= 3 * 28 * 2 && h >= 3 * 28 * 2, "{w}x{h}");
    // Bright digits' bands on a dark background, and dark caption text on a light one: both
    // ends of the gray scale are present.
    assert!(px.iter().any(|&p| p > 200) && px.iter().any(|&p| p < 50));

    // The same seed draws the same batch; another seed another one.
    let b = tmp.path().join("b.png");
    assert!(show(&data, &b, &["--rows", "3", "--scale", "2"], "show_batch_b").success());
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let c = tmp.path().join("c.png");
    let other = show(
        &data,
        &c,
        &["--rows", "3", "--scale", "2", "--seed", "7"],
        "show_batch_c",
    );
    assert!(other.success());
    assert_ne!(std::fs::read(&a).unwrap(), std::fs::read(&c).unwrap());
}

#[test]
fn bad_arguments_are_clear_errors_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synthetic_folder(&data, 2, 4).unwrap();
    let out_png = tmp.path().join("x.png");
    let rows = show(&data, &out_png, &["--rows", "0"], "show_batch_rows");
    assert!(!rows.success());
    assert!(
        rows.stderr.contains("--rows must be between 1 and 16"),
        "{}",
        rows.stderr
    );
    // 8 training images cannot fill a 4×4 grid.
    let few = show(&data, &out_png, &["--rows", "4"], "show_batch_few");
    assert!(!few.success());
    assert!(few.stderr.contains("has 8 images"), "{}", few.stderr);
    let missing = tmp.path().join("nope");
    let gone = show(&missing, &out_png, &[], "show_batch_missing");
    assert!(!gone.success());
    assert!(
        gone.stderr.contains(missing.to_str().unwrap()),
        "{}",
        gone.stderr
    );
    assert!(!out_png.exists());
}
