//! Duplicate detection for incoming requests (RFC 6733 §6.1.4, §5.5.4): keyed by (Origin-Host, End-to-End
//! id); a retransmission (T flag or not) gets the cached answer instead of a second processing.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::codec::{EndToEndId, Message};

/// What the cache knows of a request.
#[derive(Clone, Debug, PartialEq)]
pub enum Seen {
    /// First time: process it.
    New,
    /// Being processed: drop the copy (the answer will go out once).
    InProgress,
    /// Answered: send this answer again.
    Answered(Message),
}

/// A bounded cache: entries expire after `window`, and the oldest go first beyond `capacity`.
#[derive(Debug)]
pub struct DuplicateCache {
    window: Duration,
    capacity: usize,
    entries: HashMap<(String, EndToEndId), Option<Message>>,
    order: VecDeque<(Instant, (String, EndToEndId))>,
}

impl DuplicateCache {
    /// A cache keeping requests for `window`, at most `capacity` of them.
    pub fn new(window: Duration, capacity: usize) -> DuplicateCache {
        DuplicateCache { window, capacity, entries: HashMap::new(), order: VecDeque::new() }
    }

    /// Records a request and says whether it was seen before.
    pub fn check(&mut self, now: Instant, origin_host: &str, e2e: EndToEndId) -> Seen {
        if self.capacity == 0 {
            return Seen::New;
        }
        self.expire(now);
        let key = (origin_host.to_ascii_lowercase(), e2e);
        match self.entries.get(&key) {
            Some(Some(answer)) => Seen::Answered(answer.clone()),
            Some(None) => Seen::InProgress,
            None => {
                while self.entries.len() >= self.capacity {
                    match self.order.pop_front() {
                        Some((_, old)) => {
                            self.entries.remove(&old);
                        }
                        None => break,
                    }
                }
                self.entries.insert(key.clone(), None);
                self.order.push_back((now, key));
                Seen::New
            }
        }
    }

    /// Whether the request is held (being processed or answered), without recording it.
    pub fn contains(&self, origin_host: &str, e2e: EndToEndId) -> bool {
        self.entries.contains_key(&(origin_host.to_ascii_lowercase(), e2e))
    }

    /// Stores the answer sent for a request.
    pub fn answered(&mut self, origin_host: &str, e2e: EndToEndId, answer: &Message) {
        if self.capacity == 0 {
            return;
        }
        if let Some(slot) = self.entries.get_mut(&(origin_host.to_ascii_lowercase(), e2e)) {
            *slot = Some(answer.clone());
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        while let Some((t, _)) = self.order.front() {
            if now.duration_since(*t) < self.window {
                break;
            }
            let (_, key) = self.order.pop_front().expect("front exists");
            self.entries.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{AppId, CommandCode};

    #[test]
    fn retransmissions_get_the_cached_answer_until_the_window_ends() {
        let mut c = DuplicateCache::new(Duration::from_secs(30), 100);
        let t0 = Instant::now();
        assert_eq!(c.check(t0, "as1.example.net", EndToEndId(7)), Seen::New);
        assert_eq!(c.check(t0, "AS1.example.net", EndToEndId(7)), Seen::InProgress);
        let answer = Message::request(CommandCode::CREDIT_CONTROL, AppId::CREDIT_CONTROL);
        c.answered("as1.example.net", EndToEndId(7), &answer);
        assert_eq!(c.check(t0 + Duration::from_secs(29), "as1.example.net", EndToEndId(7)), Seen::Answered(answer));
        assert_eq!(c.check(t0, "as2.example.net", EndToEndId(7)), Seen::New, "another origin");
        assert_eq!(c.check(t0 + Duration::from_secs(30), "as1.example.net", EndToEndId(7)), Seen::New);
    }

    #[test]
    fn capacity_bounds_memory() {
        let mut c = DuplicateCache::new(Duration::from_secs(30), 3);
        let t0 = Instant::now();
        for i in 0..10 {
            c.check(t0, "h", EndToEndId(i));
        }
        assert_eq!(c.len(), 3);
        assert_eq!(c.check(t0, "h", EndToEndId(9)), Seen::InProgress);
        assert_eq!(c.check(t0, "h", EndToEndId(0)), Seen::New);
    }
}
