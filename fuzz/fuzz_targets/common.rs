//! Helpers shared by the fuzz targets: an independent model of the token
//! format, written from the spec rather than from `src/token.rs`.
#![allow(dead_code)]

pub const TOKEN_LEN: usize = 69;
pub const CHECKED_LEN: usize = 63;
pub const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The 6 base62 digits of the CRC32 (IEEE) of `body`, most significant first.
pub fn checksum6(body: &[u8]) -> [u8; 6] {
    let mut crc = u64::from(crc32fast::hash(body));
    let mut out = [b'0'; 6];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(crc % 62) as usize];
        crc /= 62;
    }
    out
}

/// `body` (63 bytes) followed by its checksum.
pub fn with_checksum(body: &[u8]) -> Vec<u8> {
    let mut v = body.to_vec();
    v.extend_from_slice(&checksum6(body));
    v
}

/// Recomputes the checksum of a 69-byte buffer in place (other lengths are
/// left alone).
pub fn fix_checksum(bytes: &mut [u8]) {
    if bytes.len() == TOKEN_LEN {
        let sum = checksum6(&bytes[..CHECKED_LEN]);
        bytes[CHECKED_LEN..].copy_from_slice(&sum);
    }
}

/// The spec's rule for a well-formed version-1 token.
pub fn reference_accepts(bytes: &[u8]) -> bool {
    if bytes.len() != TOKEN_LEN {
        return false;
    }
    if &bytes[..3] != b"ak_" && &bytes[..3] != b"rk_" {
        return false;
    }
    if bytes[19] != b'_' {
        return false;
    }
    let alnum = |b: &u8| b.is_ascii_alphanumeric();
    if !bytes[3..19].iter().all(alnum) || !bytes[20..].iter().all(alnum) {
        return false;
    }
    let expected = checksum6(&bytes[..CHECKED_LEN]);
    bytes[CHECKED_LEN..] == expected
}
