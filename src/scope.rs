//! Resources, access levels and scope sets.
//!
//! A [`Scopes`] value is an 18-bit set: two bits per [`Resource`], one for
//! READ and one for WRITE. The set keeps one invariant, *WRITE implies
//! READ*: every constructor sets the READ bit together with the WRITE bit,
//! and [`Scopes::from_bits`] rejects bit patterns that break it. Because of
//! the invariant, [`Scopes::can`] is a single mask test with no branches.

use core::fmt;
use core::str::FromStr;

use alloc::string::String;
use bitflags::bitflags;

use serde::{Deserialize, Serialize};

/// An invalid scope list in the text form (`devboxes:write,objects:read`).
///
/// ```
/// let err = "devboxes:root".parse::<keygate::Scopes>().unwrap_err();
/// assert_eq!(err.to_string(), "unknown access level `root` in scope list");
/// assert_eq!(err.http_status(), 400);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScopeParseError {
    /// A resource name that is not one of the nine; the message lists them.
    #[error("unknown resource `{0}` in scope list; the resources are {names}", names = ResourceNames)]
    UnknownResource(String),
    /// An access level other than `none`, `read` or `write`.
    #[error("unknown access level `{0}` in scope list")]
    UnknownAccess(String),
    /// An item without the `:` between resource and access level.
    #[error("scope `{0}` lacks `:access`; write it as `resource:access`")]
    MissingAccess(String),
    /// The same resource listed twice.
    #[error("resource `{0}` appears twice in scope list")]
    DuplicateResource(Resource),
}

/// The valid resource names, comma-separated, for an error message.
struct ResourceNames;

impl core::fmt::Display for ResourceNames {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (i, r) in Resource::ALL.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(r.as_str())?;
        }
        Ok(())
    }
}

impl ScopeParseError {
    /// Always 400: the input is invalid.
    ///
    /// ```
    /// # let err = "x:read".parse::<keygate::Scopes>().unwrap_err();
    /// assert_eq!(err.http_status(), 400);
    /// ```
    pub const fn http_status(&self) -> u16 {
        400
    }
}

/// A resource type that a restricted key can be scoped to.
///
/// The variants are those of the spec's `ApiResourceType`, in the spec's
/// order; serde uses the spec's names (`RESOURCE_TYPE_DEVBOXES`, ...).
///
/// ```
/// use keygate::Resource;
///
/// assert_eq!(Resource::ALL.len(), 9);
/// assert_eq!(Resource::RepoConnections.as_str(), "repo_connections");
/// assert_eq!(Resource::RepoConnections.api_name(), "RESOURCE_TYPE_REPO_CONNECTIONS");
/// assert_eq!("objects".parse::<Resource>(), Ok(Resource::Objects));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum Resource {
    /// `RESOURCE_TYPE_DEVBOXES`.
    #[serde(rename = "RESOURCE_TYPE_DEVBOXES")]
    Devboxes = 0,
    /// `RESOURCE_TYPE_BLUEPRINTS`.
    #[serde(rename = "RESOURCE_TYPE_BLUEPRINTS")]
    Blueprints = 1,
    /// `RESOURCE_TYPE_SNAPSHOTS`.
    #[serde(rename = "RESOURCE_TYPE_SNAPSHOTS")]
    Snapshots = 2,
    /// `RESOURCE_TYPE_BENCHMARKS`.
    #[serde(rename = "RESOURCE_TYPE_BENCHMARKS")]
    Benchmarks = 3,
    /// `RESOURCE_TYPE_SCENARIOS`.
    #[serde(rename = "RESOURCE_TYPE_SCENARIOS")]
    Scenarios = 4,
    /// `RESOURCE_TYPE_REPO_CONNECTIONS`.
    #[serde(rename = "RESOURCE_TYPE_REPO_CONNECTIONS")]
    RepoConnections = 5,
    /// `RESOURCE_TYPE_AGENTS`.
    #[serde(rename = "RESOURCE_TYPE_AGENTS")]
    Agents = 6,
    /// `RESOURCE_TYPE_OBJECTS`.
    #[serde(rename = "RESOURCE_TYPE_OBJECTS")]
    Objects = 7,
    /// `RESOURCE_TYPE_ACCOUNT`: managing the account, including minting keys.
    #[serde(rename = "RESOURCE_TYPE_ACCOUNT")]
    Account = 8,
}

impl Resource {
    /// Every resource, in the spec's order.
    pub const ALL: [Resource; 9] = [
        Resource::Devboxes,
        Resource::Blueprints,
        Resource::Snapshots,
        Resource::Benchmarks,
        Resource::Scenarios,
        Resource::RepoConnections,
        Resource::Agents,
        Resource::Objects,
        Resource::Account,
    ];

    /// The short lowercase name used by the text form of [`Scopes`].
    ///
    /// ```
    /// assert_eq!(keygate::Resource::Devboxes.as_str(), "devboxes");
    /// ```
    pub const fn as_str(self) -> &'static str {
        match self {
            Resource::Devboxes => "devboxes",
            Resource::Blueprints => "blueprints",
            Resource::Snapshots => "snapshots",
            Resource::Benchmarks => "benchmarks",
            Resource::Scenarios => "scenarios",
            Resource::RepoConnections => "repo_connections",
            Resource::Agents => "agents",
            Resource::Objects => "objects",
            Resource::Account => "account",
        }
    }

    /// The spec's `ApiResourceType` name.
    ///
    /// ```
    /// assert_eq!(keygate::Resource::Account.api_name(), "RESOURCE_TYPE_ACCOUNT");
    /// ```
    pub const fn api_name(self) -> &'static str {
        match self {
            Resource::Devboxes => "RESOURCE_TYPE_DEVBOXES",
            Resource::Blueprints => "RESOURCE_TYPE_BLUEPRINTS",
            Resource::Snapshots => "RESOURCE_TYPE_SNAPSHOTS",
            Resource::Benchmarks => "RESOURCE_TYPE_BENCHMARKS",
            Resource::Scenarios => "RESOURCE_TYPE_SCENARIOS",
            Resource::RepoConnections => "RESOURCE_TYPE_REPO_CONNECTIONS",
            Resource::Agents => "RESOURCE_TYPE_AGENTS",
            Resource::Objects => "RESOURCE_TYPE_OBJECTS",
            Resource::Account => "RESOURCE_TYPE_ACCOUNT",
        }
    }

    /// Looks a resource up by its spec name (`RESOURCE_TYPE_DEVBOXES`).
    ///
    /// ```
    /// use keygate::Resource;
    /// assert_eq!(Resource::from_api_name("RESOURCE_TYPE_AGENTS"), Some(Resource::Agents));
    /// assert_eq!(Resource::from_api_name("agents"), None);
    /// ```
    pub fn from_api_name(name: &str) -> Option<Resource> {
        Resource::ALL.into_iter().find(|r| r.api_name() == name)
    }

    /// Position of the resource's two bits in a [`Scopes`] set.
    #[inline(always)]
    const fn shift(self) -> u32 {
        2 * self as u32
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Resource {
    type Err = ScopeParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Resource::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| ScopeParseError::UnknownResource(crate::token::quote(s)))
    }
}

/// An access level: `None < Read < Write`.
///
/// serde uses the spec's `ApiAccessLevel` names (`ACCESS_LEVEL_READ`, ...).
///
/// ```
/// use keygate::Access;
/// assert!(Access::None < Access::Read && Access::Read < Access::Write);
/// assert_eq!("write".parse::<Access>(), Ok(Access::Write));
/// ```
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[repr(u8)]
pub enum Access {
    /// `ACCESS_LEVEL_NONE`: no access.
    #[default]
    #[serde(rename = "ACCESS_LEVEL_NONE")]
    None = 0,
    /// `ACCESS_LEVEL_READ`: read access.
    #[serde(rename = "ACCESS_LEVEL_READ")]
    Read = 1,
    /// `ACCESS_LEVEL_WRITE`: write access, which implies read access.
    #[serde(rename = "ACCESS_LEVEL_WRITE")]
    Write = 2,
}

impl Access {
    /// Every access level, lowest first.
    pub const ALL: [Access; 3] = [Access::None, Access::Read, Access::Write];

    /// The lowercase name used by the text form of [`Scopes`].
    ///
    /// ```
    /// assert_eq!(keygate::Access::Read.as_str(), "read");
    /// ```
    pub const fn as_str(self) -> &'static str {
        match self {
            Access::None => "none",
            Access::Read => "read",
            Access::Write => "write",
        }
    }

    /// The spec's `ApiAccessLevel` name.
    ///
    /// ```
    /// assert_eq!(keygate::Access::Write.api_name(), "ACCESS_LEVEL_WRITE");
    /// ```
    pub const fn api_name(self) -> &'static str {
        match self {
            Access::None => "ACCESS_LEVEL_NONE",
            Access::Read => "ACCESS_LEVEL_READ",
            Access::Write => "ACCESS_LEVEL_WRITE",
        }
    }

    /// Looks an access level up by its spec name (`ACCESS_LEVEL_READ`).
    ///
    /// ```
    /// use keygate::Access;
    /// assert_eq!(Access::from_api_name("ACCESS_LEVEL_READ"), Some(Access::Read));
    /// ```
    pub fn from_api_name(name: &str) -> Option<Access> {
        Access::ALL.into_iter().find(|a| a.api_name() == name)
    }

    /// The bits a grant of this level needs: none, READ, or READ and WRITE.
    /// `(1 << level) - 1` maps 0, 1, 2 to `0b00`, `0b01`, `0b11` without a branch.
    #[inline(always)]
    const fn mask(self) -> u32 {
        (1u32 << self as u32) - 1
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Access {
    type Err = ScopeParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Access::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| ScopeParseError::UnknownAccess(crate::token::quote(s)))
    }
}

bitflags! {
    /// The raw bits: READ of resource `i` is bit `2i`, WRITE is bit `2i + 1`.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
    struct Bits: u32 {
        const DEVBOXES_READ = 1 << 0;
        const DEVBOXES_WRITE = 1 << 1;
        const BLUEPRINTS_READ = 1 << 2;
        const BLUEPRINTS_WRITE = 1 << 3;
        const SNAPSHOTS_READ = 1 << 4;
        const SNAPSHOTS_WRITE = 1 << 5;
        const BENCHMARKS_READ = 1 << 6;
        const BENCHMARKS_WRITE = 1 << 7;
        const SCENARIOS_READ = 1 << 8;
        const SCENARIOS_WRITE = 1 << 9;
        const REPO_CONNECTIONS_READ = 1 << 10;
        const REPO_CONNECTIONS_WRITE = 1 << 11;
        const AGENTS_READ = 1 << 12;
        const AGENTS_WRITE = 1 << 13;
        const OBJECTS_READ = 1 << 14;
        const OBJECTS_WRITE = 1 << 15;
        const ACCOUNT_READ = 1 << 16;
        const ACCOUNT_WRITE = 1 << 17;
    }
}

/// `NEED[resource][access]`: the bits a grant of `access` on `resource` needs.
// Evaluated at compile time: an out-of-range index is a build error.
#[allow(clippy::indexing_slicing)]
const NEED: [[u32; 3]; 9] = {
    let mut table = [[0u32; 3]; 9];
    let mut r = 0;
    while r < 9 {
        let mut a = 0;
        while a < 3 {
            table[r][a] = ((1u32 << a) - 1) << (2 * r);
            a += 1;
        }
        r += 1;
    }
    table
};

/// Every READ bit.
const READ_BITS: u32 = 0x0001_5555;

/// A set of grants: for each [`Resource`], an [`Access`] level.
///
/// *WRITE implies READ*: a set that grants WRITE on a resource also grants
/// READ on it, so `can(r, Access::Read)` holds wherever `can(r, Access::Write)`
/// does. `can(_, Access::None)` is always true.
///
/// The text form lists the non-NONE grants in the spec's order, e.g.
/// `devboxes:write,objects:read`; it parses back to the same set.
///
/// ```
/// use keygate::{Access, Resource, Scopes};
///
/// let scopes: Scopes = "devboxes:write,objects:read".parse()?;
/// assert!(scopes.can(Resource::Devboxes, Access::Read)); // WRITE implies READ
/// assert!(!scopes.can(Resource::Objects, Access::Write));
/// assert!(scopes.can(Resource::Account, Access::None));
/// assert_eq!(scopes.to_string(), "devboxes:write,objects:read");
/// assert!(scopes.is_subset(&Scopes::all()));
/// # Ok::<(), keygate::ScopeParseError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Scopes(Bits);

impl Scopes {
    /// The empty set: grants nothing.
    ///
    /// ```
    /// assert!(keygate::Scopes::empty().is_empty());
    /// ```
    #[inline]
    pub const fn empty() -> Scopes {
        Scopes(Bits::empty())
    }

    /// WRITE on every resource, ACCOUNT included: what a standard key holds.
    ///
    /// ```
    /// use keygate::{Access, Resource, Scopes};
    /// assert!(Scopes::all().can(Resource::Account, Access::Write));
    /// ```
    #[inline]
    pub const fn all() -> Scopes {
        Scopes(Bits::all())
    }

    /// The set that grants exactly `access` on `resource`.
    ///
    /// ```
    /// use keygate::{Access, Resource, Scopes};
    /// let s = Scopes::grant(Resource::Agents, Access::Write);
    /// assert_eq!(s.access(Resource::Agents), Access::Write);
    /// assert_eq!(s.to_string(), "agents:write");
    /// ```
    #[inline]
    pub const fn grant(resource: Resource, access: Access) -> Scopes {
        Scopes(Bits::from_bits_retain(access.mask() << resource.shift()))
    }

    /// This set with `access` on `resource` added to it (a union: a grant never
    /// lowers an access level that the set already has).
    ///
    /// ```
    /// use keygate::{Access, Resource, Scopes};
    /// let s = Scopes::empty()
    ///     .with(Resource::Devboxes, Access::Write)
    ///     .with(Resource::Devboxes, Access::Read);
    /// assert_eq!(s.access(Resource::Devboxes), Access::Write);
    /// ```
    #[inline]
    #[must_use]
    pub const fn with(self, resource: Resource, access: Access) -> Scopes {
        self.union(Scopes::grant(resource, access))
    }

    /// Whether the set allows `access` on `resource`: one mask test, no branch.
    ///
    /// ```
    /// use keygate::{Access, Resource, Scopes};
    /// let s = Scopes::grant(Resource::Objects, Access::Read);
    /// assert!(s.can(Resource::Objects, Access::Read));
    /// assert!(!s.can(Resource::Objects, Access::Write));
    /// assert!(s.can(Resource::Devboxes, Access::None));
    /// ```
    #[inline(always)]
    pub fn can(self, resource: Resource, access: Access) -> bool {
        // The table has a row per resource and a column per level, so both
        // lookups are in bounds and compile to one load; a miss would deny.
        let need = NEED
            .get(resource as usize)
            .and_then(|row| row.get(access as usize))
            .copied()
            .unwrap_or(u32::MAX);
        self.0.bits() & need == need
    }

    /// The highest access level the set grants on `resource`.
    ///
    /// ```
    /// use keygate::{Access, Resource, Scopes};
    /// assert_eq!(Scopes::empty().access(Resource::Account), Access::None);
    /// ```
    #[inline]
    pub const fn access(self, resource: Resource) -> Access {
        match (self.0.bits() >> resource.shift()) & 0b11 {
            0b11 => Access::Write,
            0b01 => Access::Read,
            _ => Access::None,
        }
    }

    /// The grants of both sets.
    ///
    /// ```
    /// use keygate::{Access, Resource, Scopes};
    /// let a = Scopes::grant(Resource::Devboxes, Access::Read);
    /// let b = Scopes::grant(Resource::Objects, Access::Write);
    /// assert_eq!(a.union(b).to_string(), "devboxes:read,objects:write");
    /// assert_eq!(a | b, a.union(b));
    /// ```
    #[inline]
    #[must_use]
    pub const fn union(self, other: Scopes) -> Scopes {
        Scopes(self.0.union(other.0))
    }

    /// The grants common to both sets.
    ///
    /// ```
    /// use keygate::{Access, Resource, Scopes};
    /// let a = Scopes::grant(Resource::Devboxes, Access::Write);
    /// let b = Scopes::grant(Resource::Devboxes, Access::Read);
    /// assert_eq!(a.intersection(b), b);
    /// assert_eq!(a & b, b);
    /// ```
    #[inline]
    #[must_use]
    pub const fn intersection(self, other: Scopes) -> Scopes {
        // WRITE in both implies READ in both, so the invariant holds.
        Scopes(self.0.intersection(other.0))
    }

    /// Whether every grant of `self` is also a grant of `other`.
    ///
    /// ```
    /// use keygate::{Access, Resource, Scopes};
    /// let read = Scopes::grant(Resource::Devboxes, Access::Read);
    /// let write = Scopes::grant(Resource::Devboxes, Access::Write);
    /// assert!(read.is_subset(&write));
    /// assert!(!write.is_subset(&read));
    /// ```
    #[inline]
    pub const fn is_subset(&self, other: &Scopes) -> bool {
        other.0.contains(self.0)
    }

    /// Whether the set grants nothing.
    ///
    /// ```
    /// assert!(!keygate::Scopes::all().is_empty());
    /// ```
    #[inline]
    pub const fn is_empty(self) -> bool {
        self.0.is_empty()
    }

    /// The raw bits: READ of resource `i` is bit `2i`, WRITE is bit `2i + 1`.
    ///
    /// ```
    /// use keygate::{Access, Resource, Scopes};
    /// assert_eq!(Scopes::grant(Resource::Blueprints, Access::Write).bits(), 0b1100);
    /// ```
    #[inline]
    pub const fn bits(self) -> u32 {
        self.0.bits()
    }

    /// Rebuilds a set from [`Scopes::bits`]; `None` if a bit is unknown, or if a
    /// WRITE bit is set without its READ bit.
    ///
    /// ```
    /// use keygate::Scopes;
    /// assert_eq!(Scopes::from_bits(0b11).map(|s| s.to_string()).as_deref(), Some("devboxes:write"));
    /// assert_eq!(Scopes::from_bits(0b10), None); // WRITE without READ
    /// assert_eq!(Scopes::from_bits(1 << 18), None);
    /// ```
    pub const fn from_bits(bits: u32) -> Option<Scopes> {
        let write_as_read = (bits >> 1) & READ_BITS;
        match Bits::from_bits(bits) {
            Some(b) if write_as_read & !bits == 0 => Some(Scopes(b)),
            _ => None,
        }
    }

    /// The non-NONE grants, in the spec's order of resources.
    ///
    /// ```
    /// use keygate::{Access, Resource, Scopes};
    /// let s: Scopes = "objects:read,devboxes:write".parse()?;
    /// let grants: Vec<_> = s.iter().collect();
    /// assert_eq!(grants, [(Resource::Devboxes, Access::Write), (Resource::Objects, Access::Read)]);
    /// # Ok::<(), keygate::ScopeParseError>(())
    /// ```
    pub fn iter(self) -> ScopesIter {
        ScopesIter {
            scopes: self,
            next: 0,
        }
    }

    /// Parses the text form: comma-separated `resource:access` items, such as
    /// `devboxes:write,objects:read`. Items may be surrounded by ASCII spaces;
    /// the empty string is the empty set. A resource may appear once.
    ///
    /// ```
    /// use keygate::{Scopes, ScopeParseError};
    /// assert_eq!(Scopes::parse("account:write")?.to_string(), "account:write");
    /// let err = Scopes::parse("devbox:write").unwrap_err();
    /// assert!(matches!(err, ScopeParseError::UnknownResource(_)));
    /// assert!(err.to_string().starts_with("unknown resource `devbox` in scope list; the resources are devboxes, "));
    /// # Ok::<(), ScopeParseError>(())
    /// ```
    pub fn parse(text: &str) -> Result<Scopes, ScopeParseError> {
        let mut scopes = Scopes::empty();
        let mut seen = 0u16;
        if text.trim_matches(' ').is_empty() {
            return Ok(scopes);
        }
        for item in text.split(',') {
            let item = item.trim_matches(' ');
            let (resource, access) = item
                .split_once(':')
                .ok_or_else(|| ScopeParseError::MissingAccess(crate::token::quote(item)))?;
            let resource: Resource = resource.parse()?;
            let access: Access = access.parse()?;
            let bit = 1u16 << resource as u16;
            if seen & bit != 0 {
                return Err(ScopeParseError::DuplicateResource(resource));
            }
            seen |= bit;
            scopes = scopes.with(resource, access);
        }
        Ok(scopes)
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scopes({self})")
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (resource, access)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{resource}:{access}")?;
        }
        Ok(())
    }
}

impl FromStr for Scopes {
    type Err = ScopeParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scopes::parse(s)
    }
}

impl core::ops::BitOr for Scopes {
    type Output = Scopes;
    fn bitor(self, rhs: Scopes) -> Scopes {
        self.union(rhs)
    }
}

impl core::ops::BitOrAssign for Scopes {
    fn bitor_assign(&mut self, rhs: Scopes) {
        *self = self.union(rhs);
    }
}

impl core::ops::BitAnd for Scopes {
    type Output = Scopes;
    fn bitand(self, rhs: Scopes) -> Scopes {
        self.intersection(rhs)
    }
}

impl core::ops::BitAndAssign for Scopes {
    fn bitand_assign(&mut self, rhs: Scopes) {
        *self = self.intersection(rhs);
    }
}

impl FromIterator<(Resource, Access)> for Scopes {
    fn from_iter<I: IntoIterator<Item = (Resource, Access)>>(iter: I) -> Scopes {
        iter.into_iter()
            .fold(Scopes::empty(), |s, (r, a)| s.with(r, a))
    }
}

impl IntoIterator for Scopes {
    type Item = (Resource, Access);
    type IntoIter = ScopesIter;
    fn into_iter(self) -> ScopesIter {
        self.iter()
    }
}

/// Serializes as the text form, so stored records stay readable.
impl Serialize for Scopes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Scopes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Scopes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a scope list such as `devboxes:write,objects:read`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Scopes, E> {
                Scopes::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// Iterator over the non-NONE grants of a [`Scopes`], in the spec's order.
///
/// ```
/// let mut it = keygate::Scopes::all().iter();
/// assert_eq!(it.next(), Some((keygate::Resource::Devboxes, keygate::Access::Write)));
/// assert_eq!(it.count(), 8);
/// ```
#[derive(Clone, Debug)]
pub struct ScopesIter {
    scopes: Scopes,
    next: usize,
}

impl Iterator for ScopesIter {
    type Item = (Resource, Access);

    fn next(&mut self) -> Option<Self::Item> {
        while let Some(&resource) = Resource::ALL.get(self.next) {
            self.next += 1;
            let access = self.scopes.access(resource);
            if access != Access::None {
                return Some((resource, access));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn bits_layout_matches_flags() {
        assert_eq!(
            Scopes::grant(Resource::Account, Access::Write).0,
            Bits::ACCOUNT_READ | Bits::ACCOUNT_WRITE
        );
        assert_eq!(Bits::all().bits() & READ_BITS, READ_BITS);
        assert_eq!(Bits::all().bits(), (1 << 18) - 1);
    }

    #[test]
    fn none_grant_is_empty() {
        for r in Resource::ALL {
            assert!(Scopes::grant(r, Access::None).is_empty());
        }
    }

    #[test]
    fn all_is_write_everywhere() {
        for r in Resource::ALL {
            assert_eq!(Scopes::all().access(r), Access::Write);
        }
        assert_eq!(
            Scopes::all().to_string(),
            "devboxes:write,blueprints:write,snapshots:write,benchmarks:write,\
             scenarios:write,repo_connections:write,agents:write,objects:write,account:write"
        );
    }

    #[test]
    fn parse_errors_name_the_input() {
        let e = Scopes::parse("devboxes:write,gadgets:read").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown resource `gadgets` in scope list; the resources are devboxes, blueprints, \
             snapshots, benchmarks, scenarios, repo_connections, agents, objects, account"
        );
        let e = Scopes::parse("devboxes:admin").unwrap_err();
        assert_eq!(e.to_string(), "unknown access level `admin` in scope list");
        let e = Scopes::parse("devboxes").unwrap_err();
        assert!(e.to_string().contains("`devboxes`"), "{e}");
        let e = Scopes::parse("devboxes:read,devboxes:write").unwrap_err();
        assert_eq!(e, ScopeParseError::DuplicateResource(Resource::Devboxes));
        assert!(Scopes::parse("devboxes:read,").is_err());
        assert!(Scopes::parse("Devboxes:read").is_err());
    }

    #[test]
    fn parse_accepts_spaces_and_none() {
        let s = Scopes::parse(" devboxes:write , objects:none ").unwrap();
        assert_eq!(s, Scopes::grant(Resource::Devboxes, Access::Write));
        assert_eq!(Scopes::parse("").unwrap(), Scopes::empty());
    }

    #[test]
    fn from_bits_rejects_write_without_read() {
        for r in Resource::ALL {
            let write_only = 0b10 << r.shift();
            assert_eq!(Scopes::from_bits(write_only), None);
            assert!(Scopes::from_bits(0b11 << r.shift()).is_some());
        }
    }

    #[test]
    fn duplicate_is_caught_for_every_resource() {
        for r in Resource::ALL {
            let text = alloc::format!("{r}:read,{r}:write");
            assert_eq!(
                Scopes::parse(&text),
                Err(ScopeParseError::DuplicateResource(r)),
                "{text}"
            );
            // The same resource after a different one is still a duplicate.
            let other = if r == Resource::Devboxes {
                Resource::Account
            } else {
                Resource::Devboxes
            };
            let text = alloc::format!("{r}:read,{other}:read,{r}:none");
            assert_eq!(
                Scopes::parse(&text),
                Err(ScopeParseError::DuplicateResource(r)),
                "{text}"
            );
        }
        // Every resource once is not a duplicate.
        let text = Scopes::all().to_string();
        assert_eq!(Scopes::parse(&text), Ok(Scopes::all()));
    }

    #[test]
    fn api_names_round_trip() {
        for r in Resource::ALL {
            assert_eq!(Resource::from_api_name(r.api_name()), Some(r));
        }
        for a in Access::ALL {
            assert_eq!(Access::from_api_name(a.api_name()), Some(a));
        }
        assert_eq!(Resource::from_api_name("devboxes"), None);
        assert_eq!(Access::from_api_name("read"), None);
    }

    #[test]
    fn assign_operators_change_the_set() {
        let read = Scopes::grant(Resource::Devboxes, Access::Read);
        let write = Scopes::grant(Resource::Devboxes, Access::Write);
        let objects = Scopes::grant(Resource::Objects, Access::Read);

        let mut s = read;
        s |= objects;
        assert_eq!(s, read | objects);
        assert!(s.can(Resource::Objects, Access::Read));

        assert_eq!(write & read, read);
        assert_eq!((write | objects) & objects, objects);
        let collected: Scopes = [
            (Resource::Devboxes, Access::Write),
            (Resource::Objects, Access::Read),
        ]
        .into_iter()
        .collect();
        assert_eq!(collected, write | objects);

        let mut s = write | objects;
        s &= read;
        assert_eq!(s, read);
        assert!(!s.can(Resource::Objects, Access::Read));
        assert!(!s.can(Resource::Devboxes, Access::Write));
    }

    #[test]
    fn debug_shows_the_text_form() {
        let s = Scopes::grant(Resource::Agents, Access::Write);
        assert_eq!(alloc::format!("{s:?}"), "Scopes(agents:write)");
    }

    #[test]
    fn deserialize_error_says_what_was_expected() {
        let e = serde_json::from_str::<Scopes>("42").unwrap_err();
        assert!(e.to_string().contains("a scope list such as"), "{e}");
    }
}
