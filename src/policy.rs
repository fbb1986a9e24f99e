//! Who may contact whom: the contact policy applied when someone starts a direct conversation
//! (REST, sockets, contacts, group creation) or a call with users they pick.
//!
//! Three policies, chosen by `CONTACT_POLICY`:
//! - `open`: anyone may contact anyone.
//! - `request` (seed 003): a stranger needs an accepted chat request first; contacts (either
//!   side has the other's number in a synced address book), users sharing a group or team
//!   conversation, and anyone talking to or as an admin are not strangers.
//! - `roles` (seed 002): the rules in `CONTACT_RULES` decide, in order. A rule
//!   `FROM>TO[:linked]` lets a holder of role `FROM` contact a holder of role `TO` (`*` is any
//!   user); `:linked` requires the two to share a direct or group conversation already
//!   (optionally one whose context is listed in `CONTACT_LINK_CONTEXTS`).
//!
//! Under every policy two users who already have a direct conversation may keep using it and
//! call each other. Messages sent into an existing conversation are governed by membership, not
//! by this policy. Chat requests are the recipient's consent: accepting one opens the direct
//! conversation whatever the policy.

use crate::config::Config;
use crate::db::contacts as facts;
use crate::db::models::User;
use crate::error::{AppError, AppResult};
use diesel::PgConnection;
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The configured contact policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ContactPolicy {
    /// Anyone may contact anyone.
    #[default]
    Open,
    /// Strangers need an accepted chat request.
    Request,
    /// Role rules decide.
    Roles,
}

impl FromStr for ContactPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "open" => Ok(Self::Open),
            "request" => Ok(Self::Request),
            "roles" => Ok(Self::Roles),
            other => Err(format!(
                "unknown contact policy `{other}` (expected `open`, `request` or `roles`)"
            )),
        }
    }
}

/// One side of a rule: any user, or holders of a role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RolePattern {
    /// `*`: every user.
    Any,
    /// Holders of this role (compared case-insensitively).
    Role(String),
}

impl RolePattern {
    fn matches(&self, roles: &[String]) -> bool {
        match self {
            Self::Any => true,
            Self::Role(r) => roles.iter().any(|x| x.eq_ignore_ascii_case(r)),
        }
    }
}

impl fmt::Display for RolePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Role(r) => f.write_str(r),
        }
    }
}

/// `FROM>TO[:linked]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContactRule {
    /// Who starts the contact.
    pub from: RolePattern,
    /// Whom they contact.
    pub to: RolePattern,
    /// Whether the two must already be linked by a conversation (or its context).
    pub linked: bool,
}

impl fmt::Display for ContactRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}>{}", self.from, self.to)?;
        if self.linked {
            f.write_str(":linked")?;
        }
        Ok(())
    }
}

fn pattern(raw: &str) -> Result<RolePattern, String> {
    let raw = raw.trim();
    if raw == "*" {
        return Ok(RolePattern::Any);
    }
    let valid = !raw.is_empty()
        && raw.len() <= 64
        && raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if valid {
        Ok(RolePattern::Role(raw.to_ascii_lowercase()))
    } else {
        Err(format!("`{raw}` is not a role name or `*`"))
    }
}

impl FromStr for ContactRule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (pair, linked) = match s.rsplit_once(':') {
            Some((pair, "linked")) => (pair, true),
            Some((_, other)) => {
                return Err(format!(
                    "rule `{s}`: unknown condition `{other}` (only `linked`)"
                ))
            }
            None => (s, false),
        };
        let (from, to) = pair
            .split_once('>')
            .ok_or_else(|| format!("rule `{s}` must look like FROM>TO or FROM>TO:linked"))?;
        Ok(Self {
            from: pattern(from).map_err(|e| format!("rule `{s}`: {e}"))?,
            to: pattern(to).map_err(|e| format!("rule `{s}`: {e}"))?,
            linked,
        })
    }
}

/// The ordered rules of the `roles` policy (`CONTACT_RULES`, comma-separated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContactRules(pub Vec<ContactRule>);

impl Default for ContactRules {
    /// Seed 002: admins ↔ anyone; astrologers reach the users they are linked with; users
    /// reach the astrologers they consulted.
    fn default() -> Self {
        Self(
            [
                "admin>*",
                "*>admin",
                "astrologer>*:linked",
                "*>astrologer:linked",
            ]
            .iter()
            .filter_map(|r| r.parse().ok())
            .collect(),
        )
    }
}

impl FromStr for ContactRules {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(str::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }
}

impl fmt::Display for ContactRules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// What the `roles` rules say about a pair. `linked` is asked at most once, and only when a
/// matching rule needs it.
pub(crate) fn rules_allow(
    rules: &ContactRules,
    from_roles: &[String],
    to_roles: &[String],
    mut linked: impl FnMut() -> AppResult<bool>,
) -> AppResult<bool> {
    let mut known: Option<bool> = None;
    for rule in &rules.0 {
        if !(rule.from.matches(from_roles) && rule.to.matches(to_roles)) {
            continue;
        }
        if !rule.linked {
            return Ok(true);
        }
        let is_linked = match known {
            Some(v) => v,
            None => {
                let v = linked()?;
                known = Some(v);
                v
            }
        };
        if is_linked {
            return Ok(true);
        }
    }
    Ok(false)
}

fn refuse(policy: ContactPolicy) -> AppError {
    AppError::NotAllowed(
        match policy {
            ContactPolicy::Request => {
                "this user is not one of your contacts: send a chat request first"
            }
            _ => "you may not contact this user",
        }
        .into(),
    )
}

/// Checks that `actor` may start contact with every user in `targets` (a direct conversation,
/// a call, a group membership). Unknown or banned targets are `not_found`; a refusal is
/// `not_allowed`. Runs on the blocking pool (through [`crate::db::Db::run`]).
pub(crate) fn check_contact(
    conn: &mut PgConnection,
    config: &Config,
    actor: i64,
    targets: &[i64],
) -> AppResult<()> {
    check_contact_noting(conn, config, actor, targets, None)
}

/// [`check_contact`] that also writes what it found into `cache` under `ticket` (taken before
/// the lookups began): each pair's verdict and the standing of the users it found.
pub(crate) fn check_contact_cached(
    conn: &mut PgConnection,
    config: &Config,
    actor: i64,
    targets: &[i64],
    cache: &ContactCache,
    ticket: Ticket,
) -> AppResult<()> {
    check_contact_noting(conn, config, actor, targets, Some((cache, ticket)))
}

fn check_contact_noting(
    conn: &mut PgConnection,
    config: &Config,
    actor: i64,
    targets: &[i64],
    cache: Option<(&ContactCache, Ticket)>,
) -> AppResult<()> {
    let policy = config.contact_policy;
    let wanted = distinct_targets(actor, targets);
    if wanted.is_empty() {
        return Ok(());
    }
    let mut ids = wanted.clone();
    ids.push(actor);
    let users = facts::users_by_ids(conn, &ids)?;
    if let Some((cache, ticket)) = cache {
        let standing: Vec<i64> = users
            .iter()
            .filter(|u| !u.is_banned())
            .map(|u| u.id)
            .collect();
        cache.note_users(ticket, &standing);
    }
    let find = |id: i64| users.iter().find(|u| u.id == id && !u.is_banned());
    let me = find(actor).ok_or_else(|| AppError::NotFound("user not found".into()))?;
    for target in wanted {
        let other = find(target).ok_or_else(|| AppError::NotFound("user not found".into()))?;
        let allowed = policy == ContactPolicy::Open || pair_allowed(conn, config, me, other)?;
        if let Some((cache, ticket)) = cache {
            cache.note_pair(ticket, actor, target, allowed);
        }
        if !allowed {
            return Err(refuse(policy));
        }
    }
    Ok(())
}

/// The targets other than `actor`, sorted and without repeats (the order of the checks, so
/// that the first failing target decides the error).
fn distinct_targets(actor: i64, targets: &[i64]) -> Vec<i64> {
    let mut wanted: Vec<i64> = targets.iter().copied().filter(|t| *t != actor).collect();
    wanted.sort_unstable();
    wanted.dedup();
    wanted
}

/// What [`check_contact`] would answer, from `cache` alone: `None` when a pair it would have
/// to look at first is not cached (the caller then asks the database). The answer is the same
/// as the database's: pairs are visited in the same order and only known verdicts are used.
pub(crate) fn check_contact_from_cache(
    cache: &ContactCache,
    config: &Config,
    actor: i64,
    targets: &[i64],
) -> Option<AppResult<()>> {
    let wanted = distinct_targets(actor, targets);
    if config.contact_policy == ContactPolicy::Open {
        // Every pair of users in good standing may talk: the standing is all there is to know.
        let mut everyone = wanted;
        everyone.push(actor);
        return cache.all_in_good_standing(&everyone).then_some(Ok(()));
    }
    for target in wanted {
        match cache.pair(actor, target)? {
            true => continue,
            false => return Some(Err(refuse(config.contact_policy))),
        }
    }
    Some(Ok(()))
}

fn pair_allowed(
    conn: &mut PgConnection,
    config: &Config,
    me: &User,
    other: &User,
) -> AppResult<bool> {
    if facts::direct_between(conn, me.id, other.id)?.is_some() {
        return Ok(true);
    }
    match config.contact_policy {
        ContactPolicy::Open => Ok(true),
        ContactPolicy::Request => Ok(me.has_role("admin")
            || other.has_role("admin")
            || facts::are_contacts(conn, me.id, other.id)?
            || facts::share_conversation(conn, me.id, other.id, &["group", "team"], &[])?),
        ContactPolicy::Roles => {
            let contexts = &config.contact_link_contexts.0;
            rules_allow(
                &config.contact_rules,
                &me.role_list(),
                &other.role_list(),
                || facts::share_conversation(conn, me.id, other.id, &["direct", "group"], contexts),
            )
        }
    }
}

/// A ticket taken before database lookups whose results go into a [`ContactCache`]: results
/// are kept only when nothing they depend on was invalidated after the ticket was taken, so a
/// lookup that raced with a change (a ban, a new membership) never caches the old answer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticket {
    stamp: u64,
    at: Instant,
}

#[derive(Clone, Copy, Debug)]
struct Mark {
    stamp: u64,
    at: Instant,
}

#[derive(Clone, Debug)]
struct Cached<T> {
    value: T,
    stamp: u64,
    at: Instant,
}

#[derive(Debug, Default)]
struct CacheState {
    /// Source of stamps: every ticket and every invalidation takes the next one.
    clock: u64,
    /// Stamp of the last full invalidation.
    cleared: u64,
    /// Last invalidation of each user (pruned once older than the TTL).
    user_marks: HashMap<i64, Mark>,
    /// Last membership change of each conversation (pruned likewise).
    conversation_marks: HashMap<i64, Mark>,
    /// Last change of what links two users, by (smaller id, larger id) (pruned likewise).
    pair_marks: HashMap<(i64, i64), Mark>,
    /// Contact-policy verdicts by (actor, target).
    pairs: HashMap<(i64, i64), Cached<bool>>,
    /// Users known to exist and not to be banned.
    standing: HashMap<i64, Cached<()>>,
    /// Conversation members.
    members: HashMap<i64, Cached<Arc<[i64]>>>,
    /// Kinds of user (seed 002's `user|astrologer|admin`, from their roles).
    kinds: HashMap<i64, Cached<&'static str>>,
    /// Direct conversations by (smaller id, larger id).
    directs: HashMap<(i64, i64), Cached<i64>>,
}

impl CacheState {
    fn next(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// A new invalidation mark: the next stamp, now.
    fn mark(&mut self) -> Mark {
        Mark {
            stamp: self.next(),
            at: Instant::now(),
        }
    }

    fn user_mark(&self, user: i64) -> u64 {
        self.user_marks.get(&user).map_or(0, |m| m.stamp)
    }

    fn pair_mark(&self, a: i64, b: i64) -> u64 {
        self.pair_marks
            .get(&(a.min(b), a.max(b)))
            .map_or(0, |m| m.stamp)
    }

    fn conversation_mark(&self, conversation: i64) -> u64 {
        self.conversation_marks
            .get(&conversation)
            .map_or(0, |m| m.stamp)
    }

    /// Whether what was found under `ticket` is older than a full invalidation or one of
    /// `marks` (the invalidations of what it depends on): then it is not remembered.
    fn outdated(&self, ticket: Ticket, marks: &[u64]) -> bool {
        ticket.stamp <= self.cleared || marks.iter().any(|m| ticket.stamp <= *m)
    }

    fn clear(&mut self) {
        self.cleared = self.next();
        self.user_marks.clear();
        self.conversation_marks.clear();
        self.pair_marks.clear();
        self.pairs.clear();
        self.standing.clear();
        self.members.clear();
        self.kinds.clear();
        self.directs.clear();
    }
}

/// Makes room in one map of the cache: drops expired entries and, when that is not enough,
/// the older half.
fn make_room<K: Copy + Eq + std::hash::Hash, T>(
    map: &mut HashMap<K, Cached<T>>,
    capacity: usize,
    ttl: Duration,
) {
    if map.len() < capacity {
        return;
    }
    map.retain(|_, e| e.at.elapsed() < ttl);
    if map.len() >= capacity {
        let mut ages: Vec<Instant> = map.values().map(|e| e.at).collect();
        let middle = ages.len() / 2;
        let (_, cut, _) = ages.select_nth_unstable(middle);
        let cut = *cut;
        map.retain(|_, e| e.at > cut);
    }
}

/// Contact-policy verdicts, user standing (exists and not banned), conversation members, kinds
/// of user and the direct conversations of pairs, remembered so that starting a call does not
/// wait for the database on the common path (nor does a call's log look up the pair's
/// conversation every time, nor a commit batch read every writer's roles).
///
/// Every change that can alter an answer invalidates it where the change is made (see the
/// callers of [`ContactCache::invalidate_users`], [`ContactCache::membership_changed`] and
/// [`ContactCache::clear`]); `CONTACT_CACHE_TTL_SECS` bounds the age of any entry (a safety
/// net for changes made outside this process, e.g. by hand in the database) and
/// `CONTACT_CACHE_SIZE` the entries of each kind. Refusals for unknown or banned users are
/// not cached. Shared by every clone of [`crate::db::Db`].
pub(crate) struct ContactCache {
    ttl: Duration,
    capacity: usize,
    state: Mutex<CacheState>,
    /// Cluster mode: passes every invalidation on to the other nodes' caches.
    relay: std::sync::OnceLock<Box<dyn Fn(Invalidation) + Send + Sync>>,
}

impl fmt::Debug for ContactCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContactCache")
            .field("ttl", &self.ttl)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// A change that makes cached verdicts stale (see [`ContactCache::apply`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum Invalidation {
    /// [`ContactCache::invalidate_users`].
    Users(Vec<i64>),
    /// [`ContactCache::membership_changed`].
    Membership(i64, Vec<i64>),
    /// [`ContactCache::direct_created`].
    Direct(i64, i64, i64),
    /// [`ContactCache::clear`].
    All,
}

impl ContactCache {
    /// A cache whose entries live at most `ttl` (zero turns caching off), with at most
    /// `capacity` entries of each kind.
    pub(crate) fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity: capacity.max(1),
            state: Mutex::new(CacheState::default()),
            relay: std::sync::OnceLock::new(),
        }
    }

    /// Cluster mode: `relay` receives every invalidation made here (the other nodes apply it
    /// with [`ContactCache::apply`]). Set once.
    pub(crate) fn relay_to(&self, relay: Box<dyn Fn(Invalidation) + Send + Sync>) {
        let _ = self.relay.set(relay);
    }

    fn relay(&self, change: Invalidation) {
        if let Some(relay) = self.relay.get() {
            relay(change);
        }
    }

    /// Applies an invalidation another node made (not relayed again).
    pub(crate) fn apply(&self, change: Invalidation) {
        match change {
            Invalidation::Users(users) => self.invalidate_users_here(&users),
            Invalidation::Membership(conversation, users) => {
                self.membership_changed_here(conversation, &users);
            }
            Invalidation::Direct(conversation, a, b) => {
                self.direct_created_here(conversation, a, b)
            }
            Invalidation::All => self.lock().clear(),
        }
    }

    /// A cache that never remembers anything.
    pub(crate) fn disabled() -> Self {
        Self::new(Duration::ZERO, 1)
    }

    fn enabled(&self) -> bool {
        !self.ttl.is_zero()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn fresh<T>(&self, entry: &Cached<T>, state: &CacheState, marks: &[u64]) -> bool {
        entry.stamp > state.cleared
            && marks.iter().all(|m| entry.stamp > *m)
            && entry.at.elapsed() < self.ttl
    }

    /// Takes a ticket; take it before the lookups whose results will be noted with it.
    pub(crate) fn ticket(&self) -> Ticket {
        let mut state = self.lock();
        Ticket {
            stamp: state.next(),
            at: Instant::now(),
        }
    }

    /// Whether `actor` may contact `target`, when known.
    pub(crate) fn pair(&self, actor: i64, target: i64) -> Option<bool> {
        if !self.enabled() {
            return None;
        }
        let state = self.lock();
        let entry = state.pairs.get(&(actor, target))?;
        let marks = [
            state.user_mark(actor),
            state.user_mark(target),
            state.pair_mark(actor, target),
        ];
        self.fresh(entry, &state, &marks).then_some(entry.value)
    }

    /// Whether every user in `users` is known to exist and not to be banned.
    pub(crate) fn all_in_good_standing(&self, users: &[i64]) -> bool {
        if !self.enabled() {
            return false;
        }
        let state = self.lock();
        users.iter().all(|u| {
            state
                .standing
                .get(u)
                .is_some_and(|e| self.fresh(e, &state, &[state.user_mark(*u)]))
        })
    }

    /// The members of a conversation, when known.
    pub(crate) fn members(&self, conversation: i64) -> Option<Arc<[i64]>> {
        if !self.enabled() {
            return None;
        }
        let state = self.lock();
        let entry = state.members.get(&conversation)?;
        let marks = [state.conversation_mark(conversation)];
        self.fresh(entry, &state, &marks)
            .then(|| Arc::clone(&entry.value))
    }

    /// The direct conversation of `a` and `b`, when known (a change to either user, to what
    /// links them or to that conversation's membership forgets it).
    pub(crate) fn direct(&self, a: i64, b: i64) -> Option<i64> {
        if !self.enabled() {
            return None;
        }
        let state = self.lock();
        let entry = state.directs.get(&(a.min(b), a.max(b)))?;
        let marks = [
            state.user_mark(a),
            state.user_mark(b),
            state.pair_mark(a, b),
            state.conversation_mark(entry.value),
        ];
        self.fresh(entry, &state, &marks).then_some(entry.value)
    }

    /// Remembers the direct conversation of `a` and `b`, as found under `ticket`.
    pub(crate) fn note_direct(&self, ticket: Ticket, a: i64, b: i64, conversation: i64) {
        if !self.enabled() {
            return;
        }
        let mut state = self.lock();
        let marks = [
            state.user_mark(a),
            state.user_mark(b),
            state.pair_mark(a, b),
            state.conversation_mark(conversation),
        ];
        if state.outdated(ticket, &marks) {
            return;
        }
        make_room(&mut state.directs, self.capacity, self.ttl);
        state.directs.insert(
            (a.min(b), a.max(b)),
            Cached {
                value: conversation,
                stamp: ticket.stamp,
                at: ticket.at,
            },
        );
    }

    /// Remembers a verdict found under `ticket`.
    pub(crate) fn note_pair(&self, ticket: Ticket, actor: i64, target: i64, allowed: bool) {
        if !self.enabled() {
            return;
        }
        let mut state = self.lock();
        let marks = [
            state.user_mark(actor),
            state.user_mark(target),
            state.pair_mark(actor, target),
        ];
        if state.outdated(ticket, &marks) {
            return;
        }
        make_room(&mut state.pairs, self.capacity, self.ttl);
        state.pairs.insert(
            (actor, target),
            Cached {
                value: allowed,
                stamp: ticket.stamp,
                at: ticket.at,
            },
        );
    }

    /// Remembers that `users` exist and are not banned, as found under `ticket`.
    pub(crate) fn note_users(&self, ticket: Ticket, users: &[i64]) {
        if !self.enabled() {
            return;
        }
        let mut state = self.lock();
        for user in users {
            if state.outdated(ticket, &[state.user_mark(*user)]) {
                continue;
            }
            make_room(&mut state.standing, self.capacity, self.ttl);
            state.standing.insert(
                *user,
                Cached {
                    value: (),
                    stamp: ticket.stamp,
                    at: ticket.at,
                },
            );
        }
    }

    /// Remembers a conversation's members, as found under `ticket`. An empty list (no such
    /// conversation) is not remembered.
    pub(crate) fn note_members(&self, ticket: Ticket, conversation: i64, members: &[i64]) {
        if !self.enabled() || members.is_empty() {
            return;
        }
        let mut state = self.lock();
        if state.outdated(ticket, &[state.conversation_mark(conversation)]) {
            return;
        }
        make_room(&mut state.members, self.capacity, self.ttl);
        state.members.insert(
            conversation,
            Cached {
                value: Arc::from(members),
                stamp: ticket.stamp,
                at: ticket.at,
            },
        );
    }

    /// The kinds of user (`user|astrologer|admin`, see
    /// [`crate::db::messages::party_type`]) known for `users`; unknown ones are left out.
    pub(crate) fn party_types(&self, users: &[i64]) -> HashMap<i64, &'static str> {
        if !self.enabled() {
            return HashMap::new();
        }
        let state = self.lock();
        users
            .iter()
            .filter_map(|u| {
                let e = state.kinds.get(u)?;
                self.fresh(e, &state, &[state.user_mark(*u)])
                    .then_some((*u, e.value))
            })
            .collect()
    }

    /// Remembers kinds of users, as found under `ticket` (a role change invalidates them).
    pub(crate) fn note_party_types(&self, ticket: Ticket, found: &[(i64, &'static str)]) {
        if !self.enabled() {
            return;
        }
        let mut state = self.lock();
        for &(user, kind) in found {
            if state.outdated(ticket, &[state.user_mark(user)]) {
                continue;
            }
            make_room(&mut state.kinds, self.capacity, self.ttl);
            state.kinds.insert(
                user,
                Cached {
                    value: kind,
                    stamp: ticket.stamp,
                    at: ticket.at,
                },
            );
        }
    }

    /// Forgets everything known about `users`: their standing, kind and every verdict
    /// involving them (a ban, a role change, new contacts, a new or changed shared
    /// conversation).
    pub(crate) fn invalidate_users(&self, users: &[i64]) {
        self.invalidate_users_here(users);
        self.relay(Invalidation::Users(users.to_vec()));
    }

    fn invalidate_users_here(&self, users: &[i64]) {
        let mut state = self.lock();
        let mark = state.mark();
        for user in users {
            state.user_marks.insert(*user, mark);
        }
        self.prune_marks(&mut state);
    }

    /// A conversation's membership changed: forgets its members and everything known about
    /// `users` (its members after the change and anyone who left it).
    pub(crate) fn membership_changed(&self, conversation: i64, users: &[i64]) {
        self.membership_changed_here(conversation, users);
        self.relay(Invalidation::Membership(conversation, users.to_vec()));
    }

    fn membership_changed_here(&self, conversation: i64, users: &[i64]) {
        let mut state = self.lock();
        let mark = state.mark();
        state.conversation_marks.insert(conversation, mark);
        for user in users {
            state.user_marks.insert(*user, mark);
        }
        self.prune_marks(&mut state);
    }

    /// A direct conversation between `a` and `b` was created: only the verdicts between the
    /// two can change (a shared conversation may link them); their standing and their verdicts
    /// with anyone else stay known.
    pub(crate) fn direct_created(&self, conversation: i64, a: i64, b: i64) {
        self.direct_created_here(conversation, a, b);
        self.relay(Invalidation::Direct(conversation, a, b));
    }

    fn direct_created_here(&self, conversation: i64, a: i64, b: i64) {
        let mut state = self.lock();
        let mark = state.mark();
        state.conversation_marks.insert(conversation, mark);
        state.pair_marks.insert((a.min(b), a.max(b)), mark);
        self.prune_marks(&mut state);
    }

    /// Forgets everything.
    #[cfg(test)]
    pub(crate) fn clear(&self) {
        self.lock().clear();
        self.relay(Invalidation::All);
    }

    /// Marks older than the TTL can go: every entry they invalidate has expired anyway. If the
    /// marks alone still exceed the capacity, everything is forgotten.
    fn prune_marks(&self, state: &mut CacheState) {
        let limit = self.capacity;
        let marks =
            |s: &CacheState| s.user_marks.len() + s.conversation_marks.len() + s.pair_marks.len();
        if marks(state) < limit {
            return;
        }
        let ttl = self.ttl;
        state.user_marks.retain(|_, m| m.at.elapsed() < ttl);
        state.conversation_marks.retain(|_, m| m.at.elapsed() < ttl);
        state.pair_marks.retain(|_, m| m.at.elapsed() < ttl);
        if marks(state) >= limit {
            state.clear();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn roles(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn rules_parse_print_and_refuse_garbage() {
        let rules: ContactRules = "admin>*, *>admin ,astrologer>*:linked".parse().unwrap();
        assert_eq!(rules.0.len(), 3);
        assert_eq!(rules.to_string(), "admin>*,*>admin,astrologer>*:linked");
        assert!(rules.0[2].linked);
        assert!("admin".parse::<ContactRules>().is_err());
        assert!("admin>*:sometimes".parse::<ContactRules>().is_err());
        assert!("ad min>*".parse::<ContactRules>().is_err());
        assert_eq!(
            ContactRules::default().to_string(),
            "admin>*,*>admin,astrologer>*:linked,*>astrologer:linked"
        );
    }

    #[test]
    fn default_rules_follow_seed_002() {
        let rules = ContactRules::default();
        let admin = roles(&["admin"]);
        let staff = roles(&["astrologer"]);
        let user = roles(&[]);
        let yes = || Ok(true);
        let no = || Ok(false);
        // Admins ↔ anyone, linked or not.
        assert!(rules_allow(&rules, &admin, &user, no).unwrap());
        assert!(rules_allow(&rules, &user, &admin, no).unwrap());
        assert!(rules_allow(&rules, &staff, &admin, no).unwrap());
        // Staff ↔ users only when linked.
        assert!(!rules_allow(&rules, &staff, &user, no).unwrap());
        assert!(rules_allow(&rules, &staff, &user, yes).unwrap());
        assert!(!rules_allow(&rules, &user, &staff, no).unwrap());
        assert!(rules_allow(&rules, &user, &staff, yes).unwrap());
        // Users never reach users.
        assert!(!rules_allow(&rules, &user, &user, yes).unwrap());
    }

    #[test]
    fn the_link_is_looked_up_once_and_only_when_needed() {
        let rules: ContactRules = "a>*:linked,*>b:linked,c>*".parse().unwrap();
        let mut asked = 0;
        let allowed = rules_allow(&rules, &roles(&["a"]), &roles(&["b"]), || {
            asked += 1;
            Ok(false)
        })
        .unwrap();
        assert!(!allowed);
        assert_eq!(asked, 1);
        let mut asked = 0;
        assert!(rules_allow(&rules, &roles(&["C"]), &roles(&[]), || {
            asked += 1;
            Ok(false)
        })
        .unwrap());
        assert_eq!(asked, 0, "an unconditional rule needs no lookup");
    }

    #[test]
    fn kinds_of_user_are_remembered_until_the_user_changes() {
        let cache = ContactCache::new(Duration::from_secs(60), 100);
        assert!(cache.party_types(&[1, 2]).is_empty());
        let t = cache.ticket();
        cache.note_party_types(t, &[(1, "astrologer"), (2, "user")]);
        assert_eq!(cache.party_types(&[1, 2, 3]).len(), 2);
        assert_eq!(cache.party_types(&[1]).get(&1), Some(&"astrologer"));
        // A role change (the admin route invalidates the user) forgets the kind.
        cache.invalidate_users(&[1]);
        assert_eq!(cache.party_types(&[1, 2]).keys().collect::<Vec<_>>(), [&2]);
        // A lookup that raced the change is not remembered.
        let before = cache.ticket();
        cache.invalidate_users(&[2]);
        cache.note_party_types(before, &[(2, "admin")]);
        assert!(cache.party_types(&[2]).is_empty());
        // Off: nothing is remembered.
        let off = ContactCache::disabled();
        off.note_party_types(off.ticket(), &[(1, "user")]);
        assert!(off.party_types(&[1]).is_empty());
    }

    #[test]
    fn the_cache_answers_until_invalidated_and_drops_answers_that_raced_a_change() {
        let cache = ContactCache::new(Duration::from_secs(60), 100);
        assert_eq!(cache.pair(1, 2), None);
        let t = cache.ticket();
        cache.note_pair(t, 1, 2, false);
        cache.note_users(t, &[1, 2]);
        cache.note_members(t, 7, &[1, 2]);
        assert_eq!(cache.pair(1, 2), Some(false));
        assert_eq!(cache.pair(2, 1), None, "verdicts are directional");
        assert!(cache.all_in_good_standing(&[1, 2]));
        assert_eq!(cache.members(7).as_deref(), Some(&[1, 2][..]));

        // A change to either user forgets the pair and the user's standing.
        cache.invalidate_users(&[2]);
        assert_eq!(cache.pair(1, 2), None);
        assert!(cache.all_in_good_standing(&[1]));
        assert!(!cache.all_in_good_standing(&[1, 2]));
        assert!(cache.members(7).is_some(), "membership is tracked apart");
        cache.membership_changed(7, &[1]);
        assert!(cache.members(7).is_none());
        assert!(!cache.all_in_good_standing(&[1]));

        // A lookup that began before a change does not cache what it read.
        let before = cache.ticket();
        cache.invalidate_users(&[3]);
        cache.note_pair(before, 1, 3, true);
        cache.note_pair(before, 1, 4, true);
        assert_eq!(cache.pair(1, 3), None);
        assert_eq!(cache.pair(1, 4), Some(true));
        cache.clear();
        assert_eq!(cache.pair(1, 4), None);
        cache.note_pair(before, 1, 4, true);
        assert_eq!(cache.pair(1, 4), None, "older than the clear");
    }

    #[test]
    fn under_the_open_policy_standing_alone_decides_from_the_cache() {
        let cache = ContactCache::new(Duration::from_secs(60), 100);
        let config = Config {
            contact_policy: ContactPolicy::Open,
            ..Config::default()
        };
        assert!(check_contact_from_cache(&cache, &config, 1, &[2]).is_none());
        let t = cache.ticket();
        cache.note_users(t, &[1, 2]);
        assert!(matches!(
            check_contact_from_cache(&cache, &config, 1, &[2]),
            Some(Ok(()))
        ));
        assert!(check_contact_from_cache(&cache, &config, 1, &[2, 3]).is_none());
        cache.invalidate_users(&[2]);
        assert!(check_contact_from_cache(&cache, &config, 1, &[2]).is_none());
        let request = Config {
            contact_policy: ContactPolicy::Request,
            ..Config::default()
        };
        assert!(
            check_contact_from_cache(&cache, &request, 1, &[3]).is_none(),
            "other policies need the pair's verdict"
        );
    }

    #[test]
    fn a_new_direct_conversation_forgets_only_that_pair() {
        let cache = ContactCache::new(Duration::from_secs(60), 100);
        let t = cache.ticket();
        cache.note_pair(t, 1, 2, false);
        cache.note_pair(t, 2, 1, false);
        cache.note_pair(t, 1, 3, true);
        cache.note_users(t, &[1, 2, 3]);
        let racing = cache.ticket();
        cache.direct_created(9, 2, 1);
        assert_eq!(cache.pair(1, 2), None);
        assert_eq!(cache.pair(2, 1), None);
        assert_eq!(cache.pair(1, 3), Some(true), "other verdicts stay");
        assert!(cache.all_in_good_standing(&[1, 2, 3]), "standing stays");
        // A lookup that began before the conversation existed does not cache its verdict.
        cache.note_pair(racing, 1, 2, false);
        assert_eq!(cache.pair(1, 2), None);
        let after = cache.ticket();
        cache.note_pair(after, 1, 2, true);
        assert_eq!(cache.pair(1, 2), Some(true));
    }

    #[test]
    fn a_pairs_direct_conversation_is_remembered_until_either_user_or_it_changes() {
        let cache = ContactCache::new(Duration::from_secs(60), 100);
        let t = cache.ticket();
        cache.note_direct(t, 2, 1, 7);
        assert_eq!(cache.direct(1, 2), Some(7), "either order");
        assert_eq!(cache.direct(2, 1), Some(7));
        assert_eq!(cache.direct(1, 3), None);
        // A change to one of the users forgets it.
        cache.invalidate_users(&[2]);
        assert_eq!(cache.direct(1, 2), None);
        // A lookup that began before a change is not remembered.
        let racing = cache.ticket();
        cache.membership_changed(7, &[1, 2]);
        cache.note_direct(racing, 1, 2, 7);
        assert_eq!(cache.direct(1, 2), None);
        // A membership change of that conversation, or a new direct one for the pair, forgets it.
        cache.note_direct(cache.ticket(), 1, 2, 7);
        assert_eq!(cache.direct(1, 2), Some(7));
        cache.membership_changed(7, &[]);
        assert_eq!(cache.direct(1, 2), None);
        cache.note_direct(cache.ticket(), 1, 2, 7);
        cache.direct_created(8, 1, 2);
        assert_eq!(cache.direct(1, 2), None);
        // Off: nothing is remembered.
        let off = ContactCache::disabled();
        off.note_direct(off.ticket(), 1, 2, 7);
        assert_eq!(off.direct(1, 2), None);
    }

    #[test]
    fn the_cache_is_bounded_expires_and_can_be_off() {
        let cache = ContactCache::new(Duration::from_secs(60), 10);
        for target in 0..100 {
            let t = cache.ticket();
            cache.note_pair(t, 1, target, true);
        }
        assert!(cache.lock().pairs.len() <= 10);
        assert_eq!(cache.pair(1, 99), Some(true), "the newest stay");
        for user in 0..100 {
            cache.invalidate_users(&[user]);
        }
        assert!(cache.lock().user_marks.len() <= 10);
        assert_eq!(cache.pair(1, 99), None);

        let short = ContactCache::new(Duration::from_millis(20), 10);
        let t = short.ticket();
        short.note_pair(t, 1, 2, true);
        assert_eq!(short.pair(1, 2), Some(true));
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(short.pair(1, 2), None);

        let off = ContactCache::disabled();
        let t = off.ticket();
        off.note_pair(t, 1, 2, true);
        off.note_users(t, &[1]);
        assert_eq!(off.pair(1, 2), None);
        assert!(!off.all_in_good_standing(&[1]));
    }

    #[test]
    fn policy_names_parse() {
        assert_eq!(
            "Request".parse::<ContactPolicy>().unwrap(),
            ContactPolicy::Request
        );
        assert!("closed".parse::<ContactPolicy>().is_err());
    }
}
