//! The demo's access to PostgreSQL's own programs: finding the server binaries
//! (`initdb`, `pg_ctl`, `postgres`, `pg_basebackup`) and running them as an
//! unprivileged OS user, since PostgreSQL refuses to run as root. Nothing here knows
//! about clusters or nodes; see [`super::cluster`].

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use super::DemoError;

/// Programs the demo runs; a directory qualifies only with all of them.
const REQUIRED: [&str; 4] = ["initdb", "pg_ctl", "postgres", "pg_basebackup"];

/// `primary_conninfo` changes take effect on reload from PostgreSQL 13 on, which the
/// drill's repointing relies on.
const MIN_MAJOR: u32 = 13;

/// Environment variables that would redirect libpq-based tools to another server.
const LIBPQ_ENV: [&str; 9] = [
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGSERVICE",
    "PGOPTIONS",
    "PGDATA",
];

/// Where the server binaries are, and which version they are.
#[derive(Debug, Clone)]
pub struct PgBin {
    pub dir: PathBuf,
    /// As `pg_ctl --version` says it, e.g. `15.8`.
    pub version: String,
}

impl PgBin {
    pub fn path(&self, program: &str) -> PathBuf {
        self.dir.join(program)
    }
}

/// Finds the server binaries: `$SWITCHYARD_PG_BINDIR`, `pg_config --bindir`, the
/// `PATH`, then `/usr/lib/postgresql/*/bin` (highest version first).
pub fn find() -> Result<PgBin, DemoError> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os("SWITCHYARD_PG_BINDIR") {
        candidates.push(PathBuf::from(dir));
    }
    if let Ok(output) = std::process::Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    {
        if output.status.success() {
            let dir = String::from_utf8_lossy(&output.stdout).trim().to_string();
            if !dir.is_empty() {
                candidates.push(PathBuf::from(dir));
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    candidates.extend(debian_bindirs(Path::new("/usr/lib/postgresql")));
    find_in(candidates)
}

/// The first of `candidates` holding every required program of a usable version.
fn find_in(candidates: Vec<PathBuf>) -> Result<PgBin, DemoError> {
    let mut too_old = None;
    for dir in candidates {
        if !REQUIRED.iter().all(|p| is_executable(&dir.join(p))) {
            continue;
        }
        let Ok(version) = version_of(&dir) else {
            continue;
        };
        if major_version(&version).unwrap_or(0) >= MIN_MAJOR {
            return Ok(PgBin { dir, version });
        }
        too_old.get_or_insert(format!("{version} in {}", dir.display()));
    }
    if let Some(found) = too_old {
        return Err(DemoError::MissingPostgres(format!(
            "found PostgreSQL {found}, but the demo needs {MIN_MAJOR} or later: \
             `apt-get install postgresql` (or `postgresql-15`), or point \
             SWITCHYARD_PG_BINDIR at a newer installation's bin directory"
        )));
    }
    Err(DemoError::MissingPostgres(
        "PostgreSQL server programs (initdb, pg_ctl, postgres, pg_basebackup) were not found \
         via pg_config --bindir, PATH or /usr/lib/postgresql/*/bin. Install them, e.g. \
         `apt-get install postgresql` (or `postgresql-15`) on Debian/Ubuntu, \
         `dnf install postgresql-server` on Fedora, `brew install postgresql` on macOS, \
         or point SWITCHYARD_PG_BINDIR at their directory."
            .into(),
    ))
}

/// `/usr/lib/postgresql/<version>/bin` directories, highest version first.
fn debian_bindirs(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(root) else {
        return Vec::new();
    };
    let mut versions: Vec<(Vec<u32>, PathBuf)> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let key: Option<Vec<u32>> = name.split('.').map(|p| p.parse().ok()).collect();
            Some((key?, entry.path().join("bin")))
        })
        .collect();
    versions.sort_by(|a, b| b.0.cmp(&a.0));
    versions.into_iter().map(|(_, dir)| dir).collect()
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
}

fn version_of(dir: &Path) -> Result<String, DemoError> {
    let pg_ctl = dir.join("pg_ctl");
    let output = std::process::Command::new(&pg_ctl)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| DemoError::Setup(format!("cannot run {}: {e}", pg_ctl.display())))?;
    let text = String::from_utf8_lossy(&output.stdout);
    parse_version(&text).ok_or_else(|| {
        DemoError::Setup(format!(
            "cannot read the version from `{} --version`: {:?}",
            pg_ctl.display(),
            text.trim()
        ))
    })
}

/// The version in `pg_ctl (PostgreSQL) 15.8 (Debian 15.8-0+deb12u1)`.
pub fn parse_version(text: &str) -> Option<String> {
    let after = text.split("(PostgreSQL)").nth(1)?;
    let version = after.split_whitespace().next()?;
    major_version(version).map(|_| version.to_string())
}

fn major_version(version: &str) -> Option<u32> {
    version
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The OS user PostgreSQL runs as: ourselves, or when we are root, `postgres` (or
/// `nobody` when there is no such user).
#[derive(Debug, Clone)]
pub struct RunAs {
    pub name: String,
    /// uid/gid to switch to; `None` when no switch is needed.
    ids: Option<(u32, u32)>,
}

impl RunAs {
    pub fn detect() -> Result<RunAs, DemoError> {
        let root = fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        if !root {
            let name = std::env::var("USER").unwrap_or_else(|_| "the current user".into());
            return Ok(RunAs { name, ids: None });
        }
        let passwd = fs::read_to_string("/etc/passwd")
            .map_err(|e| DemoError::Setup(format!("cannot read /etc/passwd: {e}")))?;
        for name in ["postgres", "nobody"] {
            if let Some(ids) = passwd_ids(&passwd, name) {
                return Ok(RunAs {
                    name: name.into(),
                    ids: Some(ids),
                });
            }
        }
        Err(DemoError::Setup(
            "running as root, and there is neither a `postgres` nor a `nobody` user to run \
             PostgreSQL as (PostgreSQL refuses to run as root)"
                .into(),
        ))
    }

    /// Whether commands switch user (we are root).
    pub fn switches_user(&self) -> bool {
        self.ids.is_some()
    }

    /// Hands `path` to the user, so its servers can write there.
    pub fn give(&self, path: &Path) -> Result<(), DemoError> {
        match self.ids {
            Some((uid, gid)) => std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(|e| DemoError::Setup(format!("cannot chown {}: {e}", path.display()))),
            None => Ok(()),
        }
    }

    /// A command for `program` that runs as this user, in `cwd`, in its own process
    /// group (a Ctrl-C meant for the demo must not kill it half-way), with libpq's
    /// environment cleared.
    pub fn command(&self, program: &Path, cwd: &Path) -> std::process::Command {
        let mut command = std::process::Command::new(program);
        if let Some((uid, gid)) = self.ids {
            command.uid(uid).gid(gid);
        }
        for name in LIBPQ_ENV {
            command.env_remove(name);
        }
        command
            .current_dir(cwd)
            .env("HOME", cwd)
            .env("LC_ALL", "C")
            .process_group(0)
            .stdin(Stdio::null());
        command
    }
}

/// uid and gid of `name` in an `/etc/passwd` text.
fn passwd_ids(passwd: &str, name: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        match fields.as_slice() {
            [user, _, uid, gid, ..] if *user == name => {
                Some((uid.parse().ok()?, gid.parse().ok()?))
            }
            _ => None,
        }
    })
}

/// Runs a command to completion within `timeout`; its stdout on success, otherwise
/// an error naming `what` with the end of its output.
pub async fn run(
    command: std::process::Command,
    what: &str,
    timeout: Duration,
) -> Result<String, DemoError> {
    let mut command = tokio::process::Command::from(command);
    command.kill_on_drop(true);
    let output = match tokio::time::timeout(timeout, command.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => return Err(DemoError::Setup(format!("{what}: cannot run it: {e}"))),
        Err(_) => {
            return Err(DemoError::Setup(format!(
                "{what}: did not finish within {timeout:?}"
            )))
        }
    };
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let mut detail = String::from_utf8_lossy(&output.stderr).trim().to_string();
    if detail.is_empty() {
        detail = String::from_utf8_lossy(&output.stdout).trim().to_string();
    }
    Err(DemoError::Setup(format!(
        "{what} failed ({}): {}",
        output.status,
        tail(&detail, 12)
    )))
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_from_pg_ctl() {
        assert_eq!(
            parse_version("pg_ctl (PostgreSQL) 15.8 (Debian 15.8-0+deb12u1)\n").as_deref(),
            Some("15.8")
        );
        assert_eq!(
            parse_version("pg_ctl (PostgreSQL) 17beta1").as_deref(),
            Some("17beta1")
        );
        assert_eq!(major_version("17beta1"), Some(17));
        assert_eq!(parse_version("pg_ctl 15.8"), None);
        assert_eq!(parse_version("pg_ctl (PostgreSQL) beta"), None);
    }

    #[test]
    fn passwd_lookup() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      postgres:x:101:104:PostgreSQL administrator:/var/lib/postgresql:/bin/bash\n\
                      broken:x:abc:1::/:/bin/sh\n";
        assert_eq!(passwd_ids(passwd, "postgres"), Some((101, 104)));
        assert_eq!(passwd_ids(passwd, "nobody"), None);
        assert_eq!(passwd_ids(passwd, "broken"), None);
    }

    #[test]
    fn debian_versions_sort_highest_first() {
        let root = std::env::temp_dir().join(format!("switchyard-bindirs-{}", std::process::id()));
        for version in ["9.6", "15", "13", "16", "notaversion"] {
            let _ = fs::create_dir_all(root.join(version).join("bin"));
        }
        let dirs = debian_bindirs(&root);
        let names: Vec<String> = dirs
            .iter()
            .filter_map(|d| d.parent()?.file_name()?.to_str().map(str::to_string))
            .collect();
        let _ = fs::remove_dir_all(&root);
        assert_eq!(names, vec!["16", "15", "13", "9.6"]);
    }

    #[test]
    fn without_binaries_the_error_says_what_to_install() {
        let empty = std::env::temp_dir().join(format!("switchyard-nobin-{}", std::process::id()));
        let _ = fs::create_dir_all(&empty);
        let result = find_in(vec![empty.clone(), PathBuf::from("/nonexistent")]);
        let _ = fs::remove_dir_all(&empty);
        match result {
            Err(DemoError::MissingPostgres(message)) => {
                assert!(message.contains("apt-get install postgresql"), "{message}");
                assert!(message.contains("initdb"), "{message}");
            }
            other => panic!("expected MissingPostgres, got {other:?}"),
        }
    }

    #[test]
    fn tails_keep_the_last_lines() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
        assert_eq!(tail("", 5), "");
    }
}
