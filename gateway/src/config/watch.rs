//! Noticing configuration changes: a cheap fingerprint of the files behind a config.

use std::path::PathBuf;
use std::time::SystemTime;

/// Every config file's path, length and modification time. Two equal fingerprints mean
/// "nothing to reload"; a different one means "load and compile again".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint(Vec<(PathBuf, u64, Option<SystemTime>)>);

/// Fingerprints the files named, and the files inside named directories down to `DEPTH`
/// levels (a credential directory holds one directory per credential).
pub fn fingerprint(paths: &[PathBuf]) -> Fingerprint {
    const DEPTH: usize = 2;
    let mut out = Vec::new();
    for path in paths {
        collect(path, DEPTH, &mut out);
    }
    Fingerprint(out)
}

fn collect(
    path: &std::path::Path,
    depth: usize,
    out: &mut Vec<(PathBuf, u64, Option<SystemTime>)>,
) {
    if path.is_dir() {
        if depth == 0 {
            return;
        }
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        entries.sort();
        for e in entries {
            collect(&e, depth - 1, out);
        }
        return;
    }
    let meta = std::fs::metadata(path).ok();
    let len = meta.as_ref().map_or(0, |m| m.len());
    let modified = meta.and_then(|m| m.modified().ok());
    out.push((path.to_owned(), len, modified));
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
        let third = fingerprint(&paths);
        assert_ne!(second, third);
        std::fs::create_dir(dir.path().join("test.com")).expect("mkdir");
        std::fs::write(dir.path().join("test.com/tls.key"), "k").expect("write");
        assert_ne!(
            third,
            fingerprint(&paths),
            "credential directories one level down count"
        );
    }
}
