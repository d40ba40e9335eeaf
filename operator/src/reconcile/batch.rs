//! Coalesces the requests of concurrent reconciles into one call per cluster: many topics in one
//! Metadata / DescribeConfigs / CreateTopics request, many tables in one `system.tables` and one
//! `system.columns` query.
//!
//! Each cluster (key) has its own worker task and its own bound on batches in flight, so a slow
//! or unreachable cluster holds up only the requests for it. A worker takes the first request,
//! gathers what else arrives within the window (or until the batch is full) and runs the batch;
//! each caller gets its own answer through a oneshot, and a failure of the whole batch reaches
//! every caller. A worker idle for `idle` ends; the next request starts a new one.
//!
//! After a batch failed as a whole (the cluster unreachable, timing out, refusing the credentials),
//! the key's requests are answered with that error for `hold_failure` without contacting it: the
//! reconciles of a dead cluster then give their slots back at once (and retry with backoff) instead
//! of each waiting out the I/O timeout while other clusters' pipelines wait for a slot.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The answers of one batch: one per item, in order; `Err` answers every item.
pub type BatchResult<O, E> = Result<Vec<Result<O, E>>, E>;

/// Runs one batch of items for one key.
pub type Handler<K, I, O, E> = Arc<dyn Fn(K, Vec<I>) -> BoxFuture<BatchResult<O, E>> + Send + Sync>;

/// A batch ended without an answer for this item (the handler panicked or answered fewer items).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the batched call ended without an answer")]
pub struct NoAnswer;

#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// How long a worker waits for more requests after the first.
    pub window: Duration,
    /// Most items in one batch.
    pub max_batch: usize,
    /// Most batches of one key running at once.
    pub in_flight: usize,
    /// A worker that got nothing for this long ends.
    pub idle: Duration,
    /// How long a key's requests get its last whole-batch failure without contacting it.
    pub hold_failure: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            window: Duration::from_millis(3),
            max_batch: 100,
            in_flight: 2,
            idle: Duration::from_secs(60),
            hold_failure: Duration::from_secs(3),
        }
    }
}

type Job<I, O, E> = (I, oneshot::Sender<Result<O, E>>);
/// The workers by key, each with the queue it takes requests from. A queue needs no bound of its
/// own: every request in it is a caller awaiting its answer, so it holds at most what the
/// controller's `--concurrency` reconciles ask at once (a pipeline's few topics and one table each).
type Workers<K, I, O, E> = Mutex<Vec<(K, mpsc::UnboundedSender<Job<I, O, E>>)>>;

/// The last whole-batch failure of a key and until when it answers the key's requests.
type Failures<K, E> = Mutex<Vec<(K, Instant, E)>>;

struct Inner<K, I, O, E> {
    workers: Workers<K, I, O, E>,
    failures: Failures<K, E>,
    handler: Handler<K, I, O, E>,
    settings: Settings,
}

/// One worker per key (compared with `==`: a fleet names few clusters).
pub struct Batcher<K, I, O, E> {
    inner: Arc<Inner<K, I, O, E>>,
}

impl<K, I, O, E> Batcher<K, I, O, E>
where
    K: Clone + PartialEq + Send + Sync + 'static,
    I: Send + 'static,
    O: Send + 'static,
    E: Clone + From<NoAnswer> + Send + 'static,
{
    pub fn new<F, Fut>(settings: Settings, handler: F) -> Self
    where
        F: Fn(K, Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = BatchResult<O, E>> + Send + 'static,
    {
        let handler: Handler<K, I, O, E> = Arc::new(move |key, items| Box::pin(handler(key, items)));
        let settings =
            Settings { max_batch: settings.max_batch.max(1), in_flight: settings.in_flight.max(1), ..settings };
        let inner = Inner { workers: Mutex::new(Vec::new()), failures: Mutex::new(Vec::new()), handler, settings };
        Self { inner: Arc::new(inner) }
    }

    /// The answer for `item`, run in a batch with the requests for `key` that arrive meanwhile.
    pub async fn call(&self, key: K, item: I) -> Result<O, E> {
        {
            let failures = self.inner.failures.lock().expect("batcher lock");
            if let Some((_, _, e)) = failures.iter().find(|(k, until, _)| *k == key && Instant::now() < *until) {
                return Err(e.clone());
            }
        }
        let (reply, answer) = oneshot::channel();
        {
            // Sent under the lock: a worker leaves only under it, after seeing its queue empty.
            let mut workers = self.inner.workers.lock().expect("batcher lock");
            let sender = match workers.iter().find(|(k, _)| *k == key) {
                Some((_, sender)) => sender.clone(),
                None => {
                    let (sender, receiver) = mpsc::unbounded_channel();
                    workers.push((key.clone(), sender.clone()));
                    tokio::spawn(worker(self.inner.clone(), key, receiver));
                    sender
                }
            };
            if sender.send((item, reply)).is_err() {
                return Err(NoAnswer.into());
            }
        }
        answer.await.unwrap_or_else(|_| Err(NoAnswer.into()))
    }

    /// Keys with a worker now.
    pub fn workers(&self) -> usize {
        self.inner.workers.lock().expect("batcher lock").len()
    }
}

async fn worker<K, I, O, E>(inner: Arc<Inner<K, I, O, E>>, key: K, mut queue: mpsc::UnboundedReceiver<Job<I, O, E>>)
where
    K: Clone + PartialEq + Send + Sync + 'static,
    I: Send + 'static,
    O: Send + 'static,
    E: Clone + From<NoAnswer> + Send + 'static,
{
    let settings = inner.settings;
    let permits = Arc::new(Semaphore::new(settings.in_flight));
    loop {
        let first = match tokio::time::timeout(settings.idle, queue.recv()).await {
            Ok(Some(job)) => job,
            Ok(None) => return,
            Err(_) => {
                let mut workers = inner.workers.lock().expect("batcher lock");
                if queue.is_empty() {
                    workers.retain(|(k, _)| *k != key);
                    return;
                }
                continue;
            }
        };
        // A free slot first: while every slot is busy, requests gather into the next batch.
        let permit = permits.clone().acquire_owned().await.expect("never closed");
        let mut batch = vec![first];
        let deadline = Instant::now() + settings.window;
        while batch.len() < settings.max_batch {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => match tokio::time::timeout_at(deadline, queue.recv()).await {
                    Ok(Some(job)) => batch.push(job),
                    _ => break,
                },
            }
        }
        let handler = inner.handler.clone();
        let key = key.clone();
        let inner = inner.clone();
        tokio::spawn(async move {
            let (items, replies): (Vec<I>, Vec<_>) = batch.into_iter().unzip();
            let result = handler(key.clone(), items).await;
            {
                let mut failures = inner.failures.lock().expect("batcher lock");
                failures.retain(|(k, _, _)| *k != key);
                if let Err(e) = &result
                    && !settings.hold_failure.is_zero()
                {
                    failures.push((key, Instant::now() + settings.hold_failure, e.clone()));
                }
            }
            match result {
                Ok(answers) => {
                    let mut answers = answers.into_iter();
                    for reply in replies {
                        let _ = reply.send(answers.next().unwrap_or(Err(NoAnswer.into())));
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Clone, Debug, PartialEq)]
    enum TestError {
        Down(String),
        NoAnswer,
    }

    impl From<NoAnswer> for TestError {
        fn from(_: NoAnswer) -> Self {
            Self::NoAnswer
        }
    }

    type Calls = Arc<Mutex<Vec<(String, Vec<u32>)>>>;

    /// A handler that records each batch, doubles each item, fails a key named "down" as a whole
    /// and an item 13 alone, and takes `delay` (key "slow": 10 s).
    fn recording(
        calls: Calls,
        delay: Duration,
    ) -> impl Fn(String, Vec<u32>) -> BoxFuture<BatchResult<u32, TestError>> + Send + Sync + 'static {
        move |key: String, items: Vec<u32>| {
            let calls = calls.clone();
            Box::pin(async move {
                calls.lock().unwrap().push((key.clone(), items.clone()));
                let delay = if key == "slow" { Duration::from_secs(10) } else { delay };
                tokio::time::sleep(delay).await;
                if key == "down" {
                    return Err(TestError::Down(format!("{key} unreachable")));
                }
                Ok(items
                    .into_iter()
                    .map(|i| if i == 13 { Err(TestError::Down("13".into())) } else { Ok(i * 2) })
                    .collect())
            })
        }
    }

    fn settings(max_batch: usize) -> Settings {
        Settings {
            window: Duration::from_millis(20),
            max_batch,
            in_flight: 1,
            idle: Duration::from_secs(60),
            hold_failure: Duration::ZERO,
        }
    }

    #[tokio::test]
    async fn concurrent_calls_for_one_key_share_a_batch_and_get_their_own_answers() {
        let calls: Calls = Default::default();
        let batcher = Batcher::new(settings(100), recording(calls.clone(), Duration::from_millis(1)));
        let answers = futures::future::join_all((0..20u32).map(|i| batcher.call("kafka-a".to_string(), i))).await;
        assert_eq!(
            answers,
            (0..20u32).map(|i| if i == 13 { Err(TestError::Down("13".into())) } else { Ok(i * 2) }).collect::<Vec<_>>()
        );
        let calls = calls.lock().unwrap();
        assert_eq!(calls.len(), 1, "one batch: {calls:?}");
        assert_eq!(calls[0].1.len(), 20);
    }

    #[tokio::test]
    async fn a_batch_holds_at_most_max_batch_items() {
        let calls: Calls = Default::default();
        let batcher = Batcher::new(settings(7), recording(calls.clone(), Duration::from_millis(1)));
        let answers = futures::future::join_all((0..30u32).map(|i| batcher.call("ch".to_string(), i))).await;
        assert!(answers.iter().enumerate().all(|(i, a)| i == 13 || *a == Ok(i as u32 * 2)));
        let calls = calls.lock().unwrap();
        assert!(calls.iter().all(|(_, items)| items.len() <= 7), "{calls:?}");
        assert_eq!(calls.iter().map(|(_, items)| items.len()).sum::<usize>(), 30);
        assert!(calls.len() >= 5, "30 items in batches of 7: {}", calls.len());
    }

    #[tokio::test]
    async fn a_failed_batch_answers_every_caller_with_the_error() {
        let calls: Calls = Default::default();
        let batcher = Batcher::new(settings(100), recording(calls.clone(), Duration::from_millis(1)));
        let answers = futures::future::join_all((0..5u32).map(|i| batcher.call("down".to_string(), i))).await;
        assert_eq!(answers, vec![Err(TestError::Down("down unreachable".into())); 5]);
        assert_eq!(calls.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_handler_that_answers_too_few_items_or_panics_leaves_no_caller_waiting() {
        let short = |key: String, items: Vec<u32>| async move {
            if key == "panics" {
                panic!("handler bug");
            }
            Ok(items.into_iter().take(1).map(Ok).collect())
        };
        let batcher = Batcher::new(settings(100), short);
        let answers = futures::future::join_all((0..3u32).map(|i| batcher.call("short".to_string(), i))).await;
        assert_eq!(answers, vec![Ok(0), Err(TestError::NoAnswer), Err(TestError::NoAnswer)]);
        assert_eq!(batcher.call("panics".to_string(), 1).await, Err(TestError::NoAnswer));
    }

    #[tokio::test]
    async fn a_slow_cluster_does_not_hold_up_another() {
        let calls: Calls = Default::default();
        let batcher = Arc::new(Batcher::new(settings(100), recording(calls.clone(), Duration::from_millis(1))));
        let slow = {
            let batcher = batcher.clone();
            tokio::spawn(async move { batcher.call("slow".to_string(), 1).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The slow key's only slot is taken for 10 s; the other key answers at once, many times over.
        let started = std::time::Instant::now();
        for i in 0..5u32 {
            assert_eq!(batcher.call("fast".to_string(), i).await, Ok(i * 2));
        }
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        assert!(!slow.is_finished());
        assert_eq!(batcher.workers(), 2);
        slow.abort();
    }

    #[tokio::test]
    async fn requests_that_arrive_while_the_slots_are_busy_form_the_next_batch() {
        let calls: Calls = Default::default();
        let ran = Arc::new(AtomicUsize::new(0));
        let handler = {
            let calls = calls.clone();
            let ran = ran.clone();
            move |key: String, items: Vec<u32>| {
                let calls = calls.clone();
                let ran = ran.clone();
                async move {
                    calls.lock().unwrap().push((key, items.clone()));
                    ran.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Ok::<_, TestError>(items.into_iter().map(Ok).collect())
                }
            }
        };
        let batcher = Arc::new(Batcher::new(Settings { window: Duration::ZERO, ..settings(100) }, handler));
        let first = {
            let batcher = batcher.clone();
            tokio::spawn(async move { batcher.call("k".to_string(), 0).await })
        };
        while ran.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let rest = futures::future::join_all((1..10u32).map(|i| batcher.call("k".to_string(), i))).await;
        assert_eq!(first.await.unwrap(), Ok(0));
        assert!(rest.iter().enumerate().all(|(i, a)| *a == Ok(i as u32 + 1)));
        let sizes: Vec<usize> = calls.lock().unwrap().iter().map(|(_, items)| items.len()).collect();
        assert_eq!(sizes, [1, 9]);
    }

    #[tokio::test]
    async fn a_failed_cluster_is_answered_with_its_failure_for_a_while_without_being_contacted() {
        let calls: Calls = Default::default();
        let batcher = Batcher::new(
            Settings { hold_failure: Duration::from_millis(300), ..settings(100) },
            recording(calls.clone(), Duration::ZERO),
        );
        let down = || batcher.call("down".to_string(), 1);
        assert_eq!(down().await, Err(TestError::Down("down unreachable".into())));
        assert_eq!(calls.lock().unwrap().len(), 1);
        // Held: answered at once with the same error; the cluster is not asked again.
        let started = std::time::Instant::now();
        for _ in 0..5 {
            assert_eq!(down().await, Err(TestError::Down("down unreachable".into())));
        }
        assert!(started.elapsed() < Duration::from_millis(100), "{:?}", started.elapsed());
        assert_eq!(calls.lock().unwrap().len(), 1);
        // Another key is not held; an item's own error holds nothing.
        assert_eq!(batcher.call("up".to_string(), 13).await, Err(TestError::Down("13".into())));
        assert_eq!(batcher.call("up".to_string(), 2).await, Ok(4));
        // After the hold the cluster is asked again.
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(down().await, Err(TestError::Down("down unreachable".into())));
        let asked_down = calls.lock().unwrap().iter().filter(|(k, _)| k == "down").count();
        assert_eq!(asked_down, 2);
    }

    #[tokio::test]
    async fn an_idle_worker_ends_and_a_new_request_starts_another() {
        let calls: Calls = Default::default();
        let batcher = Batcher::new(
            Settings { idle: Duration::from_millis(50), ..settings(100) },
            recording(calls.clone(), Duration::ZERO),
        );
        assert_eq!(batcher.call("k".to_string(), 1).await, Ok(2));
        assert_eq!(batcher.workers(), 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(batcher.workers(), 0);
        assert_eq!(batcher.call("k".to_string(), 2).await, Ok(4));
    }
}
