//! Noticing configuration changes: a cheap fingerprint of the files behind a config.

use std::path::PathBuf;
use std::time::SystemTime;

/// Every config file's path, length and modification time. Two equal fingerprints mean
/// "nothing to reload"; a different one means "load and compile again".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint(Vec<(PathBuf, u64, Option<SystemTime>)>);

/// Fingerprints the files named, and the files directly inside named directories.
pub fn fingerprint(paths: &[PathBuf]) -> Fingerprint {
    let mut out = Vec::new();
    for path in paths {
        let mut files = vec![path.clone()];
        if path.is_dir() {
            files = std::fs::read_dir(path)
                .map(|rd| rd.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            files.sort();
        }
        for f in files {
            let meta = std::fs::metadata(&f).ok();
            let len = meta.as_ref().map_or(0, |m| m.len());
            let modified = meta.and_then(|m| m.modified().ok());
            out.push((f, len, modified));
        }
    }
    Fingerprint(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_when_a_file_changes_or_appears() {
        let dir = tempfile::tempdir().expect("tmp");
        let paths = vec![dir.path().to_owned()];
        std::fs::write(dir.path().join("a.yaml"), "a").expect("write");
        let first = fingerprint(&paths);
        assert_eq!(first, fingerprint(&paths));
        std::fs::write(dir.path().join("a.yaml"), "ab").expect("write");
        let second = fingerprint(&paths);
        assert_ne!(first, second);
        std::fs::write(dir.path().join("b.yaml"), "b").expect("write");
        assert_ne!(second, fingerprint(&paths));
    }
}
