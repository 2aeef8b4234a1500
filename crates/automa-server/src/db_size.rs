//! The database's size, as `/ready` and `/metrics` report it. Reading it is not free (on PostgreSQL
//! `pg_database_size` walks the database's files), and `/ready` answers anyone, so the size is read at most once
//! per [`REFRESH_EVERY`] and shared by every request: a flood of anonymous probes costs one read per period.

use std::future::Future;
use std::time::{Duration, Instant};

use automa_store::Store;
use tokio::sync::Mutex;

/// How long a size read stays the answer. Sizes change slowly; a monitor polling every few seconds sees a
/// value at most this old.
pub const REFRESH_EVERY: Duration = Duration::from_secs(30);

/// The last size read, and when. A failed read (`None`) is cached like a value, so a database that errors
/// is not asked again on every request either.
#[derive(Default)]
pub struct DatabaseSize {
    last: Mutex<Option<(Instant, Option<i64>)>>,
}

impl DatabaseSize {
    /// The size in bytes, read from the store when the cached one is older than [`REFRESH_EVERY`].
    pub async fn get(&self, store: &Store) -> Option<i64> {
        self.get_at(Instant::now(), || async { store.database_size().await.ok() }).await
    }

    /// Callers arriving while a read is under way wait for it (the lock is held across the read) instead of
    /// starting their own.
    async fn get_at<F, Fut>(&self, now: Instant, read: F) -> Option<i64>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Option<i64>>,
    {
        let mut last = self.last.lock().await;
        if let Some((at, size)) = *last
            && now.saturating_duration_since(at) < REFRESH_EVERY
        {
            return size;
        }
        let size = read().await;
        *last = Some((now, size));
        size
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn the_size_is_read_once_per_period_however_many_ask() {
        let cache = Arc::new(DatabaseSize::default());
        let reads = Arc::new(AtomicUsize::new(0));
        let start = Instant::now();
        let read = |value: i64| {
            let reads = reads.clone();
            move || async move {
                reads.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
                Some(value)
            }
        };
        let asks: Vec<_> = (0..20)
            .map(|_| {
                let (cache, read) = (cache.clone(), read(100));
                tokio::spawn(async move { cache.get_at(start, read).await })
            })
            .collect();
        for ask in asks {
            assert_eq!(ask.await.unwrap(), Some(100));
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1, "concurrent callers share one read");
        let within = start + REFRESH_EVERY - Duration::from_secs(1);
        assert_eq!(cache.get_at(within, read(200)).await, Some(100), "a fresh value is reused");
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        assert_eq!(cache.get_at(start + REFRESH_EVERY, read(300)).await, Some(300), "a stale one is read again");
        assert_eq!(reads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failed_read_is_cached_too() {
        let cache = DatabaseSize::default();
        let start = Instant::now();
        assert_eq!(cache.get_at(start, || async { None }).await, None);
        assert_eq!(cache.get_at(start, || async { panic!("read again within the period") }).await, None);
        assert_eq!(cache.get_at(start + REFRESH_EVERY, || async { Some(7) }).await, Some(7));
    }
}
