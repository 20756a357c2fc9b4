//! Keeping this instance in step with the store: the in-memory keyring
//! (`cache`), the follower that applies the change log to it (`follow`),
//! and the last-use tracker it flushes (`usage`).

pub mod cache;
pub mod follow;
pub mod usage;
