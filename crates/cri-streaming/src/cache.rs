//! Single-use tokens for pending streaming requests, as kubelet's
//! `requestCache`: a token is valid for a TTL (1 minute), at most
//! `max_in_flight` (1000) requests wait at once, and consuming a token
//! removes it, so a URL works once.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use tokio::time::Instant;

use crate::request::{AttachRequest, ExecRequest, PortForwardRequest};
use crate::Error;

/// A request waiting for its client to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pending {
    Exec(ExecRequest),
    Attach(AttachRequest),
    PortForward(PortForwardRequest),
}

struct Entry {
    request: Pending,
    expires: Instant,
}

#[derive(Default)]
struct State {
    entries: HashMap<String, Entry>,
    /// Tokens in insertion (= expiry) order; may name consumed tokens.
    order: VecDeque<(Instant, String)>,
}

pub(crate) struct RequestCache {
    ttl: Duration,
    max: usize,
    state: Mutex<State>,
}

impl RequestCache {
    pub(crate) fn new(ttl: Duration, max: usize) -> Self {
        Self {
            ttl,
            max,
            state: Mutex::new(State::default()),
        }
    }

    /// Stores `request` and returns its new token.
    pub(crate) fn insert(&self, request: Pending) -> Result<String, Error> {
        let now = Instant::now();
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        // drop expired entries (and the order records of consumed ones)
        while let Some((expires, token)) = st.order.front() {
            let consumed = !st.entries.contains_key(token);
            if *expires > now && !consumed {
                break;
            }
            if !consumed {
                let token = token.clone();
                st.entries.remove(&token);
            }
            st.order.pop_front();
        }
        if st.entries.len() >= self.max {
            return Err(Error::TooManyRequests { max: self.max });
        }
        if st.order.len() > 2 * self.max {
            let State { entries, order } = &mut *st;
            order.retain(|(_, t)| entries.contains_key(t));
        }
        let token = new_token();
        let expires = now + self.ttl;
        st.entries.insert(token.clone(), Entry { request, expires });
        st.order.push_back((expires, token.clone()));
        Ok(token)
    }

    /// Takes the request of `token` if it exists and has not expired.
    pub(crate) fn consume(&self, token: &str) -> Option<Pending> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let entry = st.entries.remove(token)?;
        (entry.expires > Instant::now()).then_some(entry.request)
    }
}

/// 128 random bits (a v4 UUID's randomness), URL-safe base64.
fn new_token() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec() -> Pending {
        Pending::Exec(ExecRequest {
            container_id: "c".into(),
            cmd: vec!["true".into()],
            stdout: true,
            ..Default::default()
        })
    }

    #[test]
    fn token_is_single_use() {
        let cache = RequestCache::new(Duration::from_secs(60), 10);
        let token = cache.insert(exec()).unwrap();
        assert_eq!(cache.consume(&token), Some(exec()));
        assert_eq!(cache.consume(&token), None);
        assert_eq!(cache.consume("unknown"), None);
    }

    #[test]
    fn tokens_are_distinct_and_url_safe() {
        let cache = RequestCache::new(Duration::from_secs(60), 10);
        let a = cache.insert(exec()).unwrap();
        let b = cache.insert(exec()).unwrap();
        assert_ne!(a, b);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert!(a.len() >= 20);
    }

    #[test]
    fn refuses_more_than_max_in_flight() {
        let cache = RequestCache::new(Duration::from_secs(60), 3);
        for _ in 0..3 {
            cache.insert(exec()).unwrap();
        }
        let err = cache.insert(exec()).unwrap_err();
        assert!(matches!(err, Error::TooManyRequests { max: 3 }));
        assert_eq!(err.kind(), stevedore_types::ErrorKind::ResourceExhausted);
    }

    #[test]
    fn consumed_tokens_free_their_slot() {
        let cache = RequestCache::new(Duration::from_secs(60), 2);
        let a = cache.insert(exec()).unwrap();
        cache.insert(exec()).unwrap();
        cache.consume(&a).unwrap();
        cache.insert(exec()).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn expired_tokens_are_gone_and_free_their_slot() {
        let cache = RequestCache::new(Duration::from_secs(60), 1);
        let token = cache.insert(exec()).unwrap();
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(cache.consume(&token), None);
        let other = cache.insert(exec()).unwrap();
        tokio::time::advance(Duration::from_secs(61)).await;
        cache.insert(exec()).unwrap();
        assert_eq!(cache.consume(&other), None);
    }
}
