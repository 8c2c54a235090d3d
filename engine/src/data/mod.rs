//! The data path on an open pool: writing extents (`store`), reading them with the lock
//! released (`fetch`), open files and their buffers (`files`), placement, the durability
//! barrier, the namespace and its xattrs and ACLs. Imports `pool` and the layers below
//! it.

pub mod acl;
pub mod durability;
pub mod fetch;
pub mod file_ranges;
pub mod files;
pub mod namespace;
pub mod placement;
pub mod shared_barrier;
pub mod store;
#[cfg(feature = "synthetic")]
pub mod synthetic;
pub mod window;
pub mod xattr;
