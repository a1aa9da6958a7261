//! `synth-shapes OUT_DIR [--train-per-class N] [--valid-per-class N] [--seed S]
//! [--jpeg-every K] [--gray-every K] [--sizes WxH,WxH]`: writes the coloured-shapes dataset
//! (`ringtrain_tests::synth`) under OUT_DIR and prints one summary line.

use std::path::PathBuf;

use anyhow::{bail, Context};
use ringtrain_tests::synth::{write_shapes, ShapesSpec};

const USAGE: &str = "usage: synth-shapes OUT_DIR [--train-per-class N] [--valid-per-class N] \
                     [--seed S] [--jpeg-every K] [--gray-every K] [--sizes WxH,WxH]";

fn main() -> anyhow::Result<()> {
    let (out, spec) = parse(std::env::args().skip(1))?;
    let summary = write_shapes(&out, &spec)
        .with_context(|| format!("writing the dataset to {}", out.display()))?;
    println!("{summary}");
    Ok(())
}

fn parse(mut args: impl Iterator<Item = String>) -> anyhow::Result<(PathBuf, ShapesSpec)> {
    let mut out = None;
    let mut spec = ShapesSpec::default();
    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        if !arg.starts_with("--") {
            if out.replace(PathBuf::from(&arg)).is_some() {
                bail!("more than one OUT_DIR ({arg})\n{USAGE}");
            }
            continue;
        }
        let value = args
            .next()
            .with_context(|| format!("{arg} needs a value\n{USAGE}"))?;
        let number = || {
            value
                .parse::<u64>()
                .with_context(|| format!("{arg} {value}: not a whole number"))
        };
        match arg.as_str() {
            "--train-per-class" => spec.train_per_class = number()? as usize,
            "--valid-per-class" => spec.valid_per_class = number()? as usize,
            "--seed" => spec.seed = number()?,
            "--jpeg-every" => spec.jpeg_every = number()? as usize,
            "--gray-every" => spec.gray_every = number()? as usize,
            "--sizes" => spec.sizes = parse_sizes(&value)?,
            _ => bail!("unknown option {arg}\n{USAGE}"),
        }
    }
    let out = out.with_context(|| format!("OUT_DIR is missing\n{USAGE}"))?;
    Ok((out, spec))
}

/// `32x32,48x40` → `[(32, 32), (48, 40)]` (width × height).
fn parse_sizes(value: &str) -> anyhow::Result<Vec<(u32, u32)>> {
    value
        .split(',')
        .map(|size| {
            let (w, h) = size
                .split_once('x')
                .with_context(|| format!("--sizes {size}: want WIDTHxHEIGHT"))?;
            Ok((
                w.parse()
                    .with_context(|| format!("--sizes {size}: bad width"))?,
                h.parse()
                    .with_context(|| format!("--sizes {size}: bad height"))?,
            ))
        })
        .collect()
}
