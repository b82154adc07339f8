//! Config-file overrides. `--config FILE` (or `PEERLESS_CONFIG`) names a TOML file whose
//! keys are long flag names; its values are inserted as flags right after the subcommand,
//! before the user's own, and since every flag overrides itself the command line wins.
//! Precedence: command line, then config file, then `PEERLESS_*` environment, then defaults.
//! `peerless study` is the exception: its `--config` is the study file.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

/// Returns `args` with the config file's values spliced in.
pub fn expand_args(args: Vec<OsString>) -> Result<Vec<OsString>> {
    let Some(path) = config_path(&args) else {
        return Ok(args);
    };
    // `peerless study --config FILE` names a study file, not flags.
    if subcommand_position(&args).is_some_and(|p| args[p] == "study") {
        return Ok(args);
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))?;
    let mut flags = Vec::new();
    for (key, value) in table {
        let flag = format!("--{}", key.replace('_', "-"));
        match value {
            toml::Value::Boolean(true) => flags.push(flag.into()),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(items) => {
                for item in items {
                    flags.push(flag.clone().into());
                    flags.push(scalar(&key, &item, &path)?.into());
                }
            }
            other => {
                flags.push(flag.into());
                flags.push(scalar(&key, &other, &path)?.into());
            }
        }
    }
    // Insert after the subcommand name: the first argument that is not a flag or its value.
    let position = subcommand_position(&args).map_or(args.len(), |p| p + 1);
    let mut out = args[..position].to_vec();
    out.extend(flags);
    out.extend_from_slice(&args[position..]);
    Ok(out)
}

fn scalar(key: &str, value: &toml::Value, path: &std::path::Path) -> Result<String> {
    Ok(match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        _ => bail!(
            "config file {}: key `{key}` must be a string, number, boolean or list of them",
            path.display()
        ),
    })
}

fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut iter = args.iter().skip(1);
    while let Some(a) = iter.next() {
        let a = a.to_string_lossy();
        if a == "--config" {
            return iter.next().map(PathBuf::from);
        }
        if let Some(v) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    std::env::var_os("PEERLESS_CONFIG").map(PathBuf::from)
}

/// Global flags that take a value and so may stand before the subcommand.
const VALUE_FLAGS: [&str; 2] = ["--device", "--config"];

fn subcommand_position(args: &[OsString]) -> Option<usize> {
    let mut i = 1;
    while i < args.len() {
        let a = args[i].to_string_lossy();
        if VALUE_FLAGS.contains(&a.as_ref()) {
            i += 2;
        } else if a.starts_with('-') {
            i += 1;
        } else {
            return Some(i);
        }
    }
    None
}
