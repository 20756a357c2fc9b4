//! The in-memory keyring: key id → record, and the request hot path.

mod index;

use hashbrown::{HashMap, HashSet};

use crate::error::{AuthError, KeyringError};
use crate::feed::{Applied, Change, ChangeOp};
use crate::key::{KeyRecord, Principal};
use crate::scope::{Access, Resource};
use crate::secret::{Pepper, SecretHash};
use crate::token::{KeyId, KeyKind, Token, EXAMPLE_KEY_ID, SECRET_LEN};

pub use index::IdHasher;
#[cfg(test)]
use index::Slot;
use index::{DigestIndex, MAX_PREALLOCATED_KEYS};

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
/// keyring.insert(record)?;
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
    keys: HashMap<KeyId, Entry, IdHasher>,
    /// Tombstones: the revoked ids (16 bytes each, plus the set's
    /// overhead). A revoked id never comes back.
    revoked: HashSet<KeyId, IdHasher>,
    /// The digests of `keys`, for [`Keyring::verify`]; kept in step with it.
    index: DigestIndex,
    /// The highest sequence number [`Keyring::apply`] has seen.
    last_seq: u64,
}

/// A record and the sequence number of the change that wrote it (0 for
/// [`Keyring::insert`]).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    record: KeyRecord,
    seq: u64,
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
            revoked: HashSet::with_hasher(IdHasher),
            index: DigestIndex::with_capacity(capacity),
            last_seq: 0,
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
    /// This is for a keyring that no change feed drives; with a feed, use
    /// [`Keyring::apply`]. A revoked id is refused: revocation is final.
    ///
    /// ```
    /// let mut keyring = keygate::Keyring::new(keygate::Pepper::from_bytes(&[0u8; 32]));
    /// assert!(keyring.insert(keygate::key::example_record())?.is_none());
    /// assert_eq!(keyring.len(), 1);
    /// # Ok::<(), keygate::KeyringError>(())
    /// ```
    pub fn insert(&mut self, record: KeyRecord) -> Result<Option<KeyRecord>, KeyringError> {
        let id = record.id();
        if self.revoked.contains(&id) {
            return Err(KeyringError::Revoked { id });
        }
        let seq = self.keys.get(&id).map_or(0, |entry| entry.seq);
        Ok(self.put(record, seq).map(|entry| entry.record))
    }

    /// Stores `record` in the map and the digest index.
    fn put(&mut self, record: KeyRecord, seq: u64) -> Option<Entry> {
        self.index.insert(&record);
        self.keys.insert(record.id(), Entry { record, seq })
    }

    /// Removes a key; its tokens stop working at once, and the id can never
    /// be inserted again. Returns the record.
    ///
    /// ```
    /// let mut keyring = keygate::Keyring::new(keygate::Pepper::from_bytes(&[0u8; 32]));
    /// let record = keygate::key::example_record();
    /// let id = record.id();
    /// keyring.insert(record)?;
    /// assert!(keyring.revoke(&id).is_some());
    /// assert!(keyring.get(&id).is_none());
    /// assert!(keyring.is_revoked(&id));
    /// # Ok::<(), keygate::KeyringError>(())
    /// ```
    pub fn revoke(&mut self, id: &KeyId) -> Option<KeyRecord> {
        self.revoked.insert(*id);
        self.index.remove(id);
        self.keys.remove(id).map(|entry| entry.record)
    }

    /// Whether `id` was revoked (by [`Keyring::revoke`] or a
    /// [`ChangeOp::Revoke`]).
    ///
    /// ```
    /// let keyring = keygate::Keyring::new(keygate::Pepper::from_bytes(&[0u8; 32]));
    /// assert!(!keyring.is_revoked(&keygate::key::example_record().id()));
    /// ```
    pub fn is_revoked(&self, id: &KeyId) -> bool {
        self.revoked.contains(id)
    }

    /// Applies one change of a store's log (see [`crate::feed`]).
    ///
    /// Idempotent and order-insensitive: per key id, the change with the
    /// highest sequence number wins, and a revocation is final, so a
    /// duplicate, an older change or an upsert of a revoked id returns
    /// [`Applied::Unchanged`]. Applying any set of changes in any order, with
    /// any duplicates, leaves the keyring as applying them once in order
    /// would.
    ///
    /// ```
    /// use keygate::{Applied, Change};
    /// # let record = keygate::key::example_record();
    /// let mut keyring = keygate::Keyring::new(keygate::Pepper::from_bytes(&[0u8; 32]));
    /// let newer = record.clone();
    /// assert_eq!(keyring.apply(Change::upsert(5, newer))?, Applied::Changed);
    /// assert_eq!(keyring.apply(Change::upsert(4, record))?, Applied::Unchanged);
    /// assert_eq!(keyring.last_seq(), 5);
    /// # Ok::<(), keygate::KeyringError>(())
    /// ```
    pub fn apply(&mut self, change: Change) -> Result<Applied, KeyringError> {
        self.last_seq = self.last_seq.max(change.seq);
        match change.op {
            ChangeOp::Upsert(record) => {
                let id = record.id();
                if self.revoked.contains(&id) {
                    return Ok(Applied::Unchanged);
                }
                if matches!(self.keys.get(&id), Some(entry) if entry.seq >= change.seq) {
                    return Ok(Applied::Unchanged);
                }
                self.put(record, change.seq);
                Ok(Applied::Changed)
            }
            ChangeOp::Revoke(id) => {
                if !self.revoked.insert(id) {
                    return Ok(Applied::Unchanged);
                }
                self.index.remove(&id);
                self.keys.remove(&id);
                Ok(Applied::Changed)
            }
        }
    }

    /// The highest sequence number [`Keyring::apply`] has seen; 0 before any.
    ///
    /// A follower that reads a log strictly in sequence order may resume
    /// from it. One that also applies its own writes as it makes them (so a
    /// new key works at once) should keep its own read cursor, since its own
    /// write may carry a higher number than a change it has yet to read.
    ///
    /// ```
    /// let keyring = keygate::Keyring::new(keygate::Pepper::from_bytes(&[0u8; 32]));
    /// assert_eq!(keyring.last_seq(), 0);
    /// ```
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Drops the records that have expired by `now_ms` (they could never
    /// authenticate again; a store keeps them for its audit) and returns how
    /// many. Call it now and then, with the time of the call.
    ///
    /// ```
    /// let mut keyring = keygate::Keyring::new(keygate::Pepper::from_bytes(&[0u8; 32]));
    /// keyring.insert(keygate::key::example_record())?; // expires at 2 000 ms
    /// assert_eq!(keyring.evict_expired(1_999), 0);
    /// assert_eq!(keyring.evict_expired(2_000), 1);
    /// assert!(keyring.is_empty());
    /// # Ok::<(), keygate::KeyringError>(())
    /// ```
    pub fn evict_expired(&mut self, now_ms: i64) -> usize {
        let index = &mut self.index;
        let before = self.keys.len();
        self.keys.retain(|id, entry| {
            let keep = !entry.record.is_expired_at(now_ms);
            if !keep {
                index.remove(id);
            }
            keep
        });
        before - self.keys.len()
    }

    /// The record of `id`, if the keyring has it.
    ///
    /// ```
    /// let keyring = keygate::Keyring::new(keygate::Pepper::from_bytes(&[0u8; 32]));
    /// assert!(keyring.get(&keygate::KeyId::parse("0000000000000000")?).is_none());
    /// # Ok::<(), keygate::TokenError>(())
    /// ```
    pub fn get(&self, id: &KeyId) -> Option<&KeyRecord> {
        self.keys.get(id).map(|entry| &entry.record)
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
        self.keys.values().map(|entry| &entry.record)
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
            expires_at_ms => Ok(Principal::new(
                id,
                slot.kind(),
                slot.scopes(),
                expires_at_ms,
            )),
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

impl PartialEq for Keyring {
    /// Two keyrings are equal when they hold the same records, tombstones
    /// and last sequence number, under the same pepper.
    fn eq(&self, other: &Keyring) -> bool {
        // The decoy digest is keyed by the pepper: equal decoys, equal
        // peppers (and `SecretHash` compares in constant time).
        self.decoy == other.decoy
            && self.last_seq == other.last_seq
            && self.revoked == other.revoked
            && self.keys == other.keys
    }
}

impl Eq for Keyring {}

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
        keyring.insert(record).unwrap();
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
            None,
        );
        keyring.insert(forged).unwrap();
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
            keyring.insert(record).unwrap();
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
            None,
        );
        keyring.insert(replacement).unwrap();
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
            None,
        );
        let mut keyring = keyring.clone();
        keyring.insert(negative).unwrap();
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
