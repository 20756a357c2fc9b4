//! The in-memory keyring: key id → record, and the request hot path.

mod index;

use hashbrown::HashMap;

use crate::error::AuthError;
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
