//! Which live call each user is in, and what a new call meets: busy detection and glare (two
//! users calling each other at once) as plain state and decisions, in the style of
//! [`super::machine`]. The registry actor owns one and does the I/O around it: it starts the
//! call actors, ends a call that gives way and tells the users.
//!
//! `A` is what reaches a call (the registry keeps the call actor's address); the unit tests
//! use numbers.

use std::collections::HashMap;

/// What the directory knows of one live call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LiveCall<A> {
    /// What reaches the call.
    pub addr: A,
    /// Who called.
    pub caller: i64,
    /// Who was rung.
    pub callees: Vec<i64>,
    /// A group call (members may be in other calls; each member is busy once they join).
    pub group: bool,
    /// Someone accepted.
    pub answered: bool,
}

/// What a new call meets, decided before anything changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// The caller is in a call already.
    CallerBusy,
    /// A live call has this id already.
    IdTaken,
    /// The callee of a one-to-one call, or every member of a group call, is in another call.
    CalleesBusy,
    /// The callee is ringing the caller right now and has the lower id: that call stands and
    /// this one is dropped.
    GlareLost {
        /// The call that stands.
        existing: String,
    },
    /// The callee is ringing the caller right now and the caller has the lower id: that call
    /// gives way ([`CallDirectory::remove`]) and this one rings.
    GlareWon {
        /// The call that gives way.
        replaced: String,
        /// Who to ring.
        callees: Vec<i64>,
    },
    /// Ring these (a group call leaves out members in other calls).
    Ring {
        /// Who to ring.
        callees: Vec<i64>,
    },
}

/// The live calls and who is in which.
#[derive(Debug)]
pub(crate) struct CallDirectory<A> {
    calls: HashMap<String, LiveCall<A>>,
    user_call: HashMap<i64, String>,
}

impl<A> Default for CallDirectory<A> {
    fn default() -> Self {
        Self {
            calls: HashMap::new(),
            user_call: HashMap::new(),
        }
    }
}

impl<A> CallDirectory<A> {
    /// What a call `call_id` from `caller` to `callees` meets. The call of the user with the
    /// lower id wins a glare, whatever the arrival order.
    pub(crate) fn admit(
        &self,
        caller: i64,
        call_id: &str,
        callees: &[i64],
        group: bool,
    ) -> Admission {
        let crossing = match callees {
            [callee] if !group => self.user_call.get(callee).and_then(|id| {
                let live = self.calls.get(id)?;
                (!live.group
                    && !live.answered
                    && live.caller == *callee
                    && live.callees == [caller])
                .then(|| id.clone())
            }),
            _ => None,
        };
        if crossing.is_none() && self.user_call.contains_key(&caller) {
            return Admission::CallerBusy;
        }
        if self.calls.contains_key(call_id) {
            return Admission::IdTaken;
        }
        if let (Some(existing), [callee]) = (crossing, callees) {
            return if *callee < caller {
                Admission::GlareLost { existing }
            } else {
                Admission::GlareWon {
                    replaced: existing,
                    callees: callees.to_vec(),
                }
            };
        }
        if group {
            let free: Vec<i64> = callees
                .iter()
                .copied()
                .filter(|u| !self.user_call.contains_key(u))
                .collect();
            if free.is_empty() {
                return Admission::CalleesBusy;
            }
            return Admission::Ring { callees: free };
        }
        if let [callee] = callees {
            if self.user_call.contains_key(callee) {
                return Admission::CalleesBusy;
            }
        }
        Admission::Ring {
            callees: callees.to_vec(),
        }
    }

    /// Records a call that now rings: its caller is busy, and so are the callees of a
    /// one-to-one call (a group member once they join, [`CallDirectory::membership`]).
    pub(crate) fn insert(&mut self, id: String, call: LiveCall<A>) {
        self.user_call.insert(call.caller, id.clone());
        if !call.group {
            for callee in &call.callees {
                self.user_call.insert(*callee, id.clone());
            }
        }
        self.calls.insert(id, call);
    }

    /// Forgets a call (it ended, or gave way) and frees everyone in it.
    pub(crate) fn remove(&mut self, id: &str) -> Option<LiveCall<A>> {
        self.user_call.retain(|_, call| call != id);
        self.calls.remove(id)
    }

    /// A member joined a call (they are busy and the call is answered) or left it (free,
    /// unless they are in another call by now).
    pub(crate) fn membership(&mut self, id: &str, user: i64, active: bool) {
        if active {
            if let Some(live) = self.calls.get_mut(id) {
                live.answered = true;
                self.user_call.insert(user, id.to_owned());
            }
        } else if self.user_call.get(&user).is_some_and(|call| call == id) {
            self.user_call.remove(&user);
        }
    }

    /// A live call by its id.
    pub(crate) fn get(&self, id: &str) -> Option<&LiveCall<A>> {
        self.calls.get(id)
    }

    /// The id of the call a user is in.
    pub(crate) fn call_of(&self, user: i64) -> Option<&String> {
        self.user_call.get(&user)
    }

    /// The call a user is in.
    pub(crate) fn live_call_of(&self, user: i64) -> Option<&LiveCall<A>> {
        self.calls.get(self.user_call.get(&user)?)
    }

    /// Every live call with its id.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&String, &LiveCall<A>)> {
        self.calls.iter()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn call(caller: i64, callees: &[i64], group: bool) -> LiveCall<u8> {
        LiveCall {
            addr: 0,
            caller,
            callees: callees.to_vec(),
            group,
            answered: false,
        }
    }

    #[test]
    fn a_free_callee_is_rung_and_both_parties_are_busy_after() {
        let mut d = CallDirectory::default();
        assert_eq!(
            d.admit(1, "c1", &[2], false),
            Admission::Ring { callees: vec![2] }
        );
        d.insert("c1".into(), call(1, &[2], false));
        assert_eq!(d.call_of(1).map(String::as_str), Some("c1"));
        assert_eq!(d.call_of(2).map(String::as_str), Some("c1"));
        assert_eq!(d.admit(3, "c2", &[2], false), Admission::CalleesBusy);
        assert_eq!(d.admit(1, "c3", &[3], false), Admission::CallerBusy);
        assert_eq!(d.admit(3, "c1", &[4], false), Admission::IdTaken);
        d.remove("c1");
        assert_eq!(d.call_of(2), None);
        assert_eq!(
            d.admit(3, "c2", &[2], false),
            Admission::Ring { callees: vec![2] }
        );
    }

    #[test]
    fn crossing_calls_are_won_by_the_lower_id_whatever_the_order() {
        // 2 rings 1, then 1 calls 2: 1 has the lower id, so 2's call gives way.
        let mut d = CallDirectory::default();
        d.insert("from2".into(), call(2, &[1], false));
        assert_eq!(
            d.admit(1, "from1", &[2], false),
            Admission::GlareWon {
                replaced: "from2".into(),
                callees: vec![2]
            }
        );
        // 1 rings 2, then 2 calls 1: 1's call stands.
        let mut d = CallDirectory::default();
        d.insert("from1".into(), call(1, &[2], false));
        assert_eq!(
            d.admit(2, "from2", &[1], false),
            Admission::GlareLost {
                existing: "from1".into()
            }
        );
    }

    #[test]
    fn an_answered_call_is_not_glare_but_busy() {
        let mut d = CallDirectory::default();
        d.insert("from2".into(), call(2, &[1], false));
        d.membership("from2", 1, true);
        assert_eq!(d.admit(1, "from1", &[2], false), Admission::CallerBusy);
        assert_eq!(d.live_call_of(1).map(|c| c.answered), Some(true));
    }

    #[test]
    fn a_group_call_rings_the_free_members_and_members_are_busy_only_once_joined() {
        let mut d = CallDirectory::default();
        d.insert("busy".into(), call(5, &[6], false));
        assert_eq!(
            d.admit(1, "g", &[2, 5, 3], true),
            Admission::Ring {
                callees: vec![2, 3]
            }
        );
        d.insert("g".into(), call(1, &[2, 3], true));
        assert_eq!(d.call_of(2), None);
        d.membership("g", 2, true);
        assert_eq!(d.call_of(2).map(String::as_str), Some("g"));
        d.membership("g", 2, false);
        assert_eq!(d.call_of(2), None);
        assert_eq!(d.admit(7, "g2", &[5, 6], true), Admission::CalleesBusy);
    }

    #[test]
    fn leaving_a_call_one_has_already_left_frees_nothing_else() {
        let mut d = CallDirectory::default();
        d.insert("a".into(), call(1, &[2], false));
        d.remove("a");
        d.insert("b".into(), call(3, &[2], false));
        d.membership("a", 2, false);
        assert_eq!(d.call_of(2).map(String::as_str), Some("b"));
    }
}
