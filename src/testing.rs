//! Fixtures for documentation examples and tests (the `testing` feature):
//! fixed records, tokens and ids, never for production use.
//!
//! ```
//! let record = keygate::testing::example_record();
//! assert_eq!(record.name(), "example");
//! ```

pub use crate::key::example_record;
pub use crate::lineage::example_ids;
pub use crate::mint::example_minted;
pub use crate::token::{example_token, EXAMPLE_KEY_ID};
