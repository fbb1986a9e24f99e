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
use std::fmt;
use std::str::FromStr;

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

impl ContactPolicy {
    /// The setting's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Request => "request",
            Self::Roles => "roles",
        }
    }
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
pub fn rules_allow(
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
pub fn check_contact(
    conn: &mut PgConnection,
    config: &Config,
    actor: i64,
    targets: &[i64],
) -> AppResult<()> {
    let policy = config.contact_policy;
    let mut wanted: Vec<i64> = targets.iter().copied().filter(|t| *t != actor).collect();
    wanted.sort_unstable();
    wanted.dedup();
    if wanted.is_empty() {
        return Ok(());
    }
    let mut ids = wanted.clone();
    ids.push(actor);
    let users = facts::users_by_ids(conn, &ids)?;
    let find = |id: i64| users.iter().find(|u| u.id == id && !u.is_banned());
    let me = find(actor).ok_or_else(|| AppError::NotFound("user not found".into()))?;
    for target in wanted {
        let other = find(target).ok_or_else(|| AppError::NotFound("user not found".into()))?;
        if policy == ContactPolicy::Open {
            continue;
        }
        if !pair_allowed(conn, config, me, other)? {
            return Err(refuse(policy));
        }
    }
    Ok(())
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
    fn policy_names_parse() {
        assert_eq!(
            "Request".parse::<ContactPolicy>().unwrap(),
            ContactPolicy::Request
        );
        assert!("closed".parse::<ContactPolicy>().is_err());
    }
}
