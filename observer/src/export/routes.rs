//! Which route templates get a metric label of their own.
//!
//! The set is bounded by volume over a window: at most `max` routes are labelled; a new
//! route takes a free place at once, and at the end of each window the places go to the
//! `max` busiest routes of that window (labelled or waiting), so a burst of early routes
//! does not hold the places forever. Routes without a place are `other`.
//!
//! A second guard watches the shape of the routes: when one parent (`/shop`) has more
//! distinct literal children than a few dozen, those children are values, not
//! endpoints (slugs, names): they become `{id}`, and the routes already labelled with
//! them are removed. Configured patterns are taken as they are.

use std::{
    collections::{HashMap, HashSet},
    hash::BuildHasher as _,
    time::{Duration, SystemTime},
};

use crate::route::ID;

/// Foldhash, seeded per map.
type Fast = foldhash::fast::RandomState;

/// The label of exchanges whose route has no place.
pub const OTHER_LABEL: &str = "other";
/// The number of [`OTHER_LABEL`].
pub const OTHER: u32 = u32::MAX;
/// Distinct literal children of one parent beyond which they are values.
const FANOUT: usize = 32;
/// The same for the root (`/about`, `/api`, ...), where endpoints are many.
const ROOT_FANOUT: usize = 100;
/// Most parents whose children are counted.
const MAX_PARENTS: usize = 4096;
/// Most templates remembered with their label.
const MAX_CACHED: usize = 8192;

/// Where a template's exchanges are counted.
#[derive(Clone)]
enum Slot {
    Label(u32),
    /// No place yet: counted for the next window's choice under this candidate.
    Waiting(Box<str>),
}

#[derive(Default)]
struct Children {
    seen: HashSet<u64, Fast>,
    values: bool,
}

pub struct RouteLabels {
    max: usize,
    window: Duration,
    window_start: Option<SystemTime>,
    ids: HashMap<Box<str>, u32, Fast>,
    names: Vec<Option<Box<str>>>,
    free: Vec<u32>,
    /// Exchanges per labelled route this window, by number.
    volume: Vec<u64>,
    /// Exchanges per route without a place this window (bounded).
    waiting: HashMap<Box<str>, u64, Fast>,
    cache: HashMap<Box<str>, Slot, Fast>,
    parents: HashMap<Box<str>, Children, Fast>,
    hasher: Fast,
    /// Routes that lost their place since the caller last looked.
    evicted: Vec<u32>,
}

impl RouteLabels {
    pub fn new(max: usize, window: Duration) -> Self {
        Self {
            max,
            window,
            window_start: None,
            ids: HashMap::default(),
            names: Vec::new(),
            free: Vec::new(),
            volume: Vec::new(),
            waiting: HashMap::default(),
            cache: HashMap::default(),
            parents: HashMap::default(),
            hasher: Fast::default(),
            evicted: Vec::new(),
        }
    }

    /// The label of route number `id`.
    pub fn name(&self, id: u32) -> &str {
        self.names
            .get(id as usize)
            .and_then(|n| n.as_deref())
            .unwrap_or(OTHER_LABEL)
    }

    /// Routes with a place.
    pub fn labelled(&self) -> usize {
        self.ids.len()
    }

    /// Routes that lost their place since the last call (their series are to go).
    pub fn take_evicted(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.evicted)
    }

    /// The route number of one exchange on `template` (a template from
    /// [`RouteTemplate`](crate::route::RouteTemplate), `configured` when it came from a
    /// pattern), or [`OTHER`]; `success` says whether it answered below 400 (only those
    /// teach the shape of the routes: a scanner's 404s do not).
    pub fn label(
        &mut self,
        template: &str,
        configured: bool,
        success: bool,
        now: SystemTime,
    ) -> u32 {
        match self.window_start {
            Some(start) if now.duration_since(start).unwrap_or_default() >= self.window => {
                self.roll();
                self.window_start = Some(now);
            }
            None => self.window_start = Some(now),
            _ => {}
        }
        if let Some(slot) = self.cache.get(template) {
            return match slot {
                Slot::Label(id) => {
                    self.volume[*id as usize] += 1;
                    *id
                }
                Slot::Waiting(candidate) => {
                    if let Some(n) = self.waiting.get_mut(candidate) {
                        *n += 1;
                    }
                    OTHER
                }
            };
        }
        let candidate: Box<str> = if configured {
            template.into()
        } else {
            self.shape(template, success).into()
        };
        let slot = match self.ids.get(&candidate) {
            Some(&id) => Slot::Label(id),
            None if self.ids.len() < self.max => Slot::Label(self.place(candidate)),
            None => {
                if self.waiting.len() < 4 * self.max {
                    self.waiting.entry(candidate.clone()).or_insert(0);
                }
                Slot::Waiting(candidate)
            }
        };
        if self.cache.len() >= MAX_CACHED {
            self.cache.clear();
        }
        self.cache.insert(template.into(), slot);
        self.label(template, configured, success, now)
    }

    /// Give `name` a place and its number.
    fn place(&mut self, name: Box<str>) -> u32 {
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.names.push(None);
                self.volume.push(0);
                (self.names.len() - 1) as u32
            }
        };
        self.names[id as usize] = Some(name.clone());
        self.volume[id as usize] = 0;
        self.ids.insert(name, id);
        id
    }

    fn evict(&mut self, id: u32) {
        if let Some(name) = self.names[id as usize].take() {
            self.ids.remove(&name);
            self.free.push(id);
            self.evicted.push(id);
        }
    }

    /// The end of a window: the places go to the busiest routes of the window.
    pub fn roll(&mut self) {
        let mut all: Vec<(u64, bool, Box<str>)> = self
            .ids
            .iter()
            .map(|(name, &id)| (self.volume[id as usize], true, name.clone()))
            .chain(self.waiting.drain().map(|(name, n)| (n, false, name)))
            .collect();
        // Busiest first; on a tie the route that has its place keeps it.
        all.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
        for (_, labelled, name) in all.iter().skip(self.max) {
            if *labelled {
                let id = self.ids[name];
                self.evict(id);
            }
        }
        for (_, labelled, name) in all.into_iter().take(self.max) {
            if !labelled {
                self.place(name);
            }
        }
        self.volume.iter_mut().for_each(|n| *n = 0);
        self.cache.clear();
    }

    /// `template` with the literal children of value-holding parents made `{id}`;
    /// learns the children of each parent from successful exchanges.
    fn shape(&mut self, template: &str, success: bool) -> String {
        let Some(rest) = template.strip_prefix('/') else {
            return template.to_string();
        };
        let mut out = String::with_capacity(template.len());
        for seg in rest.split('/') {
            let literal = !seg.is_empty() && seg != ID && !seg.starts_with("{...");
            if literal && self.child_is_value(&out, seg, success) {
                out.push('/');
                out.push_str(ID);
            } else {
                out.push('/');
                out.push_str(seg);
            }
        }
        out
    }

    /// Whether `seg` under `parent` (a shaped prefix) is a value.
    fn child_is_value(&mut self, parent: &str, seg: &str, success: bool) -> bool {
        if !success {
            return self.parents.get(parent).is_some_and(|c| c.values);
        }
        if !self.parents.contains_key(parent) && self.parents.len() >= MAX_PARENTS {
            return false;
        }
        let hash = self.hasher.hash_one(seg);
        let limit = if parent.is_empty() {
            ROOT_FANOUT
        } else {
            FANOUT
        };
        let children = self.parents.entry(parent.into()).or_default();
        if children.values {
            return true;
        }
        children.seen.insert(hash);
        if children.seen.len() <= limit {
            return false;
        }
        children.values = true;
        children.seen = HashSet::default();
        self.found_values_under(parent);
        true
    }

    /// `parent`'s children turned out to be values: routes labelled with one lose their
    /// place, and remembered templates are shaped again.
    fn found_values_under(&mut self, parent: &str) {
        let prefix = format!("{parent}/");
        let doomed: Vec<u32> = self
            .ids
            .iter()
            .filter(|(name, _)| {
                name.strip_prefix(prefix.as_str()).is_some_and(|rest| {
                    let child = rest.split('/').next().unwrap_or_default();
                    !child.is_empty() && child != ID
                })
            })
            .map(|(_, &id)| id)
            .collect();
        for id in doomed {
            self.evict(id);
        }
        self.waiting
            .retain(|name, _| !name.starts_with(prefix.as_str()));
        self.cache.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000)
    }

    fn label(r: &mut RouteLabels, template: &str, at: SystemTime) -> String {
        let id = r.label(template, false, true, at);
        r.name(id).to_string()
    }

    #[test]
    fn places_go_to_the_busiest_routes_of_a_window() {
        let window = Duration::from_secs(60);
        let mut r = RouteLabels::new(3, window);
        let now = t0();
        // First come: three early routes take the places.
        for early in ["/a", "/b", "/c"] {
            assert_eq!(label(&mut r, early, now), early);
        }
        assert_eq!(label(&mut r, "/busy", now), OTHER_LABEL);
        // In this window /busy and /c are busy, /a a little, /b not at all.
        for _ in 0..50 {
            label(&mut r, "/busy", now);
            label(&mut r, "/c", now);
        }
        label(&mut r, "/a", now);
        assert!(r.take_evicted().is_empty());
        // The next window: /b lost its place to /busy.
        let later = now + window;
        assert_eq!(label(&mut r, "/busy", later), "/busy");
        assert_eq!(label(&mut r, "/c", later), "/c");
        assert_eq!(label(&mut r, "/a", later), "/a");
        assert_eq!(label(&mut r, "/b", later), OTHER_LABEL);
        assert_eq!(r.take_evicted().len(), 1);
        assert_eq!(r.labelled(), 3);
    }

    #[test]
    fn many_children_of_one_parent_are_values() {
        let mut r = RouteLabels::new(500, Duration::from_secs(60));
        let now = t0();
        assert_eq!(label(&mut r, "/shop/cart", now), "/shop/cart");
        assert_eq!(
            label(&mut r, "/shop/alice/orders", now),
            "/shop/alice/orders"
        );
        for i in 0..FANOUT {
            label(
                &mut r,
                &format!(
                    "/shop/name{}x/orders",
                    "abcdefghijklmnopqrstuvwxyzABCDEFGH".as_bytes()[i] as char
                ),
                now,
            );
        }
        // Past the limit every child is a value, and the labels that named one are gone.
        assert_eq!(label(&mut r, "/shop/bob/orders", now), "/shop/{id}/orders");
        assert_eq!(
            label(&mut r, "/shop/alice/orders", now),
            "/shop/{id}/orders"
        );
        assert_eq!(label(&mut r, "/shop/cart", now), "/shop/{id}");
        let evicted = r.take_evicted();
        assert_eq!(evicted.len(), FANOUT, "every labelled child");
        for id in 0..r.names.len() as u32 {
            let name = r.name(id);
            assert!(!name.contains("alice") && !name.contains("name"), "{name}");
        }
        // Failures teach nothing: a scanner's 404s leave the root alone.
        let mut r = RouteLabels::new(500, Duration::from_secs(60));
        for i in 0..ROOT_FANOUT * 2 {
            r.label(&format!("/scan{}", "x".repeat(i)), false, false, now);
        }
        assert_eq!(label(&mut r, "/api", now), "/api");
        // Configured routes are taken as they are.
        let id = r.label("/users/{user}", true, true, now);
        assert_eq!(r.name(id), "/users/{user}");
    }
}
