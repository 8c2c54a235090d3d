//! POSIX ACLs in the form Linux hands them to a filesystem: the value of the
//! `system.posix_acl_access` and `system.posix_acl_default` extended attributes.
//!
//! The kernel enforces ACLs itself (FUSE's `posix_acl` mode) from what `getxattr`
//! returns; the filesystem stores them, keeps the permission bits and the access ACL in
//! step (`chmod` ⇄ `setfacl`), and gives a new inode the ACL its directory's default ACL
//! calls for. Each function here is the counterpart of the kernel's own
//! (`fs/posix_acl.c`): `equivalent_mode` ↔ `posix_acl_equiv_mode`, `chmod` ↔
//! `__posix_acl_chmod`, `inherit` ↔ `posix_acl_create` with `__posix_acl_create_masq`.
//!
//! Pure: no I/O, no state. An `Acl` is valid by construction (`parse` checks what
//! `posix_acl_valid` checks), so every later step may assume its shape.

use std::fmt;

/// Extended attribute holding a file's access ACL.
pub const ACCESS_XATTR: &[u8] = b"system.posix_acl_access";
/// Extended attribute holding a directory's default ACL (inherited by new children).
pub const DEFAULT_XATTR: &[u8] = b"system.posix_acl_default";

/// `POSIX_ACL_XATTR_VERSION`: the only version of the format.
const XATTR_VERSION: u32 = 2;
/// `ACL_UNDEFINED_ID`: the id of entries that name no user or group.
const UNDEFINED_ID: u32 = u32::MAX;
const HEADER_BYTES: usize = 4;
const ENTRY_BYTES: usize = 8;

/// Whom an entry grants to (`ACL_USER_OBJ` … `ACL_OTHER`, in the kernel's order, which
/// is also the order entries must appear in).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tag {
    /// The file's owner.
    UserObj,
    /// A named user.
    User(u32),
    /// The file's group.
    GroupObj,
    /// A named group.
    Group(u32),
    /// The most any named entry or the group may grant.
    Mask,
    /// Everyone else.
    Other,
}

impl Tag {
    fn code(self) -> u16 {
        match self {
            Tag::UserObj => 0x01,
            Tag::User(_) => 0x02,
            Tag::GroupObj => 0x04,
            Tag::Group(_) => 0x08,
            Tag::Mask => 0x10,
            Tag::Other => 0x20,
        }
    }

    fn id(self) -> u32 {
        match self {
            Tag::User(id) | Tag::Group(id) => id,
            _ => UNDEFINED_ID,
        }
    }
}

/// One entry: a tag and its `rwx` bits (0..=7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub tag: Tag,
    pub perm: u16,
}

/// A valid ACL: exactly one owner, group and other entry, a mask when any named entry
/// exists, entries sorted by tag and id with no duplicate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acl {
    entries: Vec<Entry>,
}

/// Why a value is not an ACL (the caller answers `EINVAL`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidAcl(pub String);

impl fmt::Display for InvalidAcl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a valid POSIX ACL: {}", self.0)
    }
}

impl Acl {
    /// Parses and validates an ACL from its extended-attribute value.
    pub fn parse(value: &[u8]) -> Result<Acl, InvalidAcl> {
        if value.len() < HEADER_BYTES || !(value.len() - HEADER_BYTES).is_multiple_of(ENTRY_BYTES) {
            return Err(InvalidAcl(format!("{} bytes is not a header plus whole entries", value.len())));
        }
        let word = |at: usize| u32::from_le_bytes([value[at], value[at + 1], value[at + 2], value[at + 3]]);
        let half = |at: usize| u16::from_le_bytes([value[at], value[at + 1]]);
        if word(0) != XATTR_VERSION {
            return Err(InvalidAcl(format!("version {} (only {XATTR_VERSION} exists)", word(0))));
        }
        let mut entries = Vec::new();
        for at in (HEADER_BYTES..value.len()).step_by(ENTRY_BYTES) {
            let (code, perm, id) = (half(at), half(at + 2), word(at + 4));
            if perm & !7 != 0 {
                return Err(InvalidAcl(format!("permission bits {perm:#o}")));
            }
            let tag = match code {
                0x01 => Tag::UserObj,
                0x02 => Tag::User(id),
                0x04 => Tag::GroupObj,
                0x08 => Tag::Group(id),
                0x10 => Tag::Mask,
                0x20 => Tag::Other,
                _ => return Err(InvalidAcl(format!("unknown tag {code:#x}"))),
            };
            entries.push(Entry { tag, perm });
        }
        Acl::new(entries)
    }

    /// Validates `entries` as `posix_acl_valid` does.
    pub fn new(entries: Vec<Entry>) -> Result<Acl, InvalidAcl> {
        if !entries.windows(2).all(|pair| pair[0].tag < pair[1].tag) {
            return Err(InvalidAcl("entries out of order or repeated".into()));
        }
        let count = |wanted: fn(&Tag) -> bool| entries.iter().filter(|e| wanted(&e.tag)).count();
        if count(|t| *t == Tag::UserObj) != 1 || count(|t| *t == Tag::GroupObj) != 1 || count(|t| *t == Tag::Other) != 1
        {
            return Err(InvalidAcl("needs exactly one owner, group and other entry".into()));
        }
        let named = count(|t| matches!(t, Tag::User(_) | Tag::Group(_)));
        if named > 0 && count(|t| *t == Tag::Mask) == 0 {
            return Err(InvalidAcl("named entries need a mask entry".into()));
        }
        if entries.iter().any(|e| matches!(e.tag, Tag::User(UNDEFINED_ID) | Tag::Group(UNDEFINED_ID))) {
            return Err(InvalidAcl("a named entry without an id".into()));
        }
        Ok(Acl { entries })
    }

    /// The minimal ACL that says exactly what the permission bits of `mode` say.
    pub fn from_mode(mode: u32) -> Acl {
        let bits = |shift: u32| ((mode >> shift) & 7) as u16;
        Acl {
            entries: vec![
                Entry { tag: Tag::UserObj, perm: bits(6) },
                Entry { tag: Tag::GroupObj, perm: bits(3) },
                Entry { tag: Tag::Other, perm: bits(0) },
            ],
        }
    }

    /// The entries, in order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The extended-attribute value of this ACL.
    pub fn to_xattr(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + ENTRY_BYTES * self.entries.len());
        out.extend_from_slice(&XATTR_VERSION.to_le_bytes());
        for entry in &self.entries {
            out.extend_from_slice(&entry.tag.code().to_le_bytes());
            out.extend_from_slice(&entry.perm.to_le_bytes());
            out.extend_from_slice(&entry.tag.id().to_le_bytes());
        }
        out
    }

    fn perm(&self, tag: Tag) -> Option<u16> {
        self.entries.iter().find(|e| e.tag == tag).map(|e| e.perm)
    }

    fn set_perm(&mut self, tag: Tag, perm: u16) {
        if let Some(entry) = self.entries.iter_mut().find(|e| e.tag == tag) {
            entry.perm = perm;
        }
    }

    /// Whether this ACL has only the three base entries.
    pub fn is_minimal(&self) -> bool {
        self.entries.len() == 3
    }

    /// Whether the permission bits alone say everything this ACL says when it is set
    /// (`posix_acl_equiv_mode`): no named entry (a lone mask becomes the group bits).
    pub fn equivalent_to_mode(&self) -> bool {
        !self.entries.iter().any(|e| matches!(e.tag, Tag::User(_) | Tag::Group(_)))
    }

    /// The permission bits (`0o777`) this ACL implies: owner, then the mask (or the
    /// group entry when there is no mask), then other.
    pub fn mode_bits(&self) -> u32 {
        let group = self.perm(Tag::Mask).or(self.perm(Tag::GroupObj)).unwrap_or(0);
        let owner = self.perm(Tag::UserObj).unwrap_or(0);
        let other = self.perm(Tag::Other).unwrap_or(0);
        u32::from(owner) << 6 | u32::from(group) << 3 | u32::from(other)
    }

    /// The ACL after `chmod` to `mode`: owner, mask (or group) and other take the new
    /// bits; named entries keep theirs.
    pub fn chmod(&self, mode: u32) -> Acl {
        let mut acl = self.clone();
        let bits = |shift: u32| ((mode >> shift) & 7) as u16;
        acl.set_perm(Tag::UserObj, bits(6));
        if acl.perm(Tag::Mask).is_some() {
            acl.set_perm(Tag::Mask, bits(3));
        } else {
            acl.set_perm(Tag::GroupObj, bits(3));
        }
        acl.set_perm(Tag::Other, bits(0));
        debug_assert_eq!(acl.mode_bits(), mode & 0o777);
        acl
    }

    /// What a new inode created with `mode` in a directory whose default ACL is `self`
    /// gets: its permission bits (the umask does not apply) and its access ACL, `None`
    /// when the bits say it all.
    pub fn inherit(&self, mode: u32) -> (u32, Option<Acl>) {
        let mut acl = self.clone();
        let mut mode = mode;
        let owner = ((mode >> 6) & 7) as u16;
        let other = (mode & 7) as u16;
        for entry in &mut acl.entries {
            match entry.tag {
                Tag::UserObj => {
                    entry.perm &= owner;
                    mode &= (u32::from(entry.perm) << 6) | !0o700;
                }
                Tag::Other => {
                    entry.perm &= other;
                    mode &= u32::from(entry.perm) | !0o007;
                }
                _ => {}
            }
        }
        let group = ((mode >> 3) & 7) as u16;
        let group_tag = if acl.perm(Tag::Mask).is_some() { Tag::Mask } else { Tag::GroupObj };
        let limited = acl.perm(group_tag).unwrap_or(0) & group;
        acl.set_perm(group_tag, limited);
        mode &= (u32::from(limited) << 3) | !0o070;
        debug_assert_eq!(acl.mode_bits(), mode & 0o777);
        let access = (!acl.is_minimal()).then_some(acl);
        (mode, access)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tag: Tag, perm: u16) -> Entry {
        Entry { tag, perm }
    }

    /// `setfacl -m u:1000:rw-,m::rwx` on a 0640 file.
    fn named() -> Acl {
        Acl::new(vec![
            entry(Tag::UserObj, 6),
            entry(Tag::User(1000), 6),
            entry(Tag::GroupObj, 4),
            entry(Tag::Mask, 7),
            entry(Tag::Other, 0),
        ])
        .unwrap()
    }

    #[test]
    fn the_xattr_form_round_trips_byte_for_byte() {
        let acl = named();
        let bytes = acl.to_xattr();
        assert_eq!(bytes.len(), 4 + 5 * 8);
        assert_eq!(&bytes[..4], &[2, 0, 0, 0]);
        // The named user entry: tag 0x02, perm 6, id 1000, little-endian.
        assert_eq!(&bytes[12..20], &[0x02, 0, 6, 0, 0xe8, 0x03, 0, 0]);
        assert_eq!(Acl::parse(&bytes).unwrap(), acl);
    }

    #[test]
    fn malformed_values_are_refused() {
        let good = named().to_xattr();
        assert!(Acl::parse(&good[..good.len() - 1]).is_err(), "a torn entry");
        let mut version = good.clone();
        version[0] = 1;
        assert!(Acl::parse(&version).is_err(), "version 1");
        let mut perm = good.clone();
        perm[6] = 8;
        assert!(Acl::parse(&perm).is_err(), "perm bits beyond rwx");
        let mut tag = good.clone();
        tag[4] = 0x40;
        assert!(Acl::parse(&tag).is_err(), "unknown tag");
        let no_mask =
            vec![entry(Tag::UserObj, 6), entry(Tag::User(5), 6), entry(Tag::GroupObj, 4), entry(Tag::Other, 0)];
        assert!(Acl::new(no_mask).is_err(), "named entry without a mask");
        let unordered = vec![entry(Tag::GroupObj, 4), entry(Tag::UserObj, 6), entry(Tag::Other, 0)];
        assert!(Acl::new(unordered).is_err());
        let twice = vec![entry(Tag::UserObj, 6), entry(Tag::UserObj, 6), entry(Tag::GroupObj, 4), entry(Tag::Other, 0)];
        assert!(Acl::new(twice).is_err());
        assert!(Acl::new(vec![entry(Tag::UserObj, 6), entry(Tag::Other, 0)]).is_err(), "no group entry");
    }

    #[test]
    fn the_mode_shows_the_mask_in_its_group_bits() {
        assert_eq!(named().mode_bits(), 0o670);
        assert_eq!(Acl::from_mode(0o754).mode_bits(), 0o754);
        assert!(Acl::from_mode(0o754).is_minimal());
        assert!(!named().is_minimal());
    }

    #[test]
    fn only_named_entries_make_an_acl_more_than_its_mode() {
        assert!(Acl::from_mode(0o640).equivalent_to_mode());
        assert!(!named().equivalent_to_mode());
        let mask_only =
            Acl::new(vec![entry(Tag::UserObj, 6), entry(Tag::GroupObj, 4), entry(Tag::Mask, 6), entry(Tag::Other, 4)])
                .unwrap();
        assert!(mask_only.equivalent_to_mode());
        assert_eq!(mask_only.mode_bits(), 0o664, "the mask becomes the group bits");
    }

    #[test]
    fn chmod_changes_owner_mask_and_other_but_not_named_entries() {
        let acl = named().chmod(0o604);
        assert_eq!(acl.mode_bits(), 0o604);
        assert_eq!(acl.perm(Tag::User(1000)), Some(6), "named entries keep their bits");
        assert_eq!(acl.perm(Tag::GroupObj), Some(4), "with a mask, the group entry keeps its bits");
        assert_eq!(acl.perm(Tag::Mask), Some(0));
        let minimal = Acl::from_mode(0o777).chmod(0o750);
        assert_eq!(minimal.perm(Tag::GroupObj), Some(5), "without a mask, the group entry takes the bits");
    }

    #[test]
    fn a_new_file_takes_the_default_acl_limited_by_its_mode() {
        // Default ACL u::rwx,u:1000:rwx,g::r-x,m::rwx,o::r-x; open(..., 0666).
        let default = Acl::new(vec![
            entry(Tag::UserObj, 7),
            entry(Tag::User(1000), 7),
            entry(Tag::GroupObj, 5),
            entry(Tag::Mask, 7),
            entry(Tag::Other, 5),
        ])
        .unwrap();
        let (mode, access) = default.inherit(0o666);
        assert_eq!(mode, 0o664, "the mask takes the group bits of the mode; the umask plays no part");
        let access = access.unwrap();
        assert_eq!(access.perm(Tag::User(1000)), Some(7), "named entries are copied whole");
        assert_eq!(access.perm(Tag::Mask), Some(6));
        assert_eq!(access.perm(Tag::Other), Some(4));
        // A directory made with 0777 keeps every bit the default ACL grants.
        let (mode, _) = default.inherit(0o777);
        assert_eq!(mode, 0o775);
        // A minimal default ACL gives no access ACL, only bits: as if it were a umask.
        let (mode, access) = Acl::from_mode(0o750).inherit(0o666);
        assert_eq!((mode, access), (0o640, None));
    }

    #[test]
    fn inherit_keeps_special_bits_of_the_mode() {
        let (mode, _) = Acl::from_mode(0o777).inherit(0o1777);
        assert_eq!(mode, 0o1777);
    }
}
