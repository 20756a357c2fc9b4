//! A `#![no_std]` crate that defines the panic handler. If anything in the
//! crate graph links `std`, rustc reports a duplicate `panic_impl` lang item,
//! so `cargo check` here proves keygate builds on `core` + `alloc` alone.
#![no_std]

extern crate alloc;

use keygate::{Access, Resource, Scopes};

/// Uses the crate so it is really linked into the graph.
pub fn can_read_devboxes(bits: u32) -> bool {
    Scopes::from_bits(bits).is_some_and(|s| s.can(Resource::Devboxes, Access::Read))
}

/// Keeps `alloc` in use too.
pub fn scope_text(bits: u32) -> alloc::string::String {
    use alloc::string::ToString;
    Scopes::from_bits(bits).map(|s| s.to_string()).unwrap_or_default()
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}
