//! Who minted whom: the creator links of a set of records, for the
//! attenuating policy's rules that a restricted caller acts only on the
//! keys it minted (directly or transitively), and that revoking a key
//! revokes every key minted from it.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use crate::key::KeyRecord;
use crate::token::KeyId;

/// The creator links of a set of keys: key id → the id of its creator.
///
/// Build it from every key a store holds, revoked ones included (a revoked
/// key still links its children to their grandparent).
///
/// ```
/// use keygate::lineage::Lineage;
/// # let [a, b, c, d] = keygate::testing::example_ids();
/// // a minted b, b minted c; d stands alone.
/// let lineage = Lineage::from_links([(a, None), (b, Some(a)), (c, Some(b)), (d, None)]);
/// assert_eq!(lineage.descendants(a), vec![b, c]);
/// assert!(lineage.is_descendant(c, a));
/// assert!(!lineage.is_descendant(a, c));
/// assert!(!lineage.is_descendant(d, a));
/// ```
#[derive(Clone, Debug, Default)]
pub struct Lineage {
    creator: BTreeMap<KeyId, KeyId>,
    children: BTreeMap<KeyId, Vec<KeyId>>,
}

impl Lineage {
    /// The lineage of `(id, creator)` links.
    ///
    /// ```
    /// # let [a, b, ..] = keygate::testing::example_ids();
    /// let lineage = keygate::lineage::Lineage::from_links([(b, Some(a))]);
    /// assert_eq!(lineage.creator_of(b), Some(a));
    /// ```
    pub fn from_links<I: IntoIterator<Item = (KeyId, Option<KeyId>)>>(links: I) -> Lineage {
        let mut lineage = Lineage::default();
        for (id, creator) in links {
            if let Some(creator) = creator {
                lineage.creator.insert(id, creator);
                lineage.children.entry(creator).or_default().push(id);
            }
        }
        lineage
    }

    /// The lineage of a set of records.
    ///
    /// ```
    /// let record = keygate::testing::example_record();
    /// let lineage = keygate::lineage::Lineage::from_records([&record]);
    /// assert_eq!(lineage.creator_of(record.id()), None);
    /// ```
    pub fn from_records<'a, I: IntoIterator<Item = &'a KeyRecord>>(records: I) -> Lineage {
        Lineage::from_links(records.into_iter().map(|r| (r.id(), r.creator_id())))
    }

    /// The key that minted `id`, if known.
    ///
    /// ```
    /// let lineage = keygate::lineage::Lineage::default();
    /// assert_eq!(lineage.creator_of(keygate::testing::example_record().id()), None);
    /// ```
    pub fn creator_of(&self, id: KeyId) -> Option<KeyId> {
        self.creator.get(&id).copied()
    }

    /// Every key minted from `root`, directly or transitively, breadth
    /// first; `root` itself is not included. Each id appears once, even in
    /// a corrupt lineage with a cycle.
    ///
    /// ```
    /// # let [a, b, c, _] = keygate::testing::example_ids();
    /// let lineage = keygate::lineage::Lineage::from_links([(b, Some(a)), (c, Some(a))]);
    /// assert_eq!(lineage.descendants(a), vec![b, c]);
    /// assert!(lineage.descendants(b).is_empty());
    /// ```
    pub fn descendants(&self, root: KeyId) -> Vec<KeyId> {
        let mut seen = BTreeSet::new();
        seen.insert(root);
        let mut out = Vec::new();
        let mut next = 0;
        let mut current = Some(root);
        while let Some(id) = current {
            for child in self.children.get(&id).into_iter().flatten() {
                if seen.insert(*child) {
                    out.push(*child);
                }
            }
            current = out.get(next).copied();
            next += 1;
        }
        out
    }

    /// Whether `id` was minted from `ancestor`, directly or transitively. A
    /// key is not its own descendant.
    ///
    /// ```
    /// # let [a, b, ..] = keygate::testing::example_ids();
    /// let lineage = keygate::lineage::Lineage::from_links([(b, Some(a))]);
    /// assert!(lineage.is_descendant(b, a));
    /// assert!(!lineage.is_descendant(a, a));
    /// ```
    pub fn is_descendant(&self, id: KeyId, ancestor: KeyId) -> bool {
        let mut current = id;
        // A chain longer than the number of links has a cycle.
        for _ in 0..=self.creator.len() {
            match self.creator_of(current) {
                Some(creator) if creator == ancestor => return true,
                Some(creator) => current = creator,
                None => return false,
            }
        }
        false
    }
}

/// Four fixed ids, for documentation examples.
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub fn example_ids() -> [KeyId; 4] {
    [
        "aaaaaaaaaaaaaaaa",
        "bbbbbbbbbbbbbbbb",
        "cccccccccccccccc",
        "dddddddddddddddd",
    ]
    .map(|text| KeyId::parse(text).unwrap_or(crate::token::EXAMPLE_KEY_ID))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_terminate() {
        let [a, b, c, _] = example_ids();
        let lineage = Lineage::from_links([(a, Some(c)), (b, Some(a)), (c, Some(b))]);
        assert_eq!(lineage.descendants(a), alloc::vec![b, c]);
        assert!(lineage.is_descendant(c, a));
        assert!(lineage.is_descendant(a, b));
        let [_, _, _, d] = example_ids();
        assert!(!lineage.is_descendant(a, d));
    }

    #[test]
    fn deep_chains() {
        let ids: Vec<KeyId> = (0..500u32)
            .map(|n| KeyId::parse(&alloc::format!("{n:0>16}")).unwrap())
            .collect();
        let links = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (*id, i.checked_sub(1).map(|p| ids[p])));
        let lineage = Lineage::from_links(links);
        assert_eq!(lineage.descendants(ids[0]), ids[1..].to_vec());
        assert!(lineage.is_descendant(ids[499], ids[0]));
        assert!(!lineage.is_descendant(ids[0], ids[499]));
    }

    #[test]
    fn records_link_to_their_creators() {
        use crate::key::{KeyRecord, KeyRecordParts};
        let [a, b, c, _] = example_ids();
        let record = |id: KeyId, creator: Option<KeyId>| {
            let r = crate::key::example_record();
            KeyRecord::from_parts(KeyRecordParts {
                id,
                kind: r.kind(),
                name: r.name().into(),
                secret_hash: r.secret_hash(),
                scopes: r.scopes(),
                expires_at_ms: None,
                created_at_ms: 0,
                creator_id: creator,
            })
            .unwrap()
        };
        let records = [record(a, None), record(b, Some(a)), record(c, Some(b))];
        let lineage = Lineage::from_records(&records);
        assert_eq!(lineage.creator_of(a), None);
        assert_eq!(lineage.creator_of(b), Some(a));
        assert_eq!(lineage.creator_of(c), Some(b));
        assert_eq!(lineage.descendants(a), alloc::vec![b, c]);
        assert!(lineage.is_descendant(c, a));
        assert!(!lineage.is_descendant(a, c));
    }
}
