//! The reference model: what the namespace and every file must hold, and which errno each
//! operation must fail with. It knows what was acknowledged: `acked` is what must survive
//! a crash, `live` what reads see now (it includes writes buffered in open handles).

use std::collections::BTreeMap;
use std::sync::Arc;

/// A file's identity, so renamed and open files keep their contents.
pub type FileId = u64;

/// One namespace entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Dir,
    File(FileId),
}

/// A namespace with file contents. Contents are shared copy-on-write, so the runner can
/// clone a tree per step cheaply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    pub entries: BTreeMap<String, Entry>,
    pub contents: BTreeMap<FileId, Arc<Vec<u8>>>,
}

/// A namespace as the engine or the model shows it: path → directory or file bytes.
pub type View = BTreeMap<String, Option<Arc<Vec<u8>>>>;

/// Errors the model predicts, as errno values.
pub mod errno {
    pub const ENOENT: i32 = 2;
    pub const EEXIST: i32 = 17;
    pub const ENOTDIR: i32 = 20;
    pub const EISDIR: i32 = 21;
    pub const EINVAL: i32 = 22;
    pub const ENOTEMPTY: i32 = 39;
}

fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

impl Tree {
    /// The view of this tree: every path with its bytes (`None` for directories).
    pub fn view(&self) -> View {
        self.entries
            .iter()
            .map(|(path, entry)| {
                let bytes = match entry {
                    Entry::Dir => None,
                    Entry::File(id) => Some(self.contents.get(id).cloned().unwrap_or_default()),
                };
                (path.clone(), bytes)
            })
            .collect()
    }

    fn entry(&self, path: &str) -> Option<&Entry> {
        if path == "/" {
            return Some(&Entry::Dir);
        }
        self.entries.get(path)
    }

    /// Checks that `path`'s parent is an existing directory.
    fn check_parent(&self, path: &str) -> Result<(), i32> {
        let mut at = String::new();
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            at.push('/');
            at.push_str(part);
            match self.entries.get(&at) {
                None => return Err(errno::ENOENT),
                Some(Entry::File(_)) => return Err(errno::ENOTDIR),
                Some(Entry::Dir) => {}
            }
        }
        Ok(())
    }

    fn lookup(&self, path: &str) -> Result<&Entry, i32> {
        self.check_parent(path)?;
        self.entry(path).ok_or(errno::ENOENT)
    }

    fn children(&self, dir: &str) -> impl Iterator<Item = (&String, &Entry)> {
        let prefix = if dir == "/" { "/".to_string() } else { format!("{dir}/") };
        self.entries.iter().filter(move |(p, _)| p.starts_with(&prefix) && p.len() > prefix.len())
    }

    /// `mkdir`.
    pub fn mkdir(&mut self, path: &str) -> Result<(), i32> {
        self.check_parent(path)?;
        if self.entry(path).is_some() {
            return Err(errno::EEXIST);
        }
        self.entries.insert(path.to_string(), Entry::Dir);
        Ok(())
    }

    /// Opens `path`, creating an empty file if absent; returns its identity.
    pub fn open(&mut self, path: &str, new_id: FileId) -> Result<FileId, i32> {
        match self.lookup(path) {
            Ok(Entry::File(id)) => Ok(*id),
            Ok(Entry::Dir) => Err(errno::EISDIR),
            Err(errno::ENOENT) if self.check_parent(path).is_ok() => {
                self.entries.insert(path.to_string(), Entry::File(new_id));
                self.contents.insert(new_id, Arc::new(Vec::new()));
                Ok(new_id)
            }
            Err(e) => Err(e),
        }
    }

    /// Writes `data` at `offset` of file `id`, extending with zeros. Writing nothing
    /// changes nothing (POSIX: a zero-length write does not extend the file).
    pub fn write(&mut self, id: FileId, offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let content = Arc::make_mut(self.contents.entry(id).or_default());
        let end = offset as usize + data.len();
        if content.len() < end {
            content.resize(end, 0);
        }
        content[offset as usize..end].copy_from_slice(data);
    }

    /// `truncate`.
    pub fn truncate(&mut self, path: &str, size: u64) -> Result<(), i32> {
        match self.lookup(path)? {
            Entry::Dir => Err(errno::EISDIR),
            Entry::File(id) => {
                let id = *id;
                Arc::make_mut(self.contents.entry(id).or_default()).resize(size as usize, 0);
                Ok(())
            }
        }
    }

    /// `unlink`; the contents stay while a handle holds the file.
    pub fn unlink(&mut self, path: &str) -> Result<FileId, i32> {
        match self.lookup(path)? {
            Entry::Dir => Err(errno::EISDIR),
            Entry::File(id) => {
                let id = *id;
                self.entries.remove(path);
                Ok(id)
            }
        }
    }

    /// `rmdir`.
    pub fn rmdir(&mut self, path: &str) -> Result<(), i32> {
        if path == "/" {
            return Err(errno::EINVAL);
        }
        match self.lookup(path)? {
            Entry::File(_) => Err(errno::ENOTDIR),
            Entry::Dir if self.children(path).next().is_some() => Err(errno::ENOTEMPTY),
            Entry::Dir => {
                self.entries.remove(path);
                Ok(())
            }
        }
    }

    /// `rename`, replacing the target; returns the file it replaced, if any.
    pub fn rename(&mut self, from: &str, to: &str) -> Result<Option<FileId>, i32> {
        let source = self.lookup(from)?.clone();
        self.check_parent(to)?;
        if from == to {
            return Ok(None);
        }
        if source == Entry::Dir && to.starts_with(&format!("{from}/")) {
            return Err(errno::EINVAL);
        }
        let mut replaced = None;
        match (self.entry(to).cloned(), &source) {
            (None, _) => {}
            (Some(Entry::Dir), Entry::File(_)) => return Err(errno::EISDIR),
            (Some(Entry::File(_)), Entry::Dir) => return Err(errno::ENOTDIR),
            (Some(Entry::Dir), Entry::Dir) => {
                if to == "/" || self.children(to).next().is_some() {
                    return Err(errno::ENOTEMPTY);
                }
            }
            (Some(Entry::File(old)), Entry::File(new)) => {
                if old == *new {
                    return Ok(None);
                }
                replaced = Some(old);
            }
        }
        let moved: Vec<(String, Entry)> = self
            .entries
            .iter()
            .filter(|(p, _)| *p == from || p.starts_with(&format!("{from}/")))
            .map(|(p, e)| (p.clone(), e.clone()))
            .collect();
        self.entries.remove(to);
        for (path, _) in &moved {
            self.entries.remove(path);
        }
        for (path, entry) in moved {
            self.entries.insert(format!("{to}{}", &path[from.len()..]), entry);
        }
        Ok(replaced)
    }

    /// The bytes of a file, or the errno reading it gives.
    pub fn read(&self, path: &str) -> Result<Vec<u8>, i32> {
        match self.lookup(path)? {
            Entry::Dir => Err(errno::EISDIR),
            Entry::File(id) => Ok(self.contents.get(id).map(|c| c.as_ref().clone()).unwrap_or_default()),
        }
    }

    /// Drops contents no entry names (after a crash nothing holds them open).
    pub fn collect_garbage(&mut self) {
        let live: std::collections::BTreeSet<FileId> =
            self.entries.values().filter_map(|e| if let Entry::File(id) = e { Some(*id) } else { None }).collect();
        self.contents.retain(|id, _| live.contains(id));
    }

    /// The parent directory of `path`.
    pub fn parent_of(path: &str) -> &str {
        parent(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_moves_subtrees_and_refuses_what_posix_refuses() {
        let mut t = Tree::default();
        t.mkdir("/a").unwrap();
        t.mkdir("/a/b").unwrap();
        let f = t.open("/a/b/f", 1).unwrap();
        t.write(f, 0, b"x");
        assert_eq!(t.rename("/a", "/a/b/c"), Err(errno::EINVAL));
        t.rename("/a", "/z").unwrap();
        assert_eq!(t.read("/z/b/f").unwrap(), b"x");
        t.mkdir("/e").unwrap();
        assert_eq!(t.rename("/z/b/f", "/e"), Err(errno::EISDIR));
        assert_eq!(t.rename("/e", "/z/b/f"), Err(errno::ENOTDIR));
        assert_eq!(t.rename("/e", "/z"), Err(errno::ENOTEMPTY));
        assert_eq!(t.rmdir("/z"), Err(errno::ENOTEMPTY));
        assert_eq!(t.mkdir("/q/r"), Err(errno::ENOENT));
        assert_eq!(t.mkdir("/z/b/f/x"), Err(errno::ENOTDIR));
    }
}
