//! Python for tests that check Hookline with tools its customers and testers use from PyPI: each
//! virtualenv lives in `$HOOKLINE_CACHE/<dir>` with one requirements file installed. [`venv`] is
//! the one `localenv/demo.sh` also uses, `$HOOKLINE_CACHE/venv`, with
//! `examples/fraud-decisions/requirements.txt` (the `standardwebhooks` library); [`venv_with`]
//! makes others, such as `venv-schemathesis` for the API fuzzing test, so one tool's
//! dependencies never move another's.
//!
//! [`venv_with`] makes a venv when missing and installs its requirements when they changed since
//! the last install (a stamp file in the venv holds the requirements it was made from), so a warm
//! run costs one file read. A lock file per venv keeps two test processes from installing into
//! it at once.

use std::{
    fs::OpenOptions,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::Mutex,
};

use anyhow::{Context as _, bail};

use crate::{cache_dir, repo_root};

/// The requirements installed into [`venv`].
pub fn requirements() -> PathBuf {
    repo_root().join("examples/fraud-decisions/requirements.txt")
}

/// A script of `tests/python/`.
pub fn script(name: &str) -> PathBuf {
    repo_root().join("tests/python").join(name)
}

static IN_PROCESS: Mutex<()> = Mutex::new(());

const STAMP: &str = ".hookline-requirements";

/// The python of `$HOOKLINE_CACHE/venv` with [`requirements`] installed; see [`venv_with`].
///
/// # Errors
/// As [`venv_with`].
pub fn venv() -> anyhow::Result<PathBuf> {
    venv_with("venv", &requirements())
}

/// The python of the venv `$HOOKLINE_CACHE/<dir_name>`, with `requirements` installed; makes the
/// venv (`python3 -m venv`) and runs `pip install -r` only when needed.
///
/// # Errors
/// When python3 or pip fails; the error carries their output.
pub fn venv_with(dir_name: &str, requirements: &Path) -> anyhow::Result<PathBuf> {
    let dir = cache_dir().join(dir_name);
    let _in_process = IN_PROCESS.lock().unwrap_or_else(|e| e.into_inner());
    let parent = dir.parent().context("the venv path has a parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(parent.join(format!("{dir_name}.lock")))
        .context("opening the venv lock file")?;
    lock.lock().context("locking the venv")?;
    let python = dir.join("bin/python");
    let wanted = std::fs::read_to_string(requirements)
        .with_context(|| format!("reading {}", requirements.display()))?;
    let stamp = dir.join(STAMP);
    if python.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(python);
    }
    if !python.exists() {
        run(
            Command::new("python3").arg("-m").arg("venv").arg(&dir),
            "python3 -m venv (Debian/Ubuntu: apt-get install python3-venv)",
        )?;
    }
    run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(requirements),
        &format!(
            "pip install -r {} into {} (it needs PyPI; run it by hand to see more)",
            requirements.display(),
            dir.display()
        ),
    )?;
    std::fs::write(&stamp, &wanted).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(python)
}

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<Output> {
    let out = cmd.output().with_context(|| format!("starting {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// Runs `python script args…` with the venv's python; returns stdout.
///
/// # Errors
/// When the venv cannot be had or the script exits non-zero (the error carries its stderr).
pub fn run_script(script: &Path, args: &[&str]) -> anyhow::Result<String> {
    let python = venv()?;
    let out = run(
        Command::new(&python).arg(script).args(args),
        &format!("{} {}", script.display(), args.join(" ")),
    )?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
