//! The in-memory keyring: key id → record, and the request hot path.

mod index;

use hashbrown::HashMap;

use crate::feed::{Applied, Change, ChangeOp};
use crate::key::KeyRecord;
use crate::scope::{Access, Resource, Scopes};
use crate::secret::{Message, Pepper, SecretHash};
use crate::time::UnixMillis;
use crate::token::{self, KeyId, KeyKind, Token, TokenError, DECOY_KEY_ID, SECRET_LEN, TOKEN_LEN};

use index::IdHasher;
use index::{DigestIndex, Slot, MAX_KEYS, MAX_PREALLOCATED_KEYS};

/// A verified key: who is calling and what it may do.
///
/// Only a [`Keyring`] makes one, from a token it verified (fixtures aside:
/// `keygate::testing::principal_of`). It is `Copy` and holds no secret.
///
/// ```
/// use keygate::{Access, Resource};
/// # let principal = keygate::testing::principal_of(&keygate::testing::example_record());
/// assert!(principal.can(Resource::Devboxes, Access::Write));
/// assert!(!principal.can(Resource::Objects, Access::Write));
/// assert!(principal.require(Resource::Objects, Access::Write).is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Principal {
    id: KeyId,
    kind: KeyKind,
    scopes: Scopes,
    expires_at_ms: Option<i64>,
}

impl Principal {
    /// A principal for a verified key; `scopes` must be [`Scopes::all`] for a
    /// standard key (the keyring's slots are built from records, which
    /// ensure it).
    /// The principal `record` would authenticate as, expired or not: for
    /// code that has verified the token itself (or fixtures).
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn of_record(record: &KeyRecord) -> Principal {
        Principal::new(
            record.id(),
            record.kind(),
            record.scopes(),
            record.expires_at_ms(),
        )
    }

    #[inline]
    pub(crate) fn new(
        id: KeyId,
        kind: KeyKind,
        scopes: Scopes,
        expires_at_ms: Option<i64>,
    ) -> Principal {
        Principal {
            id,
            kind,
            scopes,
            expires_at_ms,
        }
    }

    /// The key id.
    ///
    /// ```
    /// # let p = keygate::testing::principal_of(&keygate::testing::example_record());
    /// assert_eq!(p.id().as_str().len(), 16);
    /// ```
    #[inline]
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// Standard or restricted.
    ///
    /// ```
    /// # let p = keygate::testing::principal_of(&keygate::testing::example_record());
    /// assert_eq!(p.kind(), keygate::KeyKind::Restricted);
    /// ```
    #[inline]
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// What the key may do; [`Scopes::all`] for a standard key.
    ///
    /// ```
    /// # let p = keygate::testing::principal_of(&keygate::testing::example_record());
    /// assert!(!p.scopes().is_empty());
    /// ```
    #[inline]
    pub fn scopes(&self) -> Scopes {
        self.scopes
    }

    /// The key's expiry in Unix milliseconds; `None` never expires. The
    /// attenuating [`MintPolicy`](crate::MintPolicy) caps a child's expiry
    /// at it.
    ///
    /// ```
    /// # let p = keygate::testing::principal_of(&keygate::testing::example_record());
    /// assert_eq!(p.expires_at_ms(), Some(2_000));
    /// ```
    #[inline]
    pub fn expires_at_ms(&self) -> Option<i64> {
        self.expires_at_ms
    }

    /// Whether the key may act on `resource` at `access`: one mask test.
    ///
    /// ```
    /// use keygate::{Access, Resource};
    /// # let p = keygate::testing::principal_of(&keygate::testing::example_record());
    /// assert!(p.can(Resource::Objects, Access::Read));
    /// ```
    #[inline(always)]
    pub fn can(&self, resource: Resource, access: Access) -> bool {
        self.scopes.can(resource, access)
    }

    /// Like [`Principal::can`], as a `Result` whose error is a 403.
    ///
    /// ```
    /// use keygate::{Access, Resource};
    /// # let p = keygate::testing::principal_of(&keygate::testing::example_record());
    /// let err = p.require(Resource::Account, Access::Write).unwrap_err();
    /// assert_eq!(err.http_status(), 403);
    /// ```
    #[inline]
    pub fn require(&self, resource: Resource, access: Access) -> Result<(), AuthError> {
        if self.can(resource, access) {
            Ok(())
        } else {
            Err(AuthError::InsufficientScope {
                id: self.id,
                resource,
                access,
            })
        }
    }
}

/// A restricted record (`devboxes:write,objects:read`, created at 1 000 ms,
/// expiring at 2 000 ms), for documentation examples.
/// Why a presented token was not accepted, or not allowed to act.
///
/// ```
/// use keygate::AuthError;
/// assert_eq!(AuthError::InvalidCredentials.http_status(), 401);
/// assert_eq!(AuthError::InvalidCredentials.to_string(), "unknown key or wrong secret");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The token is malformed; see [`TokenError`].
    #[error(transparent)]
    Malformed(#[from] TokenError),
    /// The key id is unknown, or the secret is wrong. The two cases are one
    /// error on purpose: telling them apart would help guessing.
    #[error("unknown key or wrong secret")]
    InvalidCredentials,
    /// The key was valid, but its expiry has passed.
    #[error("key `{id}` expired at {expires_at_ms} ms")]
    Expired {
        /// The key's id.
        id: KeyId,
        /// When it expired, in Unix milliseconds.
        expires_at_ms: i64,
    },
    /// The key is valid but its scopes do not allow the action.
    #[error("key `{id}` lacks {resource}:{access} access")]
    InsufficientScope {
        /// The key's id.
        id: KeyId,
        /// The resource asked for.
        resource: Resource,
        /// The access level asked for.
        access: Access,
    },
}

impl AuthError {
    /// 401 when the credential is missing, malformed, unknown, wrong or
    /// expired; 403 when a valid key lacks the scope.
    ///
    /// ```
    /// use keygate::{Access, AuthError, KeyId, Resource};
    /// let id = KeyId::parse("0000000000000000")?;
    /// let e = AuthError::InsufficientScope { id, resource: Resource::Account, access: Access::Write };
    /// assert_eq!(e.http_status(), 403);
    /// # Ok::<(), keygate::TokenError>(())
    /// ```
    pub const fn http_status(&self) -> u16 {
        match self {
            AuthError::InsufficientScope { .. } => 403,
            _ => 401,
        }
    }
}

/// A record a [`Keyring`](crate::Keyring) will not take. When it is
/// returned, nothing has changed: the keyring still holds every key it held.
///
/// ```
/// # let record = keygate::testing::example_record();
/// let mut keyring = keygate::Keyring::new(keygate::Pepper::from_bytes(&[0u8; 32]));
/// keyring.insert(record.clone())?;
/// keyring.revoke(&record.id());
/// let err = keyring.insert(record).unwrap_err();
/// assert_eq!(err.http_status(), 409);
/// let err = keygate::KeyringError::Full { max: keygate::Keyring::MAX_KEYS };
/// assert_eq!(err.to_string(), "the keyring is full: it holds at most 4194304 keys");
/// assert_eq!(err.http_status(), 503);
/// # Ok::<(), keygate::KeyringError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyringError {
    /// The id was revoked.
    #[error("key `{id}` was revoked; a revoked id never comes back")]
    Revoked {
        /// The revoked id.
        id: KeyId,
    },
    /// The keyring holds [`Keyring::MAX_KEYS`](crate::Keyring::MAX_KEYS) keys.
    #[error("the keyring is full: it holds at most {max} keys")]
    Full {
        /// The bound.
        max: usize,
    },
    /// The id's slot window is full and the digest index may not grow
    /// further for the keys it holds (see
    /// [`Keyring::MAX_KEYS`](crate::Keyring::MAX_KEYS)). With random ids
    /// this does not happen; it takes ids chosen with knowledge of the
    /// pepper.
    #[error("key id `{id}` lands in a full slot window; the keyring refuses it rather than drop a key or exceed its memory bound")]
    Crowded {
        /// The refused key's id.
        id: KeyId,
    },
}

impl KeyringError {
    /// 409 for a revoked id: the request conflicts with the key's state.
    /// 503 for `Full` and `Crowded`: not the client's fault, so not 4xx, and
    /// a state of the server that an operator resolves (revoke keys, shard,
    /// rotate the pepper), which may pass; generic clients and proxies
    /// treat 503 as "try later" already (507 is WebDAV's).
    ///
    /// ```
    /// assert_eq!(keygate::KeyringError::Full { max: 1 }.http_status(), 503);
    /// ```
    pub const fn http_status(&self) -> u16 {
        match self {
            KeyringError::Revoked { .. } => 409,
            KeyringError::Full { .. } | KeyringError::Crowded { .. } => 503,
        }
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
/// let request = MintRequest::restricted(None, "devboxes:read".parse()?, None, keygate::UnixMillis::from_millis(0))?;
/// let (record, token) = keygate::mint(keyring.pepper(), &request, &mut rng, keygate::UnixMillis::from_millis(0)).into_parts();
/// keyring.insert(record)?;
///
/// let principal = keyring.authenticate(token.expose_secret(), keygate::UnixMillis::from_millis(10))?;
/// assert!(principal.can(Resource::Devboxes, Access::Read));
/// assert!(keyring.authorize(token.expose_secret(), Resource::Devboxes, Access::Write, keygate::UnixMillis::from_millis(10)).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Keyring {
    pepper: Pepper,
    decoy: SecretHash,
    keys: HashMap<KeyId, Entry, IdHasher>,
    /// Tombstones: the revoked ids, each with the sequence number of the
    /// change that revoked it (24 bytes each, plus the map's overhead). A
    /// revoked id never comes back; [`Keyring::compact`] forgets the
    /// tombstones below a horizon.
    revoked: HashMap<KeyId, u64, IdHasher>,
    /// Eviction marks: the ids [`Keyring::evict_expired`] dropped, each with
    /// the sequence number of the entry it dropped. An upsert at or below
    /// the mark is older than what was evicted, and changes nothing.
    evicted: HashMap<KeyId, u64, IdHasher>,
    /// The highest horizon [`Keyring::compact`] was given: every change at
    /// or below it has been applied, so an upsert at or below it is stale.
    horizon: u64,
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
    /// The most keys a keyring holds: 4 194 304 (2^22). Past it,
    /// [`Keyring::insert`] fails with [`KeyringError::Full`].
    ///
    /// Memory stays bounded too. The digest index has at most 8 slots of 64
    /// bytes per key (128 to 256 bytes per key in the usual case, since it
    /// is at most half full), so at most 2 GiB at the bound; the map of
    /// records holds one [`KeyRecord`] per key. An id whose slot window is
    /// full when the index may not grow further is refused with
    /// [`KeyringError::Crowded`]: the index grows on demand (doubling) only
    /// up to that limit, and never drops a key to make room.
    ///
    /// ```
    /// assert_eq!(keygate::Keyring::MAX_KEYS, 1 << 22);
    /// ```
    pub const MAX_KEYS: usize = MAX_KEYS;

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
    ///
    /// The id hash of the map and of the digest index is seeded from the
    /// pepper, so ids chosen without the pepper cannot
    /// crowd one slot window.
    pub fn with_capacity(pepper: Pepper, capacity: usize) -> Keyring {
        let capacity = capacity.min(MAX_PREALLOCATED_KEYS);
        // The decoy is a digest no token can match: its secret is 43 zero
        // bytes, which are not base62. Its id is a constant of its own, not
        // the documentation's example id.
        let decoy = pepper.digest_parts(KeyKind::Standard, &DECOY_KEY_ID, &[0u8; SECRET_LEN]);
        // The map and the index hash ids with seeds of their own, so that
        // the map's iteration order (by its hash) is not the index's order:
        // copying one keyring into another fills the index evenly.
        let [map_lo, map_hi, index_lo, index_hi] = pepper.index_seeds();
        Keyring {
            pepper,
            decoy,
            keys: HashMap::with_capacity_and_hasher(
                capacity,
                IdHasher::with_seeds([map_lo, map_hi]),
            ),
            revoked: HashMap::with_hasher(IdHasher::with_seeds([map_lo, map_hi])),
            evicted: HashMap::with_hasher(IdHasher::with_seeds([map_lo, map_hi])),
            horizon: 0,
            index: DigestIndex::with_capacity(capacity, IdHasher::with_seeds([index_lo, index_hi])),
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
    /// Fails, changing nothing, when the keyring is full
    /// ([`Keyring::MAX_KEYS`]) or the id's slot window is
    /// ([`KeyringError::Crowded`]). A replacement always succeeds.
    ///
    /// ```
    /// let mut keyring = keygate::Keyring::new(keygate::Pepper::from_bytes(&[0u8; 32]));
    /// assert!(keyring.insert(keygate::testing::example_record())?.is_none());
    /// assert_eq!(keyring.len(), 1);
    /// # Ok::<(), keygate::KeyringError>(())
    /// ```
    pub fn insert(&mut self, record: KeyRecord) -> Result<Option<KeyRecord>, KeyringError> {
        let id = record.id();
        if self.revoked.contains_key(&id) {
            return Err(KeyringError::Revoked { id });
        }
        let seq = self.keys.get(&id).map_or(0, |entry| entry.seq);
        Ok(self.put(record, seq)?.map(|entry| entry.record))
    }

    /// Inserts every record, stopping at the first that fails (the records
    /// before it stay inserted).
    ///
    /// ```
    /// let mut keyring = keygate::Keyring::new(keygate::Pepper::from_bytes(&[0u8; 32]));
    /// keyring.try_extend([keygate::testing::example_record()])?;
    /// assert_eq!(keyring.len(), 1);
    /// # Ok::<(), keygate::KeyringError>(())
    /// ```
    pub fn try_extend<I: IntoIterator<Item = KeyRecord>>(
        &mut self,
        records: I,
    ) -> Result<(), KeyringError> {
        for record in records {
            self.insert(record)?;
        }
        Ok(())
    }

    /// Stores `record` in the map and the digest index.
    fn put(&mut self, record: KeyRecord, seq: u64) -> Result<Option<Entry>, KeyringError> {
        self.index.insert(&record)?;
        Ok(self.keys.insert(record.id(), Entry { record, seq }))
    }

    /// Removes a key; its tokens stop working at once, and the id can never
    /// be inserted again. Returns the record.
    ///
    /// The tombstone carries [`Keyring::last_seq`] as its sequence number
    /// (0 for a keyring no feed drives), as if the revocation were the last
    /// change applied: [`Keyring::compact`] with a horizon at or past it
    /// forgets it, after which the id could be inserted again.
    ///
    /// ```
    /// let mut keyring = keygate::Keyring::new(keygate::Pepper::from_bytes(&[0u8; 32]));
    /// let record = keygate::testing::example_record();
    /// let id = record.id();
    /// keyring.insert(record)?;
    /// assert!(keyring.revoke(&id).is_some());
    /// assert!(keyring.get(&id).is_none());
    /// assert!(keyring.is_revoked(&id));
    /// # Ok::<(), keygate::KeyringError>(())
    /// ```
    pub fn revoke(&mut self, id: &KeyId) -> Option<KeyRecord> {
        self.tombstone(*id, self.last_seq);
        self.index.remove(id);
        self.keys.remove(id).map(|entry| entry.record)
    }

    /// Records that `id` was revoked by the change `seq` (keeping the
    /// highest such number, so the order of duplicates does not matter), and
    /// drops its eviction mark, which the tombstone outranks. Returns whether
    /// the id was not revoked before.
    fn tombstone(&mut self, id: KeyId, seq: u64) -> bool {
        self.evicted.remove(&id);
        match self.revoked.get_mut(&id) {
            Some(at) => {
                *at = (*at).max(seq);
                false
            }
            None => {
                self.revoked.insert(id, seq);
                true
            }
        }
    }

    /// Whether `id` was revoked (by [`Keyring::revoke`] or a
    /// [`ChangeOp::Revoke`]).
    ///
    /// ```
    /// let keyring = keygate::Keyring::new(keygate::Pepper::from_bytes(&[0u8; 32]));
    /// assert!(!keyring.is_revoked(&keygate::testing::example_record().id()));
    /// ```
    pub fn is_revoked(&self, id: &KeyId) -> bool {
        self.revoked.contains_key(id)
    }

    /// How many tombstones (revoked ids) and eviction marks (ids
    /// [`Keyring::evict_expired`] dropped) the keyring holds: the memory
    /// that only [`Keyring::compact`] gives back. For metrics.
    ///
    /// ```
    /// let mut keyring = keygate::Keyring::new(keygate::Pepper::from_bytes(&[0u8; 32]));
    /// keyring.revoke(&keygate::testing::example_record().id());
    /// assert_eq!(keyring.tombstones(), 1);
    /// ```
    pub fn tombstones(&self) -> usize {
        self.revoked.len() + self.evicted.len()
    }

    /// Forgets the tombstones and eviction marks of changes with sequence
    /// number `<= horizon_seq`, and returns how many it dropped.
    ///
    /// **The caller promises that no change with a sequence number
    /// `<= horizon_seq` will be applied again** (the store has compacted its
    /// log to past it, and every cursor, replay and cache fill starts
    /// after it). That promise is what makes this safe: a tombstone and a
    /// mark only refuse changes at or below their own number (a stale
    /// upsert, a replay); a store never writes an upsert of a revoked id
    /// after its revocation, and any change of an evicted id it writes later
    /// carries a higher number, which the mark would not refuse anyway. A
    /// change at or below the horizon that arrives after all (a server's own
    /// write, applied after its follower read and compacted past it) is
    /// stale: an upsert at or below the highest horizon given is refused,
    /// so it cannot bring back a key whose tombstone or mark was forgotten.
    ///
    /// For a keyring no feed drives, [`Keyring::revoke`]'s tombstones carry
    /// [`Keyring::last_seq`] (0): `compact(0)` forgets them, and a revoked
    /// id may then be inserted again.
    ///
    /// ```
    /// use keygate::{Applied, Change};
    /// # let record = keygate::testing::example_record();
    /// let mut keyring = keygate::Keyring::new(keygate::Pepper::from_bytes(&[0u8; 32]));
    /// keyring.apply(Change::upsert(1, record.clone()))?;
    /// keyring.apply(Change::revoke(2, record.id()))?;
    /// assert_eq!(keyring.compact(1), 0);
    /// assert_eq!(keyring.compact(2), 1);
    /// assert_eq!(keyring.tombstones(), 0);
    /// // The key is still gone; the store will never send it again.
    /// assert!(keyring.get(&record.id()).is_none());
    /// # Ok::<(), keygate::KeyringError>(())
    /// ```
    pub fn compact(&mut self, horizon_seq: u64) -> usize {
        self.horizon = self.horizon.max(horizon_seq);
        let before = self.tombstones();
        self.revoked.retain(|_, seq| *seq > horizon_seq);
        self.evicted.retain(|_, seq| *seq > horizon_seq);
        before - self.tombstones()
    }

    /// Applies one change of a store's log (see [`Change`] and the README's change-feed protocol).
    ///
    /// Idempotent and order-insensitive: per key id, the change with the
    /// highest sequence number wins, and a revocation is final, so a
    /// duplicate, an older change or an upsert of a revoked id returns
    /// [`Applied::Unchanged`]. Applying any set of changes in any order, with
    /// any duplicates, leaves the keyring as applying them once in order
    /// would. Eviction does not change that: an upsert at or below the
    /// sequence number of a record [`Keyring::evict_expired`] dropped is
    /// older than it, and changes nothing either.
    ///
    /// ```
    /// use keygate::{Applied, Change};
    /// # let record = keygate::testing::example_record();
    /// let mut keyring = keygate::Keyring::new(keygate::Pepper::from_bytes(&[0u8; 32]));
    /// let newer = record.clone();
    /// assert_eq!(keyring.apply(Change::upsert(5, newer))?, Applied::Changed);
    /// assert_eq!(keyring.apply(Change::upsert(4, record))?, Applied::Unchanged);
    /// assert_eq!(keyring.last_seq(), 5);
    /// # Ok::<(), keygate::KeyringError>(())
    /// ```
    pub fn apply(&mut self, change: Change) -> Result<Applied, KeyringError> {
        let seq = change.seq;
        let applied = match change.op {
            ChangeOp::Upsert(record) => {
                let id = record.id();
                if self.revoked.contains_key(&id)
                    || seq <= self.horizon
                    || matches!(self.evicted.get(&id), Some(&mark) if mark >= seq)
                    || matches!(self.keys.get(&id), Some(entry) if entry.seq >= seq)
                {
                    Applied::Unchanged
                } else {
                    // On an error nothing changed, the sequence number included.
                    self.put(record, seq)?;
                    // The entry's number now outranks the mark.
                    self.evicted.remove(&id);
                    Applied::Changed
                }
            }
            ChangeOp::Revoke(id) => {
                if self.tombstone(id, seq) {
                    self.index.remove(&id);
                    self.keys.remove(&id);
                    Applied::Changed
                } else {
                    Applied::Unchanged
                }
            }
        };
        self.last_seq = self.last_seq.max(seq);
        Ok(applied)
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

    /// Drops the records that have expired by `now` (they could never
    /// authenticate again; a store keeps them for its audit) and returns how
    /// many. Call it now and then, with the time of the call.
    ///
    /// An evicted key stays dead: the keyring keeps an eviction mark (id →
    /// the sequence number of the dropped record), and [`Keyring::apply`]
    /// refuses any upsert of that id at or below it, such as a replay of the
    /// record from before a roll shortened its life. An upsert with a higher
    /// number wins as usual. A record from [`Keyring::insert`] (number 0)
    /// leaves no mark, since no change has number 0. [`Keyring::compact`]
    /// forgets marks.
    ///
    /// ```
    /// let mut keyring = keygate::Keyring::new(keygate::Pepper::from_bytes(&[0u8; 32]));
    /// keyring.insert(keygate::testing::example_record())?; // expires at 2 000 ms
    /// assert_eq!(keyring.evict_expired(keygate::UnixMillis::from_millis(1_999)), 0);
    /// assert_eq!(keyring.evict_expired(keygate::UnixMillis::from_millis(2_000)), 1);
    /// assert!(keyring.is_empty());
    /// # Ok::<(), keygate::KeyringError>(())
    /// ```
    pub fn evict_expired(&mut self, now: UnixMillis) -> usize {
        let index = &mut self.index;
        let evicted = &mut self.evicted;
        let before = self.keys.len();
        self.keys.retain(|id, entry| {
            let keep = !entry.record.is_expired_at(now);
            if !keep {
                index.remove(id);
                if entry.seq > 0 {
                    let mark = evicted.entry(*id).or_insert(entry.seq);
                    *mark = (*mark).max(entry.seq);
                }
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

    /// Parses `token` and verifies it at `now` (Unix milliseconds): the
    /// same verdict and errors as [`Token::parse`] then [`Keyring::verify`].
    /// It hashes first and checks the parts the digest does not bind
    /// (prefix, separator, checksum); the full parse runs only when the
    /// digest does not match, for its exact error. A known id with a wrong
    /// secret and an unknown id take the same path.
    ///
    /// ```
    /// # let keyring = keygate::Keyring::new(keygate::Pepper::from_bytes(&[0u8; 32]));
    /// let err = keyring.authenticate("ak_bogus", keygate::UnixMillis::from_millis(0)).unwrap_err();
    /// assert_eq!(err.http_status(), 401);
    /// ```
    /// `token` is text or bytes (a header value): `&str`, `String`, `&[u8]`.
    #[inline]
    pub fn authenticate(
        &self,
        token: impl AsRef<[u8]>,
        now: UnixMillis,
    ) -> Result<Principal, AuthError> {
        self.authenticate_bytes(token.as_ref(), now)
    }

    #[inline]
    fn authenticate_bytes(&self, token: &[u8], now: UnixMillis) -> Result<Principal, AuthError> {
        let text: &[u8; TOKEN_LEN] = token
            .try_into()
            .map_err(|_| TokenError::Length { len: token.len() })?;
        // The hot path parses only what the digest does not bind. The
        // message is built first; the framing check (prefix, separator,
        // checksum) runs while its stores retire, so blake3 reads it back
        // without a store-forwarding stall; then the hash. A matched digest
        // proves the tag, id and secret are the minted ones (base62), so the
        // framing check and the digest give the parse's verdict without its
        // alphabet scans. Every other text takes the full parse, for its
        // exact error: a known id with a wrong secret and an unknown id take
        // the same path (compare, fail, parse).
        let message = Message::of_text(text);
        let framed = token::framing_is_valid(text);
        let digest = self.pepper.digest_message(&message);
        drop(message);
        let id = token::key_id_of_text(text);
        let kind = KeyKind::of_tag(text.first().copied().unwrap_or(0));
        match self.matching_slot(DigestIndex::key(&id), kind, &digest) {
            Some(slot) if framed => Keyring::principal(&slot, id, now),
            _ => {
                Token::parse(text)?;
                Err(AuthError::InvalidCredentials)
            }
        }
    }

    /// Whether `a` and `b` have the same index window (for
    /// [`crate::testing::unknown_id_sharing_window`]).
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn shares_window(&self, a: &KeyId, b: &KeyId) -> bool {
        self.index.home(DigestIndex::key(a)) == self.index.home(DigestIndex::key(b))
    }

    /// Verifies a parsed token at `now`.
    ///
    /// The digest is computed and compared (in constant time) whether or not
    /// the id is known; an unknown id, a wrong secret and a relabelled kind
    /// all give [`AuthError::InvalidCredentials`]. Expiry is checked after
    /// the secret, so [`AuthError::Expired`] tells nothing to a guesser.
    ///
    /// ```
    /// # let text = keygate::testing::example_token();
    /// # let keyring = keygate::Keyring::new(keygate::Pepper::from_bytes(&[0u8; 32]));
    /// let token = keygate::Token::parse(&text)?;
    /// assert_eq!(keyring.verify(&token, keygate::UnixMillis::from_millis(0)), Err(keygate::AuthError::InvalidCredentials));
    /// # Ok::<(), keygate::TokenError>(())
    /// ```
    pub fn verify(&self, token: &Token<'_>, now: UnixMillis) -> Result<Principal, AuthError> {
        self.verify_digest(token, &self.pepper.digest(token), now)
    }

    /// [`Keyring::verify`] with the token's digest already computed.
    #[inline(always)]
    fn verify_digest(
        &self,
        token: &Token<'_>,
        digest: &SecretHash,
        now: UnixMillis,
    ) -> Result<Principal, AuthError> {
        let id = token.key_id();
        match self.matching_slot(DigestIndex::key(&id), token.kind(), digest) {
            Some(slot) => Keyring::principal(&slot, id, now),
            None => Err(AuthError::InvalidCredentials),
        }
    }

    /// The slot of the key `key` of `kind` if `digest` is its stored
    /// digest, else `None`.
    #[inline(always)]
    fn matching_slot(&self, key: u128, kind: KeyKind, digest: &SecretHash) -> Option<Slot> {
        // The same work for a known and an unknown id (see `DigestIndex`);
        // the slot also carries the grant, so no other memory is read.
        let (found, slot) = self.index.lookup(key, &self.decoy);
        // The constant-time comparison, on the words the slot holds: the OR
        // of their XORs, with no early exit, behind a barrier, then a mask
        // (all ones iff equal) by arithmetic, as for the ids.
        let diff = DigestIndex::words(digest)
            .iter()
            .zip(slot.digest)
            .fold(0u64, |diff, (computed, stored)| diff | (computed ^ stored));
        let diff = core::hint::black_box(diff);
        let equal = zero_mask(diff);
        // One mask and one branch, on the outcome alone: not on `found`
        // first (LLVM may split a branch on `a && b`, or even on `a & b`).
        let accepted = core::hint::black_box(found & equal);
        // The digest binds the kind, so a relabelled token fails the compare;
        // the kind test only restates it.
        if accepted == 0 || slot.kind() != kind {
            return None;
        }
        Some(slot)
    }

    /// The principal of a verified key `id` whose slot is `slot`, at
    /// `now`. Expiry is checked after the secret, so
    /// [`AuthError::Expired`] tells nothing to a guesser.
    #[inline(always)]
    fn principal(slot: &Slot, id: KeyId, now: UnixMillis) -> Result<Principal, AuthError> {
        match slot.expires_at_ms() {
            Some(expires_at_ms) if now.as_millis() >= expires_at_ms => {
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

    /// One call for a gateway: authenticate `token` at `now`, then require
    /// `access` on `resource`. Returns the principal when both hold; a 401
    /// or 403 [`AuthError`] otherwise.
    ///
    /// ```
    /// use keygate::{Access, Resource};
    /// # let keyring = keygate::Keyring::new(keygate::Pepper::from_bytes(&[0u8; 32]));
    /// let err = keyring.authorize("ak_x", Resource::Objects, Access::Read, keygate::UnixMillis::from_millis(0)).unwrap_err();
    /// assert_eq!(err.http_status(), 401);
    /// ```
    #[inline]
    pub fn authorize(
        &self,
        token: impl AsRef<[u8]>,
        resource: Resource,
        access: Access,
        now: UnixMillis,
    ) -> Result<Principal, AuthError> {
        let principal = self.authenticate(token, now)?;
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
    /// (with their sequence numbers), eviction marks and last sequence
    /// number, under the same pepper.
    fn eq(&self, other: &Keyring) -> bool {
        // The decoy digest is keyed by the pepper: equal decoys, equal
        // peppers (and `SecretHash` compares in constant time).
        self.decoy == other.decoy
            && self.last_seq == other.last_seq
            && self.revoked == other.revoked
            && self.evicted == other.evicted
            && self.keys == other.keys
    }
}

impl Eq for Keyring {}

/// All ones if `diff` is 0, else 0, by arithmetic: `x | -x` has its top
/// bit set iff `x != 0`.
#[inline(always)]
const fn zero_mask(diff: u64) -> u64 {
    ((diff | diff.wrapping_neg()) >> 63).wrapping_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every single-bit change of the hashed value changes `IdHasher`'s hash:
    /// for a key id (one `u128` write) and for a longer byte string (several
    /// writes, chained through the state).
    #[test]
    fn id_hasher_sees_every_bit() {
        use core::hash::BuildHasher;
        let hasher = IdHasher::default();
        let base: u128 = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210;
        let mut seen = std::collections::HashSet::new();
        assert!(seen.insert(hasher.hash_one(base)));
        for bit in 0..128 {
            assert!(
                seen.insert(hasher.hash_one(base ^ (1u128 << bit))),
                "bit {bit}"
            );
        }
        let bytes = [0x5au8; 40];
        let mut seen = std::collections::HashSet::new();
        assert!(seen.insert(hasher.hash_one(bytes)));
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes;
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(seen.insert(hasher.hash_one(flipped)), "bit {bit}");
        }
    }
    use crate::mint::{mint, MintRequest};
    use crate::scope::Scopes;
    use alloc::string::String;
    use rand_core::SeedableRng;

    fn setup(scopes: Option<Scopes>, expires: Option<i64>) -> (Keyring, String) {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(9);
        let mut keyring = Keyring::new(Pepper::generate(&mut rng));
        let request = match scopes {
            Some(s) => {
                MintRequest::restricted(None, s, expires, UnixMillis::from_millis(0)).unwrap()
            }
            None => MintRequest::standard(None, expires, UnixMillis::from_millis(0)).unwrap(),
        };
        let (record, token) = mint(
            keyring.pepper(),
            &request,
            &mut rng,
            UnixMillis::from_millis(0),
        )
        .into_parts();
        keyring.insert(record).unwrap();
        (keyring, String::from(token.expose_secret()))
    }

    #[test]
    fn a_stale_upsert_below_the_horizon_cannot_resurrect_a_compacted_key() {
        // A server rolls a key (seq 1, the new key), its follower reads 1,
        // then a revocation of the new key (2), applies both and compacts
        // at 2; the roll's handler, late, applies its own upsert at 1.
        let (mut keyring, token) = setup(None, None);
        let id = Token::parse(&token).unwrap().key_id();
        let record = keyring.revoke(&id).unwrap();
        let mut keyring = Keyring::new(keyring.pepper().clone());
        keyring.apply(Change::upsert(1, record.clone())).unwrap();
        keyring.apply(Change::revoke(2, id)).unwrap();
        assert_eq!(keyring.compact(2), 1);
        assert_eq!(
            keyring.apply(Change::upsert(1, record.clone())).unwrap(),
            Applied::Unchanged
        );
        assert!(keyring
            .authenticate(&token, UnixMillis::from_millis(5))
            .is_err());
        // A later change still applies.
        assert_eq!(
            keyring.apply(Change::upsert(3, record)).unwrap(),
            Applied::Changed
        );
    }

    #[test]
    fn zero_mask_is_all_ones_only_for_zero() {
        assert_eq!(zero_mask(0), u64::MAX);
        // Every single-bit difference, the top bit included (where `x ^ -x`
        // would be 0), and a few wider ones.
        for bit in 0..64 {
            assert_eq!(zero_mask(1u64 << bit), 0, "bit {bit}");
        }
        for diff in [u64::MAX, 3, 0x8000_0000_0000_0001, 0xff00] {
            assert_eq!(zero_mask(diff), 0, "{diff:#x}");
        }
    }

    #[test]
    fn index_differs_only_for_a_nonzero_difference() {
        use index::differs;
        assert_eq!(differs(0), 0);
        for bit in 0..128 {
            assert_eq!(differs(1u128 << bit), 1, "bit {bit}");
        }
        assert_eq!(differs(u128::MAX), 1);
    }

    #[test]
    fn the_index_stays_at_most_half_full() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(11);
        let mut keyring = Keyring::new(Pepper::generate(&mut rng));
        let request = MintRequest::standard(None, None, UnixMillis::from_millis(0)).unwrap();
        for n in 1..=100 {
            let (record, _) = mint(
                keyring.pepper(),
                &request,
                &mut rng,
                UnixMillis::from_millis(0),
            )
            .into_parts();
            keyring.insert(record).unwrap();
            assert_eq!(keyring.index.len, n);
            assert!(
                2 * keyring.index.len <= keyring.index.size(),
                "{n} keys in {}",
                keyring.index.size()
            );
        }
    }

    #[test]
    fn standard_key_can_everything() {
        let (keyring, token) = setup(None, None);
        for r in Resource::ALL {
            for a in Access::ALL {
                assert!(keyring
                    .authorize(&token, r, a, UnixMillis::from_millis(5))
                    .is_ok());
            }
        }
    }

    #[test]
    fn relabelled_prefix_fails() {
        let (keyring, token) = setup(Some(Scopes::grant(Resource::Agents, Access::Read)), None);
        let relabelled = crate::token::SecretToken::assemble(
            KeyKind::Standard,
            &Token::parse(&token).unwrap().key_id(),
            Token::parse(&token).unwrap().secret(),
        );
        assert_eq!(
            keyring.authenticate(relabelled.expose_secret(), UnixMillis::from_millis(1)),
            Err(AuthError::InvalidCredentials)
        );
    }

    #[test]
    fn expiry_is_exclusive() {
        let (keyring, token) = setup(None, Some(100));
        assert!(keyring
            .authenticate(&token, UnixMillis::from_millis(99))
            .is_ok());
        assert!(matches!(
            keyring.authenticate(&token, UnixMillis::from_millis(100)),
            Err(AuthError::Expired {
                expires_at_ms: 100,
                ..
            })
        ));
        assert!(keyring
            .authenticate(&token, UnixMillis::from_millis(i64::MAX))
            .is_err());
        assert!(keyring
            .authenticate(&token, UnixMillis::from_millis(i64::MIN))
            .is_ok());
    }

    #[test]
    fn revoked_key_fails_like_unknown() {
        let (mut keyring, token) = setup(None, None);
        let id = Token::parse(&token).unwrap().key_id();
        keyring.revoke(&id);
        assert_eq!(
            keyring.authenticate(&token, UnixMillis::from_millis(1)),
            Err(AuthError::InvalidCredentials)
        );
    }

    #[test]
    fn digest_moved_to_another_record_fails() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(11);
        let pepper = Pepper::generate(&mut rng);
        let mut keyring = Keyring::new(pepper.clone());
        let req = MintRequest::standard(None, None, UnixMillis::from_millis(0)).unwrap();
        let (a, token_a) = mint(&pepper, &req, &mut rng, UnixMillis::from_millis(0)).into_parts();
        let (b, _token_b) = mint(&pepper, &req, &mut rng, UnixMillis::from_millis(0)).into_parts();
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
        let moved = crate::token::SecretToken::assemble(parsed.kind(), &b.id(), parsed.secret());
        assert_eq!(
            keyring.authenticate(moved.expose_secret(), UnixMillis::from_millis(1)),
            Err(AuthError::InvalidCredentials)
        );
    }

    #[test]
    fn a_digest_that_differs_in_any_bit_fails() {
        let (mut keyring, token) = setup(None, None);
        let id = Token::parse(&token).unwrap().key_id();
        let record = keyring.get(&id).unwrap().clone();
        let right = *record.secret_hash().as_bytes();
        for byte in 0..32 {
            for bit in [0, 7] {
                let mut wrong = right;
                wrong[byte] ^= 1 << bit;
                let forged = KeyRecord::new(
                    id,
                    record.kind(),
                    "f".into(),
                    SecretHash::from_bytes(wrong),
                    record.scopes(),
                    None,
                    0,
                    None,
                );
                keyring.insert(forged).unwrap();
                assert_eq!(
                    keyring.authenticate(&token, UnixMillis::from_millis(1)),
                    Err(AuthError::InvalidCredentials),
                    "byte {byte} bit {bit}"
                );
            }
        }
        keyring.insert(record).unwrap();
        assert!(keyring
            .authenticate(&token, UnixMillis::from_millis(1))
            .is_ok());
    }

    #[test]
    fn digest_index_follows_inserts_revokes_and_growth() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(12);
        // Capacity 0: the index starts at its minimum and grows many times.
        let mut keyring = Keyring::new(Pepper::generate(&mut rng));
        let req = MintRequest::standard(None, None, UnixMillis::from_millis(0)).unwrap();
        let mut tokens = alloc::vec::Vec::new();
        for _ in 0..3_000 {
            let (record, token) =
                mint(keyring.pepper(), &req, &mut rng, UnixMillis::from_millis(0)).into_parts();
            keyring.insert(record).unwrap();
            tokens.push(token);
        }
        assert_eq!(keyring.index.len, 3_000);
        assert!(keyring.index.slots.len() >= 6_000);
        for t in &tokens {
            assert!(keyring
                .authenticate(t.expose_secret(), UnixMillis::from_millis(1))
                .is_ok());
        }
        for t in tokens.iter().step_by(2) {
            let id = t.parse().unwrap().key_id();
            assert!(keyring.revoke(&id).is_some());
            assert!(keyring.revoke(&id).is_none());
        }
        assert_eq!(keyring.index.len, 1_500);
        for (i, t) in tokens.iter().enumerate() {
            let result = keyring.authenticate(t.expose_secret(), UnixMillis::from_millis(1));
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
            keyring.authenticate(tokens[1].expose_secret(), UnixMillis::from_millis(1)),
            Err(AuthError::InvalidCredentials)
        );
        // The lookup selects the stored slot, or the decoy with mask 0 and
        // no grant.
        let (found, slot) = keyring.index.lookup(DigestIndex::key(&id), &keyring.decoy);
        assert_eq!(found, u64::MAX);
        assert_eq!(
            DigestIndex::digest(&slot.digest),
            SecretHash::from_bytes([9; 32])
        );
        assert_eq!(slot.scopes(), Scopes::all());
        assert_eq!(slot.kind(), KeyKind::Standard);
        assert_eq!(slot.expires_at_ms(), None);
        let unknown = KeyId::parse("0000000000000000").unwrap();
        let (found, slot) = keyring
            .index
            .lookup(DigestIndex::key(&unknown), &keyring.decoy);
        assert_eq!(found, 0);
        assert_eq!(DigestIndex::digest(&slot.digest), keyring.decoy);
        assert_eq!(slot.grant, 0);
    }

    #[test]
    fn slots_carry_the_grant() {
        let (keyring, token) = setup(Some("objects:read,agents:write".parse().unwrap()), Some(77));
        let id = Token::parse(&token).unwrap().key_id();
        let (found, slot) = keyring.index.lookup(DigestIndex::key(&id), &keyring.decoy);
        assert_eq!(found, u64::MAX);
        assert_eq!(core::mem::size_of::<Slot>(), 64);
        assert_eq!(slot.kind(), KeyKind::Restricted);
        assert_eq!(slot.expires_at_ms(), Some(77));
        assert_eq!(slot.scopes(), keyring.get(&id).unwrap().scopes());
        assert_eq!(
            keyring
                .authenticate(&token, UnixMillis::from_millis(1))
                .unwrap(),
            Principal::of_record(keyring.get(&id).unwrap())
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
            keyring.authenticate(&token, UnixMillis::from_millis(-6)),
            Ok(p) if p.scopes() == record.scopes()
        ));
        assert_eq!(
            keyring.authenticate(&token, UnixMillis::from_millis(-5)),
            Err(AuthError::Expired {
                id,
                expires_at_ms: -5
            })
        );
    }

    /// A record with `id` and a digest of its own.
    fn record_with_id(id: KeyId, n: u8) -> KeyRecord {
        KeyRecord::new(
            id,
            KeyKind::Standard,
            "crafted".into(),
            SecretHash::from_bytes([n; 32]),
            Scopes::all(),
            None,
            0,
            None,
        )
    }

    /// `count` random ids whose home, under `keyring`'s seeded hash, is the
    /// same in every table of up to 2^12 slots: found by brute force.
    fn colliding_ids(keyring: &Keyring, count: usize) -> alloc::vec::Vec<KeyId> {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(77);
        let [_, _, lo, hi] = keyring.pepper.index_seeds();
        let big = DigestIndex::with_capacity(1 << 11, IdHasher::with_seeds([lo, hi]));
        assert_eq!(big.size(), 1 << 12);
        let target = big.home(DigestIndex::key(&KeyId::generate(&mut rng)));
        let mut ids = alloc::vec::Vec::new();
        while ids.len() < count {
            let id = KeyId::generate(&mut rng);
            if big.home(DigestIndex::key(&id)) == target {
                ids.push(id);
            }
        }
        ids
    }

    #[test]
    fn crafted_colliding_ids_are_refused_and_no_key_is_lost() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(13);
        let mut keyring = Keyring::new(Pepper::generate(&mut rng));
        let ids = colliding_ids(&keyring, 9);
        // Eight share one window; the index grows for load only.
        for (n, id) in ids.iter().take(8).enumerate() {
            assert!(keyring
                .insert(record_with_id(*id, n as u8))
                .unwrap()
                .is_none());
        }
        assert_eq!(keyring.index.size(), 16);
        // The ninth lands in a full window at every size the index may take
        // for nine keys (at most 8 slots per key, rounded up: 128): refused.
        let ninth = ids[8];
        assert_eq!(
            keyring.insert(record_with_id(ninth, 8)),
            Err(KeyringError::Crowded { id: ninth })
        );
        assert_eq!(
            alloc::string::ToString::to_string(&KeyringError::Crowded { id: ninth }),
            alloc::format!("key id `{ninth}` lands in a full slot window; the keyring refuses it rather than drop a key or exceed its memory bound")
        );
        // Nothing changed: the table, the map and every stored digest.
        assert_eq!(keyring.index.size(), 16);
        assert_eq!(keyring.index.len, 8);
        assert_eq!(keyring.len(), 8);
        assert!(keyring.get(&ninth).is_none());
        for (n, id) in ids.iter().take(8).enumerate() {
            let (found, slot) = keyring.index.lookup(DigestIndex::key(id), &keyring.decoy);
            assert_eq!(found, u64::MAX, "key {n} lost");
            assert_eq!(
                DigestIndex::digest(&slot.digest),
                SecretHash::from_bytes([n as u8; 32])
            );
        }
        // A replacement of a crowded id still works: it reuses its slot.
        assert!(keyring
            .insert(record_with_id(ids[0], 100))
            .unwrap()
            .is_some());
        let (_, slot) = keyring
            .index
            .lookup(DigestIndex::key(&ids[0]), &keyring.decoy);
        assert_eq!(
            DigestIndex::digest(&slot.digest),
            SecretHash::from_bytes([100; 32])
        );
        // Random ids still go in. With enough of them, the index may grow
        // past 2^12 slots, where the crafted ids no longer share a home, and
        // takes the ninth too.
        let req = MintRequest::standard(None, None, UnixMillis::from_millis(0)).unwrap();
        let mut tokens = alloc::vec::Vec::new();
        for _ in 0..600 {
            let (record, token) =
                mint(keyring.pepper(), &req, &mut rng, UnixMillis::from_millis(0)).into_parts();
            keyring.insert(record).unwrap();
            tokens.push(token);
        }
        for t in &tokens {
            assert!(keyring
                .authenticate(t.expose_secret(), UnixMillis::from_millis(1))
                .is_ok());
        }
        assert_eq!(keyring.index.size(), 2048);
        assert_eq!(keyring.insert(record_with_id(ninth, 8)).unwrap(), None);
        assert_eq!(keyring.index.size(), 8192);
        assert_eq!(keyring.len(), 609);
        for id in &ids {
            assert_eq!(
                keyring.index.lookup(DigestIndex::key(id), &keyring.decoy).0,
                u64::MAX
            );
        }
    }

    #[test]
    fn a_full_window_is_freed_by_moving_a_key_within_its_own_window() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(16);
        let mut index = DigestIndex::with_capacity(0, IdHasher::default());
        assert_eq!(index.size(), 16);
        let mut with_home = |home: usize, count: usize| {
            let mut ids = alloc::vec::Vec::new();
            while ids.len() < count {
                let id = KeyId::generate(&mut rng);
                if index.home(DigestIndex::key(&id)) == home {
                    ids.push(id);
                }
            }
            ids
        };
        let at_0 = with_home(0, 6);
        let at_2 = with_home(2, 6);
        // Slots 0-3 hold four keys of home 0, slots 4-7 the keys of home 2.
        for (n, id) in at_0.iter().take(4).chain(&at_2[..4]).enumerate() {
            assert!(index.place(Slot::of(&record_with_id(*id, n as u8))));
        }
        let slot_of = |index: &DigestIndex, id: &KeyId| {
            index
                .slots
                .iter()
                .position(|s| s.id == DigestIndex::key(id))
        };
        assert_eq!(slot_of(&index, &at_2[0]), Some(4));
        // The fifth key of home 0 finds slots 0-7 full: the key in slot 4
        // (home 2, window 2-9) moves to slot 8, and the new key takes 4.
        assert!(index.place(Slot::of(&record_with_id(at_0[4], 99))));
        assert_eq!(slot_of(&index, &at_2[0]), Some(8));
        assert_eq!(slot_of(&index, &at_0[4]), Some(4));
        assert_eq!(index.len, 9);
        for id in at_0[..5].iter().chain(&at_2[..4]) {
            let (found, _) = index.lookup(DigestIndex::key(id), &SecretHash::from_bytes([0; 32]));
            assert_eq!(found, u64::MAX, "{id:?}");
        }
        // One more of home 2 takes slot 9. Then slots 0-9 are full and no
        // key in them may move past 9: a sixth key of home 0 or another of
        // home 2 has nowhere to go.
        assert!(index.place(Slot::of(&record_with_id(at_2[4], 5))));
        assert_eq!(slot_of(&index, &at_2[4]), Some(9));
        assert!(!index.place(Slot::of(&record_with_id(at_0[5], 1))));
        assert!(!index.place(Slot::of(&record_with_id(at_2[5], 1))));
        assert_eq!(index.len, 10);
    }

    #[test]
    fn the_index_stays_within_its_memory_bound_under_collisions() {
        // 64 ids with one home in every table up to 2^12 slots: at most 8
        // fit one window, and the index never exceeds 8 slots per key.
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(14);
        let mut keyring = Keyring::new(Pepper::generate(&mut rng));
        let mut accepted = 0;
        for (n, id) in colliding_ids(&keyring, 64).into_iter().enumerate() {
            match keyring.insert(record_with_id(id, n as u8)) {
                Ok(None) => accepted += 1,
                Err(KeyringError::Crowded { id: refused }) => assert_eq!(refused, id),
                other => panic!("{other:?}"),
            }
            let limit = (8 * keyring.len().max(2)).next_power_of_two().max(16);
            assert!(
                keyring.index.size() <= limit,
                "{} > {limit}",
                keyring.index.size()
            );
        }
        assert_eq!(accepted, 8);
        assert_eq!(keyring.len(), 8);
    }

    #[test]
    fn a_full_keyring_refuses_new_keys_and_keeps_replacing() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(15);
        let mut keyring = Keyring::new(Pepper::generate(&mut rng));
        assert_eq!(keyring.index.max_keys, Keyring::MAX_KEYS);
        keyring.index.max_keys = 50;
        let req = MintRequest::standard(None, None, UnixMillis::from_millis(0)).unwrap();
        let mut records = alloc::vec::Vec::new();
        for _ in 0..50 {
            let (record, _) =
                mint(keyring.pepper(), &req, &mut rng, UnixMillis::from_millis(0)).into_parts();
            records.push(record);
        }
        keyring.try_extend(records.iter().cloned()).unwrap();
        let (extra, token) =
            mint(keyring.pepper(), &req, &mut rng, UnixMillis::from_millis(0)).into_parts();
        let err = keyring.insert(extra.clone()).unwrap_err();
        assert_eq!(err, KeyringError::Full { max: 50 });
        assert_eq!(err.http_status(), 503);
        assert_eq!(
            alloc::string::ToString::to_string(&err),
            "the keyring is full: it holds at most 50 keys"
        );
        assert_eq!(keyring.len(), 50);
        assert_eq!(
            keyring.authenticate(token.expose_secret(), UnixMillis::from_millis(1)),
            Err(AuthError::InvalidCredentials)
        );
        assert_eq!(keyring.try_extend([extra.clone()]), Err(err));
        // Replacing a stored key needs no new slot.
        assert!(keyring.insert(records[7].clone()).unwrap().is_some());
        // After a revocation there is room again.
        keyring.revoke(&records[0].id());
        assert!(keyring.insert(extra).unwrap().is_none());
        assert!(keyring
            .authenticate(token.expose_secret(), UnixMillis::from_millis(1))
            .is_ok());
    }

    #[test]
    fn try_extend_stops_at_a_full_keyring_rather_than_drop_a_record() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(17);
        let mut keyring = Keyring::new(Pepper::generate(&mut rng));
        keyring.index.max_keys = 2;
        let req = MintRequest::standard(None, None, UnixMillis::from_millis(0)).unwrap();
        let records: alloc::vec::Vec<_> = (0..3)
            .map(|_| {
                mint(keyring.pepper(), &req, &mut rng, UnixMillis::from_millis(0))
                    .into_parts()
                    .0
            })
            .collect();
        assert_eq!(
            keyring.try_extend(records.clone()),
            Err(KeyringError::Full { max: 2 })
        );
        assert_eq!(keyring.len(), 2);
        assert!(keyring.get(&records[2].id()).is_none());
        // A failed insert through the feed changes nothing either.
        assert_eq!(
            keyring.apply(Change::upsert(9, records[2].clone())),
            Err(KeyringError::Full { max: 2 })
        );
        assert_eq!(keyring.last_seq(), 0);
        assert_eq!(keyring.len(), 2);
    }

    #[test]
    fn the_id_hash_is_seeded_by_the_pepper() {
        let a = Pepper::from_bytes(&[1; 32]).index_seeds();
        let b = Pepper::from_bytes(&[2; 32]).index_seeds();
        assert_ne!(a, b);
        assert_eq!(a, Pepper::from_bytes(&[1; 32]).index_seeds());
        let id = DigestIndex::key(&crate::testing::EXAMPLE_KEY_ID);
        let homes = |seeds: [u64; 4]| {
            let [_, _, lo, hi] = seeds;
            let index = DigestIndex::with_capacity(1 << 20, IdHasher::with_seeds([lo, hi]));
            index.home(id)
        };
        assert_ne!(homes(a), homes(b));
        // The map's hash is not the index's.
        use core::hash::BuildHasher;
        assert_ne!(
            IdHasher::with_seeds([a[0], a[1]]).hash_one(id),
            IdHasher::with_seeds([a[2], a[3]]).hash_one(id)
        );
        assert_eq!(
            alloc::format!("{:?}", IdHasher::with_seeds([a[0], a[1]])),
            "IdHasher(<seeded>)"
        );
    }

    #[cfg(feature = "testing")]
    #[test]
    fn twins_share_the_known_keys_window_and_are_unknown() {
        let (keyring, text) = setup(None, None);
        let known = Token::parse(&text).unwrap().key_id();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        let home = keyring.index.home(DigestIndex::key(&known));
        let mut twins = alloc::vec::Vec::new();
        for _ in 0..20 {
            let twin = crate::testing::unknown_id_sharing_window(&keyring, &known, &mut rng);
            assert_eq!(keyring.index.home(DigestIndex::key(&twin)), home);
            assert!(!keyring.contains(&twin));
            twins.push(twin);
        }
        // Drawn, not one fixed id.
        twins.sort();
        twins.dedup();
        assert_eq!(twins.len(), 20);
        // An id of another window does not share it.
        let other = (0u8..)
            .map(|n| KeyId::parse(&alloc::format!("{n:0>16}")).unwrap())
            .find(|id| keyring.index.home(DigestIndex::key(id)) != home)
            .unwrap();
        assert!(!keyring.shares_window(&other, &known));
        assert!(keyring.shares_window(&twins[0], &known));
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
