//! Who minted whom: the creator links of a set of records, and the rolls
//! between them, for the attenuating policy's rules that a restricted
//! caller acts only on the keys it minted (directly or transitively), and
//! that revoking a key revokes every key minted from it.
//!
//! **A roll's new key inherits the old key's children.** The *family* of a
//! key X is X and every key rolled into X, transitively (its predecessors).
//! The children of X are the keys whose creator is in X's family (the family
//! itself excluded); its descendants are its children, their children, and
//! so on. A key's predecessors are not its descendants, and a key that has
//! been rolled has none: its children belong to the key that replaced it.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use crate::key::KeyRecord;
use crate::token::KeyId;

/// The creator links and rolls of a set of keys.
///
/// Build it from every key a store holds, revoked ones included (a revoked
/// key still links its children to their grandparent), and every roll
/// ([`Lineage::with_rolls`]): a record names its creator but not the key it
/// was rolled from.
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
    /// Old key → the keys it was rolled into.
    rolled_into: BTreeMap<KeyId, Vec<KeyId>>,
    /// New key → the keys rolled into it.
    rolled_from: BTreeMap<KeyId, Vec<KeyId>>,
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

    /// The same lineage with the rolls `(old, new)` recorded: each `new`
    /// key inherits the children of `old` (and of everything rolled into
    /// `old`). A roll keeps the creator, so `new` is a child of whatever
    /// `old` was a child of.
    ///
    /// ```
    /// use keygate::lineage::Lineage;
    /// # let [p, c, p2, d] = keygate::testing::example_ids();
    /// // P minted C, then P was rolled to P2, which minted D.
    /// let lineage = Lineage::from_links([(c, Some(p)), (d, Some(p2))]).with_rolls([(p, p2)]);
    /// assert_eq!(lineage.descendants(p2), vec![d, c]);
    /// assert!(lineage.is_descendant(c, p2));
    /// assert!(!lineage.is_descendant(p, p2)); // a predecessor is no descendant
    /// assert_eq!(lineage.family(p2), vec![p2, p]);
    /// ```
    #[must_use]
    pub fn with_rolls<I: IntoIterator<Item = (KeyId, KeyId)>>(mut self, rolls: I) -> Lineage {
        for (old, new) in rolls {
            self.rolled(old, new);
        }
        self
    }

    /// Records that `old` was rolled into `new` (see [`Lineage::with_rolls`]).
    ///
    /// ```
    /// # let [p, c, p2, _] = keygate::testing::example_ids();
    /// let mut lineage = keygate::lineage::Lineage::from_links([(c, Some(p))]);
    /// lineage.rolled(p, p2);
    /// assert!(lineage.is_descendant(c, p2));
    /// ```
    pub fn rolled(&mut self, old: KeyId, new: KeyId) {
        let into = self.rolled_into.entry(old).or_default();
        if !into.contains(&new) {
            into.push(new);
            self.rolled_from.entry(new).or_default().push(old);
        }
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

    /// The family of `id`: `id` first, then every key rolled into it,
    /// transitively (nearest first); empty if `id` itself was rolled (its
    /// children are its successor's). Each id appears once, even with a
    /// cycle of rolls.
    ///
    /// ```
    /// # let [a, b, c, d] = keygate::testing::example_ids();
    /// let lineage = keygate::lineage::Lineage::default().with_rolls([(a, b), (b, c)]);
    /// assert_eq!(lineage.family(c), vec![c, b, a]);
    /// assert!(lineage.family(a).is_empty());
    /// assert_eq!(lineage.family(d), vec![d]);
    /// ```
    pub fn family(&self, id: KeyId) -> Vec<KeyId> {
        if self
            .rolled_into
            .get(&id)
            .is_some_and(|into| !into.is_empty())
        {
            return Vec::new();
        }
        closure(id, &self.rolled_from)
    }

    /// The keys rolled into `id`, transitively, nearest first: the same
    /// credential in its earlier secrets, still alive in their overlaps.
    /// Revoking a key should end them with it (the server does).
    ///
    /// ```
    /// # let [a, b, c, _] = keygate::testing::example_ids();
    /// let lineage = keygate::lineage::Lineage::default().with_rolls([(a, b), (b, c)]);
    /// assert_eq!(lineage.predecessors(c), vec![b, a]);
    /// assert!(lineage.predecessors(a).is_empty());
    /// ```
    pub fn predecessors(&self, id: KeyId) -> Vec<KeyId> {
        let mut all = closure(id, &self.rolled_from);
        all.retain(|other| *other != id);
        all
    }

    /// Every key that descends from `root`, breadth first: the keys minted
    /// by `root` or by a key rolled into it, and so on down (see the module
    /// docs). Neither `root` nor its predecessors are included. Each id
    /// appears once, even in a corrupt lineage with a cycle.
    ///
    /// ```
    /// # let [a, b, c, _] = keygate::testing::example_ids();
    /// let lineage = keygate::lineage::Lineage::from_links([(b, Some(a)), (c, Some(a))]);
    /// assert_eq!(lineage.descendants(a), vec![b, c]);
    /// assert!(lineage.descendants(b).is_empty());
    /// ```
    pub fn descendants(&self, root: KeyId) -> Vec<KeyId> {
        let mut seen: BTreeSet<KeyId> = self.family(root).into_iter().collect();
        let mut out = Vec::new();
        let mut next = 0;
        let mut current = Some(root);
        while let Some(id) = current {
            let family = self.family(id);
            for member in &family {
                for child in self.children.get(member).into_iter().flatten() {
                    // A key rolled into `id` that its own family minted is
                    // family, not a child.
                    if !family.contains(child) && seen.insert(*child) {
                        out.push(*child);
                    }
                }
            }
            current = out.get(next).copied();
            next += 1;
        }
        out
    }

    /// Whether `id` descends from `ancestor` (is in
    /// [`Lineage::descendants`]`(ancestor)`). A key is not its own
    /// descendant, nor its successor's.
    ///
    /// ```
    /// # let [a, b, ..] = keygate::testing::example_ids();
    /// let lineage = keygate::lineage::Lineage::from_links([(b, Some(a))]);
    /// assert!(lineage.is_descendant(b, a));
    /// assert!(!lineage.is_descendant(a, a));
    /// ```
    pub fn is_descendant(&self, id: KeyId, ancestor: KeyId) -> bool {
        self.descendants(ancestor).contains(&id)
    }
}

/// `start` and every id reachable from it through `links`, breadth first,
/// each once.
fn closure(start: KeyId, links: &BTreeMap<KeyId, Vec<KeyId>>) -> Vec<KeyId> {
    let mut out = Vec::new();
    out.push(start);
    let mut next = 0;
    while let Some(id) = out.get(next).copied() {
        for linked in links.get(&id).into_iter().flatten() {
            if !out.contains(linked) {
                out.push(*linked);
            }
        }
        next += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::example_ids;

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

    /// `n` distinct ids.
    fn ids(n: u32) -> Vec<KeyId> {
        (0..n)
            .map(|n| KeyId::parse(&alloc::format!("{n:0>16}")).unwrap())
            .collect()
    }

    fn set(ids: &[KeyId]) -> BTreeSet<KeyId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn a_roll_s_new_key_inherits_the_old_key_s_children() {
        let [q, p, p2, c, d, c2, c3, g, h] = ids(9).try_into().unwrap();
        // Q minted P; P minted C; P rolled to P2 (same creator Q); P2 minted
        // D; P, in its overlap after the roll, minted C2.
        let links = [
            (p, Some(q)),
            (c, Some(p)),
            (p2, Some(q)),
            (d, Some(p2)),
            (c2, Some(p)),
        ];
        let lineage = Lineage::from_links(links).with_rolls([(p, p2)]);
        assert_eq!(set(&lineage.descendants(p2)), set(&[c, d, c2]));
        assert!(!lineage.is_descendant(p, p2));
        assert!(!lineage.is_descendant(p2, p2));
        for x in [c, d, c2] {
            assert!(lineage.is_descendant(x, p2));
        }
        // P, rolled, has no family and no descendants: its children are
        // P2's now.
        assert!(lineage.family(p).is_empty());
        assert!(lineage.descendants(p).is_empty());
        assert!(!lineage.is_descendant(c, p));
        assert!(!lineage.is_descendant(d, p));
        assert!(!lineage.is_descendant(p2, p));
        // Q sees both P and P2, and everything under them.
        assert_eq!(set(&lineage.descendants(q)), set(&[p, p2, c, d, c2]));

        // C rolled to C3 (creator P, kept); C minted G, C3 minted H: all
        // are P2's descendants.
        let links = links
            .into_iter()
            .chain([(c3, Some(p)), (g, Some(c)), (h, Some(c3))]);
        let lineage = Lineage::from_links(links).with_rolls([(p, p2), (c, c3)]);
        assert_eq!(set(&lineage.descendants(p2)), set(&[c, d, c2, c3, g, h]));
        for x in [c, c3, g, h] {
            assert!(lineage.is_descendant(x, p2), "{x}");
        }
        // C3 inherits G; C, rolled, has none; C is no descendant of C3.
        assert_eq!(set(&lineage.descendants(c3)), set(&[g, h]));
        assert!(lineage.descendants(c).is_empty());
        assert!(!lineage.is_descendant(c, c3));
    }

    #[test]
    fn a_chain_of_rolls_inherits_all_the_way() {
        let [p, p2, p3, c, d] = ids(5).try_into().unwrap();
        let mut lineage = Lineage::from_links([(c, Some(p)), (d, Some(p2))]);
        lineage.rolled(p, p2);
        lineage.rolled(p2, p3);
        lineage.rolled(p2, p3); // a duplicate changes nothing
        assert_eq!(lineage.family(p3), alloc::vec![p3, p2, p]);
        assert_eq!(lineage.descendants(p3), alloc::vec![d, c]);
        assert!(lineage.is_descendant(c, p3));
        assert!(!lineage.is_descendant(p, p3));
    }

    #[test]
    fn cycles_of_rolls_and_links_terminate() {
        let [a, b, c, d] = ids(4).try_into().unwrap();
        let lineage = Lineage::from_links([(a, Some(c)), (b, Some(a)), (c, Some(b)), (d, Some(b))])
            .with_rolls([(a, b), (b, a), (c, c)]);
        // Every key here was rolled (c into itself): none has a family, so
        // none has descendants; and every walk ends.
        for x in [a, b, c] {
            assert!(lineage.family(x).is_empty());
            assert!(lineage.descendants(x).is_empty());
        }
        assert_eq!(lineage.family(d), alloc::vec![d]);
        assert!(!lineage.is_descendant(c, a));
        assert!(!lineage.is_descendant(a, a));
        // Without the self-roll, c's cycle of creators still terminates.
        let lineage = Lineage::from_links([(a, Some(c)), (b, Some(a)), (c, Some(b)), (d, Some(b))]);
        assert_eq!(set(&lineage.descendants(a)), set(&[b, c, d]));
        assert!(lineage.is_descendant(a, c));
    }

    #[test]
    fn records_link_to_their_creators() {
        use crate::key::{KeyRecord, KeyRecordParts};
        let [a, b, c, _] = example_ids();
        let record = |id: KeyId, creator: Option<KeyId>| {
            let r = crate::testing::example_record();
            KeyRecord::from_parts(KeyRecordParts {
                id,
                kind: r.kind(),
                name: r.name().into(),
                secret_hash: r.secret_hash(),
                scopes: r.scopes(),
                expires_at: None,
                created_at: crate::UnixMillis::EPOCH,
                creator_id: creator,
                limits: Default::default(),
                meter: None,
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
