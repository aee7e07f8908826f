//! `FERRY_HOME`: where ferry keeps its state (SPEC §3).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

/// `$FERRY_HOME`, else `$XDG_STATE_HOME/ferry`, else `~/.local/state/ferry`; created 0700.
pub fn ferry_home() -> Result<PathBuf> {
    let home = if let Some(h) = std::env::var_os("FERRY_HOME").filter(|h| !h.is_empty()) {
        PathBuf::from(h)
    } else if let Some(state) = std::env::var_os("XDG_STATE_HOME").filter(|h| !h.is_empty()) {
        PathBuf::from(state).join("ferry")
    } else if let Some(user) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        PathBuf::from(user).join(".local/state/ferry")
    } else {
        bail!("cannot find a place for ferry's state: set FERRY_HOME or HOME");
    };
    create_private_dir(&home)?;
    Ok(home)
}

/// Creates `dir` (and parents) with mode 0700 for the last component.
pub fn create_private_dir(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("while creating {}", dir.display()))
}
