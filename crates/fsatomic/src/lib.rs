//! claas-fsatomic: the one atomic file write of the workspace.
//!
//! A reader (or a process restarted after a crash) must see either the old file or the new
//! one, never a torn mix: the bytes go to a temp file in the target's own folder (so the
//! rename never crosses filesystems), the temp file is fsynced, renamed over the target, and
//! the folder is fsynced so the rename itself survives a power cut. Depends on no claas crate,
//! so every crate (the lowest is claas-model) can use it.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

/// Atomically replaces (or creates) `path` with `bytes`. The parent folder must exist.
pub fn write_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_file_with(path, |f| f.write_all(bytes))
}

/// Like [`write_file`], for writers that stream into the file: `write` gets the temp file.
/// If it fails, the temp file is removed and `path` is untouched.
pub fn write_file_with<F>(path: &Path, write: F) -> io::Result<()>
where
    F: FnOnce(&mut File) -> io::Result<()>,
{
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?
        .to_string_lossy()
        .to_string();
    let mut tmp = tempfile::Builder::new()
        .prefix(&temp_prefix(&name))
        .tempfile_in(dir)?;
    write(tmp.as_file_mut())?;
    tmp.as_file_mut().flush()?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}

/// fsyncs a folder so renames and creations inside it are durable. A no-op where folders
/// cannot be opened as files (Windows).
pub fn sync_dir(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(path)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}

/// Temp files are named `{temp_prefix(name)}{random}`: hidden, and recognisable by stale-temp
/// sweeps and leftover checks (`.{name}.tmp-`).
pub fn temp_prefix(name: &str) -> String {
    format!(".{name}.tmp-")
}

/// Whether a folder entry's name is one of this crate's temp files (of any target).
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp-")
}

/// The folder holding `path`; `.` for a bare file name.
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn writes_and_replaces_without_leftovers() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("a.json");
        write_file(&p, b"one").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"one");
        write_file(&p, b"two, longer").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two, longer");
        assert_eq!(entries(t.path()), vec!["a.json"]);
    }

    #[test]
    fn failing_writer_leaves_the_old_file() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("state.bin");
        write_file(&p, b"old").unwrap();
        let err = write_file_with(&p, |f| {
            f.write_all(b"half")?;
            Err(io::Error::other("boom"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "boom");
        assert!(is_temp_name(&format!("{}x1y2", temp_prefix("state.bin"))));
        assert!(!is_temp_name("state.bin"));
        assert_eq!(fs::read(&p).unwrap(), b"old");
        assert_eq!(entries(t.path()), vec!["state.bin"]);
    }

    #[test]
    fn streaming_writer_and_missing_folder() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("log.txt");
        let dir = t.path().to_path_buf();
        write_file_with(&p, |f| {
            // mid-write only the temp file exists, under a recognisable name
            let names = entries(&dir);
            assert_eq!(names.len(), 1, "{names:?}");
            assert!(names[0].starts_with(&temp_prefix("log.txt")), "{names:?}");
            assert!(is_temp_name(&names[0]));
            for i in 0..3 {
                writeln!(f, "line {i}")?;
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "line 0\nline 1\nline 2\n");
        let err = write_file(&t.path().join("nope/x"), b"x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(write_file(Path::new("/"), b"x").is_err());
        sync_dir(t.path()).unwrap();
        assert!(sync_dir(&t.path().join("nope")).is_err());
    }
}
