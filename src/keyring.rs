//! The in-memory keyring: key id → record, and the request hot path.

use core::hash::BuildHasher;

use hashbrown::HashMap;

use crate::error::AuthError;
use crate::key::{KeyRecord, Principal};
use crate::scope::{Access, Resource};
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

/// The keys a gateway knows, by id, and the checks of the request hot path.
///
/// [`Keyring::authenticate`] parses a token, finds its record, recomputes the
/// secret's digest and compares it in constant time. It allocates nothing.
/// An unknown id is hashed against a decoy digest, so it costs the same as a
/// wrong secret and returns the same error.
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
    /// ```
    /// let keyring = keygate::Keyring::with_capacity(keygate::Pepper::from_bytes(&[0u8; 32]), 1024);
    /// assert_eq!(keyring.len(), 0);
    /// ```
    pub fn with_capacity(pepper: Pepper, capacity: usize) -> Keyring {
        // The decoy is a digest no token can match short of a blake3 preimage.
        let decoy = pepper.digest_parts(KeyKind::Standard, &EXAMPLE_KEY_ID, &[0u8; SECRET_LEN]);
        Keyring {
            pepper,
            decoy,
            keys: HashMap::with_capacity_and_hasher(capacity, IdHasher),
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
        let record = self.keys.get(&token.key_id());
        let expected = match record {
            Some(record) => record.secret_hash(),
            None => self.decoy,
        };
        // `SecretHash` equality is blake3's constant-time comparison.
        let matches = self.pepper.digest(token) == expected;
        match record {
            Some(record) if matches && record.kind() == token.kind() => {
                match record.expires_at_ms() {
                    Some(expires_at_ms) if now_ms >= expires_at_ms => Err(AuthError::Expired {
                        id: record.id(),
                        expires_at_ms,
                    }),
                    _ => Ok(record.principal()),
                }
            }
            _ => Err(AuthError::InvalidCredentials),
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
    fn debug_hides_pepper() {
        let (keyring, _) = setup(None, None);
        assert_eq!(
            alloc::format!("{keyring:?}"),
            "Keyring { pepper: Pepper(<redacted>), keys: 1 }"
        );
    }
}
