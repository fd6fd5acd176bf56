//! `GET /v1/lora/export`: a zip archive of an adapter folder.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use zip::write::SimpleFileOptions;

use crate::{LoraStore, ResolvedAdapter, Result, StoreError};

impl LoraStore {
    /// A zip archive (deflate) of every file in the resolved adapter folder, names relative to
    /// it, in sorted order. Returns the resolved adapter too.
    ///
    /// Nothing outside the LoRA root is read: symbolic links inside the folder are left out
    /// (so a link to `/etc` or a link loop adds nothing), and a folder that is itself reached
    /// through a link out of the root is refused.
    pub fn export_zip(&self, id: &str) -> Result<(ResolvedAdapter, Vec<u8>)> {
        let resolved = self.resolve(id)?;
        let root = fs::canonicalize(self.root()).map_err(|e| StoreError::io(self.root(), e))?;
        let real = fs::canonicalize(&resolved.dir).map_err(|e| StoreError::io(&resolved.dir, e))?;
        if !real.starts_with(&root) {
            return Err(StoreError::invalid(
                id,
                "its folder is a link out of the LoRA root; export never follows links out of it",
            ));
        }
        let mut files = Vec::new();
        collect_files(&resolved.dir, "", &mut files)?;
        files.sort();
        let zerr = |e: zip::result::ZipError| StoreError::Zip(e.to_string());
        let mut zw = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
        let opts = SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(0o644);
        for rel in files {
            let path = resolved.dir.join(&rel);
            let bytes = fs::read(&path).map_err(|e| StoreError::io(&path, e))?;
            zw.start_file(rel.as_str(), opts).map_err(zerr)?;
            zw.write_all(&bytes).map_err(|e| StoreError::io(&path, e))?;
        }
        let cursor = zw.finish().map_err(zerr)?;
        Ok((resolved, cursor.into_inner()))
    }
}

fn collect_files(dir: &Path, rel: &str, out: &mut Vec<String>) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(|e| StoreError::io(dir, e))? {
        let entry = entry.map_err(|e| StoreError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().to_string();
        let child_rel = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let path = entry.path();
        // The entry's own type: a symbolic link is neither a file nor a folder here.
        let kind = entry.file_type().map_err(|e| StoreError::io(&path, e))?;
        if kind.is_dir() {
            collect_files(&path, &child_rel, out)?;
        } else if kind.is_file() {
            out.push(child_rel);
        }
    }
    Ok(())
}
