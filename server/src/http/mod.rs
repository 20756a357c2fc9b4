//! The HTTP service: the router (`router`), one file per resource
//! (`create`, `keys`, `limits`, `usage`, `events`, `authorize`, with
//! forward-auth in `forward`), the key view (`view`), problem responses
//! (`problem`), body and query extraction (`extract`), the listener that serves it
//! all (`listen`), `/metrics` on a listener of its own (`metrics`), and the
//! web console (`console`).

pub mod authorize;
pub mod console;
pub mod create;
pub mod drain;
pub mod events;
pub mod extract;
pub mod forward;
pub mod keys;
pub mod limits;
pub mod listen;
pub mod metrics;
pub mod problem;
pub mod router;
pub mod state;
pub mod usage;
pub mod view;
