//! Extended attributes: any `user.*`, `trusted.*` and `security.*` attribute, POSIX ACLs
//! under their `system.` names, and the virtual `user.dynamicfs.policy`.
//!
//! Contract, as ext4 answers (`getxattr(2)`, `setxattr(2)`, `xattr(7)`):
//! - names are `namespace.rest` with a non-empty rest, at most 255 bytes (`ERANGE`);
//!   another namespace, or another `system.` name, is `EOPNOTSUPP`;
//! - values are at most 64 KiB (`E2BIG`); the names and values of one inode together at
//!   most `INODE_BYTES_MAX` (`ENOSPC`, as when an ext4 inode's attribute space is full);
//! - `user.*` only on regular files and directories (`EPERM` to set, `ENODATA` to get);
//! - `Create` on an existing name is `EEXIST`, `Replace` or remove of a missing one
//!   `ENODATA`; every change sets ctime and is one transaction.
//! - Setting the access ACL sets the permission bits from it (and stores nothing when the
//!   bits say it all); `chmod` rewrites the stored ACL (`namespace`); a default ACL only
//!   sits on a directory (`EACCES`), and new children inherit it (`namespace`).
//! - `user.dynamicfs.policy` is not stored: reading it gives the inode's effective
//!   policy, setting it sets (a file: re-encodes) the policy — setting the one it
//!   inherits changes nothing and pins nothing —, removing it clears the inode's own. It is not listed, so copies (`cp -a`, `rsync -X`, `tar --xattrs`) do
//!   not carry it — a copy follows the policy of where it lands.
//!
//! Permission checks (who may read or write which namespace) are the kernel's.

use std::collections::BTreeMap;

use crate::base::error::{Error, Result};
use crate::base::policy::Policy;
use crate::data::acl::{self, Acl};
use crate::meta::state::{Ino, InodeKind, Op, Transaction};
use crate::pool::Pool;

/// The attribute that reads and sets an inode's redundancy policy (bcachefs's
/// convention).
pub const POLICY_XATTR: &[u8] = b"user.dynamicfs.policy";
/// Longest attribute name, in bytes (`XATTR_NAME_MAX`).
pub const NAME_BYTES_MAX: usize = 255;
/// Largest attribute value, in bytes (`XATTR_SIZE_MAX`).
pub const VALUE_BYTES_MAX: usize = 64 << 10;
/// Most bytes of names and values one inode may carry: two maximal values, a little more
/// than the 64 KiB a `listxattr` of names alone may return.
pub const INODE_BYTES_MAX: usize = 128 << 10;

/// How `setxattr` treats an existing attribute (`XATTR_CREATE`, `XATTR_REPLACE`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SetMode {
    /// Create or replace.
    #[default]
    Any,
    /// Fail with `EEXIST` if it exists.
    Create,
    /// Fail with `ENODATA` if it does not exist.
    Replace,
}

impl SetMode {
    /// The mode of `setxattr(2)`'s `flags`; `None` for flags it does not define.
    pub fn from_flags(flags: i32) -> Option<SetMode> {
        match flags {
            0 => Some(SetMode::Any),
            libc::XATTR_CREATE => Some(SetMode::Create),
            libc::XATTR_REPLACE => Some(SetMode::Replace),
            _ => None,
        }
    }
}

/// What kind of attribute a name is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Policy,
    AccessAcl,
    DefaultAcl,
    User,
    Trusted,
    Security,
}

fn display(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

fn classify(name: &[u8]) -> Result<Class> {
    if name.len() > NAME_BYTES_MAX {
        return Err(Error::AttributeNameTooLong(name.len()));
    }
    if name.contains(&0) {
        return Err(Error::InvalidArgument("an attribute name cannot hold a NUL byte".into()));
    }
    if name == POLICY_XATTR {
        return Ok(Class::Policy);
    }
    if name == acl::ACCESS_XATTR {
        return Ok(Class::AccessAcl);
    }
    if name == acl::DEFAULT_XATTR {
        return Ok(Class::DefaultAcl);
    }
    for (prefix, class) in
        [(&b"user."[..], Class::User), (b"trusted.", Class::Trusted), (b"security.", Class::Security)]
    {
        if let Some(rest) = name.strip_prefix(prefix) {
            if rest.is_empty() {
                return Err(Error::InvalidArgument(format!("'{}' names no attribute", display(name))));
            }
            return Ok(class);
        }
    }
    Err(Error::NotSupported(format!(
        "'{}': only user.*, trusted.*, security.* and POSIX ACL attributes are stored",
        display(name)
    )))
}

impl Pool {
    fn attributes(&self, ino: Ino) -> Option<&BTreeMap<Vec<u8>, Vec<u8>>> {
        self.state.xattrs.get(&ino)
    }

    /// The stored value of `name` on `ino`, if any.
    pub(crate) fn stored_xattr(&self, ino: Ino, name: &[u8]) -> Option<&Vec<u8>> {
        self.attributes(ino).and_then(|a| a.get(name))
    }

    /// The default ACL of directory `ino`, if it has one.
    pub(crate) fn default_acl(&self, ino: Ino) -> Option<Acl> {
        // Stored values were validated when set.
        self.stored_xattr(ino, acl::DEFAULT_XATTR).and_then(|value| Acl::parse(value).ok())
    }

    /// The access ACL of `ino`, if it has one beyond its permission bits.
    pub(crate) fn access_acl(&self, ino: Ino) -> Option<Acl> {
        self.stored_xattr(ino, acl::ACCESS_XATTR).and_then(|value| Acl::parse(value).ok())
    }

    /// The value of attribute `name` of `ino`.
    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        let class = classify(name)?;
        let kind = self.inode(ino)?.kind;
        let user_kind = matches!(kind, InodeKind::File | InodeKind::Directory);
        match class {
            Class::Policy if user_kind => Ok(self.state.effective_policy(ino).to_string().into_bytes()),
            Class::Policy | Class::User if !user_kind => Err(Error::NoAttribute(display(name))),
            _ => self.stored_xattr(ino, name).cloned().ok_or_else(|| Error::NoAttribute(display(name))),
        }
    }

    /// The names of the attributes stored on `ino`, in order; `trusted.*` only when
    /// `privileged` (as Linux lists them only to `CAP_SYS_ADMIN`).
    pub fn listxattr(&self, ino: Ino, privileged: bool) -> Result<Vec<Vec<u8>>> {
        self.inode(ino)?;
        Ok(self
            .attributes(ino)
            .into_iter()
            .flat_map(|a| a.keys())
            .filter(|name| privileged || !name.starts_with(b"trusted."))
            .cloned()
            .collect())
    }

    /// Sets attribute `name` of `ino` to `value`.
    pub fn setxattr(&mut self, ino: Ino, name: &[u8], value: &[u8], mode: SetMode) -> Result<()> {
        let class = classify(name)?;
        if value.len() > VALUE_BYTES_MAX {
            return Err(Error::TooBig(format!(
                "an attribute value of {} bytes is past the limit of {VALUE_BYTES_MAX}",
                value.len()
            )));
        }
        let inode = self.getattr(ino)?;
        let user_kind = matches!(inode.kind, InodeKind::File | InodeKind::Directory);
        match class {
            Class::Policy | Class::User if !user_kind => {
                return Err(Error::NotPermitted(format!(
                    "user attributes are only for regular files and directories, not '{}'",
                    display(name)
                )))
            }
            Class::Policy => return self.set_policy_xattr(ino, value, mode),
            Class::AccessAcl | Class::DefaultAcl if inode.kind == InodeKind::Symlink => {
                return Err(Error::NotSupported("symbolic links have no ACLs".into()))
            }
            Class::DefaultAcl if inode.kind != InodeKind::Directory => {
                return Err(Error::AccessDenied("only directories have a default ACL".into()))
            }
            _ => {}
        }
        let exists = self.stored_xattr(ino, name).is_some();
        match (mode, exists) {
            (SetMode::Create, true) => return Err(Error::Exists(display(name))),
            (SetMode::Replace, false) if class != Class::AccessAcl => return Err(Error::NoAttribute(display(name))),
            _ => {}
        }
        let mut node = self.inode(ino)?.clone();
        let mut stored = Some(value.to_vec());
        if matches!(class, Class::AccessAcl | Class::DefaultAcl) {
            let parsed = Acl::parse(value).map_err(|e| Error::InvalidArgument(e.to_string()))?;
            stored = Some(parsed.to_xattr());
            if class == Class::AccessAcl {
                node.mode = (node.mode & !0o777) | parsed.mode_bits();
                if parsed.equivalent_to_mode() {
                    stored = None;
                }
            }
        }
        if let Some(value) = &stored {
            let others: usize = self
                .attributes(ino)
                .into_iter()
                .flat_map(|a| a.iter())
                .filter(|(n, _)| n.as_slice() != name)
                .map(|(n, v)| n.len() + v.len())
                .sum();
            if others + name.len() + value.len() > INODE_BYTES_MAX {
                return Err(Error::NoSpace(format!(
                    "inode {} has no room for {} more bytes of extended attributes (the limit is {INODE_BYTES_MAX})",
                    ino.0,
                    name.len() + value.len()
                )));
            }
        }
        node.ctime = self.clock.wall();
        let ops = vec![Op::PutInode(node), Op::SetXattr { ino, name: name.to_vec(), value: stored }];
        self.commit(Transaction { ops })?;
        Ok(())
    }

    /// Removes attribute `name` of `ino`.
    pub fn removexattr(&mut self, ino: Ino, name: &[u8]) -> Result<()> {
        let class = classify(name)?;
        let kind = self.getattr(ino)?.kind;
        if class == Class::Policy {
            if !matches!(kind, InodeKind::File | InodeKind::Directory) {
                return Err(Error::NoAttribute(display(name)));
            }
            return self.set_policy(ino, None);
        }
        if self.stored_xattr(ino, name).is_none() {
            return Err(Error::NoAttribute(display(name)));
        }
        let mut node = self.inode(ino)?.clone();
        node.ctime = self.clock.wall();
        let ops = vec![Op::PutInode(node), Op::SetXattr { ino, name: name.to_vec(), value: None }];
        self.commit(Transaction { ops })?;
        Ok(())
    }

    fn set_policy_xattr(&mut self, ino: Ino, value: &[u8], mode: SetMode) -> Result<()> {
        if mode == SetMode::Create {
            // The attribute always reads as the effective policy: it exists.
            return Err(Error::Exists(display(POLICY_XATTR)));
        }
        let text = std::str::from_utf8(value)
            .map_err(|_| Error::InvalidArgument("a policy is text, like replicate:3 or erasure:4+2".into()))?;
        let policy: Policy = text
            .trim()
            .trim_end_matches('\0')
            .parse()
            .map_err(|e| Error::InvalidArgument(format!("'{}' is not a policy: {e}", text.trim())))?;
        if self.inode(ino)?.policy.is_none() && policy == self.state.effective_policy(ino) {
            // Writing back the policy it inherits (a copy restoring what it read) changes
            // nothing, and must not pin it against tiering.
            return Ok(());
        }
        self.set_policy(ino, Some(policy))
    }
}
