//! Where `redo-helper run`'s settings come from: flags, `REDO_HELPER_*` environment
//! variables, and a TOML configuration file (`--config FILE`); and `redo-helper config`,
//! which prints the effective settings and their sources with secrets masked.
//!
//! Precedence: flag > environment variable > file > default. It is generic over the
//! subcommand's clap arguments, so a flag added to `RunArgs` is settable all three ways
//! without code here:
//! - every long flag `--some-flag` of `run` and `config` gets the environment variable
//!   `REDO_HELPER_SOME_FLAG` (clap's `env`, which already ranks below the command line);
//! - the file's keys are the long flag names (`some-flag = ...`; `some_flag` is accepted
//!   too); a key that names no flag is an error naming it. After a first parse, each key
//!   whose flag was set neither on the command line nor by the environment (clap's
//!   `value_source` is a default or nothing) is appended to the arguments as
//!   `--some-flag=value`, and the arguments are parsed again: the values go through the
//!   same parsers and checks as typed flags. A `true` boolean turns a switch on, `false`
//!   leaves it off; an array gives a repeatable flag several values.
//!
//! The first parse relaxes `required` (a required flag may come from the file); the second
//! enforces it.

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Environment variables for flags are this prefix and the long name, upper case, `-` → `_`.
pub const ENV_PREFIX: &str = "REDO_HELPER_";

/// Subcommands whose flags come from flags, environment and file.
pub const CONFIGURED_SUBCOMMANDS: &[&str] = &["run", "config"];

/// The flag naming the file; it cannot itself be set in the file.
const CONFIG_FLAG: &str = "config";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration file {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error(
        "configuration file {path}: unknown setting {key:?} (the settings are `run`'s long flag names; see `redo-helper run --help`)"
    )]
    UnknownKey { path: PathBuf, key: String },
    #[error("configuration file {path}: {key:?}: {message}")]
    BadValue {
        path: PathBuf,
        key: String,
        message: String,
    },
    /// Clap's own error (usage, a value a parser refused; also --help and --version).
    #[error("{0}")]
    Clap(#[from] clap::Error),
    /// A value from the file that clap refused, with the file named.
    #[error("configuration file {path}: {error}")]
    FileValue { path: PathBuf, error: clap::Error },
}

impl ConfigError {
    /// Prints the error (clap's own rendering for usage, help and version) and gives the
    /// exit status: 0 for --help/--version, 2 otherwise.
    pub fn report(self) -> ExitCode {
        match self {
            ConfigError::Clap(e) => {
                let _ = e.print();
                ExitCode::from(if e.use_stderr() { 2 } else { 0 })
            }
            other => {
                eprintln!("redo-helper: {other}");
                ExitCode::from(2)
            }
        }
    }
}

/// The parsed command line with the file's settings merged in.
pub struct Merged {
    pub matches: ArgMatches,
    /// The configuration file read, if any.
    pub file: Option<PathBuf>,
    /// Ids of the arguments whose values came from the file.
    pub from_file: BTreeSet<String>,
}

/// `REDO_HELPER_DATA_DIR` for `data-dir`.
pub fn env_name(long: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        long.to_ascii_uppercase().replace('-', "_")
    )
}

/// The command with an environment variable for every long flag of the configured
/// subcommands.
pub fn with_env(cmd: Command) -> Command {
    let mut cmd = cmd;
    for name in CONFIGURED_SUBCOMMANDS {
        if cmd.find_subcommand(name).is_none() {
            continue;
        }
        cmd = cmd.mut_subcommand(name, |sc| {
            sc.mut_args(|a| match a.get_long().map(str::to_owned) {
                // hide_env_values: --help must not print a password given in the
                // environment.
                Some(long) if long != "help" && long != "version" => {
                    a.env(env_name(&long)).hide_env_values(true)
                }
                _ => a,
            })
        });
    }
    cmd
}

/// Parses `argv` against `cmd` with the environment and, for a configured subcommand given
/// `--config FILE`, the file's settings (see the module documentation).
pub fn parse(cmd: Command, argv: Vec<OsString>) -> Result<Merged, ConfigError> {
    let strict = with_env(cmd);
    let mut relaxed = strict.clone();
    for name in CONFIGURED_SUBCOMMANDS {
        if relaxed.find_subcommand(name).is_some() {
            relaxed = relaxed.mut_subcommand(name, |sc| sc.mut_args(|a| a.required(false)));
        }
    }
    let first = match relaxed.try_get_matches_from(&argv) {
        Ok(m) => m,
        // The strict command's rendering (help with required flags marked, usage).
        Err(e) => return Err(strict.try_get_matches_from(&argv).err().unwrap_or(e).into()),
    };
    let Some((sub_name, sub)) = first
        .subcommand()
        .filter(|(n, _)| CONFIGURED_SUBCOMMANDS.contains(n))
    else {
        return Ok(Merged {
            matches: strict.try_get_matches_from(&argv)?,
            file: None,
            from_file: BTreeSet::new(),
        });
    };
    let Some(path) = sub.get_one::<PathBuf>(CONFIG_FLAG).cloned() else {
        return Ok(Merged {
            matches: strict.try_get_matches_from(&argv)?,
            file: None,
            from_file: BTreeSet::new(),
        });
    };
    let sub_cmd = strict
        .find_subcommand(sub_name)
        .cloned()
        .unwrap_or_else(|| Command::new(sub_name.to_owned()));
    let table = read_file(&path)?;
    let mut args = argv;
    let mut from_file = BTreeSet::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let arg = sub_cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && long != CONFIG_FLAG)
            .ok_or_else(|| ConfigError::UnknownKey {
                path: path.clone(),
                key: key.clone(),
            })?;
        let id = arg.get_id().as_str().to_owned();
        if matches!(
            sub.value_source(&id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let switch = matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse);
        let bad = |message: String| ConfigError::BadValue {
            path: path.clone(),
            key: key.clone(),
            message,
        };
        let values: Vec<&toml::Value> = match value {
            toml::Value::Array(items) => items.iter().collect(),
            v => vec![v],
        };
        for v in values {
            let text = match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) if switch => {
                    if *b {
                        args.push(format!("--{long}").into());
                    }
                    continue;
                }
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(bad(format!(
                        "expected a string, number or boolean, not {}",
                        other.type_str()
                    )));
                }
            };
            if switch {
                return Err(bad(format!("a switch takes true or false, not {text:?}")));
            }
            args.push(format!("--{long}={text}").into());
        }
        from_file.insert(id);
    }
    let matches = strict
        .try_get_matches_from(&args)
        .map_err(|error| match error.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                ConfigError::Clap(error)
            }
            _ if from_file.is_empty() => ConfigError::Clap(error),
            _ => ConfigError::FileValue {
                path: path.clone(),
                error,
            },
        })?;
    Ok(Merged {
        matches,
        file: Some(path),
        from_file,
    })
}

fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    text.parse::<toml::Table>()
        .map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_owned(),
        })
}

/// One effective setting of a configured subcommand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The long flag name (the file's key).
    pub name: String,
    /// The value as given, secrets masked; None when unset.
    pub value: Option<String>,
    /// "flag", "env REDO_HELPER_...", "file PATH", "default" or "unset".
    pub source: String,
}

/// The effective settings of the configured subcommand in `merged`, in declaration order.
pub fn effective(cmd: &Command, merged: &Merged) -> Vec<Setting> {
    let Some((name, sub)) = merged.matches.subcommand() else {
        return Vec::new();
    };
    let Some(sub_cmd) = cmd.find_subcommand(name) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for arg in sub_cmd.get_arguments() {
        let Some(long) = arg.get_long() else {
            continue;
        };
        if long == "help" || long == "version" {
            continue;
        }
        let id = arg.get_id().as_str();
        let value = sub.get_raw(id).map(|vals| {
            vals.map(|v| mask(long, &v.to_string_lossy()))
                .collect::<Vec<_>>()
                .join(",")
        });
        let source = match sub.value_source(id) {
            Some(ValueSource::CommandLine) if merged.from_file.contains(id) => match &merged.file {
                Some(f) => format!("file {}", f.display()),
                None => "file".to_owned(),
            },
            Some(ValueSource::CommandLine) => "flag".to_owned(),
            Some(ValueSource::EnvVariable) => format!("env {}", env_name(long)),
            Some(ValueSource::DefaultValue) => "default".to_owned(),
            _ => "unset".to_owned(),
        };
        out.push(Setting {
            name: long.to_owned(),
            value,
            source,
        });
    }
    out
}

const MASK: &str = "********";

/// A flag's value as it may be printed: a connection string's password masked, the value of
/// a flag whose name says it is a secret (password, token, secret; but not a `-file` naming
/// where one is kept) masked whole. Paths (a TLS key's, a token file's) are printed; what
/// is in those files never is (nothing here reads them).
pub fn mask(long: &str, value: &str) -> String {
    let secret_name = ["password", "token", "secret"]
        .iter()
        .any(|w| long.contains(w));
    if secret_name && !long.ends_with("-file") && !long.ends_with("-path") {
        return MASK.to_owned();
    }
    if long == "connect" {
        return mask_conninfo(value);
    }
    if long == "peers" {
        // `run` refuses user information in a peer URL; it is not printed either.
        return value
            .split(',')
            .map(crate::serve::route::without_user_info)
            .collect::<Vec<_>>()
            .join(",");
    }
    value.to_owned()
}

/// A libpq connection string or URI with its password replaced by [`MASK`].
pub fn mask_conninfo(s: &str) -> String {
    if let Some(rest) = s
        .strip_prefix("postgresql://")
        .map(|r| ("postgresql://", r))
        .or_else(|| s.strip_prefix("postgres://").map(|r| ("postgres://", r)))
    {
        let (scheme, rest) = rest;
        // user:password@host... — the userinfo ends at the last '@' before the path.
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let authority = match authority.rfind('@') {
            Some(at) => {
                let (userinfo, host) = authority.split_at(at);
                match userinfo.find(':') {
                    Some(colon) => format!("{}:{MASK}{host}", &userinfo[..colon]),
                    None => authority.to_owned(),
                }
            }
            None => authority.to_owned(),
        };
        let tail = mask_query_password(tail);
        return format!("{scheme}{authority}{tail}");
    }
    mask_keyword_password(s)
}

/// `?...&password=x&...` → the value masked.
fn mask_query_password(tail: &str) -> String {
    let Some(q) = tail.find('?') else {
        return tail.to_owned();
    };
    let (path, query) = tail.split_at(q + 1);
    let params: Vec<String> = query
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((k, _)) if k == "password" => format!("{k}={MASK}"),
            _ => p.to_owned(),
        })
        .collect();
    format!("{path}{}", params.join("&"))
}

/// `host=h password='a b' user=u` → the password's value masked (libpq keyword syntax:
/// `key = value`, the value single-quoted with backslash escapes, or up to white space).
fn mask_keyword_password(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < chars.len() {
        // A keyword starts at the beginning or after white space.
        let at_word = i == 0 || chars[i - 1].is_whitespace();
        let word: String = chars[i..]
            .iter()
            .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
            .collect();
        if at_word && word == "password" {
            let mut j = i + word.len();
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            if j < chars.len() && chars[j] == '=' {
                j += 1;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                // Skip the value.
                if j < chars.len() && chars[j] == '\'' {
                    j += 1;
                    while j < chars.len() && chars[j] != '\'' {
                        if chars[j] == '\\' {
                            j += 1;
                        }
                        j += 1;
                    }
                    j += 1;
                } else {
                    while j < chars.len() && !chars[j].is_whitespace() {
                        j += 1;
                    }
                }
                out.push_str("password=");
                out.push_str(MASK);
                i = j.min(chars.len());
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// `redo-helper config`: prints each effective setting of `run` as a TOML line with its
/// source in a comment, secrets masked. A configuration that `run` would refuse is refused
/// here first, by the same parse.
pub fn print(cmd: &Command, merged: &Merged) -> ExitCode {
    match &merged.file {
        Some(f) => println!("# configuration file: {}", f.display()),
        None => println!(
            "# no configuration file (--config or {})",
            env_name(CONFIG_FLAG)
        ),
    }
    println!("# precedence: flag > environment ({ENV_PREFIX}*) > file > default");
    for s in effective(cmd, merged) {
        match &s.value {
            Some(v) => println!("{} = {}  # {}", s.name, toml_string(v), s.source),
            None => println!("# {} unset", s.name),
        }
    }
    ExitCode::SUCCESS
}

/// A TOML basic string.
fn toml_string(v: &str) -> String {
    toml::Value::String(v.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction};

    fn cli() -> Command {
        Command::new("redo-helper").subcommand(
            Command::new("run")
                .arg(
                    Arg::new("config")
                        .long("config")
                        .value_parser(clap::value_parser!(PathBuf)),
                )
                .arg(Arg::new("connect").long("connect").required(true))
                .arg(
                    Arg::new("image_threshold")
                        .long("image-threshold")
                        .value_parser(clap::value_parser!(u32))
                        .default_value("64"),
                )
                .arg(Arg::new("slot").long("slot").default_value("fpw_pushdown"))
                .arg(
                    Arg::new("verbose")
                        .long("verbose")
                        .action(ArgAction::SetTrue),
                ),
        )
    }

    fn file(tag: &str, text: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("rh_config_{}_{tag}.toml", std::process::id()));
        std::fs::write(&p, text).unwrap();
        p
    }

    fn argv(a: &[&str]) -> Vec<OsString> {
        std::iter::once("redo-helper")
            .chain(a.iter().copied())
            .map(OsString::from)
            .collect()
    }

    fn source(m: &Merged, name: &str) -> (Option<String>, String) {
        let s = effective(&with_env(cli()), m)
            .into_iter()
            .find(|s| s.name == name)
            .unwrap();
        (s.value, s.source)
    }

    #[test]
    fn file_fills_what_flags_do_not_set_and_flags_win() {
        let p = file(
            "fill",
            "connect = \"host=h password=secret\"\nimage-threshold = 8\nslot = \"from_file\"\nverbose = true\n",
        );
        let m = parse(
            cli(),
            argv(&["run", "--config", p.to_str().unwrap(), "--slot", "s1"]),
        )
        .unwrap();
        let sub = m.matches.subcommand_matches("run").unwrap();
        assert_eq!(sub.get_one::<u32>("image_threshold"), Some(&8));
        assert_eq!(
            sub.get_one::<String>("slot").map(String::as_str),
            Some("s1")
        );
        assert!(sub.get_flag("verbose"));
        assert_eq!(source(&m, "slot").1, "flag");
        assert_eq!(
            source(&m, "image-threshold").1,
            format!("file {}", p.display())
        );
        let (connect, _) = source(&m, "connect");
        assert_eq!(connect.as_deref(), Some("host=h password=********"));
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn unknown_key_is_named() {
        let p = file("unknown", "connect = \"host=h\"\nimage-treshold = 8\n");
        let e = parse(cli(), argv(&["run", "--config", p.to_str().unwrap()]))
            .err()
            .unwrap();
        assert!(e.to_string().contains("\"image-treshold\""), "{e}");
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn bad_value_from_the_file_names_the_file() {
        let p = file("bad", "connect = \"host=h\"\nimage-threshold = \"many\"\n");
        let e = parse(cli(), argv(&["run", "--config", p.to_str().unwrap()]))
            .err()
            .unwrap();
        let text = e.to_string();
        assert!(
            text.contains(p.to_str().unwrap()) && text.contains("many"),
            "{text}"
        );
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn required_flag_may_come_from_the_file_and_is_still_required() {
        let p = file("req", "slot = \"x\"\n");
        assert!(parse(cli(), argv(&["run", "--config", p.to_str().unwrap()])).is_err());
        std::fs::write(&p, "connect = \"host=h\"\n").unwrap();
        assert!(parse(cli(), argv(&["run", "--config", p.to_str().unwrap()])).is_ok());
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn env_names_follow_the_long_flag() {
        assert_eq!(env_name("data-dir"), "REDO_HELPER_DATA_DIR");
        assert_eq!(env_name("api-token-file"), "REDO_HELPER_API_TOKEN_FILE");
    }

    #[test]
    fn secrets_are_masked() {
        assert_eq!(
            mask_conninfo("postgresql://rep:p%40ss@db:5432/postgres?sslmode=require&password=x"),
            "postgresql://rep:********@db:5432/postgres?sslmode=require&password=********"
        );
        assert_eq!(
            mask_conninfo("host=a password = 'x y\\' z' user=u"),
            "host=a password=******** user=u"
        );
        assert_eq!(mask_conninfo("host=a user=u"), "host=a user=u");
        assert_eq!(mask("api-token", "abc"), MASK);
        assert_eq!(mask("api-token-file", "/etc/t"), "/etc/t");
        assert_eq!(
            mask("peers", "https://u:pw@a:1,https://b:2"),
            "https://***@a:1,https://b:2"
        );
        assert_eq!(mask("tls-key", "/etc/k.pem"), "/etc/k.pem");
    }
}
