//! The cluster's membership and how each range follows it.
//!
//! The meta range replicates the membership (`PublishedMembers`): every member with its
//! peer URLs, learner or voter, and the ids removed for good. etcd's member calls change
//! it with one `MembershipChange` each ([`apply_change`], deterministic on every
//! replica). Every range then follows it on its own: its leader compares the range's
//! Raft configuration with the membership and takes one step at a time ([`plan`]): a new
//! member becomes a learner (it gets a snapshot), a learner of a voting member is
//! promoted once it has caught up, a removed member's replica is removed (the leader
//! hands its leadership over first when the removed member is itself). raft-rs runs one
//! configuration change at a time per range, and a step is planned again from scratch
//! at every tick, so a stale plan never outlives the state it was made from.

use crate::proto::shoal::command::{membership_change, MembershipChange};
use crate::proto::shoal::state::{MemberInfo, PublishedMembers};
use crate::range::kv::KvError;

/// Entries a replica may trail the leader's commit index by and still count as caught
/// up (promotable).
pub const CATCH_UP_SLACK: u64 = 256;

/// etcd's default: at most one learner at a time.
pub const LEARNERS_MAX: usize = 1;

/// Applies one change to the replicated membership; a refusal leaves it unchanged.
pub fn apply_change(record: &mut PublishedMembers, change: &MembershipChange) -> Result<(), KvError> {
    if !record.complete {
        return Err(KvError::MembershipRefused(
            "this cluster was created before membership could change; its membership is fixed".into(),
        ));
    }
    let members = &mut record.members;
    let url_taken = |members: &[MemberInfo], urls: &[String], except: u64| {
        members
            .iter()
            .filter(|member| member.id != except)
            .any(|member| member.peer_urls.iter().any(|url| urls.contains(url)))
    };
    match &change.change {
        Some(membership_change::Change::Add(member)) => {
            if member.id == 0
                || members.iter().any(|known| known.id == member.id)
                || record.removed.contains(&member.id)
            {
                return Err(KvError::MemberExists);
            }
            if member.peer_urls.is_empty() {
                return Err(KvError::MembershipRefused("given member URLs are invalid".into()));
            }
            if url_taken(members, &member.peer_urls, 0) {
                return Err(KvError::PeerUrlExists);
            }
            if member.is_learner && members.iter().filter(|known| known.is_learner).count() >= LEARNERS_MAX {
                return Err(KvError::MembershipRefused("too many learner members in cluster".into()));
            }
            members.push(MemberInfo {
                id: member.id,
                peer_urls: member.peer_urls.clone(),
                is_learner: member.is_learner,
                ..Default::default()
            });
        }
        Some(membership_change::Change::Remove(id)) => {
            let Some(position) = members.iter().position(|known| known.id == *id) else {
                return Err(KvError::UnknownMember);
            };
            let voters_left = members
                .iter()
                .filter(|known| !known.is_learner && known.id != *id)
                .count();
            if voters_left == 0 {
                return Err(KvError::MembershipRefused(
                    "re-configuration failed due to not enough started members".into(),
                ));
            }
            members.remove(position);
            record.removed.push(*id);
            record.removed.sort_unstable();
        }
        Some(membership_change::Change::Update(update)) => {
            if update.peer_urls.is_empty() {
                return Err(KvError::MembershipRefused("given member URLs are invalid".into()));
            }
            if !members.iter().any(|known| known.id == update.id) {
                return Err(KvError::UnknownMember);
            }
            if url_taken(members, &update.peer_urls, update.id) {
                return Err(KvError::PeerUrlExists);
            }
            if let Some(member) = members.iter_mut().find(|known| known.id == update.id) {
                member.peer_urls = update.peer_urls.clone();
            }
        }
        Some(membership_change::Change::Promote(id)) => {
            let Some(member) = members.iter_mut().find(|known| known.id == *id) else {
                return Err(KvError::UnknownMember);
            };
            if !member.is_learner {
                return Err(KvError::MemberNotLearner);
            }
            member.is_learner = false;
        }
        None => {}
    }
    members.sort_by_key(|member| member.id);
    Ok(())
}

/// The members, as a client is told: the replicated record, or for a cluster created
/// before membership was replicated, its creating members with what they published.
pub fn current(record: &PublishedMembers, initial: &[MemberInfo]) -> Vec<MemberInfo> {
    if record.complete {
        return record.members.clone();
    }
    initial
        .iter()
        .map(|member| {
            let published = record.members.iter().find(|known| known.id == member.id);
            MemberInfo {
                id: member.id,
                name: published.map(|known| known.name.clone()).unwrap_or_default(),
                peer_urls: member.peer_urls.clone(),
                client_urls: published.map(|known| known.client_urls.clone()).unwrap_or_default(),
                redis_addr: published.map(|known| known.redis_addr.clone()).unwrap_or_default(),
                is_learner: false,
            }
        })
        .collect()
}

/// What a range's leader sees of its group.
#[derive(Debug, Clone, Default)]
pub struct GroupView {
    pub leader: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// Replicas the leader heard from within an election timeout (itself included).
    pub active: Vec<u64>,
    /// Replicas whose log matches the leader's up to (nearly: [`CATCH_UP_SLACK`]) its
    /// commit index.
    pub caught_up: Vec<u64>,
    /// A configuration change is proposed and not yet applied.
    pub changing: bool,
}

/// One step towards the membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    AddLearner(u64),
    Promote(u64),
    Remove(u64),
    /// The leader is on a removed member: hand the range to this replica first.
    TransferLeader(u64),
}

/// The next step that brings the group closer to `record`, if any. Additions come
/// first (a replica more is never a risk), then promotions, then removals; a voter is
/// removed only when the voters left hold an active majority, so no step leaves the
/// range without a working quorum.
pub fn plan(group: &GroupView, record: &PublishedMembers) -> Option<Step> {
    if !record.complete || group.changing || record.members.is_empty() {
        return None;
    }
    let in_group = |id: u64| group.voters.contains(&id) || group.learners.contains(&id);
    if let Some(member) = record.members.iter().find(|member| !in_group(member.id)) {
        return Some(Step::AddLearner(member.id));
    }
    if let Some(member) = record.members.iter().find(|member| {
        !member.is_learner && group.learners.contains(&member.id) && group.caught_up.contains(&member.id)
    }) {
        return Some(Step::Promote(member.id));
    }
    let is_member = |id: u64| record.members.iter().any(|member| member.id == id);
    if let Some(&learner) = group.learners.iter().find(|&&id| !is_member(id)) {
        return Some(Step::Remove(learner));
    }
    let &gone = group.voters.iter().find(|&&id| !is_member(id))?;
    if gone == group.leader {
        let successor =
            group.voters.iter().copied().find(|&id| {
                id != gone && is_member(id) && group.caught_up.contains(&id) && group.active.contains(&id)
            })?;
        return Some(Step::TransferLeader(successor));
    }
    let left: Vec<u64> = group.voters.iter().copied().filter(|&id| id != gone).collect();
    let active = left.iter().filter(|id| group.active.contains(id)).count();
    (active > left.len() / 2).then_some(Step::Remove(gone))
}

/// A fresh id for a member being added: from its peer URLs and the time, so a member
/// added again after its removal never gets its old id (etcd does the same).
pub fn new_member_id(cluster_token: &str, peer_urls: &[String], now_nanos: u128) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    // FNV-1a over the token, the URLs and the time.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let parts = [
        cluster_token.as_bytes().to_vec(),
        urls.join(",").into_bytes(),
        now_nanos.to_be_bytes().to_vec(),
    ];
    for part in &parts {
        for byte in part.iter().chain(std::iter::once(&0xffu8)) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::shoal::command::MemberUrls;

    fn member(id: u64, url: &str, is_learner: bool) -> MemberInfo {
        MemberInfo {
            id,
            peer_urls: vec![url.to_string()],
            is_learner,
            ..Default::default()
        }
    }

    fn record(members: Vec<MemberInfo>) -> PublishedMembers {
        PublishedMembers {
            members,
            removed: Vec::new(),
            complete: true,
        }
    }

    fn change(change: membership_change::Change) -> MembershipChange {
        MembershipChange { change: Some(change) }
    }

    #[test]
    fn changes_are_checked_as_etcd_checks_them() {
        let mut members = record(vec![member(1, "http://a", false)]);
        let add = |id, url: &str, learner| change(membership_change::Change::Add(member(id, url, learner)));
        assert!(matches!(
            apply_change(&mut members, &add(2, "http://a", false)),
            Err(KvError::PeerUrlExists)
        ));
        apply_change(&mut members, &add(2, "http://b", true)).unwrap();
        assert!(matches!(
            apply_change(&mut members, &add(3, "http://c", true)),
            Err(KvError::MembershipRefused(text)) if text == "too many learner members in cluster"
        ));
        assert!(matches!(
            apply_change(&mut members, &change(membership_change::Change::Promote(1))),
            Err(KvError::MemberNotLearner)
        ));
        apply_change(&mut members, &change(membership_change::Change::Promote(2))).unwrap();
        assert!(matches!(
            apply_change(&mut members, &change(membership_change::Change::Remove(9))),
            Err(KvError::UnknownMember)
        ));
        assert!(matches!(
            apply_change(
                &mut members,
                &change(membership_change::Change::Update(MemberUrls {
                    id: 2,
                    peer_urls: vec!["http://a".into()]
                }))
            ),
            Err(KvError::PeerUrlExists)
        ));
        apply_change(&mut members, &change(membership_change::Change::Remove(1))).unwrap();
        assert_eq!(members.removed, vec![1]);
        assert!(matches!(
            apply_change(&mut members, &change(membership_change::Change::Remove(2))),
            Err(KvError::MembershipRefused(_))
        ));
        assert!(matches!(
            apply_change(&mut members, &add(1, "http://z", false)),
            Err(KvError::MemberExists)
        ));
        let mut legacy = PublishedMembers::default();
        assert!(apply_change(&mut legacy, &add(5, "http://e", false)).is_err());
    }

    fn group(leader: u64, voters: &[u64], learners: &[u64]) -> GroupView {
        let all: Vec<u64> = voters.iter().chain(learners).copied().collect();
        GroupView {
            leader,
            voters: voters.to_vec(),
            learners: learners.to_vec(),
            active: all.clone(),
            caught_up: all,
            changing: false,
        }
    }

    #[test]
    fn a_range_follows_the_membership_one_safe_step_at_a_time() {
        let three = vec![member(1, "a", false), member(2, "b", false), member(3, "c", false)];
        let mut four = three.clone();
        four.push(member(4, "d", false));
        assert_eq!(plan(&group(1, &[1, 2, 3], &[]), &record(three.clone())), None);
        assert_eq!(
            plan(&group(1, &[1, 2, 3], &[]), &record(four.clone())),
            Some(Step::AddLearner(4))
        );
        let mut behind = group(1, &[1, 2, 3], &[4]);
        behind.caught_up = vec![1, 2, 3];
        assert_eq!(
            plan(&behind, &record(four.clone())),
            None,
            "promoted only once caught up"
        );
        assert_eq!(
            plan(&group(1, &[1, 2, 3], &[4]), &record(four.clone())),
            Some(Step::Promote(4))
        );
        let mut learner = four.clone();
        learner[3].is_learner = true;
        assert_eq!(plan(&group(1, &[1, 2, 3], &[4]), &record(learner)), None);
        let mut changing = group(1, &[1, 2, 3], &[]);
        changing.changing = true;
        assert_eq!(plan(&changing, &record(four.clone())), None, "one change at a time");

        // Member 3 removed: its replica goes, unless the rest would lack an active majority.
        let without_three = record(vec![
            member(1, "a", false),
            member(2, "b", false),
            member(4, "d", false),
        ]);
        assert_eq!(
            plan(&group(1, &[1, 2, 3, 4], &[]), &without_three),
            Some(Step::Remove(3))
        );
        let mut dead = group(1, &[1, 2, 3, 4], &[]);
        dead.active = vec![1, 3];
        assert_eq!(plan(&dead, &without_three), None);
        // The leader itself removed: leadership moves first.
        assert_eq!(
            plan(&group(3, &[1, 2, 3, 4], &[]), &without_three),
            Some(Step::TransferLeader(1))
        );
        assert_eq!(plan(&group(1, &[1, 2, 4], &[3]), &without_three), Some(Step::Remove(3)));
        assert_eq!(plan(&group(1, &[1, 2, 3], &[]), &PublishedMembers::default()), None);
    }

    #[test]
    fn added_members_get_fresh_ids() {
        let urls = vec!["http://d:1".to_string()];
        assert_ne!(new_member_id("t", &urls, 1), new_member_id("t", &urls, 2));
        assert_ne!(new_member_id("t", &urls, 1), 0);
    }
}
