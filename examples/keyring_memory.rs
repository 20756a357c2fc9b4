//! How much memory a `Keyring` takes per key (issue 20): fills one with `N`
//! restricted keys named "k" through the public API and prints the growth
//! of the process's resident set, per key, and the time it took.
//!
//! ```text
//! cargo run --release --example keyring_memory -- 1000000
//! ```
//!
//! Linux only (it reads `/proc/self/statm` and `/proc/self/status`). Each
//! key is minted and inserted in turn (its record and token dropped), so the
//! growth is the keyring's: its table of 32-byte slots and their sequence
//! numbers. The peak (`VmHWM`) also counts the moment of the last doubling,
//! when the old table and the new one are both held.

use std::time::Instant;

use keygate::{mint, Keyring, MintRequest, Pepper, UnixMillis};
use rand_core::SeedableRng;

/// Resident bytes now, from `/proc/self/statm` (pages × 4096).
fn rss_bytes() -> Result<u64, Box<dyn std::error::Error>> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .ok_or("no resident field in /proc/self/statm")?
        .parse()?;
    Ok(pages * 4096)
}

/// The peak resident bytes so far (`VmHWM` in `/proc/self/status`).
fn peak_bytes() -> Result<u64, Box<dyn std::error::Error>> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .ok_or("no VmHWM in /proc/self/status")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kib * 1024)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = match std::env::args().nth(1) {
        Some(arg) => arg.parse()?,
        None => 1_000_000,
    };
    let pepper = Pepper::from_bytes(&[7u8; 32]);
    let request = MintRequest::restricted(
        Some("k"),
        "devboxes:write,objects:read".parse()?,
        None,
        UnixMillis::EPOCH,
    )?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(20);
    let before = rss_bytes()?;
    let start = Instant::now();
    let mut keyring = Keyring::new(pepper);
    for _ in 0..n {
        let record = mint(keyring.pepper(), &request, &mut rng, UnixMillis::EPOCH)
            .into_parts()
            .0;
        keyring.insert(record)?;
    }
    let elapsed = start.elapsed();
    let after = rss_bytes()?;
    let growth = after.saturating_sub(before);
    println!(
        "{n} keys: RSS {:.1} MB -> {:.1} MB, growth {:.1} MB, {:.0} B per key; minted and inserted in {:.2?}",
        before as f64 / 1e6,
        after as f64 / 1e6,
        growth as f64 / 1e6,
        growth as f64 / n.max(1) as f64,
        elapsed,
    );
    println!(
        "peak RSS {:.1} MB ({:.0} B per key over the start); Keyring::table_bytes({n}) = {:.1} MB",
        peak_bytes()? as f64 / 1e6,
        peak_bytes()?.saturating_sub(before) as f64 / n.max(1) as f64,
        Keyring::table_bytes(n) as f64 / 1e6,
    );
    assert_eq!(keyring.len(), n);
    Ok(())
}
