//! Helpers shared by the integration tests.

/// Appends the CRC32 checksum, in 6 base62 digits, to the first 63 characters of a
/// token, as the format specifies: it forges a well-formed token from any body, so
/// that only the keyring's checks can reject it.
pub fn with_checksum(body: &str) -> String {
    const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let body = &body[..63];
    let mut crc = u64::from(crc32(body.as_bytes()));
    let mut digits = [b'0'; 6];
    for d in digits.iter_mut().rev() {
        *d = BASE62[(crc % 62) as usize];
        crc /= 62;
    }
    format!("{body}{}", std::str::from_utf8(&digits).unwrap())
}

/// CRC-32 (IEEE), bitwise: independent of the crate's implementation.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
