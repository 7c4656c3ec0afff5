//! The rules of private groups, with no I/O: who may change what, and what each change records.
//!
//! A group lives in two places. Its current state is one record in the KV bucket [`BUCKET`], under
//! [`record_key`], which gateways cache and watch to check membership with no round trip. Its history
//! is a chain of [`GroupEvent`]s stored in stream `CHAT` on the group's subject, among its messages.
//! Every change is [`Record::decide`]d here into an event, and the new record is that event
//! [`Record::apply`]'d to the old one: the member list at any sequence is the fold of the events up
//! to it, by construction.

use serde::{Deserialize, Serialize};

use crate::frame::ErrorCode;
use crate::ids::{GroupId, UserId};

/// The KV bucket of group records.
pub const BUCKET: &str = "groups";
/// Every group record's key, for a watch.
pub const RECORD_WILDCARD: &str = "g.>";
/// Members a group may have, unless configured otherwise (`GROUP_MAX_MEMBERS`): a WeChat group's size.
pub const DEFAULT_MAX_MEMBERS: usize = 500;
/// Groups a user may belong to at once, unless configured otherwise (`GROUP_MAX_PER_USER`).
pub const DEFAULT_MAX_GROUPS_PER_USER: usize = 1000;
/// Longest group name, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// Most users one `group_create`, `group_add` or `group_remove` frame may name.
pub const MAX_USERS_PER_FRAME: usize = DEFAULT_MAX_MEMBERS;
/// A record's pending event older than this is taken as abandoned (its gateway died between writing
/// the record and storing the event), and the next change stores it first.
pub const PENDING_STALE_MS: u64 = 5_000;

/// The key of a group's record: `g.<group>`.
pub fn record_key(group: &GroupId) -> String {
    format!("g.{group}")
}

/// The group a record key names.
pub fn group_of_key(key: &str) -> Option<GroupId> {
    GroupId::parse(key.strip_prefix("g.")?).ok()
}

/// A member's role.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Owner,
    Admin,
    Member,
}

impl Role {
    fn manages(self) -> bool {
        matches!(self, Role::Owner | Role::Admin)
    }
}

/// One member of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub user: UserId,
    pub role: Role,
}

/// What a membership event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Created,
    Added,
    Removed,
    Quit,
    Role,
    Renamed,
}

/// A membership event, stored in stream `CHAT` like a message (its `from` is the user who made the
/// change).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupEvent {
    pub kind: EventKind,
    /// Whom it is about: the members at creation, those added or removed, the one who quit, the one
    /// whose role changed.
    #[serde(default)]
    pub users: Vec<UserId>,
    /// The name, for `created` and `renamed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The new role, for `role`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// The new owner, when ownership moved: a `role` event that passed it on, or the owner's `quit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<UserId>,
}

impl GroupEvent {
    fn new(kind: EventKind, users: Vec<UserId>) -> Self {
        Self {
            kind,
            users,
            name: None,
            role: None,
            owner: None,
        }
    }

    /// The users who stop being members through this event.
    pub fn departed(&self) -> &[UserId] {
        match self.kind {
            EventKind::Removed | EventKind::Quit => &self.users,
            _ => &[],
        }
    }
}

/// A change a member asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Add(Vec<UserId>),
    Remove(Vec<UserId>),
    Quit,
    Role { user: UserId, role: Role },
    Rename(String),
}

/// The event a record holds while its change is being stored in the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub by: UserId,
    pub ts: u64,
    pub event: GroupEvent,
}

/// A group's current state: the value of its key in bucket [`BUCKET`] (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub name: String,
    /// In the order they joined, so "the oldest admin" is the first admin here. Empty once the last
    /// member quit: an empty group keeps its id and its history.
    pub members: Vec<Member>,
    pub created_ms: u64,
    /// Set from the moment a change is written here until its event is stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Pending>,
}

/// Why a change is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// Also the answer for a group that does not exist, so ids cannot be probed.
    #[error("not a member of this group")]
    NotMember,
    #[error("{0}")]
    NotAllowed(&'static str),
    #[error("a group may have at most {max} members")]
    TooMany { max: usize },
    #[error("the owner cannot be removed; pass ownership on with group_role first")]
    RemoveOwner,
    #[error("{0}")]
    Invalid(String),
}

impl RuleError {
    /// The error code a client gets.
    pub fn code(&self) -> ErrorCode {
        match self {
            RuleError::NotMember | RuleError::NotAllowed(_) => ErrorCode::Forbidden,
            RuleError::TooMany { .. } | RuleError::RemoveOwner | RuleError::Invalid(_) => {
                ErrorCode::BadRequest
            }
        }
    }
}

/// Checks a group name: 1 to [`MAX_NAME_CHARS`] characters, not only whitespace.
pub fn check_name(name: &str) -> Result<(), RuleError> {
    if name.trim().is_empty() {
        return Err(RuleError::Invalid(
            "the group name must not be empty".into(),
        ));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(RuleError::Invalid(format!(
            "the group name is longer than {MAX_NAME_CHARS} characters"
        )));
    }
    Ok(())
}

/// Distinct users in the order given.
fn distinct(users: Vec<UserId>) -> Vec<UserId> {
    let mut seen = std::collections::HashSet::new();
    users
        .into_iter()
        .filter(|u| seen.insert(u.clone()))
        .collect()
}

impl Record {
    /// A new group owned by `owner`, with `members` besides, and its `created` event.
    pub fn create(
        name: String,
        owner: UserId,
        members: Vec<UserId>,
        max_members: usize,
        now_ms: u64,
    ) -> Result<(Record, GroupEvent), RuleError> {
        check_name(&name)?;
        let mut users = vec![owner.clone()];
        users.extend(distinct(members).into_iter().filter(|u| *u != owner));
        if users.len() > max_members {
            return Err(RuleError::TooMany { max: max_members });
        }
        let mut event = GroupEvent::new(EventKind::Created, users);
        event.name = Some(name);
        event.owner = Some(owner.clone());
        let mut record = Record {
            name: String::new(),
            members: Vec::new(),
            created_ms: now_ms,
            pending: None,
        };
        record.apply(&owner, &event);
        Ok((record, event))
    }

    pub fn role_of(&self, user: &UserId) -> Option<Role> {
        self.members
            .iter()
            .find(|m| m.user == *user)
            .map(|m| m.role)
    }

    pub fn is_member(&self, user: &UserId) -> bool {
        self.role_of(user).is_some()
    }

    pub fn owner(&self) -> Option<&UserId> {
        self.members
            .iter()
            .find(|m| m.role == Role::Owner)
            .map(|m| &m.user)
    }

    /// Checks `change` by `by` against the rules and returns the event that records it, and the
    /// record after it.
    pub fn decide(
        &self,
        by: &UserId,
        change: Change,
        max_members: usize,
    ) -> Result<(Record, GroupEvent), RuleError> {
        // The server (the admin API) acts with the owner's rights without being a member.
        let my_role = match self.role_of(by) {
            Some(role) => role,
            None if by.is_system() && change != Change::Quit => Role::Owner,
            None => return Err(RuleError::NotMember),
        };
        let manager = || {
            if my_role.manages() {
                Ok(())
            } else {
                Err(RuleError::NotAllowed(
                    "only the owner and admins may do this",
                ))
            }
        };
        let event = match change {
            Change::Add(users) => {
                manager()?;
                let new: Vec<UserId> = distinct(users)
                    .into_iter()
                    .filter(|u| !self.is_member(u))
                    .collect();
                if new.is_empty() {
                    return Err(RuleError::Invalid(
                        "every user named is already a member".into(),
                    ));
                }
                if self.members.len() + new.len() > max_members {
                    return Err(RuleError::TooMany { max: max_members });
                }
                GroupEvent::new(EventKind::Added, new)
            }
            Change::Remove(users) => {
                manager()?;
                let gone: Vec<UserId> = distinct(users)
                    .into_iter()
                    .filter(|u| self.is_member(u))
                    .collect();
                if gone.is_empty() {
                    return Err(RuleError::Invalid("no user named is a member".into()));
                }
                if gone.contains(by) {
                    return Err(RuleError::Invalid(
                        "use group_quit to leave a group yourself".into(),
                    ));
                }
                for user in &gone {
                    match self.role_of(user) {
                        Some(Role::Owner) => return Err(RuleError::RemoveOwner),
                        Some(Role::Admin) if my_role != Role::Owner => {
                            return Err(RuleError::NotAllowed(
                                "only the owner may remove an admin",
                            ));
                        }
                        _ => {}
                    }
                }
                GroupEvent::new(EventKind::Removed, gone)
            }
            Change::Quit => {
                let mut event = GroupEvent::new(EventKind::Quit, vec![by.clone()]);
                if my_role == Role::Owner {
                    let rest = self.members.iter().filter(|m| m.user != *by);
                    let heir = rest
                        .clone()
                        .find(|m| m.role == Role::Admin)
                        .or_else(|| rest.clone().next());
                    event.owner = heir.map(|m| m.user.clone());
                }
                event
            }
            Change::Role { user, role } => {
                if my_role != Role::Owner {
                    return Err(RuleError::NotAllowed("only the owner may change roles"));
                }
                if user == *by {
                    return Err(RuleError::Invalid(
                        "the owner's role changes only by passing ownership on".into(),
                    ));
                }
                match self.role_of(&user) {
                    None => return Err(RuleError::Invalid(format!("{user} is not a member"))),
                    // Only the server reaches this: an owner's own role was refused above.
                    Some(Role::Owner) if role != Role::Owner => {
                        return Err(RuleError::Invalid(
                            "the owner's role changes only by passing ownership on".into(),
                        ));
                    }
                    Some(current) if current == role => {
                        return Err(RuleError::Invalid(format!("{user} already has that role")));
                    }
                    Some(_) => {}
                }
                let mut event = GroupEvent::new(EventKind::Role, vec![user.clone()]);
                event.role = Some(role);
                if role == Role::Owner {
                    event.owner = Some(user);
                }
                event
            }
            Change::Rename(name) => {
                manager()?;
                check_name(&name)?;
                let mut event = GroupEvent::new(EventKind::Renamed, Vec::new());
                event.name = Some(name);
                event
            }
        };
        let mut next = self.clone();
        next.apply(by, &event);
        Ok((next, event))
    }

    /// The record after `event`, made by `by`. The only place a record changes.
    pub fn apply(&mut self, by: &UserId, event: &GroupEvent) {
        match event.kind {
            EventKind::Created => {
                self.members = event
                    .users
                    .iter()
                    .map(|u| Member {
                        user: u.clone(),
                        role: if event.owner.as_ref() == Some(u) || *u == *by {
                            Role::Owner
                        } else {
                            Role::Member
                        },
                    })
                    .collect();
            }
            EventKind::Added => self.members.extend(event.users.iter().map(|u| Member {
                user: u.clone(),
                role: Role::Member,
            })),
            EventKind::Removed | EventKind::Quit => {
                self.members.retain(|m| !event.users.contains(&m.user));
            }
            EventKind::Role => {
                let role = event.role.unwrap_or(Role::Member);
                for m in &mut self.members {
                    if event.users.contains(&m.user) {
                        m.role = role;
                    } else if role == Role::Owner && m.role == Role::Owner {
                        // Passing ownership on makes the old owner an admin.
                        m.role = Role::Admin;
                    }
                }
            }
            EventKind::Renamed => {}
        }
        if let Some(name) = &event.name {
            self.name.clone_from(name);
        }
        if event.kind != EventKind::Role
            && let Some(owner) = &event.owner
        {
            for m in &mut self.members {
                if m.user == *owner {
                    m.role = Role::Owner;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    fn users(list: &[&str]) -> Vec<UserId> {
        list.iter().map(|s| u(s)).collect()
    }

    fn roles(r: &Record) -> Vec<(String, Role)> {
        r.members
            .iter()
            .map(|m| (m.user.to_string(), m.role))
            .collect()
    }

    fn group() -> Record {
        Record::create(
            "team".into(),
            u("alice"),
            users(&["bob", "carol", "bob", "alice"]),
            500,
            1,
        )
        .unwrap()
        .0
    }

    // Proves the creator is the owner, members are deduplicated, and the event names everyone.
    #[test]
    fn create_makes_the_creator_owner() {
        let (r, e) =
            Record::create("team".into(), u("alice"), users(&["bob", "bob"]), 500, 1).unwrap();
        assert_eq!(
            roles(&r),
            [("alice".into(), Role::Owner), ("bob".into(), Role::Member)]
        );
        assert_eq!(e.kind, EventKind::Created);
        assert_eq!(e.users, users(&["alice", "bob"]));
        assert_eq!(r.name, "team");
        for bad in ["", "   ", &"名".repeat(65)] {
            let err = Record::create(bad.into(), u("a"), vec![], 500, 1).unwrap_err();
            assert_eq!(err.code(), ErrorCode::BadRequest, "{bad:?}");
        }
        assert!(Record::create("n".repeat(64), u("a"), vec![], 500, 1).is_ok());
        assert_eq!(
            Record::create("t".into(), u("a"), users(&["b", "c"]), 2, 1).unwrap_err(),
            RuleError::TooMany { max: 2 }
        );
    }

    // Proves only the owner and admins manage members, and that the limits hold.
    #[test]
    fn add_and_remove_need_a_manager() {
        let g = group();
        assert_eq!(
            g.decide(&u("bob"), Change::Add(users(&["dave"])), 500)
                .unwrap_err()
                .code(),
            ErrorCode::Forbidden
        );
        assert_eq!(
            g.decide(&u("eve"), Change::Add(users(&["dave"])), 500)
                .unwrap_err(),
            RuleError::NotMember
        );
        let (g2, e) = g
            .decide(&u("alice"), Change::Add(users(&["dave", "bob"])), 500)
            .unwrap();
        assert_eq!(e.users, users(&["dave"]));
        assert!(g2.is_member(&u("dave")));
        assert_eq!(
            g.decide(&u("alice"), Change::Add(users(&["d", "e"])), 4)
                .unwrap_err(),
            RuleError::TooMany { max: 4 }
        );
        assert_eq!(
            g.decide(&u("alice"), Change::Add(users(&["bob"])), 500)
                .unwrap_err()
                .code(),
            ErrorCode::BadRequest
        );
        let (g3, e) = g
            .decide(&u("alice"), Change::Remove(users(&["bob", "zed"])), 500)
            .unwrap();
        assert_eq!(e.users, users(&["bob"]));
        assert!(!g3.is_member(&u("bob")));
        assert_eq!(e.departed(), users(&["bob"]).as_slice());
        // An admin may remove members, not the owner nor other admins.
        let (g4, _) = g
            .decide(
                &u("alice"),
                Change::Role {
                    user: u("bob"),
                    role: Role::Admin,
                },
                500,
            )
            .unwrap();
        assert!(
            g4.decide(&u("bob"), Change::Remove(users(&["carol"])), 500)
                .is_ok()
        );
        assert_eq!(
            g4.decide(&u("bob"), Change::Remove(users(&["alice"])), 500)
                .unwrap_err(),
            RuleError::RemoveOwner
        );
        let (g5, _) = g4
            .decide(
                &u("alice"),
                Change::Role {
                    user: u("carol"),
                    role: Role::Admin,
                },
                500,
            )
            .unwrap();
        assert_eq!(
            g5.decide(&u("bob"), Change::Remove(users(&["carol"])), 500)
                .unwrap_err()
                .code(),
            ErrorCode::Forbidden
        );
    }

    // Proves ownership passes to the oldest admin, else the oldest member, and an empty group stays.
    #[test]
    fn quitting_owner_hands_the_group_on() {
        let g = group();
        let (g, e) = g
            .decide(
                &u("alice"),
                Change::Role {
                    user: u("carol"),
                    role: Role::Admin,
                },
                500,
            )
            .unwrap();
        assert_eq!(e.role, Some(Role::Admin));
        let (g, e) = g.decide(&u("alice"), Change::Quit, 500).unwrap();
        assert_eq!(e.owner, Some(u("carol")));
        assert_eq!(
            roles(&g),
            [("bob".into(), Role::Member), ("carol".into(), Role::Owner)]
        );
        let (g, e) = g.decide(&u("carol"), Change::Quit, 500).unwrap();
        assert_eq!(e.owner, Some(u("bob")));
        assert_eq!(g.owner(), Some(&u("bob")));
        let (g, e) = g.decide(&u("bob"), Change::Quit, 500).unwrap();
        assert_eq!(e.owner, None);
        assert!(g.members.is_empty());
        assert_eq!(g.name, "team");
        assert_eq!(
            g.decide(&u("bob"), Change::Quit, 500).unwrap_err(),
            RuleError::NotMember
        );
    }

    // Proves passing "owner" on makes the old owner an admin, and only the owner changes roles.
    #[test]
    fn ownership_transfer() {
        let g = group();
        let (g, e) = g
            .decide(
                &u("alice"),
                Change::Role {
                    user: u("bob"),
                    role: Role::Owner,
                },
                500,
            )
            .unwrap();
        assert_eq!(e.owner, Some(u("bob")));
        assert_eq!(
            roles(&g),
            [
                ("alice".into(), Role::Admin),
                ("bob".into(), Role::Owner),
                ("carol".into(), Role::Member)
            ]
        );
        assert_eq!(
            g.decide(
                &u("alice"),
                Change::Role {
                    user: u("carol"),
                    role: Role::Admin
                },
                500
            )
            .unwrap_err()
            .code(),
            ErrorCode::Forbidden
        );
        assert_eq!(
            g.decide(
                &u("bob"),
                Change::Role {
                    user: u("bob"),
                    role: Role::Member
                },
                500
            )
            .unwrap_err()
            .code(),
            ErrorCode::BadRequest
        );
        assert_eq!(
            g.decide(
                &u("bob"),
                Change::Role {
                    user: u("zed"),
                    role: Role::Admin
                },
                500
            )
            .unwrap_err()
            .code(),
            ErrorCode::BadRequest
        );
    }

    // Proves the server acts with the owner's rights without being a member, and still cannot
    // quit, leave a group ownerless, or remove its owner.
    #[test]
    fn the_system_account_manages_like_the_owner() {
        let sys = UserId::system();
        let g = group();
        let (g, e) = g.decide(&sys, Change::Add(users(&["dave"])), 500).unwrap();
        assert_eq!(e.kind, EventKind::Added);
        assert!(g.is_member(&u("dave")) && !g.is_member(&sys));
        let admin = Change::Role {
            user: u("bob"),
            role: Role::Admin,
        };
        let (g, _) = g.decide(&sys, admin, 500).unwrap();
        assert_eq!(g.role_of(&u("bob")), Some(Role::Admin));
        // Only the owner may remove an admin, and the server counts as one.
        let (g, _) = g
            .decide(&sys, Change::Remove(users(&["bob"])), 500)
            .unwrap();
        assert!(!g.is_member(&u("bob")));
        assert_eq!(
            g.decide(&sys, Change::Remove(users(&["alice"])), 500)
                .unwrap_err(),
            RuleError::RemoveOwner
        );
        let demote = Change::Role {
            user: u("alice"),
            role: Role::Member,
        };
        assert_eq!(
            g.decide(&sys, demote, 500).unwrap_err().code(),
            ErrorCode::BadRequest
        );
        let (g, e) = g
            .decide(
                &sys,
                Change::Role {
                    user: u("carol"),
                    role: Role::Owner,
                },
                500,
            )
            .unwrap();
        assert_eq!(e.owner, Some(u("carol")));
        assert_eq!(g.owner(), Some(&u("carol")));
        assert_eq!(g.role_of(&u("alice")), Some(Role::Admin));
        assert_eq!(
            g.decide(&sys, Change::Quit, 500).unwrap_err(),
            RuleError::NotMember
        );
        // Any other non-member is refused as before.
        assert_eq!(
            g.decide(&u("zed"), Change::Add(users(&["x"])), 500)
                .unwrap_err(),
            RuleError::NotMember
        );
    }

    // Proves renames need a manager and a valid name.
    #[test]
    fn rename_rules() {
        let g = group();
        let (g2, e) = g
            .decide(&u("alice"), Change::Rename("新名字".into()), 500)
            .unwrap();
        assert_eq!(g2.name, "新名字");
        assert_eq!(e.name.as_deref(), Some("新名字"));
        assert_eq!(
            g.decide(&u("bob"), Change::Rename("x".into()), 500)
                .unwrap_err()
                .code(),
            ErrorCode::Forbidden
        );
        assert_eq!(
            g.decide(&u("alice"), Change::Rename(" ".into()), 500)
                .unwrap_err()
                .code(),
            ErrorCode::BadRequest
        );
    }

    // Proves the member list at any point is the fold of the events up to it.
    #[test]
    fn events_rebuild_the_record() {
        let (mut r, created) =
            Record::create("t".into(), u("alice"), users(&["bob"]), 500, 7).unwrap();
        let mut log = vec![(u("alice"), created)];
        let changes = [
            (u("alice"), Change::Add(users(&["carol", "dave"]))),
            (
                u("alice"),
                Change::Role {
                    user: u("carol"),
                    role: Role::Admin,
                },
            ),
            (u("carol"), Change::Remove(users(&["bob"]))),
            (u("alice"), Change::Rename("t2".into())),
            (
                u("alice"),
                Change::Role {
                    user: u("dave"),
                    role: Role::Owner,
                },
            ),
            (u("dave"), Change::Quit),
        ];
        for (by, change) in changes {
            let (next, event) = r.decide(&by, change, 500).unwrap();
            log.push((by, event));
            r = next;
        }
        let mut rebuilt = Record {
            name: String::new(),
            members: vec![],
            created_ms: 7,
            pending: None,
        };
        for (by, event) in &log {
            rebuilt.apply(by, event);
        }
        assert_eq!(rebuilt, r);
        assert_eq!(
            roles(&r),
            [("alice".into(), Role::Owner), ("carol".into(), Role::Admin)]
        );
    }

    #[test]
    fn record_keys_round_trip() {
        let g = GroupId::parse("team-1").unwrap();
        assert_eq!(record_key(&g), "g.team-1");
        assert_eq!(group_of_key(&record_key(&g)), Some(g));
        assert_eq!(group_of_key("x.team"), None);
    }
}
