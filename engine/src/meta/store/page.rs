//! The paged store's blocks: pages of sorted entries, a run's index of its pages, and
//! the root that names the runs; and the cutting of a sorted stream into pages.
//!
//! Every block is a frame (`media::frame`), so a torn, rotten or misdirected block never
//! decodes, and whoever names a block names its hash too: a page is only ever taken for
//! the one its index means.

use serde::{Deserialize, Serialize};

use crate::media::frame::{self, FrameError, FrameKind};

/// A key: a table's tag and the record's key bytes, ordered bytewise.
pub type Key = Vec<u8>;

/// A key and its value, or `None`: a deletion, which shadows the key in older runs.
pub type Entry = (Key, Option<Vec<u8>>);

/// One page being built: entries in strictly ascending key order, never empty.
#[derive(Clone, Debug, PartialEq)]
pub struct Page {
    pub entries: Vec<Entry>,
}

/// A page as stored and cached: its frame body, read in place (no entry is decoded
/// until asked for, and the cache weighs exactly what it holds).
///
/// Body layout, all integers little-endian: `count u32 | offset u32 × count | entries`,
/// each entry `key_len u16 | key | present u8 | value_len u32 | value` (`present` 0: a
/// deletion, with no value bytes), offsets relative to the start of the entries. Decoding
/// checks every offset and length and that keys ascend, so reads never index out of it.
#[derive(Debug)]
pub struct RawPage {
    body: Vec<u8>,
    count: usize,
}

impl RawPage {
    /// Entries in the page.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Bytes the page holds in memory.
    pub fn bytes(&self) -> u64 {
        self.body.len() as u64
    }

    fn entries_start(&self) -> usize {
        4 + 4 * self.count
    }

    fn offset(&self, i: usize) -> usize {
        let at = 4 + 4 * i;
        self.entries_start()
            + u32::from_le_bytes([self.body[at], self.body[at + 1], self.body[at + 2], self.body[at + 3]]) as usize
    }

    /// Entry `i`'s key.
    pub fn key(&self, i: usize) -> &[u8] {
        let at = self.offset(i);
        let len = u16::from_le_bytes([self.body[at], self.body[at + 1]]) as usize;
        &self.body[at + 2..at + 2 + len]
    }

    /// Entry `i`'s value, or `None` for a deletion.
    pub fn value(&self, i: usize) -> Option<&[u8]> {
        let at = self.offset(i);
        let key_len = u16::from_le_bytes([self.body[at], self.body[at + 1]]) as usize;
        let at = at + 2 + key_len;
        if self.body[at] == 0 {
            return None;
        }
        let len =
            u32::from_le_bytes([self.body[at + 1], self.body[at + 2], self.body[at + 3], self.body[at + 4]]) as usize;
        Some(&self.body[at + 5..at + 5 + len])
    }

    /// The position of the entry for `key`, if this page holds one.
    pub fn find(&self, key: &[u8]) -> Option<usize> {
        let at = self.seek(key);
        (at < self.count && self.key(at) == key).then_some(at)
    }

    /// The position of the first entry at or after `key`.
    pub fn seek(&self, key: &[u8]) -> usize {
        let (mut lo, mut hi) = (0, self.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.key(mid) < key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Checks a body's layout: every offset and length within it, keys ascending.
    fn parse(body: Vec<u8>) -> Result<RawPage, FrameError> {
        let bad = |what: &str| FrameError::Body(format!("store page: {what}"));
        let word = |at: usize, n: usize| -> Result<u64, FrameError> {
            let bytes = body.get(at..at + n).ok_or_else(|| bad("truncated"))?;
            Ok(bytes.iter().rev().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
        };
        let count = word(0, 4)? as usize;
        let entries_start =
            4usize.checked_add(count.checked_mul(4).ok_or_else(|| bad("count"))?).ok_or_else(|| bad("count"))?;
        if count == 0 || entries_start > body.len() {
            return Err(bad("entry count"));
        }
        let mut expected = entries_start;
        let mut previous: Option<(usize, usize)> = None;
        for i in 0..count {
            let at = entries_start + word(4 + 4 * i, 4)? as usize;
            if at != expected {
                return Err(bad("offsets do not follow the entries"));
            }
            let key_len = word(at, 2)? as usize;
            let key = (at + 2, key_len);
            body.get(key.0..key.0 + key.1).ok_or_else(|| bad("truncated key"))?;
            let flag_at = at + 2 + key_len;
            expected = match word(flag_at, 1)? {
                0 => flag_at + 1,
                1 => flag_at + 5 + word(flag_at + 1, 4)? as usize,
                _ => return Err(bad("entry flag")),
            };
            if expected > body.len() {
                return Err(bad("truncated value"));
            }
            if let Some((p, n)) = previous {
                if body[p..p + n] >= body[key.0..key.0 + key.1] {
                    return Err(bad("keys out of order"));
                }
            }
            previous = Some(key);
        }
        if expected != body.len() {
            return Err(bad("bytes after the last entry"));
        }
        Ok(RawPage { body, count })
    }
}

/// How an index names a page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRef {
    pub id: u64,
    /// The page's first key; every key of the page is below the next page's first.
    pub first: Key,
    /// BLAKE3 of the page's frame body: a copy with another hash is not this page.
    pub hash: [u8; 32],
    /// The page's block size.
    pub bytes: u32,
}

/// A run: one commit's changes, or the merge of several runs, as pages in key order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunIndex {
    /// Never empty; ascending and disjoint.
    pub pages: Vec<PageRef>,
    /// The run's last key.
    pub last: Key,
    /// Entries, deletions included.
    pub entries: u64,
}

impl RunIndex {
    /// Whether `key` lies within the run's first and last keys.
    pub fn covers(&self, key: &[u8]) -> bool {
        self.pages.first().is_some_and(|p| p.first.as_slice() <= key) && key <= self.last.as_slice()
    }

    /// The page that would hold `key` (the last whose first key is at or below it), or
    /// the first page when `key` is below them all.
    pub fn page_for(&self, key: &[u8]) -> usize {
        self.pages.partition_point(|p| p.first.as_slice() <= key).saturating_sub(1)
    }

    /// Bytes of the run's pages.
    pub fn bytes(&self) -> u64 {
        self.pages.iter().map(|p| u64::from(p.bytes)).sum()
    }
}

/// How a root names a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRef {
    /// The page id of the run's index.
    pub index: u64,
    pub hash: [u8; 32],
    /// Bytes of the run's pages (its index excluded), which the merge policy weighs.
    pub bytes: u64,
    pub entries: u64,
}

/// A root: the whole store as of one commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Root {
    /// Grows by one with every commit; the newest root that verifies is the store.
    pub gen: u64,
    /// Page ids at or above this one were never named by this root or an older one.
    pub next_page: u64,
    /// Oldest first: a key's value is its entry in the newest run that holds it.
    pub runs: Vec<RunRef>,
    /// What the caller stored with this commit (the state that is not paged). Encoded as
    /// one byte string: postcard lays it out exactly as the byte sequence it was declared
    /// as, copied whole rather than a byte at a time.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// Encodes a page as its block; returns the block and the body hash.
pub fn encode_page(page: &Page) -> (Vec<u8>, [u8; 32]) {
    assert!(!page.entries.is_empty() && page.entries.windows(2).all(|w| w[0].0 < w[1].0));
    let mut entries = Vec::new();
    let mut offsets = Vec::with_capacity(page.entries.len());
    for (key, value) in &page.entries {
        offsets.push(entries.len() as u32);
        let key_len = u16::try_from(key.len()).unwrap_or_else(|_| panic!("a store key of {} bytes", key.len()));
        entries.extend_from_slice(&key_len.to_le_bytes());
        entries.extend_from_slice(key);
        match value {
            None => entries.push(0),
            Some(value) => {
                entries.push(1);
                entries.extend_from_slice(&(value.len() as u32).to_le_bytes());
                entries.extend_from_slice(value);
            }
        }
    }
    let mut body = Vec::with_capacity(4 + 4 * offsets.len() + entries.len());
    body.extend_from_slice(&(offsets.len() as u32).to_le_bytes());
    offsets.iter().for_each(|o| body.extend_from_slice(&o.to_le_bytes()));
    body.extend_from_slice(&entries);
    frame::encode_raw(FrameKind::StorePage, &body)
}

/// Decodes a page block, verifying it is the page `expected` names.
pub fn decode_page(block: &[u8], expected: &[u8; 32]) -> Result<RawPage, FrameError> {
    let opened = frame::open(FrameKind::StorePage, block)?;
    if opened.version != FrameKind::StorePage.version() {
        return Err(FrameError::Version { found: opened.version, supported: FrameKind::StorePage.version() });
    }
    if &opened.hash != expected {
        return Err(FrameError::Checksum);
    }
    RawPage::parse(opened.body.to_vec())
}

/// Encodes a run's index as its block.
pub fn encode_index(index: &RunIndex) -> (Vec<u8>, [u8; 32]) {
    frame::encode(FrameKind::StoreIndex, index)
}

/// Decodes a run's index block, verifying it is the one `expected` names.
pub fn decode_index(block: &[u8], expected: &[u8; 32]) -> Result<RunIndex, FrameError> {
    let (index, hash): (RunIndex, _) = frame::decode(FrameKind::StoreIndex, block)?;
    if &hash != expected {
        return Err(FrameError::Checksum);
    }
    let ordered = index.pages.windows(2).all(|w| w[0].first < w[1].first);
    if index.pages.is_empty() || !ordered || index.last < index.pages[index.pages.len() - 1].first {
        return Err(FrameError::Body("run index pages not in ascending order".into()));
    }
    Ok(index)
}

/// Encodes a root as its block.
pub fn encode_root(root: &Root) -> Vec<u8> {
    frame::encode(FrameKind::StoreRoot, root).0
}

/// Decodes a root block.
pub fn decode_root(block: &[u8]) -> Result<Root, FrameError> {
    Ok(frame::decode(FrameKind::StoreRoot, block)?.0)
}

/// Cuts a stream of entries in ascending key order into pages of about `page_bytes`.
pub struct PageCutter {
    page_bytes: usize,
    entries: Vec<Entry>,
    bytes: usize,
    last: Option<Key>,
}

impl PageCutter {
    pub fn new(page_bytes: usize) -> PageCutter {
        assert!(page_bytes > 0);
        PageCutter { page_bytes, entries: Vec::new(), bytes: 0, last: None }
    }

    /// Adds the next entry; returns a full page when this one filled it.
    pub fn push(&mut self, entry: Entry) -> Option<Page> {
        assert!(self.last.as_ref().is_none_or(|last| *last < entry.0), "entries must ascend");
        self.last = Some(entry.0.clone());
        self.bytes += 4 + 2 + entry.0.len() + entry.1.as_ref().map_or(1, |v| v.len() + 5);
        self.entries.push(entry);
        (self.bytes >= self.page_bytes).then(|| self.take())
    }

    /// The last, partly filled page, if any entries are left.
    pub fn finish(mut self) -> Option<Page> {
        (!self.entries.is_empty()).then(|| self.take())
    }

    fn take(&mut self) -> Page {
        self.bytes = 0;
        Page { entries: std::mem::take(&mut self.entries) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(k: u32) -> Entry {
        (k.to_be_bytes().to_vec(), (!k.is_multiple_of(3)).then(|| vec![k as u8; 10]))
    }

    /// `Root` as declared before its payload was encoded as a byte string: every stored
    /// root decodes as it was written, and a root encodes as it would have been.
    #[test]
    fn a_root_encodes_as_it_was_declared() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Declared {
            gen: u64,
            next_page: u64,
            runs: Vec<RunRef>,
            payload: Vec<u8>,
        }
        let runs = vec![RunRef { index: 3, hash: [4; 32], bytes: 9_000, entries: 12 }];
        for payload in [vec![], vec![1, 2, 3], (0..70_000u32).map(|i| i as u8).collect()] {
            let root = Root { gen: 7, next_page: 19, runs: runs.clone(), payload: payload.clone() };
            let declared = Declared { gen: 7, next_page: 19, runs: runs.clone(), payload };
            let bytes = postcard::to_allocvec(&root).unwrap();
            assert_eq!(bytes, postcard::to_allocvec(&declared).unwrap());
            assert_eq!(postcard::from_bytes::<Root>(&bytes).unwrap(), root);
        }
    }

    #[test]
    fn a_cut_stream_keeps_every_entry_in_order_in_pages_near_the_size() {
        let mut cutter = PageCutter::new(200);
        let mut pages: Vec<Page> = (0..100).filter_map(|k| cutter.push(entry(k))).collect();
        pages.extend(cutter.finish());
        let all: Vec<Entry> = pages.iter().flat_map(|p| p.entries.clone()).collect();
        assert_eq!(all, (0..100).map(entry).collect::<Vec<_>>());
        assert!(pages.len() > 5);
        for page in &pages[..pages.len() - 1] {
            let size = encode_page(page).0.len() - 48;
            assert!((200..240).contains(&size), "page body of {size} bytes");
        }
    }

    #[test]
    fn a_page_decodes_only_as_the_page_its_hash_names() {
        let page = Page { entries: vec![entry(1), entry(2), entry(3)] };
        let (block, hash) = encode_page(&page);
        let raw = decode_page(&block, &hash).unwrap();
        let read: Vec<Entry> =
            (0..raw.len()).map(|i| (raw.key(i).to_vec(), raw.value(i).map(<[u8]>::to_vec))).collect();
        assert_eq!(read, page.entries);
        assert_eq!((raw.find(&2u32.to_be_bytes()), raw.find(&4u32.to_be_bytes())), (Some(1), None));
        assert_eq!((raw.seek(&0u32.to_be_bytes()), raw.seek(&4u32.to_be_bytes())), (0, 3));
        let other = encode_page(&Page { entries: vec![entry(1)] }).1;
        assert_eq!(decode_page(&block, &other).unwrap_err(), FrameError::Checksum);
        let mut rotten = block.clone();
        let last = rotten.len() - 1;
        rotten[last] ^= 1;
        assert!(decode_page(&rotten, &hash).is_err());
        assert!(decode_index(&block, &hash).is_err(), "a page is never taken for an index");
    }

    #[test]
    fn a_body_whose_offsets_lengths_or_order_lie_never_decodes() {
        let body = |entries: &[(&[u8], Option<&[u8]>)], tamper: &dyn Fn(&mut Vec<u8>)| {
            let page = Page { entries: entries.iter().map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec))).collect() };
            let (block, _) = encode_page(&page);
            let mut body = block[48..].to_vec();
            tamper(&mut body);
            RawPage::parse(body)
        };
        let entries: &[(&[u8], Option<&[u8]>)] = &[(b"a", Some(b"xy")), (b"b", None)];
        assert!(body(entries, &|_| {}).is_ok());
        assert!(body(entries, &|b| b[0] = 3).is_err(), "count past the offsets");
        assert!(body(entries, &|b| b[8] = 1).is_err(), "offset off the entry");
        assert!(body(entries, &|b| b[15] = 9).is_err(), "value length past the end");
        assert!(body(entries, &|b| b.truncate(b.len() - 1)).is_err(), "truncated");
        assert!(body(entries, &|b| b.push(0)).is_err(), "trailing bytes");
        assert!(body(entries, &|b| b[12 + 2] = b'c').is_err(), "keys out of order");
        assert!(body(entries, &|b| b[12 + 3] = 2).is_err(), "flag");
    }

    #[test]
    fn an_index_finds_the_page_that_would_hold_a_key() {
        let pref = |first: u32| PageRef { id: 0, first: first.to_be_bytes().to_vec(), hash: [0; 32], bytes: 1 };
        let index =
            RunIndex { pages: vec![pref(10), pref(20), pref(30)], last: 35u32.to_be_bytes().to_vec(), entries: 9 };
        let at = |k: u32| index.page_for(&k.to_be_bytes());
        assert_eq!((at(5), at(10), at(19), at(20), at(35)), (0, 0, 0, 1, 2));
        assert!(!index.covers(&9u32.to_be_bytes()) && index.covers(&10u32.to_be_bytes()));
        assert!(index.covers(&35u32.to_be_bytes()) && !index.covers(&36u32.to_be_bytes()));
    }
}
