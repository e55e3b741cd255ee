//! File watching: debounced changes under the rules and scripts folders become reload
//! requests for the daemon.
//!
//! The watcher says only *that* something changed (and which paths, for the log); the daemon
//! then re-scans the whole folders, so nothing depends on individual events being complete or
//! in order. That is what makes every way of saving work the same:
//!
//! - editors that save by writing a temporary file and renaming it over the original (vim,
//!   VS Code) produce a create / rename pair, not a modify;
//! - a `git pull` or `git checkout` touches many files in a burst;
//! - a folder replaced wholesale (`mv rules.new rules`, or a Kubernetes ConfigMap whose
//!   `..data` symlink is swapped to a new timestamped folder) takes the watched inode away.
//!   The parent folder is watched too, and before each reload [`FolderWatcher::refresh`]
//!   re-establishes the watch on any folder whose identity (device and inode, through
//!   symlinks) changed.
//!
//! A leaf: this module imports nothing of the crate; the daemon acts on what it reports.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{debug, warn};

/// The default quiet time: events are delivered this long after they happen, merged.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(200);

/// Something changed under a watched folder.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// The paths events named (for the log; the reload re-scans whole folders anyway). Empty
    /// when the watcher lost track (an overflow or an error) and everything must be re-read.
    pub paths: Vec<PathBuf>,
}

struct Folder {
    path: PathBuf,
    /// (device, inode) of what the path resolves to when the watch was set; `None` when the
    /// folder did not exist or could not be watched.
    identity: Option<(u64, u64)>,
}

/// Watches folders recursively (and their parents, for wholesale replacement).
pub struct FolderWatcher {
    debouncer: Debouncer<notify::RecommendedWatcher, RecommendedCache>,
    folders: Vec<Folder>,
}

fn identity(path: &Path) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).ok().filter(|m| m.is_dir()).map(|m| (m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        // Without inodes, watch again on every refresh; unwatching first keeps it single.
        std::fs::metadata(path).ok().filter(|m| m.is_dir()).map(|_| (0, 0))
    }
}

/// Whether an event is about content (reads of our own reloads are not).
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

impl FolderWatcher {
    /// Starts watching `folders` (absolute or relative; missing ones are picked up when they
    /// appear in their parent). Changes are sent to `tx` after `debounce`.
    pub fn start(
        folders: &[PathBuf],
        debounce: Duration,
        tx: UnboundedSender<Changes>,
    ) -> notify::Result<FolderWatcher> {
        let folders: Vec<PathBuf> =
            folders.iter().map(|f| std::path::absolute(f).unwrap_or_else(|_| f.clone())).collect();
        let parents: Vec<PathBuf> = folders.iter().filter_map(|f| f.parent().map(Path::to_path_buf)).collect();
        let relevant = {
            let folders = folders.clone();
            move |p: &Path| {
                if folders.iter().any(|f| p.starts_with(f)) {
                    // Only rule and script files, and folders (a renamed or swapped subfolder
                    // has no extension): a log or data file written under a watched folder is
                    // not a change to reload for.
                    return p.extension().is_none_or(|e| e == "toml" || e == "rhai");
                }
                // In a parent folder, only the watched folders themselves and Kubernetes'
                // `..data` swaps matter, not the configuration file or the store beside them.
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                p.parent().is_some_and(|parent| {
                    folders.iter().any(|f| f.parent() == Some(parent) && f.file_name() == p.file_name())
                        || (name.starts_with("..") && folders.iter().any(|f| f.parent() == Some(parent)))
                })
            }
        };
        // A tick well under the debounce keeps delivery close to `debounce` after the event.
        let tick = (debounce / 20).clamp(Duration::from_millis(2), Duration::from_millis(20));
        let mut debouncer = new_debouncer(debounce, Some(tick), move |result: DebounceEventResult| match result {
            Ok(events) => {
                let mut paths = Vec::new();
                let mut rescan = false;
                for e in events.iter().filter(|e| is_change(&e.kind)) {
                    rescan |= e.need_rescan();
                    paths.extend(e.paths.iter().filter(|p| relevant(p)).cloned());
                }
                paths.sort();
                paths.dedup();
                if rescan {
                    let _ = tx.send(Changes::default());
                } else if !paths.is_empty() {
                    debug!(?paths, "Files changed.");
                    let _ = tx.send(Changes { paths });
                }
            }
            Err(errors) => {
                for e in errors {
                    warn!(error = %e, "File watching reported an error; re-reading the folders.");
                }
                let _ = tx.send(Changes::default());
            }
        })
        .map_err(|e| notify::Error::generic(&e.to_string()))?;
        let mut parents_done: Vec<&PathBuf> = Vec::new();
        for p in &parents {
            if parents_done.contains(&p) {
                continue;
            }
            parents_done.push(p);
            if let Err(e) = debouncer.watch(p, RecursiveMode::NonRecursive) {
                warn!(folder = %p.display(), error = %e, "Cannot watch the folder; a replaced folder will need a SIGHUP.");
            }
        }
        let mut w = FolderWatcher {
            debouncer,
            folders: folders.into_iter().map(|path| Folder { path, identity: None }).collect(),
        };
        w.refresh();
        Ok(w)
    }

    /// Re-establishes the watch of every folder that appeared, disappeared or was replaced
    /// since it was set. Call it before re-reading the folders.
    pub fn refresh(&mut self) {
        for f in &mut self.folders {
            let now = identity(&f.path);
            if now.is_some() && now == f.identity {
                continue;
            }
            // The old watch, if any, points at a folder that is gone from this path.
            let _ = self.debouncer.unwatch(&f.path);
            f.identity = None;
            if now.is_none() {
                continue;
            }
            match self.debouncer.watch(&f.path, RecursiveMode::Recursive) {
                Ok(()) => {
                    debug!(folder = %f.path.display(), "Watching.");
                    f.identity = now;
                }
                Err(e) => warn!(folder = %f.path.display(), error = %e, "Cannot watch the folder."),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Changes>) -> Changes {
        tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("a change within 10 s").unwrap()
    }

    /// The first report naming a path that satisfies `want` (earlier steps' late events are
    /// skipped).
    async fn naming(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Changes>, want: impl Fn(&Path) -> bool) -> Changes {
        loop {
            let c = next(rx).await;
            if c.paths.iter().any(|p| want(p)) {
                return c;
            }
        }
    }

    #[tokio::test]
    async fn reports_edits_renames_and_replaced_folders_but_not_reads() {
        let tmp = tempfile::tempdir().unwrap();
        let rules = tmp.path().join("rules");
        std::fs::create_dir_all(rules.join("sub")).unwrap();
        std::fs::write(rules.join("read_only.toml"), "r").unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut w = FolderWatcher::start(std::slice::from_ref(&rules), Duration::from_millis(20), tx).unwrap();

        std::fs::write(rules.join("sub/a.toml"), "x").unwrap();
        naming(&mut rx, |p| p.ends_with("sub/a.toml")).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        while rx.try_recv().is_ok() {}

        // Reading is not a change (our own reloads read every file).
        let _ = std::fs::read_to_string(rules.join("read_only.toml")).unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        while let Ok(c) = rx.try_recv() {
            assert!(!c.paths.iter().any(|p| p.ends_with("read_only.toml")), "{c:?}");
        }

        // Rename-and-replace, as editors save.
        std::fs::write(rules.join(".a.toml.tmp"), "y").unwrap();
        std::fs::rename(rules.join(".a.toml.tmp"), rules.join("sub/a.toml")).unwrap();
        let c = next(&mut rx).await;
        assert!(!c.paths.is_empty());
        while rx.try_recv().is_ok() {}

        // The folder replaced wholesale: the parent's watch sees it, and after a refresh the
        // new folder's own changes are seen.
        let fresh = tmp.path().join("rules.new");
        std::fs::create_dir_all(&fresh).unwrap();
        std::fs::rename(&rules, tmp.path().join("rules.old")).unwrap();
        std::fs::rename(&fresh, &rules).unwrap();
        let swapped = std::path::absolute(&rules).unwrap();
        naming(&mut rx, |p| p == swapped).await;
        w.refresh();
        tokio::time::sleep(Duration::from_millis(50)).await;
        while rx.try_recv().is_ok() {}
        std::fs::write(rules.join("b.toml"), "z").unwrap();
        naming(&mut rx, |p| p.ends_with("rules/b.toml")).await;
    }
}
