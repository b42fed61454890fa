//! The blob store on disk: each blob beside its pre-order outboard, and tags naming
//! what was added (`ls`, `rm`).
//!
//! ```text
//! <dir>/blobs/<root>.data    the bytes
//! <dir>/blobs/<root>.obao    the outboard (64 bytes per 16 KiB)
//! <dir>/tags/<root>.json     {"kind", "name", "size", "children"}: one per `add`
//! <dir>/tmp/                 files being added (renamed into blobs/ when hashed)
//! ```
//!
//! Adding reads the source once: the bytes are copied into `tmp/` while the outboard
//! is computed from them, then both are synced and renamed under the root. Serving
//! reads only the ranges asked for, from the files: no blob is ever held in memory.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::blob::{self, Root};
use crate::collection::{self, Collection, Entry};
use crate::error::FilesError;
use crate::ticket::Kind;

/// A content-addressed blob store in a directory.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

/// One `add`, as `ls` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tag {
    /// The root (of the manifest, for a directory).
    pub root: Root,
    /// Blob or collection.
    pub kind: TagKind,
    /// The file or directory name it was added from.
    pub name: String,
    /// The root blob's size.
    pub size: u64,
    /// For a collection, the blobs it lists.
    pub children: Vec<Root>,
}

/// [`Kind`], serialisable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TagKind {
    /// One file.
    Blob,
    /// A directory.
    Collection,
}

impl From<TagKind> for Kind {
    fn from(k: TagKind) -> Kind {
        match k {
            TagKind::Blob => Kind::Blob,
            TagKind::Collection => Kind::Collection,
        }
    }
}

/// Copies what is read into a file as it passes.
struct Tee<R> {
    inner: R,
    out: File,
    path: PathBuf,
    error: Option<io::Error>,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Err(e) = self.out.write_all(&buf[..n]) {
            let kind = e.kind();
            self.error = Some(e);
            return Err(io::Error::new(kind, "writing the store copy"));
        }
        Ok(n)
    }
}

impl Store {
    /// Opens (creating) the store in `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Store, FilesError> {
        let dir = dir.into();
        for sub in ["blobs", "tags", "tmp"] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(|e| FilesError::io(&p, e))?;
        }
        Ok(Store { dir })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn data_path(&self, root: &Root) -> PathBuf {
        self.dir.join("blobs").join(format!("{root}.data"))
    }

    fn outboard_path(&self, root: &Root) -> PathBuf {
        self.dir.join("blobs").join(format!("{root}.obao"))
    }

    fn tag_path(&self, root: &Root) -> PathBuf {
        self.dir.join("tags").join(format!("{root}.json"))
    }

    /// Hashes `reader` (`size` bytes) into the store; returns its root.
    fn put(&self, reader: impl Read, size: u64, what: &Path) -> Result<Root, FilesError> {
        let nonce: u64 = rand_nonce();
        let tmp_data = self.dir.join("tmp").join(format!("{nonce:016x}.data"));
        let tmp_ob = self.dir.join("tmp").join(format!("{nonce:016x}.obao"));
        let result = (|| {
            let out = File::create(&tmp_data).map_err(|e| FilesError::io(&tmp_data, e))?;
            let mut ob = File::create(&tmp_ob).map_err(|e| FilesError::io(&tmp_ob, e))?;
            let mut tee = Tee {
                inner: reader.take(size),
                out,
                path: tmp_data.clone(),
                error: None,
            };
            let root = match blob::outboard(&mut tee, size, &mut ob) {
                Ok(root) => root,
                Err(e) => {
                    return Err(match tee.error.take() {
                        Some(w) => FilesError::io(&tee.path, w),
                        None => FilesError::io(what, e),
                    })
                }
            };
            let written = tee
                .out
                .metadata()
                .map_err(|e| FilesError::io(&tmp_data, e))?
                .len();
            if written != size {
                return Err(FilesError::Io {
                    path: what.to_path_buf(),
                    detail: format!("changed while being added ({written} of {size} bytes)"),
                });
            }
            tee.out
                .sync_all()
                .map_err(|e| FilesError::io(&tmp_data, e))?;
            ob.sync_all().map_err(|e| FilesError::io(&tmp_ob, e))?;
            let (data, obp) = (self.data_path(&root), self.outboard_path(&root));
            fs::rename(&tmp_ob, &obp).map_err(|e| FilesError::io(&obp, e))?;
            fs::rename(&tmp_data, &data).map_err(|e| FilesError::io(&data, e))?;
            Ok(root)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp_data);
            let _ = fs::remove_file(&tmp_ob);
        }
        result
    }

    /// Adds the bytes of one in-memory blob (a manifest); returns its root.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Root, FilesError> {
        self.put(bytes, bytes.len() as u64, Path::new("<manifest>"))
    }

    fn add_one(&self, path: &Path) -> Result<(Root, u64), FilesError> {
        let f = File::open(path).map_err(|e| FilesError::io(path, e))?;
        let size = f.metadata().map_err(|e| FilesError::io(path, e))?.len();
        Ok((
            self.put(io::BufReader::with_capacity(1 << 20, f), size, path)?,
            size,
        ))
    }

    /// Adds a file or a directory (recursively, as a collection) and tags it.
    pub fn add(&self, path: &Path) -> Result<Tag, FilesError> {
        let meta = fs::metadata(path).map_err(|e| FilesError::io(path, e))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        let tag = if meta.is_dir() {
            let mut entries = Vec::new();
            walk(path, "", &mut |rel, file| {
                let (root, size) = self.add_one(file)?;
                entries.push(Entry {
                    name: rel.to_string(),
                    root,
                    size,
                });
                Ok(())
            })?;
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            let children = entries.iter().map(|e| e.root).collect();
            let manifest = Collection { entries }.encode()?;
            Tag {
                root: self.put_bytes(&manifest)?,
                kind: TagKind::Collection,
                name,
                size: manifest.len() as u64,
                children,
            }
        } else {
            let (root, size) = self.add_one(path)?;
            Tag {
                root,
                kind: TagKind::Blob,
                name,
                size,
                children: Vec::new(),
            }
        };
        let p = self.tag_path(&tag.root);
        let json = serde_json::to_vec_pretty(&tag).map_err(|e| FilesError::Io {
            path: p.clone(),
            detail: e.to_string(),
        })?;
        fs::write(&p, json).map_err(|e| FilesError::io(&p, e))?;
        Ok(tag)
    }

    /// Every tag, by name.
    pub fn ls(&self) -> Result<Vec<Tag>, FilesError> {
        let dir = self.dir.join("tags");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(|e| FilesError::io(&dir, e))? {
            let p = e.map_err(|e| FilesError::io(&dir, e))?.path();
            if p.extension().is_some_and(|x| x == "json") {
                let bytes = fs::read(&p).map_err(|e| FilesError::io(&p, e))?;
                let tag: Tag = serde_json::from_slice(&bytes).map_err(|e| FilesError::Io {
                    path: p.clone(),
                    detail: format!("not a tag: {e}"),
                })?;
                out.push(tag);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name).then(a.root.cmp(&b.root)));
        Ok(out)
    }

    /// Removes the tag of `root` and every blob it kept that no other tag keeps.
    pub fn rm(&self, root: &Root) -> Result<Tag, FilesError> {
        let tags = self.ls()?;
        let tag = tags
            .iter()
            .find(|t| t.root == *root)
            .cloned()
            .ok_or(FilesError::NotFound(*root))?;
        let kept: std::collections::BTreeSet<Root> = tags
            .iter()
            .filter(|t| t.root != *root)
            .flat_map(|t| std::iter::once(t.root).chain(t.children.iter().copied()))
            .collect();
        let p = self.tag_path(root);
        fs::remove_file(&p).map_err(|e| FilesError::io(&p, e))?;
        for r in std::iter::once(tag.root).chain(tag.children.iter().copied()) {
            if !kept.contains(&r) {
                let _ = fs::remove_file(self.outboard_path(&r));
                let _ = fs::remove_file(self.data_path(&r));
            }
        }
        Ok(tag)
    }

    /// The size of `root` if the store holds it whole.
    pub fn size_of(&self, root: &Root) -> Option<u64> {
        if !self.outboard_path(root).exists() {
            return None;
        }
        fs::metadata(self.data_path(root)).ok().map(|m| m.len())
    }

    /// The verified encoding of `ranges` of `root`, read from disk (only the ranges'
    /// data and the outboard pairs on the way).
    pub fn encode(
        &self,
        root: &Root,
        ranges: &bao_tree::ChunkRanges,
    ) -> Result<Vec<u8>, FilesError> {
        let (size, data, ob) = self.open_blob(root)?;
        blob::encode(*root, size, &data, &ob, ranges)
    }

    /// [`Store::encode`], appending to `out`.
    pub fn encode_into(
        &self,
        root: &Root,
        ranges: &bao_tree::ChunkRanges,
        out: &mut Vec<u8>,
    ) -> Result<(), FilesError> {
        let (size, data, ob) = self.open_blob(root)?;
        blob::encode_into(*root, size, &data, &ob, ranges, out)
    }

    /// A stored blob's size, data file and outboard file.
    fn open_blob(&self, root: &Root) -> Result<(u64, File, File), FilesError> {
        let size = self.size_of(root).ok_or(FilesError::NotFound(*root))?;
        let (dp, op) = (self.data_path(root), self.outboard_path(root));
        let data = File::open(&dp).map_err(|e| FilesError::io(&dp, e))?;
        let ob = File::open(&op).map_err(|e| FilesError::io(&op, e))?;
        Ok((size, data, ob))
    }

    /// A whole blob in memory: for manifests only (refused above `max` bytes).
    pub fn read_small(&self, root: &Root, max: u64) -> Result<Vec<u8>, FilesError> {
        let size = self.size_of(root).ok_or(FilesError::NotFound(*root))?;
        if size > max {
            return Err(FilesError::Malformed(format!(
                "{root} is {size} bytes, over {max}"
            )));
        }
        let p = self.data_path(root);
        fs::read(&p).map_err(|e| FilesError::io(&p, e))
    }
}

/// Calls `f(relative name, path)` for every regular file under `dir`, depth first.
fn walk(
    dir: &Path,
    prefix: &str,
    f: &mut dyn FnMut(&str, &Path) -> Result<(), FilesError>,
) -> Result<(), FilesError> {
    let mut items: Vec<_> = fs::read_dir(dir)
        .map_err(|e| FilesError::io(dir, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| FilesError::io(dir, e))?;
    items.sort_by_key(|e| e.file_name());
    for e in items {
        let name = e.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        collection::safe_path(&rel)?;
        let ty = e.file_type().map_err(|err| FilesError::io(e.path(), err))?;
        if ty.is_dir() {
            walk(&e.path(), &rel, f)?;
        } else if ty.is_file() {
            f(&rel, &e.path())?;
        }
    }
    Ok(())
}

fn rand_nonce() -> u64 {
    rand::random()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_ls_encode_and_rm() {
        let tmp = std::env::temp_dir().join(format!("por-store-{:x}", rand_nonce()));
        let src = tmp.join("src");
        fs::create_dir_all(src.join("sub")).unwrap();
        let big: Vec<u8> = (0..700_000u32).map(|i| (i % 253) as u8).collect();
        fs::write(src.join("big.bin"), &big).unwrap();
        fs::write(src.join("sub/small.txt"), b"hello").unwrap();
        let store = Store::open(tmp.join("store")).unwrap();
        let file = store.add(&src.join("big.bin")).unwrap();
        assert_eq!(file.root, Root::of(&big));
        assert_eq!(store.size_of(&file.root), Some(big.len() as u64));
        let dir = store.add(&src).unwrap();
        assert_eq!(dir.kind, TagKind::Collection);
        let manifest = Collection::decode(&store.read_small(&dir.root, 1 << 20).unwrap()).unwrap();
        let names: Vec<_> = manifest.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["big.bin", "sub/small.txt"]);
        assert_eq!(store.ls().unwrap().len(), 2);
        let r = blob::chunk_ranges(&[blob::piece_chunks(1)]).unwrap();
        let enc = store.encode(&file.root, &r).unwrap();
        let v = blob::decode(file.root, big.len() as u64, &r, &enc).unwrap();
        assert_eq!(v[0].offset, blob::PIECE_BYTES);
        // Removing the directory keeps big.bin, which the file's own tag keeps.
        store.rm(&dir.root).unwrap();
        assert!(store.size_of(&file.root).is_some());
        assert!(store.size_of(&manifest.entries[1].root).is_none());
        assert!(matches!(store.rm(&dir.root), Err(FilesError::NotFound(_))));
        store.rm(&file.root).unwrap();
        assert!(store.ls().unwrap().is_empty());
        fs::remove_dir_all(&tmp).unwrap();
    }
}
