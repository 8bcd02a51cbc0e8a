//! Per-port subscription table shared by all sessions. Pure: no I/O.
//!
//! Invariant (checked by a property test): a port has at most one unfiltered steal owner, or a set
//! of filtered stealers, never both, and each session appears at most once per port — so one
//! request is never given to two sessions. Unlike the reference agent (last subscriber silently
//! wins), a subscription that would take a port from another session is refused with
//! `PortAlreadyStolen`.

use std::{collections::HashMap, sync::Arc};

use super::filter::{FilterSet, RequestFilter, RequestView};
use crate::protocol::ResponseError;

/// Agent-internal session number (never on the wire).
pub type SessionId = u64;

#[derive(Clone, Debug, Default)]
pub enum Steal {
    #[default]
    None,
    Unfiltered(SessionId),
    Filtered(Vec<(SessionId, Arc<RequestFilter>)>),
}

/// Everything subscribed on one port.
#[derive(Clone, Debug, Default)]
pub struct PortSubscriptions {
    /// Mirroring sessions, each with an optional filter, in subscription order.
    pub mirror: Vec<(SessionId, Option<Arc<RequestFilter>>)>,
    pub steal: Steal,
    /// The filtered stealers' filters compiled together (rebuilt when they change).
    steal_index: Option<Arc<FilterSet>>,
}

impl PortSubscriptions {
    pub fn is_empty(&self) -> bool {
        self.mirror.is_empty() && matches!(self.steal, Steal::None)
    }

    /// Sessions whose filters match `request`, in subscription order (the first one gets it).
    pub fn filtered_stealers(&self, request: &RequestView<'_>) -> impl Iterator<Item = SessionId> {
        let matching = match (&self.steal, &self.steal_index) {
            (Steal::Filtered(list), Some(index)) => index
                .matching(request)
                .into_iter()
                .map(|i| list[i].0)
                .collect(),
            _ => Vec::new(),
        };
        matching.into_iter()
    }

    fn reindex(&mut self) {
        self.steal_index = match &self.steal {
            Steal::Filtered(list) => Some(Arc::new(FilterSet::new(
                list.iter().map(|(_, f)| f.as_ref()),
            ))),
            _ => None,
        };
    }

    /// Mirroring sessions interested in `request` (`None`: a connection that is not HTTP, which
    /// only unfiltered mirrors receive).
    pub fn mirrors_for(&self, request: Option<&RequestView<'_>>) -> Vec<SessionId> {
        self.mirror
            .iter()
            .filter(|(_, f)| match (f, request) {
                (None, _) => true,
                (Some(f), Some(r)) => f.matches(r),
                (Some(_), None) => false,
            })
            .map(|(s, _)| *s)
            .collect()
    }
}

/// What a change did to the set of ports needing redirection.
#[derive(Debug, PartialEq, Eq)]
pub enum PortChange {
    /// The port had no subscription before: start redirecting it.
    Activated,
    /// The port has no subscription left: stop redirecting it.
    Deactivated,
    Unchanged,
}

#[derive(Debug, Default)]
pub struct SubscriptionTable {
    /// Shared with connection tasks, which take a snapshot per request: changes copy on write.
    ports: HashMap<u16, Arc<PortSubscriptions>>,
}

impl SubscriptionTable {
    pub fn get(&self, port: u16) -> Option<&PortSubscriptions> {
        self.ports.get(&port).map(Arc::as_ref)
    }

    /// The port's subscriptions as they are now, without copying them.
    pub fn snapshot(&self, port: u16) -> Option<Arc<PortSubscriptions>> {
        self.ports.get(&port).cloned()
    }

    /// Adds or replaces `session`'s steal subscription on `port` (`filter: None` = unfiltered).
    pub fn steal(
        &mut self,
        session: SessionId,
        port: u16,
        filter: Option<Arc<RequestFilter>>,
    ) -> Result<PortChange, ResponseError> {
        let was_empty = self.get(port).is_none_or(PortSubscriptions::is_empty);
        let subs = Arc::make_mut(self.ports.entry(port).or_default());
        let others_hold = match &subs.steal {
            Steal::None => false,
            Steal::Unfiltered(owner) => *owner != session,
            Steal::Filtered(list) => list.iter().any(|(s, _)| *s != session),
        };
        let owned_unfiltered_by_other = matches!(subs.steal, Steal::Unfiltered(o) if o != session);
        match filter {
            None if others_hold => return Err(ResponseError::PortAlreadyStolen(port)),
            None => subs.steal = Steal::Unfiltered(session),
            Some(_) if owned_unfiltered_by_other => {
                return Err(ResponseError::PortAlreadyStolen(port));
            }
            Some(filter) => match &mut subs.steal {
                Steal::Filtered(list) => match list.iter_mut().find(|(s, _)| *s == session) {
                    Some(entry) => entry.1 = filter,
                    None => list.push((session, filter)),
                },
                // None, or this session's own unfiltered subscription being replaced.
                other => *other = Steal::Filtered(vec![(session, filter)]),
            },
        }
        subs.reindex();
        Ok(if was_empty {
            PortChange::Activated
        } else {
            PortChange::Unchanged
        })
    }

    /// Removes `session`'s steal subscription on `port`, if any.
    pub fn unsteal(&mut self, session: SessionId, port: u16) -> PortChange {
        let Some(subs) = self.ports.get_mut(&port).map(Arc::make_mut) else {
            return PortChange::Unchanged;
        };
        match &mut subs.steal {
            Steal::Unfiltered(owner) if *owner == session => subs.steal = Steal::None,
            Steal::Filtered(list) => {
                list.retain(|(s, _)| *s != session);
                if list.is_empty() {
                    subs.steal = Steal::None;
                }
            }
            _ => return PortChange::Unchanged,
        }
        subs.reindex();
        self.drop_if_empty(port)
    }

    /// Starts (or updates) mirroring. A plain subscribe keeps a filter set earlier.
    pub fn mirror(
        &mut self,
        session: SessionId,
        port: u16,
        filter: Option<Arc<RequestFilter>>,
    ) -> PortChange {
        let was_empty = self.get(port).is_none_or(PortSubscriptions::is_empty);
        let subs = Arc::make_mut(self.ports.entry(port).or_default());
        match subs.mirror.iter_mut().find(|(s, _)| *s == session) {
            Some(entry) => {
                if filter.is_some() {
                    entry.1 = filter;
                }
            }
            None => subs.mirror.push((session, filter)),
        }
        if was_empty {
            PortChange::Activated
        } else {
            PortChange::Unchanged
        }
    }

    pub fn unmirror(&mut self, session: SessionId, port: u16) -> PortChange {
        let Some(subs) = self.ports.get_mut(&port).map(Arc::make_mut) else {
            return PortChange::Unchanged;
        };
        let before = subs.mirror.len();
        subs.mirror.retain(|(s, _)| *s != session);
        if subs.mirror.len() == before {
            return PortChange::Unchanged;
        }
        self.drop_if_empty(port)
    }

    /// Removes everything `session` held; returns the ports left without any subscription.
    pub fn release(&mut self, session: SessionId) -> Vec<u16> {
        let ports: Vec<u16> = self.ports.keys().copied().collect();
        let mut emptied = Vec::new();
        for port in ports {
            let a = self.unsteal(session, port);
            let b = self.unmirror(session, port);
            if a == PortChange::Deactivated || b == PortChange::Deactivated {
                emptied.push(port);
            }
        }
        emptied.sort_unstable();
        emptied
    }

    fn drop_if_empty(&mut self, port: u16) -> PortChange {
        if self.get(port).is_some_and(PortSubscriptions::is_empty) {
            self.ports.remove(&port);
            PortChange::Deactivated
        } else {
            PortChange::Unchanged
        }
    }

    pub fn active_ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self.ports.keys().copied().collect();
        ports.sort_unstable();
        ports
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::protocol::{Filter, HttpFilter};

    fn filter(re: &str) -> Option<Arc<RequestFilter>> {
        Some(Arc::new(
            RequestFilter::compile(&HttpFilter::Header(Filter(re.into()))).unwrap(),
        ))
    }

    #[test]
    fn filtered_subscriptions_coexist_and_unfiltered_is_refused() {
        let mut t = SubscriptionTable::default();
        assert_eq!(t.steal(1, 80, filter("a")), Ok(PortChange::Activated));
        assert_eq!(t.steal(2, 80, filter("b")), Ok(PortChange::Unchanged));
        assert_eq!(
            t.steal(3, 80, None),
            Err(ResponseError::PortAlreadyStolen(80))
        );
        assert!(matches!(&t.get(80).unwrap().steal, Steal::Filtered(l) if l.len() == 2));
    }

    #[test]
    fn unfiltered_owner_blocks_everyone_else_but_may_replace_itself() {
        let mut t = SubscriptionTable::default();
        t.steal(1, 80, None).unwrap();
        assert_eq!(
            t.steal(2, 80, filter("a")),
            Err(ResponseError::PortAlreadyStolen(80))
        );
        assert_eq!(
            t.steal(2, 80, None),
            Err(ResponseError::PortAlreadyStolen(80))
        );
        assert_eq!(t.steal(1, 80, filter("a")), Ok(PortChange::Unchanged));
        assert!(matches!(&t.get(80).unwrap().steal, Steal::Filtered(l) if l.len() == 1));
        // The only filtered subscriber may go back to unfiltered.
        assert_eq!(t.steal(1, 80, None), Ok(PortChange::Unchanged));
    }

    #[test]
    fn last_subscription_deactivates_port_and_release_frees_all() {
        let mut t = SubscriptionTable::default();
        t.steal(1, 80, filter("a")).unwrap();
        assert_eq!(t.mirror(2, 80, None), PortChange::Unchanged);
        assert_eq!(t.mirror(2, 81, None), PortChange::Activated);
        assert_eq!(t.unsteal(1, 80), PortChange::Unchanged);
        assert_eq!(t.release(2), vec![80, 81]);
        assert!(t.active_ports().is_empty());
        assert_eq!(t.unsteal(1, 80), PortChange::Unchanged);
    }

    #[test]
    fn plain_mirror_subscribe_keeps_an_earlier_filter() {
        let mut t = SubscriptionTable::default();
        t.mirror(1, 80, filter("x-a"));
        t.mirror(1, 80, None);
        assert!(t.get(80).unwrap().mirror[0].1.is_some());
        assert_eq!(t.unmirror(1, 80), PortChange::Deactivated);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Steal(SessionId, u16, bool),
        Unsteal(SessionId, u16),
        Mirror(SessionId, u16),
        Release(SessionId),
    }

    fn op() -> impl Strategy<Value = Op> {
        let s = 0..4u64;
        let p = 80..83u16;
        prop_oneof![
            (s.clone(), p.clone(), any::<bool>()).prop_map(|(s, p, f)| Op::Steal(s, p, f)),
            (s.clone(), p.clone()).prop_map(|(s, p)| Op::Unsteal(s, p)),
            (s.clone(), p).prop_map(|(s, p)| Op::Mirror(s, p)),
            s.prop_map(Op::Release),
        ]
    }

    proptest! {
        #[test]
        fn never_two_owners_and_active_ports_are_tracked(ops in prop::collection::vec(op(), 1..60)) {
            let mut t = SubscriptionTable::default();
            let mut active = std::collections::BTreeSet::new();
            for op in ops {
                match op {
                    Op::Steal(s, p, filtered) => {
                        if let Ok(PortChange::Activated) = t.steal(s, p, if filtered { filter("x") } else { None }) {
                            prop_assert!(active.insert(p));
                        }
                    }
                    Op::Unsteal(s, p) => if t.unsteal(s, p) == PortChange::Deactivated {
                        prop_assert!(active.remove(&p));
                    },
                    Op::Mirror(s, p) => if t.mirror(s, p, None) == PortChange::Activated {
                        prop_assert!(active.insert(p));
                    },
                    Op::Release(s) => for p in t.release(s) {
                        prop_assert!(active.remove(&p));
                    },
                }
                prop_assert_eq!(t.active_ports(), active.iter().copied().collect::<Vec<_>>());
                for p in t.active_ports() {
                    if let Steal::Filtered(list) = &t.get(p).unwrap().steal {
                        let mut ids: Vec<_> = list.iter().map(|(s, _)| *s).collect();
                        ids.sort_unstable();
                        ids.dedup();
                        prop_assert_eq!(ids.len(), list.len());
                        prop_assert!(!list.is_empty());
                    }
                }
            }
        }
    }
}
