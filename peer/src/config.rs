//! Config files. `--config FILE` (or `PEERLESS_CONFIG`) names a TOML file whose keys are
//! long flag names, with `_` or `-` between words (`batch_size = 32` is `--batch-size 32`)
//! and visible or hidden aliases accepted (`batch = 32`). A value is a string, a number, a
//! boolean (`true` gives the switch, `false` nothing; a counted switch such as `verbose`
//! also takes a count) or a list (one value per item, as the flag takes lists: repeated
//! or comma-separated).
//!
//! The file's flags are inserted right after the full subcommand path (`data split`,
//! `stepfn generate`, `peer`, ...), before the user's own flags, and a flag given on the
//! command line is not taken from the file at all. Precedence, first wins:
//! 1. the command line,
//! 2. the config file,
//! 3. the `PEERLESS_*` environment variables,
//! 4. the defaults.
//!
//! One file may serve several commands: a key that only other commands take is skipped
//! (logged at debug level, `-v`), so `lr` in a file also used for `data split` is fine. A
//! key no command takes is an error naming the key and the file (exit code 2), with the
//! closest flag suggested. `config` inside the file is an error too: files do not nest.
//! Which flags exist comes from the clap definition in `cli.rs` (global flags such as
//! `--device` and `--verbose` belong to every command), never from a list kept here.
//!
//! The exception is `peerless study`: there `--config FILE` (and `PEERLESS_CONFIG`) names
//! the study's own TOML (see bench/study/default.toml), read by the study, not as flags.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::builder::StyledStr;
use clap::error::{ContextKind, ContextValue};
use clap::{Arg, ArgAction, Command, CommandFactory, Parser};

use crate::cli::Cli;

/// The command line with a config file's flags spliced in.
#[derive(Debug)]
pub struct Expanded {
    /// What clap parses.
    pub args: Vec<OsString>,
    /// The config file read, if any.
    file: Option<PathBuf>,
    /// The flags taken from the file (`--batch-size`), with the key that set each.
    from_file: Vec<(String, String)>,
    /// Keys skipped because only other commands take them.
    skipped: Vec<String>,
}

/// Returns `args` with the config file's values spliced in (see the module doc).
pub fn expand_args(args: Vec<OsString>) -> Result<Expanded> {
    let mut root = Cli::command();
    root.build();
    let scan = scan(&root, &args);
    let plain = |args| Expanded {
        args,
        file: None,
        from_file: Vec::new(),
        skipped: Vec::new(),
    };
    let Some((leaf, position)) = scan.leaf else {
        // No complete command (help, a typo): clap reports it.
        return Ok(plain(args));
    };
    let Some(path) = scan
        .config
        .or_else(|| std::env::var_os("PEERLESS_CONFIG").map(PathBuf::from))
    else {
        return Ok(plain(args));
    };
    // `peerless study --config FILE` names a study file, not flags.
    if leaf.get_name() == "study" {
        return Ok(plain(args));
    }
    let table = read(&path)?;
    let known = all_flags(&root);
    let mut flags = Vec::new();
    let mut from_file = Vec::new();
    let mut skipped = Vec::new();
    let mut set_by = BTreeMap::new();
    for (key, value) in &table {
        let name = key.replace('_', "-");
        if name == "config" {
            bail!(
                "config file {}: `{key}` cannot name another config file (config files do not nest)",
                path.display()
            );
        }
        let Some(arg) = find_long(leaf, &name) else {
            if known.contains(&name) {
                skipped.push(key.clone());
                continue;
            }
            let hint = closest(&name, &known)
                .map(|m| format!("; did you mean `{}`?", spelled_like(key, m)))
                .unwrap_or_default();
            bail!(
                "config file {}: unknown key `{key}` (no command has --{name}){hint}",
                path.display()
            );
        };
        let id = arg.get_id().as_str();
        if let Some(other) = set_by.insert(id, key) {
            bail!(
                "config file {}: keys `{other}` and `{key}` both set --{}",
                path.display(),
                long(arg)
            );
        }
        let values = flag_values(arg, key, value, &path)?;
        if scan.given.contains(id) {
            continue; // the command line wins
        }
        if !values.is_empty() {
            from_file.push((format!("--{}", long(arg)), key.clone()));
        }
        flags.extend(values);
    }
    let mut out = args[..position].to_vec();
    out.extend(flags);
    out.extend_from_slice(&args[position..]);
    Ok(Expanded {
        args: out,
        file: Some(path),
        from_file,
        skipped,
    })
}

impl Expanded {
    /// Parses the command line like `Cli::parse_from`; a clap error about a flag the config
    /// file set also names the file and the key.
    pub fn parse(&self) -> Cli {
        Cli::try_parse_from(&self.args).unwrap_or_else(|mut e| {
            let flag = match e.get(ContextKind::InvalidArg) {
                Some(ContextValue::String(s)) => s.split(' ').next().unwrap_or_default().to_owned(),
                _ => String::new(),
            };
            if let (Some(file), Some((flag, key))) =
                (&self.file, self.from_file.iter().find(|(f, _)| *f == flag))
            {
                let tip = format!(
                    "{flag} came from config file {}, key `{key}`",
                    file.display()
                );
                e.insert(
                    ContextKind::Suggested,
                    ContextValue::StyledStrs(vec![StyledStr::from(tip)]),
                );
            }
            e.exit()
        })
    }

    /// Logs the keys skipped as belonging to other commands (call once logging is up).
    pub fn log_skipped(&self) {
        if let Some(file) = &self.file {
            for key in &self.skipped {
                tracing::debug!(
                    "config file {}: `{key}` is not a flag of this command; skipped",
                    file.display()
                );
            }
        }
    }
}

/// What the command line holds: the subcommand reached, the config file it names and the
/// flags it gives.
struct Scan<'a> {
    /// The innermost subcommand and the index just after its name.
    leaf: Option<(&'a Command, usize)>,
    /// The `--config` value (the last, as clap takes the last).
    config: Option<PathBuf>,
    /// Ids of the arguments given on the command line.
    given: BTreeSet<String>,
}

/// Walks `args` the way clap will: into subcommands by name or alias, past flags and their
/// values, up to `--`.
fn scan<'a>(root: &'a Command, args: &[OsString]) -> Scan<'a> {
    let mut scan = Scan {
        leaf: None,
        config: None,
        given: BTreeSet::new(),
    };
    let mut cmd = root;
    let mut i = 1;
    while i < args.len() {
        let word = args[i].to_string_lossy();
        i += 1;
        if word == "--" {
            break;
        }
        // The argument a flag names and the value written into the same word, if any.
        let (arg, inline) = if let Some(flag) = word.strip_prefix("--") {
            let (name, inline) = match flag.split_once('=') {
                Some((name, value)) => (name, Some(value.to_owned())),
                None => (flag, None),
            };
            (find_long(cmd, name), inline)
        } else if let Some(cluster) = word.strip_prefix('-').filter(|c| !c.is_empty()) {
            // `-vq`, `-xVALUE`: switches up to the first that takes a value.
            let mut found = None;
            for (at, c) in cluster.char_indices() {
                let Some(a) = cmd.get_arguments().find(|a| a.get_short() == Some(c)) else {
                    break;
                };
                scan.given.insert(a.get_id().to_string());
                if a.get_action().takes_values() {
                    let rest = &cluster[at + c.len_utf8()..];
                    found = Some((a, (!rest.is_empty()).then(|| rest.to_owned())));
                    break;
                }
            }
            match found {
                Some((a, rest)) => (Some(a), rest),
                None => continue,
            }
        } else {
            if scan.leaf.is_none() {
                let Some(sub) = cmd.find_subcommand(&*word) else {
                    break;
                };
                if sub.get_name() == "help" {
                    break; // `peerless help ...` prints help
                }
                cmd = sub;
                if !cmd.has_subcommands() {
                    scan.leaf = Some((cmd, i));
                }
            }
            continue;
        };
        let Some(arg) = arg else { continue };
        scan.given.insert(arg.get_id().to_string());
        let value = match inline {
            Some(v) => Some(OsString::from(v)),
            None if arg.get_action().takes_values() => {
                i += 1;
                args.get(i - 1).cloned()
            }
            None => None,
        };
        if arg.get_id() == "config" {
            scan.config = value.map(PathBuf::from);
        }
    }
    scan
}

/// The file's table; its values must be scalars or lists of scalars whatever the command.
fn read(path: &Path) -> Result<toml::Table> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))?;
    for (key, value) in &table {
        match value {
            toml::Value::Array(items) => items
                .iter()
                .try_for_each(|item| scalar(key, item, path).map(drop))?,
            other => drop(scalar(key, other, path)?),
        }
    }
    Ok(table)
}

/// The command-line words for `key = value` given to `arg`.
fn flag_values(arg: &Arg, key: &str, value: &toml::Value, path: &Path) -> Result<Vec<OsString>> {
    let flag = OsString::from(format!("--{}", long(arg)));
    let action = arg.get_action();
    if !action.takes_values() {
        let times = match (value, action) {
            (toml::Value::Boolean(b), _) => usize::from(*b),
            (toml::Value::Integer(n), ArgAction::Count) if *n >= 0 => *n as usize,
            _ => bail!(
                "config file {}: key `{key}`: --{} is a switch; use true or false",
                path.display(),
                long(arg)
            ),
        };
        return Ok(vec![flag; times]);
    }
    let toml::Value::Array(items) = value else {
        return Ok(vec![flag, scalar(key, value, path)?.into()]);
    };
    let items = items
        .iter()
        .map(|item| scalar(key, item, path))
        .collect::<Result<Vec<_>>>()?;
    if items.is_empty() {
        return Ok(Vec::new());
    }
    Ok(match (arg.get_value_delimiter(), action) {
        (Some(delimiter), _) => vec![flag, items.join(&delimiter.to_string()).into()],
        (None, ArgAction::Append) => items
            .into_iter()
            .flat_map(|item| [flag.clone(), item.into()])
            .collect(),
        _ => bail!(
            "config file {}: key `{key}`: --{} takes one value, not a list",
            path.display(),
            long(arg)
        ),
    })
}

fn scalar(key: &str, value: &toml::Value, path: &Path) -> Result<String> {
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

fn long(arg: &Arg) -> &str {
    arg.get_long().unwrap_or_default()
}

/// The long name and every alias of `arg`; none for help and version.
fn long_names(arg: &Arg) -> Vec<&str> {
    if matches!(
        arg.get_action(),
        ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
    ) {
        return Vec::new();
    }
    arg.get_long()
        .into_iter()
        .chain(arg.get_all_aliases().unwrap_or_default())
        .collect()
}

/// The argument of `cmd` (its own or a global one) whose long name or alias is `name`.
fn find_long<'a>(cmd: &'a Command, name: &str) -> Option<&'a Arg> {
    cmd.get_arguments().find(|a| long_names(a).contains(&name))
}

/// Every long name and alias of every command.
fn all_flags(cmd: &Command) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = cmd
        .get_arguments()
        .flat_map(long_names)
        .map(str::to_owned)
        .collect();
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        names.extend(all_flags(sub));
    }
    names
}

/// The known flag nearest to `name` by edit distance, if near enough to be a typo.
fn closest<'a>(name: &str, known: &'a BTreeSet<String>) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::levenshtein(name, k), k))
        .filter(|&(d, k)| d <= 2.max(k.len() / 4) && d < k.len())
        .min_by_key(|&(d, _)| d)
        .map(|(_, k)| k.as_str())
}

/// `flag` written the way the user wrote `key`: with underscores unless `key` had dashes.
fn spelled_like(key: &str, flag: &str) -> String {
    if key.contains('-') {
        flag.to_owned()
    } else {
        flag.replace('-', "_")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags_of(path: &[&str]) -> BTreeSet<String> {
        let mut root = Cli::command();
        root.build();
        let mut cmd = &root;
        for name in path {
            cmd = cmd.find_subcommand(name).unwrap();
        }
        cmd.get_arguments()
            .flat_map(long_names)
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn flags_come_from_clap_with_globals_and_aliases() {
        let split = flags_of(&["data", "split"]);
        for flag in [
            "dataset",
            "size",
            "to",
            "model-str",
            "device",
            "verbose",
            "config",
        ] {
            assert!(split.contains(flag), "{flag}");
        }
        assert!(!split.contains("lr") && !split.contains("help"));
        assert!(flags_of(&["peer"]).contains("batch"));
    }

    #[test]
    fn the_subcommand_path_ends_at_the_leaf() {
        let mut root = Cli::command();
        root.build();
        let args: Vec<OsString> = [
            "peerless", "-v", "--device", "cpu", "data", "split", "--size", "2",
        ]
        .map(OsString::from)
        .to_vec();
        let scan = scan(&root, &args);
        let (leaf, at) = scan.leaf.unwrap();
        assert_eq!((leaf.get_name(), at), ("split", 6));
        assert!(scan.given.contains("size") && scan.given.contains("verbose"));
    }

    #[test]
    fn typos_suggest_the_nearest_flag() {
        let mut root = Cli::command();
        root.build();
        let known = all_flags(&root);
        assert_eq!(closest("lrr", &known), Some("lr"));
        assert_eq!(closest("bacth-size", &known), Some("batch-size"));
        assert_eq!(closest("colour", &known), None);
    }
}
