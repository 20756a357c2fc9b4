//! dudect timing tests of keygate's secret verification.
//!
//! Each case times one operation on inputs of two classes, Left and Right,
//! chosen at random for every sample (dudect's design, Reparaz, Balasch and
//! Verbauwhede 2017), then Welch's t-test compares the two timing
//! distributions, whole and cropped at ~100 percentiles. `max t` is the
//! largest |t| over those tests; |t| >= 5 means the classes are told apart.
//!
//! ```text
//! cd ct && cargo build --release && ./target/release/keygate-ct
//! ./target/release/keygate-ct --filter c_unknown_id     # one case
//! KEYGATE_CT_SAMPLES=5000000 ./target/release/keygate-ct
//! KEYGATE_CT_SEED=7 ./target/release/keygate-ct          # other keys and inputs
//! ```
//!
//! Run the binary directly: `cargo bench` passes `--bench`, which
//! dudect-bencher's argument parser rejects.
//!
//! Cases (all through keygate's public API, inputs prepared outside the
//! timed closure, a keyring of 16,384 keys, `KEYGATE_CT_KEYS` to change it;
//! the inputs of both classes share one buffer at shuffled places):
//! * `a_shared_prefix`: `Keyring::verify`, a wrong secret that shares its
//!   first 42 of 43 characters with the right one (Left) against a random
//!   wrong secret (Right), same key ids.
//! * `b_digest_compare`: the constant-time core, `Pepper::digest` and the
//!   `SecretHash` comparison, with the right secret (Left) against a wrong
//!   one (Right).
//! * `b_verify`: the same inputs through the whole `Keyring::verify`, whose
//!   result (Ok or Err) necessarily differs; reported for information.
//! * `c_unknown_id`: `Keyring::verify`, an unknown key id (Left: the decoy
//!   digest path) against a known id with a wrong secret (Right). The
//!   unknown ids are twins of known ones (`keygate::testing::
//!   unknown_id_sharing_window`): ids of no key whose index window is a
//!   known key's, so both classes read the same memory.
//! * `c_authenticate_unknown_id`: the same through
//!   `Keyring::authenticate` on the unparsed text, the server's call.
//! * `w_null_random_windows`: a null (A/A) control, both classes unknown
//!   ids drawn at random (two disjoint sets, each id in its own window).
//! * `x_null_one_pool`: a null (A/A) control, both classes drawing from one
//!   pool of inputs.
//! * `y_null_unknown_ids`: a null (A/A) control, case (c) with unknown ids
//!   in both classes (two disjoint sets of twins): what |t| the machine
//!   produces when nothing differs.
//! * `z_control_early_exit`: a positive control, a byte-by-byte comparison
//!   of the 43 secret characters that stops at the first difference (Left:
//!   differs at the first byte, Right: at the last). It must fail: it shows
//!   that the harness resolves a difference of a few dozen cycles.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::hint::black_box;
use std::sync::OnceLock;

use dudect_bencher::rand::Rng as _;
use dudect_bencher::{ctbench_main_with_seeds, BenchRng, Class, CtRunner};
use keygate::{KeyId, KeyKind, Keyring, MintRequest, Pepper, SecretHash, Token};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

/// Samples per case, unless `KEYGATE_CT_SAMPLES` says otherwise.
const DEFAULT_SAMPLES: usize = 1_000_000;
/// Keys in the keyring, unless `KEYGATE_CT_KEYS` says otherwise.
const DEFAULT_KEYS: usize = 16_384;
/// Distinct inputs per class; each sample draws one at random.
const POOL: usize = 1 << 14;
/// The time of every verification: no key expires.
const NOW_MS: i64 = 1_000;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

struct Fixture {
    keyring: Keyring,
    /// The minted token texts, in keyring order.
    tokens: Vec<String>,
    /// The digest each key's record carries (the keyring holds only what
    /// authentication needs).
    digests: std::collections::HashMap<KeyId, SecretHash>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let mut rng = ChaCha20Rng::seed_from_u64(0x6374_6b65_7967_6174 ^ extra_seed());
        let mut keyring = Keyring::with_capacity(Pepper::generate(&mut rng), keys());
        let request = MintRequest::restricted(
            Some("ct"),
            "devboxes:write,objects:read".parse().unwrap(),
            None,
            keygate::UnixMillis::from_millis(0),
        )
        .unwrap();
        let mut tokens = Vec::with_capacity(keys());
        let mut digests = std::collections::HashMap::with_capacity(keys());
        for _ in 0..keys() {
            let (record, token) = keygate::mint(
                keyring.pepper(),
                &request,
                &mut rng,
                keygate::UnixMillis::from_millis(0),
            )
            .into_parts();
            digests.insert(record.id(), record.secret_hash());
            keyring.insert(record).unwrap();
            tokens.push(token.expose_secret().to_owned());
        }
        Fixture {
            keyring,
            tokens,
            digests,
        }
    })
}

/// Keys in the keyring (and unknown ids per set): `KEYGATE_CT_KEYS`, or
/// [`DEFAULT_KEYS`].
fn keys() -> usize {
    std::env::var("KEYGATE_CT_KEYS")
        .ok()
        .and_then(|s| s.replace('_', "").parse().ok())
        .unwrap_or(DEFAULT_KEYS)
}

fn samples() -> usize {
    std::env::var("KEYGATE_CT_SAMPLES")
        .ok()
        .and_then(|s| s.replace('_', "").parse().ok())
        .unwrap_or(DEFAULT_SAMPLES)
}

fn base62(rng: &mut ChaCha20Rng, n: usize) -> Vec<u8> {
    (0..n)
        .map(|_| BASE62[(rng.next_u32() % 62) as usize])
        .collect()
}

/// The text of a well-formed token (valid checksum) from its parts.
fn token_text(kind: KeyKind, id: &[u8], secret: &[u8]) -> [u8; 69] {
    let mut text = [0u8; 69];
    text[..3].copy_from_slice(kind.prefix().as_bytes());
    text[3..19].copy_from_slice(id);
    text[19] = b'_';
    text[20..63].copy_from_slice(secret);
    let mut crc = u64::from(crc32fast::hash(&text[..63]));
    for slot in text[63..].iter_mut().rev() {
        *slot = BASE62[(crc % 62) as usize];
        crc /= 62;
    }
    text
}

/// A token text on its own cache line: every input has the same alignment.
#[repr(C, align(64))]
struct Aligned([u8; 69]);

/// The texts of both classes in one leaked buffer, each 64-byte aligned, at
/// places shuffled together, so that neither class sits in memory that
/// caches or aligns differently. (Packed `[[u8; 69]]` texts at even and odd
/// positions start at even and odd addresses, and the class at even
/// positions measured slower by a fraction of a nanosecond, enough for |t|
/// of 4 to 8. Aligned but at alternating places, the classes still differed
/// by which half of a 256-byte block they sat in: |t| of 10 to 60 in the
/// A/A control.)
fn texts(
    rng: &mut ChaCha20Rng,
    mut left: impl FnMut(&mut ChaCha20Rng) -> [u8; 69],
    mut right: impl FnMut(&mut ChaCha20Rng) -> [u8; 69],
) -> (Vec<&'static [u8; 69]>, Vec<&'static [u8; 69]>) {
    let mut texts = Vec::with_capacity(2 * POOL);
    for _ in 0..POOL {
        texts.push((true, Aligned(left(rng))));
        texts.push((false, Aligned(right(rng))));
    }
    // Fisher-Yates.
    for i in (1..texts.len()).rev() {
        let j = rng.next_u32() as usize % (i + 1);
        texts.swap(i, j);
    }
    let texts: &'static [(bool, Aligned)] = Box::leak(texts.into_boxed_slice());
    let of = |class: bool| {
        texts
            .iter()
            .filter(move |(c, _)| *c == class)
            .map(|(_, t)| &t.0)
            .collect()
    };
    (of(true), of(false))
}

/// Parsed tokens of both classes, from [`texts`].
fn pools(
    rng: &mut ChaCha20Rng,
    left: impl FnMut(&mut ChaCha20Rng) -> [u8; 69],
    right: impl FnMut(&mut ChaCha20Rng) -> [u8; 69],
) -> (Vec<Token<'static>>, Vec<Token<'static>>) {
    let (left, right) = texts(rng, left, right);
    let parse = |t: &&'static [u8; 69]| Token::parse(&t[..]).expect("well-formed token");
    (
        left.iter().map(parse).collect(),
        right.iter().map(parse).collect(),
    )
}

fn id_of(text: &str) -> &[u8] {
    &text.as_bytes()[3..19]
}

fn secret_of(text: &str) -> &[u8] {
    &text.as_bytes()[20..63]
}

fn random_key(f: &'static Fixture, rng: &mut ChaCha20Rng) -> &'static str {
    &f.tokens[rng.next_u32() as usize % keys()]
}

/// A random wrong secret for a random known key.
fn random_secret_known_id(rng: &mut ChaCha20Rng) -> [u8; 69] {
    let text = random_key(fixture(), rng);
    token_text(KeyKind::Restricted, id_of(text), &base62(rng, 43))
}

/// Times `op` on `SAMPLES` inputs, each of a random class, drawn from that
/// class's pool.
fn measure<T: Copy, R>(
    runner: &mut CtRunner,
    rng: &mut ChaCha20Rng,
    left: &[T],
    right: &[T],
    op: impl Fn(T) -> R,
) {
    let n = samples();
    let plan: Vec<(Class, T)> = (0..n)
        .map(|_| {
            let r = rng.next_u32();
            let i = (r >> 1) as usize;
            if r & 1 == 0 {
                (Class::Left, left[i % left.len()])
            } else {
                (Class::Right, right[i % right.len()])
            }
        })
        .collect();
    let lefts = plan
        .iter()
        .filter(|(c, _)| matches!(c, Class::Left))
        .count();
    eprintln!("  samples: {n} (left {lefts}, right {})", n - lefts);
    for (class, input) in plan {
        runner.run_one(class, || op(black_box(input)));
    }
}

fn seeded(rng: &mut BenchRng) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(rng.next_u64() ^ extra_seed())
}

/// `KEYGATE_CT_SEED` (a number, default 0) changes the keyring and every
/// input, to check that a result does not hang on one draw.
fn extra_seed() -> u64 {
    std::env::var("KEYGATE_CT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// (a) A wrong secret sharing 42 of 43 characters with the right one,
/// against a random wrong secret.
fn a_shared_prefix(runner: &mut CtRunner, bench_rng: &mut BenchRng) {
    let f = fixture();
    let mut rng = seeded(bench_rng);
    let near_miss = |rng: &mut ChaCha20Rng| {
        let text = random_key(f, rng);
        let mut secret = secret_of(text).to_vec();
        let last = secret[42];
        while secret[42] == last {
            secret[42] = BASE62[(rng.next_u32() % 62) as usize];
        }
        token_text(KeyKind::Restricted, id_of(text), &secret)
    };
    let (left, right) = pools(&mut rng, near_miss, random_secret_known_id);
    assert!(left.iter().chain(&right).all(|t| f
        .keyring
        .verify(t, keygate::UnixMillis::from_millis(NOW_MS))
        .is_err()));
    measure(runner, &mut rng, &left, &right, |t| {
        f.keyring
            .verify(&t, keygate::UnixMillis::from_millis(NOW_MS))
    });
}

/// The inputs of case (b): right secrets (Left) and wrong ones (Right), each
/// with the digest stored for its key id.
type WithStored = (Token<'static>, SecretHash);

fn case_b_inputs(rng: &mut ChaCha20Rng) -> (Vec<WithStored>, Vec<WithStored>) {
    let f = fixture();
    let right_secret = |rng: &mut ChaCha20Rng| {
        let text = random_key(f, rng);
        token_text(KeyKind::Restricted, id_of(text), secret_of(text))
    };
    let (left, right) = pools(rng, right_secret, random_secret_known_id);
    let stored = |t: &Token<'static>| (*t, f.digests[&t.key_id()]);
    let left: Vec<WithStored> = left.iter().map(stored).collect();
    let right: Vec<WithStored> = right.iter().map(stored).collect();
    assert!(left.iter().all(|(t, _)| f
        .keyring
        .verify(t, keygate::UnixMillis::from_millis(NOW_MS))
        .is_ok()));
    assert!(right.iter().all(|(t, _)| f
        .keyring
        .verify(t, keygate::UnixMillis::from_millis(NOW_MS))
        .is_err()));
    (left, right)
}

/// (b) The constant-time core: digest and comparison, right vs wrong secret.
fn b_digest_compare(runner: &mut CtRunner, bench_rng: &mut BenchRng) {
    let f = fixture();
    let mut rng = seeded(bench_rng);
    let (left, right) = case_b_inputs(&mut rng);
    let pepper = f.keyring.pepper();
    measure(runner, &mut rng, &left, &right, |(t, stored)| {
        pepper.digest(&t) == stored
    });
}

/// (b) The whole `verify`, right vs wrong secret: informative only, since
/// success and failure return different values by design.
fn b_verify(runner: &mut CtRunner, bench_rng: &mut BenchRng) {
    let f = fixture();
    let mut rng = seeded(bench_rng);
    let (left, right) = case_b_inputs(&mut rng);
    measure(runner, &mut rng, &left, &right, |(t, _)| {
        f.keyring
            .verify(&t, keygate::UnixMillis::from_millis(NOW_MS))
    });
}

/// How many known keys cases (c) and (y) draw from: each gets unknown
/// twins, ids of no key whose index window is the known key's.
const TWINNED: usize = 1024;

/// `count` unknown twins of each of the first [`TWINNED`] keys: for each
/// key, its token and the twins' ids, as text.
fn twins(rng: &mut ChaCha20Rng, count: usize) -> Vec<(&'static str, Vec<String>)> {
    let f = fixture();
    f.tokens
        .iter()
        .take(TWINNED)
        .map(|token| {
            let known = Token::parse(token).unwrap().key_id();
            let ids = (0..count)
                .map(|_| {
                    keygate::testing::unknown_id_sharing_window(&f.keyring, &known, rng)
                        .unwrap()
                        .as_str()
                        .to_owned()
                })
                .collect();
            (token.as_str(), ids)
        })
        .collect()
}

/// (c) An unknown key id (decoy digest) against a known id with a wrong
/// secret. The unknown ids are the known keys' twins: the same windows,
/// drawn alike, so the classes read the same memory (see case (y)).
fn c_unknown_id(runner: &mut CtRunner, bench_rng: &mut BenchRng) {
    let f = fixture();
    let mut rng = seeded(bench_rng);
    let twins = twins(&mut rng, 1);
    let (left, right) = pools(&mut rng, twin_of(&twins, 0), known_of(&twins));
    assert!(left.iter().all(|t| !f.keyring.contains(&t.key_id())));
    assert!(right.iter().all(|t| f.keyring.contains(&t.key_id())));
    measure(runner, &mut rng, &left, &right, |t| {
        f.keyring
            .verify(&t, keygate::UnixMillis::from_millis(NOW_MS))
    });
}

/// Draws a token of a random twinned key's twin `which`, with a random secret.
fn twin_of<'a>(
    twins: &'a [(&'static str, Vec<String>)],
    which: usize,
) -> impl FnMut(&mut ChaCha20Rng) -> [u8; 69] + 'a {
    move |rng| {
        let (_, ids) = &twins[rng.next_u32() as usize % TWINNED];
        token_text(KeyKind::Restricted, ids[which].as_bytes(), &base62(rng, 43))
    }
}

/// Draws a token of a random twinned key itself, with a wrong secret.
fn known_of<'a>(
    twins: &'a [(&'static str, Vec<String>)],
) -> impl FnMut(&mut ChaCha20Rng) -> [u8; 69] + 'a {
    move |rng| {
        let (token, _) = &twins[rng.next_u32() as usize % TWINNED];
        token_text(KeyKind::Restricted, id_of(token), &base62(rng, 43))
    }
}

/// (c) through `Keyring::authenticate`, the server's call: the token
/// text, unparsed, of an unknown id against a known id with a wrong secret
/// (twins, as in `c_unknown_id`).
fn c_authenticate_unknown_id(runner: &mut CtRunner, bench_rng: &mut BenchRng) {
    let f = fixture();
    let mut rng = seeded(bench_rng);
    let twins = twins(&mut rng, 1);
    let (left, right) = texts(&mut rng, twin_of(&twins, 0), known_of(&twins));
    assert!(left.iter().chain(&right).all(|t| {
        f.keyring
            .authenticate(&t[..], keygate::UnixMillis::from_millis(NOW_MS))
            == Err(keygate::AuthError::InvalidCredentials)
    }));
    measure(runner, &mut rng, &left, &right, |t| {
        f.keyring
            .authenticate(&t[..], keygate::UnixMillis::from_millis(NOW_MS))
    });
}

/// Times `verify` on two classes of unknown ids (the null controls).
fn measure_unknown(
    runner: &mut CtRunner,
    rng: &mut ChaCha20Rng,
    left: impl FnMut(&mut ChaCha20Rng) -> [u8; 69],
    right: impl FnMut(&mut ChaCha20Rng) -> [u8; 69],
) {
    let f = fixture();
    let (left, right) = pools(rng, left, right);
    assert!(left
        .iter()
        .chain(&right)
        .all(|t| !f.keyring.contains(&t.key_id())));
    measure(runner, rng, &left, &right, |t| {
        f.keyring
            .verify(&t, keygate::UnixMillis::from_millis(NOW_MS))
    });
}

/// Null control (A/A): case (c)'s operation and input recipe with both
/// classes unknown ids: two disjoint sets of twins of the same known keys.
/// The classes differ in nothing the code could see, so any |t| here
/// measures the harness and the machine, not keygate.
fn y_null_unknown_ids(runner: &mut CtRunner, bench_rng: &mut BenchRng) {
    let mut rng = seeded(bench_rng);
    let twins = twins(&mut rng, 2);
    measure_unknown(runner, &mut rng, twin_of(&twins, 0), twin_of(&twins, 1));
}

/// Null control (A/A) with unknown ids drawn at random, not as twins: two
/// disjoint sets of `keys()` ids, each id in its own window. On this machine
/// which window an id reads moves its time enough for a large |t|, known or
/// not; this is why (c) and (y) use twins.
fn w_null_random_windows(runner: &mut CtRunner, bench_rng: &mut BenchRng) {
    let mut rng = seeded(bench_rng);
    let ids: Vec<Vec<u8>> = (0..2 * keys()).map(|_| base62(&mut rng, 16)).collect();
    let (ids_left, ids_right) = ids.split_at(keys());
    let draw = |set: &[Vec<u8>]| {
        let set = set.to_vec();
        move |rng: &mut ChaCha20Rng| {
            let id = &set[rng.next_u32() as usize % keys()];
            token_text(KeyKind::Restricted, id, &base62(rng, 43))
        }
    };
    measure_unknown(runner, &mut rng, draw(ids_left), draw(ids_right));
}

/// Null control (A/A) on one pool: case (c)'s operation, both classes
/// drawing from the very same inputs (unknown ids), so that not even the
/// draw differs between them.
fn x_null_one_pool(runner: &mut CtRunner, bench_rng: &mut BenchRng) {
    let f = fixture();
    let mut rng = seeded(bench_rng);
    let ids: Vec<Vec<u8>> = (0..keys()).map(|_| base62(&mut rng, 16)).collect();
    let draw = |rng: &mut ChaCha20Rng| {
        let id = &ids[rng.next_u32() as usize % keys()];
        token_text(KeyKind::Restricted, id, &base62(rng, 43))
    };
    let (left, right) = pools(&mut rng, draw, draw);
    let pool: Vec<Token<'static>> = left.into_iter().chain(right).collect();
    assert!(pool.iter().all(|t| !f.keyring.contains(&t.key_id())));
    measure(runner, &mut rng, &pool, &pool, |t| {
        f.keyring
            .verify(&t, keygate::UnixMillis::from_millis(NOW_MS))
    });
}

/// Positive control: an early-exit comparison must be caught.
fn z_control_early_exit(runner: &mut CtRunner, bench_rng: &mut BenchRng) {
    let f = fixture();
    let mut rng = seeded(bench_rng);
    // (right secret, wrong secret) pairs in one buffer, classes interleaved.
    let mut pairs = Vec::with_capacity(2 * POOL);
    for _ in 0..POOL {
        for at in [0, 42] {
            let right = secret_of(random_key(f, &mut rng));
            let mut wrong = [0u8; 43];
            wrong.copy_from_slice(right);
            wrong[at] = if wrong[at] == b'0' { b'1' } else { b'0' };
            let mut copy = [0u8; 43];
            copy.copy_from_slice(right);
            pairs.push((copy, wrong));
        }
    }
    let pairs: &'static [([u8; 43], [u8; 43])] = Box::leak(pairs.into_boxed_slice());
    let left: Vec<_> = pairs.iter().step_by(2).collect();
    let right: Vec<_> = pairs.iter().skip(1).step_by(2).collect();
    measure(runner, &mut rng, &left, &right, |(a, b)| {
        a.iter().zip(b).all(|(x, y)| black_box(*x) == black_box(*y))
    });
}

ctbench_main_with_seeds!(
    (a_shared_prefix, Some(0xa)),
    (b_digest_compare, Some(0xb)),
    (b_verify, Some(0xb)),
    (c_unknown_id, Some(0xc)),
    (c_authenticate_unknown_id, Some(0xc)),
    (w_null_random_windows, Some(0xd)),
    (y_null_unknown_ids, Some(0xd)),
    (x_null_one_pool, Some(0xe)),
    (z_control_early_exit, Some(0xf))
);
