//! `ringtrain-worker predict`: the lesson's inference. Classifies images (PNG, JPEG, WebP) with a verified
//! checkpoint's model, using the normalisation, classes and network the checkpoint records.
//!
//! ```text
//! $ ringtrain-worker predict --checkpoint runs/r1/best testing/7/0.png
//! testing/7/0.png  7  0.9987  (0: 0.0001, 1: 0.0002, …, 9: 0.0003)
//! ```
//!
//! Owns decoding the given images, the forward pass and the two output formats; not checkpoint
//! verification (`ringtrain_common::checkpoint::load`) nor loading weights (`eval::load_model`).
//!
//! # Contract
//! * `--checkpoint` is a checkpoint folder, a link such as `RUN_DIR/best`, or a run folder (its
//!   `best`, else its newest good checkpoint). A checkpoint that fails verification is refused
//!   with the folder and the file at fault.
//! * Images are decoded like the training data into the checkpoint's channels (PIL `L` or
//!   `RGB` conversion) and size: an image of another size is resized (shorter side) and
//!   centre-cropped like validation images, whether or not the run resized; then normalised
//!   per channel as in training: `(pixel / 255 - mean_c) / std_c`.
//! * The model runs in eval mode (BatchNorm running statistics), so an image's prediction does
//!   not depend on the other images given.
//! * Any unreadable or corrupt image fails the command naming the file, before any output.
//!
//! Tests: `tests` at the bottom (output formats); `tests/tests/predict.rs` runs the real binary
//! on a trained checkpoint.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use ringtrain_common::checkpoint::{self, MODEL_FILE, STATE_FILE};
use ringtrain_common::data::{decode_image, DataError, Geometry};
use tch::{Kind, Tensor};

use crate::eval::{channel_norm, load_model};
use crate::model::Arch;

/// Images per forward pass (memory only; results do not depend on it).
const BATCH: usize = 256;

/// The prediction for one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The image as given on the command line.
    pub image: PathBuf,
    /// Index of the most probable class.
    pub index: usize,
    /// Its name.
    pub class: String,
    /// Softmax over the classes, in class order.
    pub probabilities: Vec<f32>,
}

/// Predictions for a list of images, with the class names they refer to.
#[derive(Debug, Clone, PartialEq)]
pub struct Predictions {
    /// The verified checkpoint folder used.
    pub checkpoint: PathBuf,
    pub classes: Vec<String>,
    pub images: Vec<Prediction>,
}

/// Decodes one image to the model's input geometry, naming the file on any problem.
fn read_image(path: &Path, g: Geometry) -> Result<Vec<u8>, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, &e))?;
    decode_image(&bytes, path, g)
}

/// Classifies `images` with the checkpoint at `checkpoint` (see the module contract).
pub fn predict(checkpoint: &Path, images: &[PathBuf]) -> anyhow::Result<Predictions> {
    let loaded = checkpoint::load(checkpoint)?;
    let state = &loaded.state;
    let state_path = loaded.dir.join(STATE_FILE);
    let arch = Arch::from_str(&state.model)
        .map_err(|e| anyhow::anyhow!("{}: {e}", state_path.display()))?;
    let norm = channel_norm(&state.norm.mean, &state.norm.std)
        .map_err(|e| anyhow::anyhow!("{}: {e}", state_path.display()))?;
    let size = state.image_size;
    let geometry = Geometry {
        channels: state.channels,
        size,
        resize: true,
    };
    geometry
        .validate()
        .map_err(|e| anyhow::anyhow!("{}: {e}", state_path.display()))?;
    anyhow::ensure!(
        norm.channels() == state.channels as usize,
        "{}: normalisation for {} channel(s), images with {}",
        state_path.display(),
        norm.channels(),
        state.channels
    );
    let classes = state.classes.clone();
    anyhow::ensure!(
        !classes.is_empty(),
        "{}: no classes recorded",
        state_path.display()
    );

    let per_image = geometry.image_bytes() as usize;
    let mut pixels = Vec::with_capacity(images.len() * per_image);
    for path in images {
        pixels.extend(read_image(path, geometry)?);
    }
    let (_vs, model) = load_model(arch, classes.len(), geometry, &loaded.dir.join(MODEL_FILE))?;
    let side = i64::from(size);
    let c = i64::from(geometry.channels);
    let mut probabilities: Vec<f32> = Vec::with_capacity(images.len() * classes.len());
    for chunk in pixels.chunks(BATCH * per_image) {
        let x = norm.apply(&Tensor::from_slice(chunk).view([-1, c, side, side]));
        let n = x.size()[0];
        let p = tch::no_grad(|| model.forward_t(&x, false)).softmax(-1, Kind::Float);
        anyhow::ensure!(
            p.size() == [n, classes.len() as i64],
            "the {arch} network maps {size}x{size} images to {:?}, not [{n}, {}] class scores",
            p.size(),
            classes.len()
        );
        probabilities.extend(Vec::<f32>::try_from(&p.flatten(0, -1))?);
    }

    let images = images
        .iter()
        .zip(probabilities.chunks(classes.len()))
        .map(|(image, probs)| {
            // The first maximum, like argmax.
            let index = probs
                .iter()
                .enumerate()
                .fold(0, |best, (i, &p)| if p > probs[best] { i } else { best });
            Prediction {
                image: image.clone(),
                index,
                class: classes[index].clone(),
                probabilities: probs.to_vec(),
            }
        })
        .collect();
    Ok(Predictions {
        checkpoint: loaded.dir.clone(),
        classes,
        images,
    })
}

impl Predictions {
    /// One human-readable line per image: path, class, its probability, all probabilities.
    pub fn lines(&self) -> Vec<String> {
        self.images
            .iter()
            .map(|p| {
                let all: Vec<String> = self
                    .classes
                    .iter()
                    .zip(&p.probabilities)
                    .map(|(c, q)| format!("{c}: {q:.4}"))
                    .collect();
                format!(
                    "{}  {}  {:.4}  ({})",
                    p.image.display(),
                    p.class,
                    p.probabilities[p.index],
                    all.join(", ")
                )
            })
            .collect()
    }

    /// One JSON object per image: `{"image", "class", "index", "probabilities"}`.
    pub fn json_lines(&self) -> Vec<String> {
        #[derive(serde::Serialize)]
        struct Row<'a> {
            image: String,
            class: &'a str,
            index: usize,
            // f32, so that the JSON shows the shortest decimals that round-trip (0.9652463).
            probabilities: &'a [f32],
        }
        self.images
            .iter()
            .map(|p| {
                let row = Row {
                    image: p.image.display().to_string(),
                    class: &p.class,
                    index: p.index,
                    probabilities: &p.probabilities,
                };
                // serde_json fails only on non-string map keys or a failing Serialize impl; Row
                // has neither (a non-finite float becomes `null`).
                serde_json::to_string(&row).expect("a Row always serialises")
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Predictions {
        Predictions {
            checkpoint: "run/checkpoints/e0001-s0000000010".into(),
            classes: vec!["cat".into(), "dog".into()],
            images: vec![Prediction {
                image: "a/b.png".into(),
                index: 1,
                class: "dog".into(),
                probabilities: vec![0.25, 0.75],
            }],
        }
    }

    #[test]
    fn human_line_lists_every_class() {
        assert_eq!(
            sample().lines(),
            ["a/b.png  dog  0.7500  (cat: 0.2500, dog: 0.7500)"]
        );
    }

    #[test]
    fn json_line_has_the_documented_fields() {
        let lines = sample().json_lines();
        let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"image": "a/b.png", "class": "dog", "index": 1,
                               "probabilities": [0.25, 0.75]})
        );
    }

    #[test]
    fn unreadable_images_name_the_file_and_other_sizes_are_resized() {
        let dir = tempfile::tempdir().unwrap();
        let g = Geometry {
            channels: 1,
            size: 28,
            resize: true,
        };
        let missing = dir.path().join("missing.png");
        assert!(matches!(
            read_image(&missing, g),
            Err(DataError::Io { ref path, .. }) if *path == missing
        ));
        let big = dir.path().join("big.png");
        ringtrain_common::fetch::write_png(&big, 30, 30, &[7; 900]).unwrap();
        assert_eq!(read_image(&big, g).unwrap(), vec![7; 784]);
        let bad = dir.path().join("bad.jpg");
        std::fs::write(&bad, b"\xff\xd8\xffnot a jpeg").unwrap();
        assert!(matches!(
            read_image(&bad, g),
            Err(DataError::CorruptImage { ref path, .. }) if *path == bad
        ));
    }
}
