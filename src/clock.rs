//! The system clock, for the edges (the tower layer, a server, a CLI). The
//! core never reads it: every check takes `now_ms` as an argument.

/// The system clock in Unix milliseconds (0 before 1970, saturating).
///
/// ```
/// assert!(keygate::system_now_ms() > 1_700_000_000_000);
/// ```
pub fn system_now_ms() -> i64 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        // Seconds and millis apart: no 128-bit division on the hot path.
        Ok(d) => i64::try_from(d.as_secs())
            .unwrap_or(i64::MAX)
            .saturating_mul(1_000)
            .saturating_add(i64::from(d.subsec_millis())),
        Err(_) => 0,
    }
}
