//! The HTTP service: the router (`router`), one file per resource
//! (`create`, `keys`, `limits`, `usage`, `events`, `authorize`, with
//! forward-auth in `forward`), the key view (`view`), problem responses
//! (`problem`), body and query extraction (`extract`), and the listener that
//! serves it all (`listen`).

pub mod authorize;
pub mod create;
pub mod events;
pub mod extract;
pub mod forward;
pub mod keys;
pub mod limits;
pub mod listen;
pub mod problem;
pub mod router;
pub mod state;
pub mod usage;
pub mod view;
