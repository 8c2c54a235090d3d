//! The FUSE frontend: `fuser::Filesystem` over the engine's namespace API. It arrives with
//! the FUSE issue; until then this crate is empty and nothing depends on it.
