//! Who hears whose presence, as plain state: the registry actor owns one [`Audiences`] and
//! does the I/O (it knows who is online, builds the `presence` events and delivers them).
//!
//! A user's audience is its peers (users it shares a conversation with, linked while both are
//! online) and its watchers (devices that asked with `presence:subscribe`). In cluster mode a
//! user online on this node *listens* to every peer, wherever the peer is, because the peer
//! may be online on another node; `peers` then holds the reverse links.

use std::collections::{HashMap, HashSet};

/// The most users one device watches at once; later ones in a `presence:subscribe` are ignored.
pub(crate) const MAX_WATCHED: usize = 1000;

/// Presence audiences and who has been announced online.
#[derive(Debug, Default)]
pub(crate) struct Audiences {
    /// User → the users hearing about it.
    peers: HashMap<i64, HashSet<i64>>,
    /// Cluster mode: user online here → the users it hears about.
    listening: HashMap<i64, HashSet<i64>>,
    /// User → the (user, device) pairs watching it.
    watchers: HashMap<i64, HashSet<(i64, u64)>>,
    /// Device → the users it watches.
    watching: HashMap<u64, Vec<i64>>,
    /// Users announced online (and not yet announced offline).
    announced: HashSet<i64>,
}

impl Audiences {
    /// Single node: `user` and its peers that are online (`online_peers`) hear about each
    /// other.
    pub(crate) fn link(&mut self, user: i64, online_peers: impl IntoIterator<Item = i64>) {
        let online: Vec<i64> = online_peers.into_iter().filter(|p| *p != user).collect();
        for peer in &online {
            self.peers.entry(*peer).or_default().insert(user);
        }
        self.peers.entry(user).or_default().extend(online);
    }

    /// Single node: every two of `members` (all online) hear about each other.
    pub(crate) fn link_all(&mut self, members: &[i64]) {
        for a in members {
            for b in members {
                if a != b {
                    self.peers.entry(*a).or_default().insert(*b);
                }
            }
        }
    }

    /// Cluster mode: `user`, online here, hears about `peers` wherever they are.
    pub(crate) fn listen(&mut self, user: i64, peers: impl IntoIterator<Item = i64>) {
        let listening = self.listening.entry(user).or_default();
        for peer in peers {
            if peer != user && listening.insert(peer) {
                self.peers.entry(peer).or_default().insert(user);
            }
        }
    }

    /// Cluster mode: `user` left this node; it hears about nobody here any more (its own
    /// audience stays: it may be online elsewhere).
    pub(crate) fn stop_listening(&mut self, user: i64) {
        for peer in self.listening.remove(&user).unwrap_or_default() {
            self.unlink(peer, user);
        }
    }

    /// Single node: `user` went offline and was told about; it needs no audience until it
    /// announces itself again, and its peers stop hearing it (a peer's entry goes when it
    /// empties), so nothing grows with every user ever seen.
    pub(crate) fn forget(&mut self, user: i64) {
        for peer in self.peers.remove(&user).unwrap_or_default() {
            self.unlink(peer, user);
        }
    }

    fn unlink(&mut self, from: i64, user: i64) {
        if let Some(set) = self.peers.get_mut(&from) {
            set.remove(&user);
            if set.is_empty() {
                self.peers.remove(&from);
            }
        }
    }

    /// Device `key` of `user` watches `targets` (the first [`MAX_WATCHED`]); returns the
    /// targets taken.
    pub(crate) fn watch<'t>(&mut self, user: i64, key: u64, targets: &'t [i64]) -> &'t [i64] {
        let targets = &targets[..targets.len().min(MAX_WATCHED)];
        let list = self.watching.entry(key).or_default();
        for t in targets {
            if !list.contains(t) {
                list.push(*t);
            }
            self.watchers.entry(*t).or_default().insert((user, key));
        }
        targets
    }

    /// Device `key` of `user` is gone: it watches nobody.
    pub(crate) fn unwatch(&mut self, user: i64, key: u64) {
        for t in self.watching.remove(&key).unwrap_or_default() {
            if let Some(w) = self.watchers.get_mut(&t) {
                w.remove(&(user, key));
                if w.is_empty() {
                    self.watchers.remove(&t);
                }
            }
        }
    }

    /// Who to tell about `user`: its peers and watchers that are online (by `online`), never
    /// itself.
    pub(crate) fn audience(&self, user: i64, online: impl Fn(i64) -> bool) -> Vec<i64> {
        let mut audience: HashSet<i64> = self.peers.get(&user).cloned().unwrap_or_default();
        if let Some(w) = self.watchers.get(&user) {
            audience.extend(w.iter().map(|(u, _)| *u));
        }
        audience.remove(&user);
        audience.into_iter().filter(|u| online(*u)).collect()
    }

    /// Marks `user` announced online; true the first time (it should be told).
    pub(crate) fn announce(&mut self, user: i64) -> bool {
        self.announced.insert(user)
    }

    /// Marks `user` no longer online; true when it had been announced (it should be told).
    pub(crate) fn retire(&mut self, user: i64) -> bool {
        self.announced.remove(&user)
    }

    /// Whether `user` was announced online.
    pub(crate) fn is_announced(&self, user: i64) -> bool {
        self.announced.contains(&user)
    }

    /// Users with an audience entry (stats).
    pub(crate) fn audiences(&self) -> usize {
        self.peers.len()
    }

    /// Users someone watches (stats).
    pub(crate) fn watched(&self) -> usize {
        self.watchers.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn sorted(mut v: Vec<i64>) -> Vec<i64> {
        v.sort_unstable();
        v
    }

    #[test]
    fn linked_peers_hear_each_other_but_never_themselves_and_only_while_online() {
        let mut a = Audiences::default();
        a.link(1, [2, 3, 1]);
        assert_eq!(sorted(a.audience(1, |_| true)), [2, 3]);
        assert_eq!(a.audience(2, |_| true), [1]);
        assert_eq!(a.audience(1, |u| u != 3), [2]);
        a.link_all(&[4, 5]);
        assert_eq!(a.audience(4, |_| true), [5]);
    }

    #[test]
    fn a_forgotten_user_leaves_no_entry_behind() {
        let mut a = Audiences::default();
        a.link(1, [2]);
        a.forget(1);
        assert_eq!(a.audiences(), 0);
        assert!(a.audience(2, |_| true).is_empty());
    }

    #[test]
    fn listening_links_back_and_stops_without_touching_the_users_own_audience() {
        let mut a = Audiences::default();
        a.listen(1, [2, 3]);
        assert_eq!(a.audience(2, |_| true), [1]);
        a.listen(4, [1]);
        a.stop_listening(1);
        assert!(a.audience(2, |_| true).is_empty());
        assert_eq!(a.audience(1, |_| true), [4]);
    }

    #[test]
    fn watchers_hear_until_their_device_goes_and_a_device_watches_at_most_the_limit() {
        let mut a = Audiences::default();
        assert_eq!(a.watch(7, 70, &[1, 2, 1]), [1, 2, 1]);
        assert_eq!(a.audience(1, |_| true), [7]);
        a.unwatch(7, 70);
        assert!(a.audience(1, |_| true).is_empty());
        assert_eq!(a.watched(), 0);
        let many: Vec<i64> = (0..2000).collect();
        assert_eq!(a.watch(8, 80, &many).len(), MAX_WATCHED);
        assert_eq!(a.watched(), MAX_WATCHED);
    }

    #[test]
    fn a_user_is_announced_once_and_retired_once() {
        let mut a = Audiences::default();
        assert!(a.announce(1));
        assert!(!a.announce(1));
        assert!(a.is_announced(1));
        assert!(a.retire(1));
        assert!(!a.retire(1));
    }
}
