//! Placeholder until the CLI branch lands.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use keygate::{Pepper, SecretToken};

use crate::store::Store;
use crate::StoreArgs;

/// Placeholder.
pub async fn open_store(_args: &StoreArgs) -> Result<(Arc<dyn Store>, Pepper), String> {
    Err(String::from("pending"))
}

/// Placeholder.
pub fn write_bootstrap_file(_db: &Path, _token: &SecretToken) -> Result<PathBuf, String> {
    Err(String::from("pending"))
}
