//! Config files (`--config run.toml`, `--print-config`) and the command line's rendering of
//! config errors: a bad key or value names the file, the line and the key; a value set by a
//! flag is named by its flag.

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::args::{FLAGS, Given};
use crate::config::ConfigError;
use crate::error::{MhclError, Result};

/// Reads a TOML config file. Unknown keys and values of the wrong type are one-line errors
/// naming the file, the line and the key.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| MhclError::io(path, e))?;
    toml::from_str(&text).map_err(|e| {
        let at = e.span().map(|s| s.start).unwrap_or(0).min(text.len());
        MhclError::arg(format!(
            "{}: {}",
            path.display(),
            describe_toml_error(&text, at, e.message())
        ))
    })
}

/// `line N: key: message` for a TOML error at byte `at`: the key is the one on that line,
/// prefixed by the nearest `[table]` above it.
fn describe_toml_error(text: &str, at: usize, message: &str) -> String {
    let line_no = text[..at].matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
    let table = text[..at]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().to_string())
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    let message = message.trim().replace('\n', " ");
    match (table, key) {
        (Some(t), Some(k)) => format!("line {line_no}: {t}.{k}: {message}"),
        (None, Some(k)) => format!("line {line_no}: {k}: {message}"),
        (Some(t), None) => format!("line {line_no}: [{t}]: {message}"),
        (None, None) => format!("line {line_no}: {message}"),
    }
}

/// The config as TOML (what `--print-config` prints and `--config` reads).
pub fn to_toml<T: Serialize>(config: &T) -> Result<String> {
    toml::to_string_pretty(config)
        .map_err(|e| MhclError::arg(format!("the config has no TOML form: {e}")))
}

/// The flag that sets config key `field` (`training.batch_size` -> `--batch-size`).
pub fn flag_of(field: &str) -> Option<&'static str> {
    FLAGS.iter().find(|(k, _)| *k == field).map(|(_, f)| *f)
}

/// A validation result rendered for the command line: a field the flags set (or any field
/// when there is no file) is named by its flag, a field from the file by the file and key.
/// With `printing` (`--print-config`) a missing dataset folder is not an error: the printed
/// config is completed by `--config FILE DIR`.
pub(crate) fn check(
    checked: std::result::Result<(), ConfigError>,
    given: &Given,
    file: Option<&Path>,
    printing: bool,
) -> Result<()> {
    let Err(e) = checked else {
        return Ok(());
    };
    if printing && e.field == "data.root" {
        return Ok(());
    }
    let from_flags = given.0.contains(&e.field.as_str());
    let message = match (file, flag_of(&e.field)) {
        (Some(f), _) if !from_flags => {
            let also = if given.0.iter().all(|k| *k == "data.root") {
                String::new()
            } else {
                " (with the flags given)".to_string()
            };
            format!("{}: {}: {}{also}", f.display(), e.field, e.message)
        }
        (_, Some(flag)) => flag_names(&format!("{flag}: {}", e.message)),
        (_, None) => flag_names(&e.to_string()),
    };
    Err(MhclError::arg(message))
}

/// `text` with the config keys it mentions (`dist.rank 5 is not below ...`) replaced by their
/// flags (`--rank 5 ...`), for errors the library finds while launching.
pub fn flag_names(text: &str) -> String {
    let mut keys: Vec<&(&str, &str)> = FLAGS.iter().filter(|(k, _)| k.contains('.')).collect();
    keys.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
    let is_key_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.';
    let mut out = text.to_string();
    for (key, flag) in keys {
        if *flag == "DIR" {
            continue;
        }
        let mut result = String::with_capacity(out.len());
        let mut rest = out.as_str();
        while let Some(i) = rest.find(key) {
            let before = rest[..i].chars().next_back();
            let after = rest[i + key.len()..].chars().next();
            let whole = !before.is_some_and(is_key_char) && !after.is_some_and(is_key_char);
            result.push_str(&rest[..i]);
            result.push_str(if whole { flag } else { key });
            rest = &rest[i + key.len()..];
        }
        result.push_str(rest);
        out = result;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keys_in_messages_become_flags() {
        assert_eq!(
            flag_names("dist.rank 5 is not below dist.world_size 2"),
            "--rank 5 is not below --world-size 2"
        );
        assert_eq!(flag_names("training.sgd.momentum: x"), "--momentum: x");
        assert_eq!(flag_names("xdist.rank"), "xdist.rank");
    }

    #[test]
    fn toml_errors_name_line_and_key() {
        let text = "seed = 1\n[training]\nlr = \"fast\"\n";
        let at = text.find("\"fast\"").unwrap();
        assert_eq!(
            describe_toml_error(text, at, "invalid type"),
            "line 3: training.lr: invalid type"
        );
    }
}
