//! In-process result cache: answers keyed by the normalized request (its parsed parameters), with
//! request coalescing and refresh-ahead, bounded in entries and bytes.
//!
//! - **Freshness bound** `B` (`QUERY_FRESHNESS_MS`, default 2000; 0 turns the cache off and every
//!   request reads ClickHouse). An answer's age counts from the moment its ClickHouse query was
//!   started, so it never understates how old the data is. The cache serves an answer only while
//!   its age is under `B`; past `B` the request waits for a fresh load.
//! - **Coalescing** (single flight): all requests that miss one key while it loads wait for that one
//!   load. The load runs as its own task, so a client that goes away does not cancel it for others.
//! - **Refresh-ahead**: a hit on an answer older than `B/2` starts one background load and is served
//!   the cached answer meanwhile, so a key in steady use is refreshed before it expires.
//! - **Errors are never cached**: every waiter of a failed load gets its error; the next request
//!   loads again. A failed refresh leaves the (still fresh) answer in place until `B`.
//! - **Bounds**: at most `max_entries` keys (loading or loaded) and `max_bytes` of answers; the least
//!   recently used entry goes first. An answer larger than `max_bytes / 8` is served, not stored.
//!   Expired answers are dropped whenever an entry is added or loaded, so the memory held is that of
//!   answers younger than the bound.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use tokio::time::Instant;

/// What an answer costs the cache, in bytes.
pub(crate) trait Weigh {
    fn weight(&self) -> usize;
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) freshness: Duration,
    pub(crate) max_entries: usize,
    pub(crate) max_bytes: usize,
}

/// The cache's counters, registered by the caller in the service's registry.
#[derive(Clone, Default)]
pub(crate) struct Metrics {
    pub(crate) hits: Counter,
    pub(crate) misses: Counter,
    pub(crate) coalesced: Counter,
    pub(crate) refreshes: Counter,
    pub(crate) entries: Gauge,
    pub(crate) bytes: Gauge,
}

/// A cached or freshly loaded answer and how old its data is.
#[derive(Debug)]
pub(crate) struct Answer<V> {
    pub(crate) value: Arc<V>,
    pub(crate) age: Duration,
}

#[derive(Debug)]
pub(crate) enum CacheError<E> {
    /// The load failed; every waiter gets the same error.
    Load(Arc<E>),
    /// The load's task ended without an answer (it panicked).
    Lost,
}

type Outcome<V, E> = Option<Result<(Arc<V>, Instant), Arc<E>>>;

struct Loaded<V> {
    value: Arc<V>,
    at: Instant,
    weight: usize,
}

struct Entry<V, E> {
    loaded: Option<Loaded<V>>,
    loading: Option<watch::Receiver<Outcome<V, E>>>,
    last_used: u64,
}

struct Inner<K, V, E> {
    map: HashMap<K, Entry<V, E>>,
    bytes: usize,
    tick: u64,
}

pub(crate) struct Cache<K, V, E> {
    limits: Limits,
    inner: Mutex<Inner<K, V, E>>,
    metrics: Metrics,
}

impl<K, V, E> Cache<K, V, E>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Weigh + Send + Sync + 'static,
    E: Send + Sync + 'static,
{
    pub(crate) fn new(limits: Limits, metrics: Metrics) -> Arc<Self> {
        Arc::new(Self { limits, inner: Mutex::new(Inner { map: HashMap::new(), bytes: 0, tick: 0 }), metrics })
    }

    /// The answer for `key`: cached if younger than the bound, else from `load` (shared with every
    /// concurrent request for the same key).
    pub(crate) async fn get<F, Fut>(self: &Arc<Self>, key: K, load: F) -> Result<Answer<V>, CacheError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        let bound = self.limits.freshness;
        if bound.is_zero() {
            let started = Instant::now();
            let value = load().await.map_err(|e| CacheError::Load(Arc::new(e)))?;
            return Ok(Answer { value: Arc::new(value), age: started.elapsed() });
        }
        let mut waiting = {
            let mut inner = self.inner.lock().expect("cache lock");
            let now = Instant::now();
            inner.tick += 1;
            let tick = inner.tick;
            let entry = inner.map.get_mut(&key);
            match entry {
                Some(entry) if entry.loaded.as_ref().is_some_and(|l| now - l.at < bound) => {
                    entry.last_used = tick;
                    let loaded = entry.loaded.as_ref().expect("checked above");
                    let answer = Answer { value: loaded.value.clone(), age: now - loaded.at };
                    if answer.age >= bound / 2 && entry.loading.is_none() {
                        self.metrics.refreshes.inc();
                        entry.loading = Some(self.start(key, load()));
                    }
                    self.metrics.hits.inc();
                    return Ok(answer);
                }
                Some(Entry { loading: Some(receiver), last_used, .. }) => {
                    *last_used = tick;
                    self.metrics.coalesced.inc();
                    receiver.clone()
                }
                _ => {
                    self.metrics.misses.inc();
                    let receiver = self.start(key.clone(), load());
                    match inner.map.get_mut(&key) {
                        Some(entry) => {
                            entry.loading = Some(receiver.clone());
                            entry.last_used = tick;
                        }
                        None => {
                            let entry = Entry { loaded: None, loading: Some(receiver.clone()), last_used: tick };
                            inner.map.insert(key, entry);
                            self.evict(&mut inner);
                        }
                    }
                    receiver
                }
            }
        };
        let outcome = waiting.wait_for(Option::is_some).await.map_err(|_| CacheError::Lost)?;
        match outcome.as_ref().expect("waited for an outcome") {
            Ok((value, at)) => Ok(Answer { value: value.clone(), age: at.elapsed() }),
            Err(e) => Err(CacheError::Load(e.clone())),
        }
    }

    /// Runs one load as its own task; its outcome goes to the cache and to every waiter.
    fn start(
        self: &Arc<Self>,
        key: K,
        load: impl Future<Output = Result<V, E>> + Send + 'static,
    ) -> watch::Receiver<Outcome<V, E>> {
        let (sender, receiver) = watch::channel(None);
        let cache = self.clone();
        let started = Instant::now();
        tokio::spawn(async move {
            let result = load.await;
            let outcome = cache.finish(key, started, result);
            // Nobody waiting (a refresh, or every client left) is fine.
            let _ = sender.send(Some(outcome));
        });
        receiver
    }

    fn finish(&self, key: K, started: Instant, result: Result<V, E>) -> Result<(Arc<V>, Instant), Arc<E>> {
        let mut inner = self.inner.lock().expect("cache lock");
        let inner = &mut *inner;
        let bound = self.limits.freshness;
        let outcome = match result {
            Ok(value) => {
                let weight = value.weight();
                let value = Arc::new(value);
                // An entry evicted while it loaded stays out; its waiters still get the answer.
                if let Some(entry) = inner.map.get_mut(&key) {
                    entry.loading = None;
                    if let Some(old) = entry.loaded.take() {
                        inner.bytes -= old.weight;
                    }
                    if weight <= self.limits.max_bytes / 8 {
                        entry.loaded = Some(Loaded { value: value.clone(), at: started, weight });
                        inner.bytes += weight;
                    } else {
                        inner.map.remove(&key);
                    }
                }
                self.evict(inner);
                Ok((value, started))
            }
            Err(e) => {
                if let Some(entry) = inner.map.get_mut(&key) {
                    entry.loading = None;
                    // A failed refresh keeps a still-fresh answer; an expired one goes.
                    if entry.loaded.as_ref().is_some_and(|l| l.at.elapsed() >= bound) {
                        inner.bytes -= entry.loaded.take().map_or(0, |l| l.weight);
                    }
                    if entry.loaded.is_none() {
                        inner.map.remove(&key);
                    }
                }
                Err(Arc::new(e))
            }
        };
        self.metrics.entries.set(inner.map.len() as i64);
        self.metrics.bytes.set(inner.bytes as i64);
        outcome
    }

    /// Drops expired answers (they are never served again, so they hold memory for nothing), then
    /// least recently used entries until both bounds hold.
    fn evict(&self, inner: &mut Inner<K, V, E>) {
        let bound = self.limits.freshness;
        let mut freed = 0;
        inner.map.retain(|_, e| {
            let expired = e.loading.is_none() && e.loaded.as_ref().is_none_or(|l| l.at.elapsed() >= bound);
            if expired {
                freed += e.loaded.as_ref().map_or(0, |l| l.weight);
            }
            !expired
        });
        inner.bytes -= freed;
        while inner.map.len() > self.limits.max_entries || inner.bytes > self.limits.max_bytes {
            let Some(oldest) = inner.map.iter().min_by_key(|(_, e)| e.last_used).map(|(k, _)| k.clone()) else {
                break;
            };
            if let Some(entry) = inner.map.remove(&oldest) {
                inner.bytes -= entry.loaded.map_or(0, |l| l.weight);
            }
        }
        self.metrics.entries.set(inner.map.len() as i64);
        self.metrics.bytes.set(inner.bytes as i64);
    }

    #[cfg(test)]
    pub(crate) fn usage(&self) -> (usize, usize) {
        let inner = self.inner.lock().unwrap();
        (inner.map.len(), inner.bytes)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    impl Weigh for Vec<u8> {
        fn weight(&self) -> usize {
            self.len()
        }
    }

    type Load = std::pin::Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send>>;

    const BOUND: Duration = Duration::from_millis(2000);

    fn new_cache(max_entries: usize, max_bytes: usize) -> Arc<Cache<u32, Vec<u8>, String>> {
        Cache::new(Limits { freshness: BOUND, max_entries, max_bytes }, Metrics::default())
    }

    /// A load that counts its calls, takes `delay` and answers `size` bytes of the call number.
    fn loader(calls: &Arc<AtomicUsize>, delay: Duration, size: usize) -> impl FnOnce() -> Load {
        let calls = calls.clone();
        move || {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                Ok(vec![n as u8; size])
            })
        }
    }

    fn failing(calls: &Arc<AtomicUsize>) -> impl FnOnce() -> std::future::Ready<Result<Vec<u8>, String>> {
        let calls = calls.clone();
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Err("ClickHouse down".to_string()))
        }
    }

    async fn value(cache: &Arc<Cache<u32, Vec<u8>, String>>, key: u32, calls: &Arc<AtomicUsize>) -> (u8, Duration) {
        let answer = cache.get(key, loader(calls, Duration::from_millis(50), 4)).await.unwrap();
        (answer.value[0], answer.age)
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_misses_share_one_load() {
        let cache = new_cache(16, 1 << 20);
        let calls = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (cache, calls) = (cache.clone(), calls.clone());
                tokio::spawn(async move { value(&cache, 7, &calls).await })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap().0, 1);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!((cache.metrics.misses.get(), cache.metrics.coalesced.get()), (1, 49));
        // Another key is another load.
        assert_eq!(value(&cache, 8, &calls).await.0, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_leaves_does_not_cancel_the_load_for_others() {
        let cache = new_cache(16, 1 << 20);
        let calls = Arc::new(AtomicUsize::new(0));
        let first = tokio::spawn({
            let (cache, calls) = (cache.clone(), calls.clone());
            async move { value(&cache, 1, &calls).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        first.abort();
        assert_eq!(value(&cache, 1, &calls).await.0, 1);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn refresh_ahead_serves_the_cached_answer_and_the_bound_holds() {
        let cache = new_cache(16, 1 << 20);
        let calls = Arc::new(AtomicUsize::new(0));
        let (v, age) = value(&cache, 1, &calls).await;
        // The age counts from the load's start: the 50 ms it took.
        assert_eq!((v, age), (1, Duration::from_millis(50)));
        // Under B/2: a plain hit.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(value(&cache, 1, &calls).await, (1, Duration::from_millis(550)));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Past B/2: the cached answer at once, and one refresh in the background.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(value(&cache, 1, &calls).await, (1, Duration::from_millis(1150)));
        assert_eq!(value(&cache, 1, &calls).await.0, 1);
        assert_eq!((calls.load(Ordering::SeqCst), cache.metrics.refreshes.get()), (2, 1));
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(value(&cache, 1, &calls).await, (2, Duration::from_millis(60)));
        // Unused past B: the next request waits for a fresh load instead of getting the old answer.
        tokio::time::sleep(BOUND).await;
        assert_eq!(value(&cache, 1, &calls).await, (3, Duration::from_millis(50)));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn no_answer_is_ever_older_than_the_bound() {
        let cache = new_cache(16, 1 << 20);
        let calls = Arc::new(AtomicUsize::new(0));
        // Requests every 37 ms for 20 s: every answer's age stays under B.
        for _ in 0..540 {
            let (_, age) = value(&cache, 1, &calls).await;
            assert!(age < BOUND, "{age:?}");
            tokio::time::sleep(Duration::from_millis(37)).await;
        }
        // Refresh-ahead: about one load per B/2 (never one per request).
        let loads = calls.load(Ordering::SeqCst);
        assert!((10..=22).contains(&loads), "{loads}");
    }

    #[tokio::test(start_paused = true)]
    async fn expired_answers_do_not_stay_in_memory() {
        let cache = new_cache(16, 1 << 20);
        let calls = Arc::new(AtomicUsize::new(0));
        for key in 0..5 {
            value(&cache, key, &calls).await;
        }
        assert_eq!(cache.usage(), (5, 20));
        tokio::time::sleep(BOUND).await;
        value(&cache, 9, &calls).await;
        assert_eq!(cache.usage(), (1, 4));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_freshness_reads_every_time() {
        let cache: Arc<Cache<u32, Vec<u8>, String>> =
            Cache::new(Limits { freshness: Duration::ZERO, max_entries: 16, max_bytes: 1 << 20 }, Metrics::default());
        let calls = Arc::new(AtomicUsize::new(0));
        for n in 1..=3 {
            assert_eq!(value(&cache, 1, &calls).await.0, n);
        }
        assert_eq!(cache.usage(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn errors_are_never_cached() {
        let cache = new_cache(16, 1 << 20);
        let calls = Arc::new(AtomicUsize::new(0));
        for _ in 0..3 {
            let error = cache.get(1, failing(&calls)).await.unwrap_err();
            assert!(matches!(error, CacheError::Load(e) if *e == "ClickHouse down"));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(cache.usage(), (0, 0));
        // A failed refresh keeps the fresh answer; once it expires, the next request loads again.
        assert_eq!(value(&cache, 1, &calls).await.0, 4);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(cache.get(1, failing(&calls)).await.unwrap().value[0], 4);
        tokio::task::yield_now().await;
        assert_eq!(cache.get(1, failing(&calls)).await.unwrap().value[0], 4);
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert!(cache.get(1, failing(&calls)).await.is_err());
        assert_eq!(cache.usage(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn entries_and_bytes_stay_bounded_least_recently_used_first() {
        let cache = new_cache(3, 100);
        let calls = Arc::new(AtomicUsize::new(0));
        for key in 0..10 {
            cache.get(key, loader(&calls, Duration::from_millis(1), 10)).await.unwrap();
            cache.get(0, loader(&calls, Duration::from_millis(1), 10)).await.unwrap();
            assert!(cache.usage().0 <= 3 && cache.usage().1 <= 100);
        }
        // Key 0, used all along, stayed; 1..=7 went, oldest first.
        assert_eq!(calls.load(Ordering::SeqCst), 10);
        assert_eq!(cache.usage(), (3, 30));
        // 12 bytes is more than max_bytes / 8: served, never stored.
        let big = cache.get(20, loader(&calls, Duration::from_millis(1), 13)).await.unwrap();
        assert_eq!(big.value.len(), 13);
        assert_eq!(cache.usage(), (2, 20));
        // Bytes bound: entries of 12 bytes (max_bytes / 8), eight of them would be 96.
        let cache = new_cache(100, 100);
        for key in 0..20 {
            cache.get(key, loader(&calls, Duration::from_millis(1), 12)).await.unwrap();
            assert!(cache.usage().1 <= 100, "{:?}", cache.usage());
        }
        assert_eq!(cache.usage(), (8, 96));
    }
}
