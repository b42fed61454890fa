//! Directories: a collection is a manifest blob listing names → roots and sizes.

use serde::{Deserialize, Serialize};

use crate::blob::Root;
use crate::error::FilesError;

/// The first bytes of every manifest, so a blob is told apart from a collection.
pub const MAGIC: &[u8; 8] = b"porcoll1";

/// The most entries a manifest may hold.
pub const MAX_ENTRIES: usize = 100_000;

/// One file of a collection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Its path inside the collection, `/`-separated, relative.
    pub name: String,
    /// Its blob.
    pub root: Root,
    /// Its size in bytes.
    pub size: u64,
}

/// A directory's manifest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collection {
    /// Files, sorted by name.
    pub entries: Vec<Entry>,
}

impl Collection {
    /// The manifest's bytes: [`MAGIC`], then the canonical encoding.
    pub fn encode(&self) -> Result<Vec<u8>, FilesError> {
        let mut out = MAGIC.to_vec();
        por_protocol::wire::encode_into(self, &mut out)
            .map_err(|e| FilesError::Malformed(e.to_string()))?;
        Ok(out)
    }

    /// Parses a manifest, checking that every name is a safe relative path and that
    /// no name repeats.
    pub fn decode(bytes: &[u8]) -> Result<Collection, FilesError> {
        let rest = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or_else(|| FilesError::Malformed("not a collection manifest".into()))?;
        let c: Collection =
            por_protocol::wire::decode(rest).map_err(|e| FilesError::Malformed(e.to_string()))?;
        if c.entries.len() > MAX_ENTRIES {
            return Err(FilesError::Malformed(format!(
                "{} entries (at most {MAX_ENTRIES})",
                c.entries.len()
            )));
        }
        for e in &c.entries {
            safe_path(&e.name)?;
        }
        if c.entries.windows(2).any(|w| w[0].name >= w[1].name) {
            return Err(FilesError::Malformed(
                "entries are not sorted or a name repeats".into(),
            ));
        }
        Ok(c)
    }

    /// The entry at `path`.
    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name == path)
    }

    /// The sum of the entries' sizes.
    pub fn total_size(&self) -> u64 {
        self.entries
            .iter()
            .fold(0u64, |a, e| a.saturating_add(e.size))
    }
}

/// Checks that `name` is a relative path of normal components (no `..`, no root, no
/// empty or `.` component, no backslash), so it stays inside an output directory.
pub fn safe_path(name: &str) -> Result<(), FilesError> {
    let ok = !name.is_empty()
        && name.len() <= 4096
        && !name.contains('\\')
        && !name.contains('\0')
        && name
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if ok {
        Ok(())
    } else {
        Err(FilesError::BadPath(name.chars().take(200).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_round_trip_and_unsafe_names_are_refused() {
        let c = Collection {
            entries: vec![
                Entry {
                    name: "a.txt".into(),
                    root: Root([1; 32]),
                    size: 3,
                },
                Entry {
                    name: "sub/b.bin".into(),
                    root: Root([2; 32]),
                    size: 9,
                },
            ],
        };
        let bytes = c.encode().unwrap();
        assert_eq!(Collection::decode(&bytes).unwrap(), c);
        assert_eq!(c.total_size(), 12);
        for bad in ["../x", "/etc/passwd", "a//b", "./a", "a\\b", ""] {
            assert!(safe_path(bad).is_err(), "{bad}");
            let evil = Collection {
                entries: vec![Entry {
                    name: bad.into(),
                    root: Root([1; 32]),
                    size: 1,
                }],
            };
            assert!(
                Collection::decode(&evil.encode().unwrap()).is_err(),
                "{bad}"
            );
        }
        assert!(Collection::decode(b"plain blob").is_err());
    }
}
