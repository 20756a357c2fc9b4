//! The in-memory keyring: key id → what a request's check needs, and the
//! request hot path.

mod entry;
mod hash;
mod index;
mod slot;

use hashbrown::HashMap;

use crate::feed::{Applied, Change, ChangeOp};
use crate::key::KeyRecord;
use crate::scope::{Access, Resource, Scopes};
use crate::secret::{Message, Pepper, SecretHash};
use crate::time::UnixMillis;
use crate::token::{self, KeyId, KeyKind, Token, TokenError, DECOY_KEY_ID, SECRET_LEN, TOKEN_LEN};

pub use entry::KeyringEntry;
pub(crate) use hash::IdHasher;
use index::{DigestIndex, MAX_KEYS, MAX_PREALLOCATED_KEYS};
use slot::{Digest96, Slot};

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
    expires_at: Option<UnixMillis>,
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
            record.expires_at(),
        )
    }

    #[inline]
    pub(crate) fn new(
        id: KeyId,
        kind: KeyKind,
        scopes: Scopes,
        expires_at: Option<UnixMillis>,
    ) -> Principal {
        Principal {
            id,
            kind,
            scopes,
            expires_at,
        }
    }

    /// The key id.
    #[inline]
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// Standard or restricted.
    #[inline]
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// What the key may do; [`Scopes::all`] for a standard key.
    #[inline]
    pub fn scopes(&self) -> Scopes {
        self.scopes
    }

    /// The key's expiry; `None` never expires. The attenuating
    /// [`MintPolicy`](crate::MintPolicy) caps a child's expiry at it.
    ///
    /// ```
    /// # let principal = keygate::testing::principal_of(&keygate::testing::example_record());
    /// assert_eq!(principal.expires_at(), Some(keygate::UnixMillis::from_millis(2_000)));
    /// ```
    #[inline]
    pub fn expires_at(&self) -> Option<UnixMillis> {
        self.expires_at
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
    #[error("key `{id}` expired at {expires_at} ms")]
    Expired {
        /// The key's id.
        id: KeyId,
        /// When it expired.
        expires_at: UnixMillis,
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
/// returned, the keyring still holds every key it held, and not this one.
///
/// ```
/// # let record = keygate::testing::example_record();
/// let mut keyring = keygate::Keyring::new(keygate::Pepper::from_bytes(&[0u8; 32]));
/// keyring.insert(record.clone())?;
/// keyring.revoke(&record.id());
/// let err = keyring.insert(record).unwrap_err();
/// assert_eq!(err.http_status(), 409);
/// let err = keygate::KeyringError::Full { max: keygate::Keyring::MAX_KEYS };
/// assert_eq!(err.to_string(), "the keyring is full: it holds at most 134217728 keys");
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
    /// The keyring holds as many keys as it may: [`Keyring::MAX_KEYS`](crate::Keyring::MAX_KEYS),
    /// or the bound given to [`Keyring::set_max_keys`](crate::Keyring::set_max_keys).
    #[error("the keyring is full: it holds at most {max} keys")]
    Full {
        /// The bound.
        max: usize,
    },
    /// Both of the id's buckets are full, no key can move to free one,
    /// and the digest index may not grow further for the keys it holds
    /// (see [`Keyring::MAX_KEYS`](crate::Keyring::MAX_KEYS)). With random
    /// ids this does not happen; it takes ids chosen with knowledge of the
    /// pepper.
    #[error("key id `{id}` lands in full buckets; the keyring refuses it rather than drop a key or exceed its memory bound")]
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
    /// A slot of no key holding the decoy digest, which an unknown id is
    /// compared against.
    decoy: Slot,
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
    /// The keys: id, digest and grant, and the sequence number of the
    /// change that wrote each.
    index: DigestIndex,
    /// The highest sequence number [`Keyring::apply`] has seen.
    last_seq: u64,
}

impl Keyring {
    /// The most keys a keyring holds: 134 217 728 (2^27). Past it (or past
    /// a lower bound given to [`Keyring::set_max_keys`]),
    /// [`Keyring::insert`] fails with [`KeyringError::Full`].
    ///
    /// Memory stays bounded too. A key takes a 32-byte slot and an 8-byte
    /// sequence number in a table 40 % to 80 % full: 50 to 100 bytes a key
    /// (see `BENCHMARKS.md` for measured figures). The table grows on demand
    /// (doubling), to at most 4 slots a key; an id whose two buckets are
    /// full when no key can move and the table may not grow further is
    /// refused with [`KeyringError::Crowded`]. No key is ever dropped to
    /// make room.
    ///
    /// ```
    /// assert_eq!(keygate::Keyring::MAX_KEYS, 1 << 27);
    /// ```
    pub const MAX_KEYS: usize = MAX_KEYS;

    /// The bytes of the table a keyring sizes for `keys` keys (its slots
    /// and their sequence numbers), to set [`Keyring::set_max_keys`] from a
    /// memory budget.
    ///
    /// **Budget 1.5 times it**: a table grows by building the doubled table
    /// beside the old one (so that a failure loses nothing), and a keyring
    /// filling to `keys` holds both at its last doubling. Tombstones,
    /// eviction marks and expiries past 2248 take a little more; rarely, a
    /// table doubles early, when an insert finds no free slot near its
    /// buckets.
    ///
    /// ```
    /// let per_key = keygate::Keyring::table_bytes(1_000_000) / 1_000_000;
    /// assert!(per_key <= 128, "{per_key}");
    /// // The most keys whose table, growth included, fits 1 GiB:
    /// let budget = 1usize << 30;
    /// let keys = (1..=keygate::Keyring::MAX_KEYS).rev().step_by(100_000)
    ///     .find(|&n| keygate::Keyring::table_bytes(n) * 3 / 2 <= budget).unwrap();
    /// assert!(keys > 8_000_000, "{keys}");
    /// ```
    pub fn table_bytes(keys: usize) -> usize {
        index::table_bytes(keys)
    }

    /// Lowers the most keys this keyring holds to `max` (at most
    /// [`Keyring::MAX_KEYS`]); past it, [`Keyring::insert`] and
    /// [`Keyring::apply`] fail with [`KeyringError::Full`]. The keys it
    /// holds stay, even above `max`.
    ///
    /// ```
    /// let mut keyring = keygate::Keyring::new(keygate::Pepper::from_bytes(&[0u8; 32]));
    /// keyring.set_max_keys(0);
    /// let err = keyring.insert(keygate::testing::example_record()).unwrap_err();
    /// assert_eq!(err, keygate::KeyringError::Full { max: 0 });
    /// assert_eq!(keyring.max_keys(), 0);
    /// ```
    pub fn set_max_keys(&mut self, max: usize) {
        self.index.max_keys = max.min(MAX_KEYS);
    }

    /// The most keys this keyring holds: [`Keyring::MAX_KEYS`] unless
    /// lowered by [`Keyring::set_max_keys`].
    pub fn max_keys(&self) -> usize {
        self.index.max_keys
    }

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
    /// The id hash of the digest index and of the keyring's maps is seeded
    /// from the pepper, so ids chosen without the pepper cannot crowd one
    /// bucket.
    pub fn with_capacity(pepper: Pepper, capacity: usize) -> Keyring {
        let capacity = capacity.min(MAX_PREALLOCATED_KEYS);
        // Compared when the id is unknown, so both cases do the same work; never
        // accepted, as the lookup's `found` mask is then 0.
        let decoy = pepper.digest_parts(KeyKind::Standard, &DECOY_KEY_ID, &[0u8; SECRET_LEN]);
        let (decoy, _) = Slot::new(
            &DECOY_KEY_ID,
            KeyKind::Standard,
            Scopes::empty(),
            None,
            &decoy,
        );
        // The maps and the index hash ids with seeds of their own.
        let [map_lo, map_hi, index_lo, index_hi] = pepper.index_seeds();
        Keyring {
            pepper,
            decoy,
            revoked: HashMap::with_hasher(IdHasher::with_seeds([map_lo, map_hi])),
            evicted: HashMap::with_hasher(IdHasher::with_seeds([map_lo, map_hi])),
            horizon: 0,
            index: DigestIndex::with_capacity(capacity, IdHasher::with_seeds([index_lo, index_hi])),
            last_seq: 0,
        }
    }

    /// The pepper, to [`mint`](fn@crate::mint) keys this keyring accepts.
    pub fn pepper(&self) -> &Pepper {
        &self.pepper
    }

    /// Adds a record's key, replacing any key with the same id, and returns
    /// what the keyring held of the key it replaced.
    ///
    /// This is for a keyring that no change feed drives; with a feed, use
    /// [`Keyring::apply`]. A revoked id is refused: revocation is final.
    /// Fails, changing nothing, when the keyring is full
    /// ([`Keyring::MAX_KEYS`], or [`Keyring::set_max_keys`]'s bound) or
    /// the id's buckets are ([`KeyringError::Crowded`]). A replacement
    /// always succeeds.
    ///
    /// ```
    /// let mut keyring = keygate::Keyring::new(keygate::Pepper::from_bytes(&[0u8; 32]));
    /// assert!(keyring.insert(keygate::testing::example_record())?.is_none());
    /// assert_eq!(keyring.len(), 1);
    /// # Ok::<(), keygate::KeyringError>(())
    /// ```
    pub fn insert(&mut self, record: KeyRecord) -> Result<Option<KeyringEntry>, KeyringError> {
        let id = record.id();
        if self.revoked.contains_key(&id) {
            return Err(KeyringError::Revoked { id });
        }
        let seq = self.index.get(&id).map_or(0, |(_, seq)| seq);
        self.put(&record, seq)
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

    /// Stores `record`'s key, written by the change `seq`; returns the
    /// entry it replaced.
    fn put(&mut self, record: &KeyRecord, seq: u64) -> Result<Option<KeyringEntry>, KeyringError> {
        let id = record.id();
        let (slot, far) = Slot::new(
            &id,
            record.kind(),
            record.scopes(),
            record.expires_at(),
            &record.secret_hash(),
        );
        // The old slot's expiry is read before the insert replaces it.
        let old = self.get(&id);
        self.index.insert(slot, far, seq)?;
        Ok(old)
    }

    /// The entry of the key `id` in `slot`, written by the change `seq`.
    fn entry(&self, id: KeyId, slot: &Slot, seq: u64) -> KeyringEntry {
        KeyringEntry {
            id,
            kind: slot.kind(),
            scopes: slot.scopes(),
            expires_at: self.index.expires_at(&id, slot),
            seq,
        }
    }

    /// Removes a key; its tokens stop working at once, and the id can never
    /// be inserted again. Returns its entry.
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
    pub fn revoke(&mut self, id: &KeyId) -> Option<KeyringEntry> {
        self.tombstone(*id, self.last_seq);
        let old = self.get(id);
        self.index.remove(id);
        old
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
                    || matches!(self.index.get(&id), Some((_, at)) if at >= seq)
                {
                    Applied::Unchanged
                } else {
                    // On an error nothing changed, the sequence number included.
                    self.put(&record, seq)?;
                    // The entry's number now outranks the mark.
                    self.evicted.remove(&id);
                    Applied::Changed
                }
            }
            ChangeOp::Revoke(id) => {
                if self.tombstone(id, seq) {
                    self.index.remove(&id);
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
        let marks = &mut self.evicted;
        self.index.evict_expired(now, |id, seq| {
            if seq > 0 {
                let mark = marks.entry(id).or_insert(seq);
                *mark = (*mark).max(seq);
            }
        })
    }

    /// What the keyring holds of the key `id`, if it has it.
    ///
    /// ```
    /// let keyring = keygate::Keyring::new(keygate::Pepper::from_bytes(&[0u8; 32]));
    /// assert!(keyring.get(&keygate::KeyId::parse("0000000000000000")?).is_none());
    /// # Ok::<(), keygate::TokenError>(())
    /// ```
    pub fn get(&self, id: &KeyId) -> Option<KeyringEntry> {
        let (slot, seq) = self.index.get(id)?;
        Some(self.entry(*id, &slot, seq))
    }

    /// Whether the keyring has the key `id`.
    ///
    /// ```
    /// let keyring = keygate::Keyring::new(keygate::Pepper::from_bytes(&[0u8; 32]));
    /// assert!(!keyring.contains(&keygate::KeyId::parse("0000000000000000")?));
    /// # Ok::<(), keygate::TokenError>(())
    /// ```
    pub fn contains(&self, id: &KeyId) -> bool {
        self.index.contains(id)
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.index.len
    }

    /// Whether the keyring has no keys.
    pub fn is_empty(&self) -> bool {
        self.index.len == 0
    }

    /// Every key the keyring holds, in no particular order.
    ///
    /// ```
    /// let mut keyring = keygate::Keyring::new(keygate::Pepper::from_bytes(&[0u8; 32]));
    /// assert_eq!(keyring.entries().count(), 0);
    /// keyring.insert(keygate::testing::example_record())?;
    /// assert_eq!(keyring.entries().map(|e| e.id()).collect::<Vec<_>>(), [keygate::testing::example_record().id()]);
    /// # Ok::<(), keygate::KeyringError>(())
    /// ```
    pub fn entries(&self) -> impl Iterator<Item = KeyringEntry> + '_ {
        self.index.occupied().map(|(slot, seq)| {
            let id = slot.id().unpack();
            self.entry(id, &slot, seq)
        })
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
        // A matched digest proves tag, id and secret, so only the framing is
        // checked; any other text takes the full parse for its exact error
        // (order and why: BENCHMARKS.md, "Why the hot path looks as it does").
        // The index is read first: its two lines come from memory while
        // the digest is computed (the read does not depend on it).
        let id = token::key_id_of_text(text);
        let stored = self.index.lookup(&id, &self.decoy);
        let message = Message::of_text(text);
        let framed = token::framing_is_valid(text);
        let digest = self.pepper.digest_message(&message);
        drop(message);
        let kind = KeyKind::of_tag(text.first().copied().unwrap_or(0));
        match Keyring::matching_slot(stored, kind, &digest) {
            Some(slot) if framed => self.principal(&slot, id, now),
            _ => {
                Token::parse(text)?;
                Err(AuthError::InvalidCredentials)
            }
        }
    }

    /// Whether `a` and `b` have the same two buckets, in the same order (for
    /// [`crate::testing::unknown_id_sharing_window`]).
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn shares_window(&self, a: &KeyId, b: &KeyId) -> bool {
        self.index.buckets_of(a) == self.index.buckets_of(b)
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
        let stored = self.index.lookup(&id, &self.decoy);
        match Keyring::matching_slot(stored, token.kind(), digest) {
            Some(slot) => self.principal(&slot, id, now),
            None => Err(AuthError::InvalidCredentials),
        }
    }

    /// The slot a lookup found (`found` all ones) if its key is of `kind`
    /// and `digest` is its stored digest, else `None`.
    ///
    /// The lookup does the same work for a known and an unknown id (see
    /// `DigestIndex`); the slot also carries the grant, so no other memory
    /// is read.
    #[inline(always)]
    fn matching_slot(
        (found, slot): (u64, Slot),
        kind: KeyKind,
        digest: &SecretHash,
    ) -> Option<Slot> {
        // The constant-time comparison of the 96 bits the slot holds: the OR
        // of their XORs, with no early exit, behind a barrier, then a mask
        // (all ones iff equal) by arithmetic, as for the ids.
        let diff = core::hint::black_box(Digest96::of(digest).diff(slot.digest()));
        let equal = zero_mask(diff);
        // A stored key's grant is never 0 (a restricted key has its kind
        // bit, a standard key every scope): a text whose id packs like an
        // empty slot's is refused with the rest.
        let occupied = zero_mask(slot.grant) ^ u64::MAX;
        // One branch, on the combined mask only (see BENCHMARKS.md, "Why the hot path").
        let accepted = core::hint::black_box(found & equal & occupied);
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
    fn principal(&self, slot: &Slot, id: KeyId, now: UnixMillis) -> Result<Principal, AuthError> {
        match self.index.expires_at(&id, slot) {
            Some(expires_at) if now >= expires_at => Err(AuthError::Expired { id, expires_at }),
            expires_at => Ok(Principal::new(id, slot.kind(), slot.scopes(), expires_at)),
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
            .field("keys", &self.index.len)
            .finish()
    }
}

impl PartialEq for Keyring {
    /// Two keyrings are equal when they hold the same keys (id, digest,
    /// grant and sequence number), tombstones (with their sequence numbers),
    /// eviction marks and last sequence number, under the same pepper.
    fn eq(&self, other: &Keyring) -> bool {
        // The decoy digest is keyed by the pepper: equal decoys, equal
        // peppers.
        let same_keys = || {
            self.index.occupied().all(|(slot, seq)| {
                let id = slot.id().unpack();
                other.index.get(&id) == Some((slot, seq))
                    && other.index.expires_at(&id, &slot) == self.index.expires_at(&id, &slot)
            })
        };
        self.decoy == other.decoy
            && self.last_seq == other.last_seq
            && self.revoked == other.revoked
            && self.evicted == other.evicted
            && self.index.len == other.index.len
            && same_keys()
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
mod tests;
