//! The in-memory keyring: key id → record, and the request hot path.

use core::hash::BuildHasher;

use hashbrown::HashMap;

use crate::error::AuthError;
use crate::key::{KeyRecord, Principal};
use crate::scope::{Access, Resource, Scopes};
use crate::secret::{Pepper, SecretHash};
use crate::token::{KeyId, KeyKind, Token, EXAMPLE_KEY_ID, SECRET_LEN};

/// Key ids are minted from a CSPRNG, so the map needs no keyed hash against
/// flooding: an attacker's lookups can't make stored ids collide. A fixed
/// seed keeps the core free of hidden randomness.
#[derive(Clone, Copy, Default, Debug)]
pub struct IdHasher;

impl BuildHasher for IdHasher {
    type Hasher = foldhash::fast::FoldHasher<'static>;
    #[inline]
    fn build_hasher(&self) -> Self::Hasher {
        foldhash::fast::FixedState::with_seed(0x6b65_7967_6174_6531).build_hasher()
    }
}

/// The most keys [`Keyring::with_capacity`] reserves room for up front.
const MAX_PREALLOCATED_KEYS: usize = 1 << 20;

/// How many consecutive slots of a [`DigestIndex`] may hold the keys whose
/// home is one slot; every lookup reads all of them.
const WINDOW: usize = 8;

/// [`Slot::grant`] bit: the key is restricted (else standard).
const GRANT_RESTRICTED: u64 = 1 << 32;
/// [`Slot::grant`] bit: the key has an expiry.
const GRANT_EXPIRES: u64 = 1 << 33;

/// An empty window, for the lookup's unreachable out-of-bounds case.
static EMPTY_WINDOW: [Slot; WINDOW] = [Slot {
    id: 0,
    digest: [0; 4],
    grant: 0,
    expires_at_ms: 0,
}; WINDOW];

/// One slot of a [`DigestIndex`]: a key id, its stored digest, and what a
/// verified token may do, so that the hot path reads nothing else. One
/// slot is one 64-byte cache line.
#[derive(Clone, Copy, Default)]
#[repr(align(64))]
struct Slot {
    /// The id's 16 bytes as one number. 0 marks an empty slot: a key id is
    /// base62 text, so none is 16 zero bytes.
    id: u128,
    /// The digest's 32 bytes as little-endian words.
    digest: [u64; 4],
    /// [`Scopes::bits`] in the low 32 bits, then [`GRANT_RESTRICTED`] and
    /// [`GRANT_EXPIRES`].
    grant: u64,
    /// The expiry, when [`GRANT_EXPIRES`] is set.
    expires_at_ms: i64,
}

impl Slot {
    fn of(record: &KeyRecord) -> Slot {
        let kind = match record.kind() {
            KeyKind::Standard => 0,
            KeyKind::Restricted => GRANT_RESTRICTED,
        };
        let expires = if record.expires_at_ms().is_some() {
            GRANT_EXPIRES
        } else {
            0
        };
        Slot {
            id: DigestIndex::key(&record.id()),
            digest: DigestIndex::words(&record.secret_hash()),
            grant: u64::from(record.scopes().bits()) | kind | expires,
            expires_at_ms: record.expires_at_ms().unwrap_or(0),
        }
    }

    fn kind(&self) -> KeyKind {
        if self.grant & GRANT_RESTRICTED == 0 {
            KeyKind::Standard
        } else {
            KeyKind::Restricted
        }
    }

    fn expires_at_ms(&self) -> Option<i64> {
        (self.grant & GRANT_EXPIRES != 0).then_some(self.expires_at_ms)
    }

    fn scopes(&self) -> Scopes {
        // Written from a `Scopes` by `Slot::of`; a bad pattern would grant nothing.
        Scopes::from_bits(self.grant as u32).unwrap_or(Scopes::empty())
    }
}

/// The stored digests by key id, laid out so that a lookup does the same
/// work and reads the same amount of memory whether or not the id is known.
///
/// A hash map answers a miss faster than a hit (a hit also loads and
/// compares the stored key), and dudect tells the two apart within a million
/// samples. Here a key lives in one of the [`WINDOW`] slots that follow its
/// home slot (`hash(id) & mask`, open addressing without displacement); a
/// lookup reads all [`WINDOW`] slots and selects the digest with masks, with
/// no branch on whether a slot matched. The table is at most half full and
/// doubles when a window overflows.
#[derive(Clone)]
struct DigestIndex {
    slots: alloc::vec::Vec<Slot>,
    /// `slots.len() - 1`; `slots.len()` is a power of two.
    mask: usize,
    len: usize,
}

impl DigestIndex {
    /// Room for `capacity` keys (preallocating for at most 2^20).
    fn with_capacity(capacity: usize) -> DigestIndex {
        DigestIndex::with_slots(capacity.min(MAX_PREALLOCATED_KEYS).saturating_mul(2))
    }

    fn with_slots(slots: usize) -> DigestIndex {
        let size = slots
            .max(2 * WINDOW)
            .checked_next_power_of_two()
            .unwrap_or(1 << (usize::BITS - 1));
        DigestIndex {
            // WINDOW - 1 spare slots at the end, so no window wraps around.
            slots: alloc::vec![Slot::default(); size + WINDOW - 1],
            mask: size - 1,
            len: 0,
        }
    }

    #[inline(always)]
    fn key(id: &KeyId) -> u128 {
        u128::from_le_bytes(*id.as_bytes())
    }

    #[inline(always)]
    fn home(&self, key: u128) -> usize {
        (IdHasher.hash_one(key) as usize) & self.mask
    }

    /// The [`WINDOW`] slots from `key`'s home: one bounds check, and the
    /// loops over the array unroll.
    #[inline(always)]
    fn window(&self, key: u128) -> &[Slot; WINDOW] {
        self.slots
            .get(self.home(key)..)
            .and_then(|rest| rest.first_chunk::<WINDOW>())
            .unwrap_or(&EMPTY_WINDOW)
    }

    fn window_mut(&mut self, key: u128) -> Option<&mut [Slot; WINDOW]> {
        let home = self.home(key);
        self.slots
            .get_mut(home..)
            .and_then(|rest| rest.first_chunk_mut::<WINDOW>())
    }

    fn words(digest: &SecretHash) -> [u64; 4] {
        let mut words = [0u64; 4];
        for (word, chunk) in words.iter_mut().zip(digest.as_bytes().chunks_exact(8)) {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(chunk);
            *word = u64::from_le_bytes(bytes);
        }
        words
    }

    fn digest(words: &[u64; 4]) -> SecretHash {
        let mut bytes = [0u8; 32];
        for (chunk, word) in bytes.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        SecretHash::from_bytes(bytes)
    }

    /// Puts `new` in its window: over the slot of the same id, or in the
    /// first free one. False if the window is full.
    fn place(&mut self, new: Slot) -> bool {
        let Some(window) = self.window_mut(new.id) else {
            return false;
        };
        if let Some(slot) = window.iter_mut().find(|slot| slot.id == new.id) {
            *slot = new;
            return true;
        }
        match window.iter_mut().find(|slot| slot.id == 0) {
            Some(slot) => {
                *slot = new;
                self.len += 1;
                true
            }
            None => false,
        }
    }

    fn insert(&mut self, record: &KeyRecord) {
        let new = Slot::of(record);
        if self.len.saturating_add(1).saturating_mul(2) > self.slots.len() {
            self.grow();
        }
        while !self.place(new) {
            self.grow();
        }
    }

    /// Rebuilds at twice the size, or larger, until every key fits its window.
    fn grow(&mut self) {
        let mut size = self.slots.len().saturating_mul(2);
        loop {
            let mut bigger = DigestIndex::with_slots(size);
            let fits = self
                .slots
                .iter()
                .filter(|slot| slot.id != 0)
                .all(|slot| bigger.place(*slot));
            if fits || size >= 1 << (usize::BITS - 2) {
                *self = bigger;
                return;
            }
            size = size.saturating_mul(2);
        }
    }

    fn remove(&mut self, id: &KeyId) {
        let key = DigestIndex::key(id);
        let removed = self
            .window_mut(key)
            .and_then(|window| window.iter_mut().find(|slot| slot.id == key))
            .map(|slot| *slot = Slot::default());
        if removed.is_some() {
            self.len -= 1;
        }
    }

    /// The slot stored for `id` and an all-ones mask, or a slot holding the
    /// `decoy` digest (and no grant) and 0. It reads the [`WINDOW`] slots
    /// from the id's home and merges each with a mask, the same work for a
    /// known and an unknown id.
    #[inline]
    fn lookup(&self, id: &KeyId, decoy: &SecretHash) -> (u64, Slot) {
        let key = DigestIndex::key(id);
        let window = self.window(key);
        // Pass 1: per slot, all ones if it holds `key`, else 0. The masks
        // are independent of each other, so the CPU computes them in
        // parallel.
        let mut equal = [0u64; WINDOW];
        for (mask, slot) in equal.iter_mut().zip(window) {
            let diff = slot.id ^ key;
            // `x | -x` has its top bit set iff x != 0.
            let differs = ((diff | diff.wrapping_neg()) >> 127) as u64;
            *mask = differs.wrapping_sub(1);
        }
        // The barrier hides that each mask is 0 or all ones, so the
        // optimizer can't turn the merge below into branches.
        let equal = core::hint::black_box(equal);
        // Pass 2: OR in each slot's digest under its mask (at most one is
        // set), then the decoy if none was.
        let mut found = 0u64;
        let mut merged = Slot::default();
        for (mask, stored) in equal.iter().zip(window) {
            found |= mask;
            for (word, stored) in merged.digest.iter_mut().zip(stored.digest) {
                *word |= stored & mask;
            }
            merged.grant |= stored.grant & mask;
            merged.expires_at_ms |= stored.expires_at_ms & (*mask as i64);
        }
        for (word, decoy) in merged.digest.iter_mut().zip(DigestIndex::words(decoy)) {
            *word |= decoy & !found;
        }
        merged.id = key;
        (found, merged)
    }
}

/// The keys a gateway knows, by id, and the checks of the request hot path.
///
/// [`Keyring::authenticate`] parses a token, finds its stored digest,
/// recomputes the secret's digest and compares it in constant time. It
/// allocates nothing. The digest lookup does the same work for an unknown
/// id, which is checked against a decoy digest, so it costs the same as a
/// wrong secret and returns the same error (see `SECURITY.md`, Timing).
///
/// ```
/// use keygate::{Access, Keyring, MintRequest, Pepper, Resource};
/// use rand_core::SeedableRng;
///
/// let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(42);
/// let mut keyring = Keyring::new(Pepper::generate(&mut rng));
/// let request = MintRequest::restricted(None, "devboxes:read".parse()?, None, 0)?;
/// let (record, token) = keygate::mint(keyring.pepper(), &request, &mut rng, 0).into_parts();
/// keyring.insert(record);
///
/// let principal = keyring.authenticate(token.expose_secret(), 10)?;
/// assert!(principal.can(Resource::Devboxes, Access::Read));
/// assert!(keyring.can(token.expose_secret(), Resource::Devboxes, Access::Write, 10).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Keyring {
    pepper: Pepper,
    decoy: SecretHash,
    keys: HashMap<KeyId, KeyRecord, IdHasher>,
    /// The digests of `keys`, for [`Keyring::verify`]; kept in step with it.
    index: DigestIndex,
}

impl Keyring {
    /// An empty keyring whose digests are keyed by `pepper`.
    ///
    /// ```
    /// let keyring = keygate::Keyring::new(keygate::Pepper::from_bytes(&[0u8; 32]));
    /// assert!(keyring.is_empty());
    /// ```
    pub fn new(pepper: Pepper) -> Keyring {
        Keyring::with_capacity(pepper, 0)
    }

    /// An empty keyring with room for `capacity` keys.
    ///
    /// `capacity` is a hint: at most 2^20 keys' room is reserved up front
    /// (an absurd value such as `usize::MAX` must not panic or abort), and
    /// the keyring grows past it as keys are inserted.
    ///
    /// ```
    /// let keyring = keygate::Keyring::with_capacity(keygate::Pepper::from_bytes(&[0u8; 32]), 1024);
    /// assert_eq!(keyring.len(), 0);
    /// ```
    pub fn with_capacity(pepper: Pepper, capacity: usize) -> Keyring {
        let capacity = capacity.min(MAX_PREALLOCATED_KEYS);
        // The decoy is a digest no token can match short of a blake3 preimage.
        let decoy = pepper.digest_parts(KeyKind::Standard, &EXAMPLE_KEY_ID, &[0u8; SECRET_LEN]);
        Keyring {
            pepper,
            decoy,
            keys: HashMap::with_capacity_and_hasher(capacity, IdHasher),
            index: DigestIndex::with_capacity(capacity),
        }
    }

    /// The pepper, to [`mint`](fn@crate::mint) keys this keyring accepts.
    ///
    /// ```
    /// let keyring = keygate::Keyring::new(keygate::Pepper::from_bytes(&[0u8; 32]));
    /// let _pepper: &keygate::Pepper = keyring.pepper();
    /// ```
    pub fn pepper(&self) -> &Pepper {
        &self.pepper
    }

    /// Adds a record, replacing and returning any record with the same id.
    ///
    /// ```
    /// let mut keyring = keygate::Keyring::new(keygate::Pepper::from_bytes(&[0u8; 32]));
    /// assert!(keyring.insert(keygate::key::example_record()).is_none());
    /// assert_eq!(keyring.len(), 1);
    /// ```
    pub fn insert(&mut self, record: KeyRecord) -> Option<KeyRecord> {
        self.index.insert(&record);
        self.keys.insert(record.id(), record)
    }

    /// Removes a key; its tokens stop working at once. Returns the record.
    ///
    /// ```
    /// let mut keyring = keygate::Keyring::new(keygate::Pepper::from_bytes(&[0u8; 32]));
    /// let record = keygate::key::example_record();
    /// let id = record.id();
    /// keyring.insert(record);
    /// assert!(keyring.revoke(&id).is_some());
    /// assert!(keyring.get(&id).is_none());
    /// ```
    pub fn revoke(&mut self, id: &KeyId) -> Option<KeyRecord> {
        self.index.remove(id);
        self.keys.remove(id)
    }

    /// The record of `id`, if the keyring has it.
    ///
    /// ```
    /// let keyring = keygate::Keyring::new(keygate::Pepper::from_bytes(&[0u8; 32]));
    /// assert!(keyring.get(&keygate::KeyId::parse("0000000000000000")?).is_none());
    /// # Ok::<(), keygate::TokenError>(())
    /// ```
    pub fn get(&self, id: &KeyId) -> Option<&KeyRecord> {
        self.keys.get(id)
    }

    /// Whether the keyring has a record for `id`.
    ///
    /// ```
    /// let keyring = keygate::Keyring::new(keygate::Pepper::from_bytes(&[0u8; 32]));
    /// assert!(!keyring.contains(&keygate::KeyId::parse("0000000000000000")?));
    /// # Ok::<(), keygate::TokenError>(())
    /// ```
    pub fn contains(&self, id: &KeyId) -> bool {
        self.keys.contains_key(id)
    }

    /// The number of keys.
    ///
    /// ```
    /// assert_eq!(keygate::Keyring::new(keygate::Pepper::from_bytes(&[0u8; 32])).len(), 0);
    /// ```
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the keyring has no keys.
    ///
    /// ```
    /// assert!(keygate::Keyring::new(keygate::Pepper::from_bytes(&[0u8; 32])).is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The records, in no particular order.
    ///
    /// ```
    /// let keyring = keygate::Keyring::new(keygate::Pepper::from_bytes(&[0u8; 32]));
    /// assert_eq!(keyring.records().count(), 0);
    /// ```
    pub fn records(&self) -> impl Iterator<Item = &KeyRecord> {
        self.keys.values()
    }

    /// Parses `token` and verifies it at `now_ms` (Unix milliseconds).
    ///
    /// ```
    /// # let keyring = keygate::Keyring::new(keygate::Pepper::from_bytes(&[0u8; 32]));
    /// let err = keyring.authenticate("ak_bogus", 0).unwrap_err();
    /// assert_eq!(err.http_status(), 401);
    /// ```
    #[inline]
    pub fn authenticate(&self, token: &str, now_ms: i64) -> Result<Principal, AuthError> {
        self.authenticate_bytes(token.as_bytes(), now_ms)
    }

    /// [`Keyring::authenticate`] for a token in bytes, such as a header value.
    ///
    /// ```
    /// # let keyring = keygate::Keyring::new(keygate::Pepper::from_bytes(&[0u8; 32]));
    /// assert!(keyring.authenticate_bytes(b"rk_bogus", 0).is_err());
    /// ```
    #[inline]
    pub fn authenticate_bytes(&self, token: &[u8], now_ms: i64) -> Result<Principal, AuthError> {
        self.verify(&Token::parse_bytes(token)?, now_ms)
    }

    /// Verifies a parsed token at `now_ms`.
    ///
    /// The digest is computed and compared (in constant time) whether or not
    /// the id is known; an unknown id, a wrong secret and a relabelled kind
    /// all give [`AuthError::InvalidCredentials`]. Expiry is checked after
    /// the secret, so [`AuthError::Expired`] tells nothing to a guesser.
    ///
    /// ```
    /// # let text = keygate::token::example_token();
    /// # let keyring = keygate::Keyring::new(keygate::Pepper::from_bytes(&[0u8; 32]));
    /// let token = keygate::Token::parse(&text)?;
    /// assert_eq!(keyring.verify(&token, 0), Err(keygate::AuthError::InvalidCredentials));
    /// # Ok::<(), keygate::TokenError>(())
    /// ```
    pub fn verify(&self, token: &Token<'_>, now_ms: i64) -> Result<Principal, AuthError> {
        let id = token.key_id();
        // The same work for a known and an unknown id (see `DigestIndex`);
        // the slot also carries the grant, so no other memory is read.
        let (found, slot) = self.index.lookup(&id, &self.decoy);
        // `SecretHash` equality is blake3's constant-time comparison.
        let matches = self.pepper.digest(token) == DigestIndex::digest(&slot.digest);
        // One mask and one branch, on the outcome alone: not on `found`
        // first (LLVM may split a branch on `a && b`, or even on `a & b`).
        let accepted = core::hint::black_box(found & u64::from(matches).wrapping_neg());
        // The digest binds the kind, so a relabelled token fails the compare;
        // the kind test only restates it.
        if accepted == 0 || slot.kind() != token.kind() {
            return Err(AuthError::InvalidCredentials);
        }
        match slot.expires_at_ms() {
            Some(expires_at_ms) if now_ms >= expires_at_ms => {
                Err(AuthError::Expired { id, expires_at_ms })
            }
            _ => Ok(Principal::new(id, slot.kind(), slot.scopes())),
        }
    }

    /// One call for a gateway: authenticate `token` at `now_ms`, then require
    /// `access` on `resource`. Returns the principal when both hold; a 401
    /// or 403 [`AuthError`] otherwise.
    ///
    /// ```
    /// use keygate::{Access, Resource};
    /// # let keyring = keygate::Keyring::new(keygate::Pepper::from_bytes(&[0u8; 32]));
    /// let err = keyring.can("ak_x", Resource::Objects, Access::Read, 0).unwrap_err();
    /// assert_eq!(err.http_status(), 401);
    /// ```
    #[inline]
    pub fn can(
        &self,
        token: &str,
        resource: Resource,
        access: Access,
        now_ms: i64,
    ) -> Result<Principal, AuthError> {
        let principal = self.authenticate(token, now_ms)?;
        principal.require(resource, access)?;
        Ok(principal)
    }
}

impl core::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Keyring")
            .field("pepper", &self.pepper)
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl Extend<KeyRecord> for Keyring {
    fn extend<I: IntoIterator<Item = KeyRecord>>(&mut self, iter: I) {
        for record in iter {
            self.insert(record);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mint::{mint, MintRequest};
    use crate::scope::Scopes;
    use alloc::string::String;
    use rand_core::SeedableRng;

    fn setup(scopes: Option<Scopes>, expires: Option<i64>) -> (Keyring, String) {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(9);
        let mut keyring = Keyring::new(Pepper::generate(&mut rng));
        let request = match scopes {
            Some(s) => MintRequest::restricted(None, s, expires, 0).unwrap(),
            None => MintRequest::standard(None, expires, 0).unwrap(),
        };
        let (record, token) = mint(keyring.pepper(), &request, &mut rng, 0).into_parts();
        keyring.insert(record);
        (keyring, String::from(token.expose_secret()))
    }

    #[test]
    fn standard_key_can_everything() {
        let (keyring, token) = setup(None, None);
        for r in Resource::ALL {
            for a in Access::ALL {
                assert!(keyring.can(&token, r, a, 5).is_ok());
            }
        }
    }

    #[test]
    fn relabelled_prefix_fails() {
        let (keyring, token) = setup(Some(Scopes::grant(Resource::Agents, Access::Read)), None);
        let relabelled = crate::secret::SecretToken::assemble(
            KeyKind::Standard,
            &Token::parse(&token).unwrap().key_id(),
            Token::parse(&token).unwrap().secret(),
        );
        assert_eq!(
            keyring.authenticate(relabelled.expose_secret(), 1),
            Err(AuthError::InvalidCredentials)
        );
    }

    #[test]
    fn expiry_is_exclusive() {
        let (keyring, token) = setup(None, Some(100));
        assert!(keyring.authenticate(&token, 99).is_ok());
        assert!(matches!(
            keyring.authenticate(&token, 100),
            Err(AuthError::Expired {
                expires_at_ms: 100,
                ..
            })
        ));
        assert!(keyring.authenticate(&token, i64::MAX).is_err());
        assert!(keyring.authenticate(&token, i64::MIN).is_ok());
    }

    #[test]
    fn revoked_key_fails_like_unknown() {
        let (mut keyring, token) = setup(None, None);
        let id = Token::parse(&token).unwrap().key_id();
        keyring.revoke(&id);
        assert_eq!(
            keyring.authenticate(&token, 1),
            Err(AuthError::InvalidCredentials)
        );
    }

    #[test]
    fn digest_moved_to_another_record_fails() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(11);
        let pepper = Pepper::generate(&mut rng);
        let mut keyring = Keyring::new(pepper.clone());
        let req = MintRequest::standard(None, None, 0).unwrap();
        let (a, token_a) = mint(&pepper, &req, &mut rng, 0).into_parts();
        let (b, _token_b) = mint(&pepper, &req, &mut rng, 0).into_parts();
        // Record b now carries a's digest: a's secret under b's id must fail.
        let forged = KeyRecord::new(
            b.id(),
            b.kind(),
            b.name().into(),
            a.secret_hash(),
            b.scopes(),
            None,
            0,
        );
        keyring.insert(forged);
        let parsed = token_a.parse().unwrap();
        let moved = crate::secret::SecretToken::assemble(parsed.kind(), &b.id(), parsed.secret());
        assert_eq!(
            keyring.authenticate(moved.expose_secret(), 1),
            Err(AuthError::InvalidCredentials)
        );
    }

    #[test]
    fn digest_index_follows_inserts_revokes_and_growth() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(12);
        // Capacity 0: the index starts at its minimum and grows many times.
        let mut keyring = Keyring::new(Pepper::generate(&mut rng));
        let req = MintRequest::standard(None, None, 0).unwrap();
        let mut tokens = alloc::vec::Vec::new();
        for _ in 0..3_000 {
            let (record, token) = mint(keyring.pepper(), &req, &mut rng, 0).into_parts();
            keyring.insert(record);
            tokens.push(token);
        }
        assert_eq!(keyring.index.len, 3_000);
        assert!(keyring.index.slots.len() >= 6_000);
        for t in &tokens {
            assert!(keyring.authenticate(t.expose_secret(), 1).is_ok());
        }
        for t in tokens.iter().step_by(2) {
            let id = t.parse().unwrap().key_id();
            assert!(keyring.revoke(&id).is_some());
            assert!(keyring.revoke(&id).is_none());
        }
        assert_eq!(keyring.index.len, 1_500);
        for (i, t) in tokens.iter().enumerate() {
            let result = keyring.authenticate(t.expose_secret(), 1);
            assert_eq!(result.is_ok(), i % 2 == 1, "token {i}");
        }
        // Replacing a record replaces its digest: the old token stops working.
        let id = tokens[1].parse().unwrap().key_id();
        let old = keyring.get(&id).unwrap().clone();
        let replacement = KeyRecord::new(
            id,
            old.kind(),
            old.name().into(),
            SecretHash::from_bytes([9; 32]),
            old.scopes(),
            None,
            0,
        );
        keyring.insert(replacement);
        assert_eq!(keyring.index.len, 1_500);
        assert_eq!(
            keyring.authenticate(tokens[1].expose_secret(), 1),
            Err(AuthError::InvalidCredentials)
        );
        // The lookup selects the stored slot, or the decoy with mask 0 and
        // no grant.
        let (found, slot) = keyring.index.lookup(&id, &keyring.decoy);
        assert_eq!(found, u64::MAX);
        assert_eq!(
            DigestIndex::digest(&slot.digest),
            SecretHash::from_bytes([9; 32])
        );
        assert_eq!(slot.scopes(), Scopes::all());
        assert_eq!(slot.kind(), KeyKind::Standard);
        assert_eq!(slot.expires_at_ms(), None);
        let unknown = KeyId::parse("0000000000000000").unwrap();
        let (found, slot) = keyring.index.lookup(&unknown, &keyring.decoy);
        assert_eq!(found, 0);
        assert_eq!(DigestIndex::digest(&slot.digest), keyring.decoy);
        assert_eq!(slot.grant, 0);
    }

    #[test]
    fn slots_carry_the_grant() {
        let (keyring, token) = setup(Some("objects:read,agents:write".parse().unwrap()), Some(77));
        let id = Token::parse(&token).unwrap().key_id();
        let (found, slot) = keyring.index.lookup(&id, &keyring.decoy);
        assert_eq!(found, u64::MAX);
        assert_eq!(core::mem::size_of::<Slot>(), 64);
        assert_eq!(slot.kind(), KeyKind::Restricted);
        assert_eq!(slot.expires_at_ms(), Some(77));
        assert_eq!(slot.scopes(), keyring.get(&id).unwrap().scopes());
        assert_eq!(
            keyring.authenticate(&token, 1).unwrap(),
            keyring.get(&id).unwrap().principal()
        );
        // A negative expiry survives the masking (sign bits included).
        let record = keyring.get(&id).unwrap();
        let negative = KeyRecord::new(
            id,
            record.kind(),
            "n".into(),
            record.secret_hash(),
            record.scopes(),
            Some(-5),
            0,
        );
        let mut keyring = keyring.clone();
        keyring.insert(negative);
        assert!(matches!(
            keyring.authenticate(&token, -6),
            Ok(p) if p.scopes() == record.scopes()
        ));
        assert_eq!(
            keyring.authenticate(&token, -5),
            Err(AuthError::Expired {
                id,
                expires_at_ms: -5
            })
        );
    }

    #[test]
    fn debug_hides_pepper() {
        let (keyring, _) = setup(None, None);
        assert_eq!(
            alloc::format!("{keyring:?}"),
            "Keyring { pepper: Pepper(<redacted>), keys: 1 }"
        );
    }
}
