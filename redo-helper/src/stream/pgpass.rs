//! The password file (`~/.pgpass`, `PGPASSFILE`, `passfile=`), as libpq reads it
//! (`passwordFromFile` in fe-connect.c, "The Password File" in the documentation):
//!
//! - one entry a line, `hostname:port:database:username:password`; lines starting with `#`
//!   are comments; the first matching line wins;
//! - `\` escapes the next character (`\:`, `\\`); a field that is exactly `*` matches
//!   anything; the password ends at the first unescaped `:`;
//! - `localhost` also matches a connection through the default socket directory;
//! - a file that is not a regular file, or that the group or others may access at all, is
//!   ignored with a warning: it would let other local users read (or plant) passwords.
//!
//! Nothing here prints a password; the errors name the file and the reason only.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Why the password file was not used (these are warnings in libpq, and the file is ignored).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PassFileIgnored {
    #[error("password file \"{}\" is not a plain file", .0.display())]
    NotAFile(PathBuf),
    #[error(
        "password file \"{}\" has group or world access; permissions should be u=rw (0600) or less (chmod 0600 it)",
        .0.display()
    )]
    Permissions(PathBuf),
    #[error("cannot read password file \"{}\": {reason}", .path.display())]
    Unreadable { path: PathBuf, reason: String },
}

/// What the connection is matched on.
pub(crate) struct PassKey<'a> {
    pub host: &'a str,
    pub port: &'a str,
    pub database: &'a str,
    pub user: &'a str,
}

/// The password of the first line of `text` that matches `key`; None when none does or the
/// matching line's password is empty.
pub(crate) fn lookup(text: &str, key: &PassKey<'_>) -> Option<String> {
    for line in text.lines() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut rest = line;
        let mut matched = true;
        for want in [key.host, key.port, key.database, key.user] {
            match match_field(rest, want) {
                Some(r) => rest = r,
                None => {
                    matched = false;
                    break;
                }
            }
        }
        if matched {
            let password = unescape_until_colon(rest);
            // libpq treats an empty password in the file as none.
            return (!password.is_empty()).then_some(password);
        }
    }
    None
}

/// Matches one `field:` at the start of `line` against `want` (`*` or the escaped text);
/// returns what follows the `:`.
fn match_field<'a>(line: &'a str, want: &str) -> Option<&'a str> {
    if let Some(rest) = line.strip_prefix("*:") {
        return Some(rest);
    }
    let mut want = want.chars();
    let mut chars = line.char_indices();
    while let Some((i, c)) = chars.next() {
        let c = match c {
            ':' => {
                return want.next().is_none().then(|| &line[i + 1..]);
            }
            '\\' => match chars.next() {
                Some((_, e)) => e,
                None => return None,
            },
            c => c,
        };
        if want.next() != Some(c) {
            return None;
        }
    }
    // The line ended inside the field: too few fields.
    None
}

/// The password field: backslash escapes removed, up to the first unescaped `:`.
fn unescape_until_colon(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ':' => break,
            '\\' if chars.peek().is_some() => {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// The password for `key` from the file at `path`: Ok(None) when the file does not exist
/// (libpq says nothing then) or has no matching entry; Err when it exists but is ignored.
pub(crate) fn password_from_file(
    path: &Path,
    key: &PassKey<'_>,
) -> Result<Option<String>, PassFileIgnored> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(_) => return Ok(None),
    };
    if !meta.is_file() {
        return Err(PassFileIgnored::NotAFile(path.to_path_buf()));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(PassFileIgnored::Permissions(path.to_path_buf()));
    }
    let text = std::fs::read(path).map_err(|e| PassFileIgnored::Unreadable {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(lookup(&String::from_utf8_lossy(&text), key))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: PassKey<'static> = PassKey {
        host: "db:1",
        port: "5432",
        database: "replication",
        user: "rep",
    };

    #[test]
    fn first_match_escapes_and_wildcards() {
        let text = "# comment\n\
                    other:5432:*:rep:wrong\n\
                    db\\:1:5432:*:rep:pa\\:ss\\\\word:ignored\n\
                    *:*:*:*:fallback\n";
        assert_eq!(lookup(text, &KEY).as_deref(), Some("pa:ss\\word"));
        let other = PassKey { user: "x", ..KEY };
        assert_eq!(lookup(text, &other).as_deref(), Some("fallback"));
        // A field that merely starts with '*' is no wildcard; too few fields never match.
        assert_eq!(lookup("*x:*:*:*:p\n", &KEY), None);
        assert_eq!(lookup("db\\:1:5432\n", &KEY), None);
        // An empty password is none; CRLF line ends are accepted.
        assert_eq!(lookup("*:*:*:*:\n", &KEY), None);
        assert_eq!(lookup("*:*:*:*:p\r\n", &KEY).as_deref(), Some("p"));
    }

    #[test]
    fn group_readable_file_is_ignored() {
        let dir = std::env::temp_dir().join(format!("pgpass-unit-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let f = dir.join("pgpass");
        std::fs::write(&f, "*:*:*:*:secret\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = password_from_file(&f, &KEY).unwrap_err();
        assert!(e.to_string().contains("group or world access"), "{e}");
        assert!(!e.to_string().contains("secret"));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            password_from_file(&f, &KEY).unwrap().as_deref(),
            Some("secret")
        );
        assert_eq!(password_from_file(&dir.join("none"), &KEY), Ok(None));
        assert!(matches!(
            password_from_file(&dir, &KEY),
            Err(PassFileIgnored::NotAFile(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    mod fuzz {
        //! Property tests (proptest): the parser never panics, and a line written with
        //! libpq's escaping gives its password back.
        use super::*;
        use proptest::prelude::*;

        fn cases(default: u32) -> u32 {
            std::env::var("PROPTEST_CASES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        }

        fn escape(s: &str) -> String {
            // '#' too: a line starting with it is a comment (libpq looks before unescaping).
            s.replace('\\', "\\\\")
                .replace(':', "\\:")
                .replace('#', "\\#")
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(cases(3_000)))]

            #[test]
            fn arbitrary_files_never_panic(
                text in any::<String>(),
                host in "[a-z:\\\\*]{0,6}",
                user in any::<String>(),
            ) {
                let key = PassKey { host: &host, port: "5432", database: "replication", user: &user };
                let _ = lookup(&text, &key);
            }

            #[test]
            fn escaped_lines_round_trip(
                noise in "[^\n]{0,40}",
                host in "[^\n\r]{1,12}",
                user in "[^\n\r]{1,12}",
                password in "[^\n\r]{1,16}",
            ) {
                let key = PassKey { host: &host, port: "5432", database: "replication", user: &user };
                let line = format!(
                    "#{noise}\n{}:5432:*:{}:{}\n",
                    escape(&host), escape(&user), escape(&password)
                );
                prop_assert_eq!(lookup(&line, &key), Some(password));
            }
        }
    }
}
