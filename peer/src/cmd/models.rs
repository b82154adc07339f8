//! `peerless models`: what can be trained, how big it is, what it expects.

use anyhow::Result;
use peerless_models::{Architecture, Device, Model, ModelSpec};
use serde::Serialize;

use crate::cli::ModelsArgs;

#[derive(Serialize)]
struct Row {
    name: &'static str,
    parameters: usize,
    gradient_mb: f64,
    input_size: usize,
    in_channels: usize,
    num_classes: usize,
}

pub fn run(args: ModelsArgs) -> Result<()> {
    // Layouts are the same on every device: build them on the CPU.
    let device = Device::flex();
    let mut rows = Vec::new();
    for arch in Architecture::ALL {
        let spec = ModelSpec::new(arch);
        let parameters = Model::new(spec, &device, 0)?.num_params();
        rows.push(Row {
            name: arch.name(),
            parameters,
            gradient_mb: parameters as f64 * 4.0 / 1e6,
            input_size: arch.default_input_size(),
            in_channels: spec.in_channels,
            num_classes: spec.num_classes,
        });
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<20} {:>13} {:>12} {:>11}",
        "model", "parameters", "gradient MB", "input"
    );
    for r in rows {
        println!(
            "{:<20} {:>13} {:>12.1} {:>11}",
            r.name,
            group_thousands(r.parameters),
            r.gradient_mb,
            format!("{}x{}x{}", r.in_channels, r.input_size, r.input_size)
        );
    }
    Ok(())
}

fn group_thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
