//! Output folders that lk owns. A folder lk creates for a run carries a mark (a `.lk-run` file
//! naming the command, scenario and seed that made it); lk replaces what is inside a folder only
//! when the folder carries that mark.
//!
//! **Architecture Invariant:** this module is the only place in the harness that removes a
//! folder. A non-empty folder without the mark is someone else's: it is refused untouched, with
//! a listing of what is there, unless the user says `--force`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The file that marks a folder as lk's.
pub const MARK: &str = ".lk-run";

/// What to do with a non-empty folder that lk did not create.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Takeover {
    /// Refuse it, touching nothing (the default).
    #[default]
    Refuse,
    /// Take it over (`--force`): mark it as lk's, then replace lk's subfolders in it.
    Force,
}

/// Why an output folder cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The folder holds files that lk did not write.
    #[error(
        "{path} is not empty and was not created by lk (it has no {MARK} file); it holds: {listing}. lk writes \
         only into folders it created: choose another --out, or pass --force to let lk take this one over and \
         replace its log/, checkpoints/, master/, views/ and dead-letters/"
    )]
    Foreign {
        /// The folder.
        path: String,
        /// Some of what is in it.
        listing: String,
    },
    /// Another lk is writing into the folder now.
    #[error(
        "{path} is in use by another lk that is running into it now (it holds the lock on {path}/{MARK}); two runs \
         into one folder would overwrite each other's log and results: wait for it to finish, or choose another --out"
    )]
    Busy {
        /// The folder.
        path: String,
    },
    /// The path exists and is not a folder.
    #[error("{path} exists and is not a folder; choose another --out")]
    NotAFolder {
        /// The path.
        path: String,
    },
    /// Reading or writing the folder failed.
    #[error("{path}: {cause}")]
    Io {
        /// Where.
        path: String,
        /// Why.
        cause: std::io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> OutputError + '_ {
    move |cause| OutputError::Io { path: path.display().to_string(), cause }
}

/// A folder that lk owns: created by lk, found with lk's mark, or taken over by `--force`.
/// A claimed folder is locked (an advisory lock on its mark) until the last copy of it is
/// dropped: a second lk claiming it meanwhile is refused.
#[derive(Clone, Debug)]
pub struct OutputFolder {
    path: PathBuf,
    /// The mark, open and locked (none for a folder reopened without a claim).
    _lock: Option<std::sync::Arc<std::fs::File>>,
}

impl OutputFolder {
    /// Claims `path` for `identity` (a line such as `lk run scenarios/quickstart.toml, seed 42`):
    /// creates it if missing, marks it if empty, reuses it if it carries lk's mark, and refuses
    /// a non-empty folder without the mark unless `takeover` is [`Takeover::Force`].
    pub fn claim(path: &Path, identity: &str, takeover: Takeover) -> Result<Self, OutputError> {
        match std::fs::metadata(path) {
            Ok(metadata) if !metadata.is_dir() => {
                return Err(OutputError::NotAFolder { path: path.display().to_string() });
            }
            Ok(_) => {
                let marked = path.join(MARK).is_file();
                if !marked && takeover == Takeover::Refuse {
                    let entries = listing(path)?;
                    if !entries.is_empty() {
                        return Err(OutputError::Foreign { path: path.display().to_string(), listing: entries });
                    }
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(path).map_err(io_error(path))?;
            }
            Err(error) => return Err(io_error(path)(error)),
        }
        let mark = path.join(MARK);
        let text = format!(
            "This folder was created by lk and holds one run's output; lk replaces what is in it when it runs \
             again.\n{identity}\n"
        );
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&mark)
            .map_err(io_error(&mark))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(OutputError::Busy { path: path.display().to_string() });
            }
            Err(std::fs::TryLockError::Error(cause)) => return Err(io_error(&mark)(cause)),
        }
        file.set_len(0).map_err(io_error(&mark))?;
        std::io::Write::write_all(&mut file, text.as_bytes()).map_err(io_error(&mark))?;
        Ok(Self { path: path.to_owned(), _lock: Some(std::sync::Arc::new(file)) })
    }

    /// A folder lk claimed earlier (it carries the mark), reopened without rewriting the mark.
    pub fn reopen(path: &Path) -> Result<Self, OutputError> {
        if path.join(MARK).is_file() {
            Ok(Self { path: path.to_owned(), _lock: None })
        } else {
            Err(OutputError::Foreign { path: path.display().to_string(), listing: listing(path)? })
        }
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `name` inside the folder.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Removes the subfolder `name` (an earlier run's), if there is one: only in a folder lk
    /// owns, and only a direct subfolder, never a path that leaves it.
    pub fn remove(&self, name: &str) -> Result<(), OutputError> {
        assert!(
            !name.is_empty() && !name.contains(['/', '\\']) && name != "." && name != "..",
            "{name:?} is not a subfolder's name"
        );
        let path = self.path.join(name);
        match std::fs::symlink_metadata(&path) {
            // A link is removed as a link: what it points to is not lk's.
            Ok(metadata) if metadata.file_type().is_symlink() || metadata.is_file() => {
                std::fs::remove_file(&path).map_err(io_error(&path))
            }
            Ok(_) => std::fs::remove_dir_all(&path).map_err(io_error(&path)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(io_error(&path)(error)),
        }
    }
}

/// Up to eight entries of a folder, sorted, with a count of the rest; empty for an empty folder.
fn listing(path: &Path) -> Result<String, OutputError> {
    let mut names: Vec<String> = std::fs::read_dir(path)
        .map_err(io_error(path))?
        .map(|entry| {
            entry.map(|entry| {
                let mut name = entry.file_name().to_string_lossy().into_owned();
                if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                    name.push('/');
                }
                name
            })
        })
        .collect::<Result<_, _>>()
        .map_err(io_error(path))?;
    names.sort();
    let mut text = names.iter().take(8).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > 8 {
        let _ = write!(text, " and {} more", names.len() - 8);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_or_empty_folder_is_claimed_and_marked() {
        let root = tempfile::tempdir().unwrap();
        let fresh = root.path().join("a/b");
        let folder = OutputFolder::claim(&fresh, "lk run x", Takeover::Refuse).unwrap();
        assert!(folder.join(MARK).is_file());
        let empty = root.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        OutputFolder::claim(&empty, "lk run x", Takeover::Refuse).unwrap();
        assert!(empty.join(MARK).is_file());
    }

    #[test]
    fn a_foreign_folder_is_refused_untouched_and_forced_only_on_request() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("views")).unwrap();
        std::fs::write(root.path().join("views/important.txt"), "mine").unwrap();
        std::fs::write(root.path().join("thesis.tex"), "mine too").unwrap();
        let error = OutputFolder::claim(root.path(), "lk run x", Takeover::Refuse).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("thesis.tex") && message.contains("views/") && message.contains("--force"),
            "{message}"
        );
        assert!(!root.path().join(MARK).exists());
        assert_eq!(std::fs::read_to_string(root.path().join("views/important.txt")).unwrap(), "mine");

        let folder = OutputFolder::claim(root.path(), "lk run x", Takeover::Force).unwrap();
        assert!(folder.join(MARK).is_file());
        drop(folder);
        // Marked now: claimed again without --force.
        OutputFolder::claim(root.path(), "lk run y", Takeover::Refuse).unwrap();
    }

    /// While one lk holds a folder, another is refused, whatever it asks; once it lets go, the
    /// folder can be claimed again.
    #[test]
    fn a_folder_in_use_is_refused_until_it_is_released() {
        let root = tempfile::tempdir().unwrap();
        let folder = OutputFolder::claim(root.path(), "lk run x", Takeover::Refuse).unwrap();
        let copy = folder.clone();
        drop(folder);
        for takeover in [Takeover::Refuse, Takeover::Force] {
            let error = OutputFolder::claim(root.path(), "lk run y", takeover).unwrap_err();
            assert!(matches!(error, OutputError::Busy { .. }), "{error}");
            assert!(error.to_string().contains("another --out"), "{error}");
        }
        // The mark still names the holder.
        assert!(std::fs::read_to_string(root.path().join(MARK)).unwrap().contains("lk run x"));
        drop(copy);
        OutputFolder::claim(root.path(), "lk run y", Takeover::Refuse).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn removal_stays_inside_the_folder_and_leaves_link_targets() {
        let root = tempfile::tempdir().unwrap();
        let outside = root.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep.txt"), "keep").unwrap();
        let folder = OutputFolder::claim(&root.path().join("run"), "lk run x", Takeover::Refuse).unwrap();
        std::fs::create_dir_all(folder.join("log/topics")).unwrap();
        std::fs::write(folder.join("log/topics/x"), "old").unwrap();
        std::os::unix::fs::symlink(&outside, folder.join("views")).unwrap();
        folder.remove("log").unwrap();
        folder.remove("views").unwrap();
        folder.remove("master").unwrap();
        assert!(!folder.join("log").exists() && !folder.join("views").exists());
        assert_eq!(std::fs::read_to_string(outside.join("keep.txt")).unwrap(), "keep");
    }

    #[test]
    fn a_file_is_not_a_folder() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("f");
        std::fs::write(&file, "x").unwrap();
        assert!(matches!(
            OutputFolder::claim(&file, "lk run x", Takeover::Refuse),
            Err(OutputError::NotAFolder { .. })
        ));
    }
}
