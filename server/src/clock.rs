//! The server's clock: the one place that reads the system time.

/// Unix milliseconds now.
#[inline]
pub fn now_ms() -> i64 {
    keygate::UnixMillis::now().as_millis()
}
