//! One credentials cache for both SQS paths (the SDK client and the direct client), so that the
//! worker fetches credentials as often as the SDK alone would: once, and again shortly before
//! they expire (10 s, jittered up to 15 s, like the SDK's identity cache), one fetch at a time.
//! On ECS the credentials endpoint throttles; a fetch per request would also cost a round trip
//! per request.

use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{future, ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;

/// Fetched again this long (plus up to half as much again, jittered) before they expire.
pub(crate) const REFRESH_BEFORE: Duration = Duration::from_secs(10);

/// Whether credentials that expire at `expiry` are still good to sign with now.
pub(crate) fn fresh(expiry: Option<SystemTime>) -> bool {
    let buffer = REFRESH_BEFORE.mul_f64(1.0 + 0.5 * fastrand::f64());
    expiry.is_none_or(|e| SystemTime::now() + buffer < e)
}

/// Caches what `inner` provides.
#[derive(Debug)]
pub(crate) struct SharedCache {
    inner: SharedCredentialsProvider,
    cached: tokio::sync::Mutex<Option<Credentials>>,
}

impl SharedCache {
    pub(crate) fn provider(inner: SharedCredentialsProvider) -> SharedCredentialsProvider {
        SharedCredentialsProvider::new(Self {
            inner,
            cached: tokio::sync::Mutex::new(None),
        })
    }
}

impl ProvideCredentials for SharedCache {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(async move {
            // Held across the fetch: callers that need credentials at the same moment wait for
            // the one fetch instead of each making their own.
            let mut cached = self.cached.lock().await;
            if let Some(c) = cached.as_ref().filter(|c| fresh(c.expiry())) {
                return Ok(c.clone());
            }
            let c = self.inner.provide_credentials().await?;
            *cached = Some(c.clone());
            Ok(c)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Hands out credentials with `left` to live, counting fetches.
    #[derive(Debug)]
    struct Endpoint {
        fetches: Arc<AtomicUsize>,
        left: Duration,
    }

    impl ProvideCredentials for Endpoint {
        fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            self.fetches.fetch_add(1, Ordering::Relaxed);
            let c = Credentials::new("k", "s", None, Some(SystemTime::now() + self.left), "t");
            future::ProvideCredentials::ready(Ok(c))
        }
    }

    fn cache(left: Duration) -> (SharedCredentialsProvider, Arc<AtomicUsize>) {
        let fetches = Arc::new(AtomicUsize::new(0));
        let endpoint = Endpoint {
            fetches: fetches.clone(),
            left,
        };
        (
            SharedCache::provider(SharedCredentialsProvider::new(endpoint)),
            fetches,
        )
    }

    #[tokio::test]
    async fn credentials_with_minutes_left_are_fetched_once() {
        let (c, fetches) = cache(Duration::from_secs(240));
        for _ in 0..500 {
            c.provide_credentials().await.expect("credentials");
        }
        assert_eq!(fetches.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn credentials_about_to_expire_are_fetched_again() {
        let (c, fetches) = cache(Duration::from_secs(5));
        for _ in 0..3 {
            c.provide_credentials().await.expect("credentials");
        }
        assert_eq!(
            fetches.load(Ordering::Relaxed),
            3,
            "within the buffer: each call fetches"
        );
    }
}
