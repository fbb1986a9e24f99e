//! Where password hashing runs. PBKDF2 is slow on purpose (hundreds of milliseconds at 600 000
//! iterations), so it runs on blocking threads of its own: at most `PASSWORD_HASH_THREADS` at
//! once, with at most `PASSWORD_HASH_QUEUE` more waiting. It never runs while a database
//! connection is held, so a burst of logins cannot take the slots message commits need; past the
//! queue a caller is told to come back (503 `busy` with `Retry-After`) instead of waiting without
//! bound. The bcrypt checks of accounts imported from the legacy backends run here too.

use crate::config::Config;
use crate::error::{AppError, AppResult};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Seconds a caller refused for a full queue is told to wait.
pub(crate) const BUSY_RETRY_AFTER_SECS: u64 = 1;

/// The bounded pool that runs password hashes and verifications.
#[derive(Clone, Debug)]
pub struct Hasher {
    /// Running plus waiting work: `threads + queue` permits.
    admission: Arc<Semaphore>,
    /// Running work: `threads` permits.
    threads: Arc<Semaphore>,
}

/// Whether `password` matches an encoded hash; a missing hash burns the same time and fails.
fn matches(encoded: Option<&str>, password: &str) -> bool {
    match encoded {
        Some(hash) => super::password::verify(hash, password),
        None => {
            super::password::verify_dummy(password);
            false
        }
    }
}

/// The outcome of [`Reservation::check`].
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Checked {
    /// The password matched.
    pub matched: bool,
    /// The password, hashed with the current scheme, when it matched a hash of a legacy scheme
    /// (bcrypt): the hash to store in place of the old one.
    pub rehashed: Option<String>,
}

/// A place in the hasher's queue, taken before work whose result would be wasted if hashing
/// were then refused (e.g. before a one-time code is consumed).
#[derive(Debug)]
pub struct Reservation {
    admitted: OwnedSemaphorePermit,
    threads: Arc<Semaphore>,
}

impl Hasher {
    /// A pool of `threads` concurrent hashes with `queue` more waiting.
    pub(crate) fn new(threads: usize, queue: usize) -> Self {
        let threads = threads.max(1);
        Self {
            admission: Arc::new(Semaphore::new(threads.saturating_add(queue))),
            threads: Arc::new(Semaphore::new(threads)),
        }
    }

    /// The pool `PASSWORD_HASH_THREADS` and `PASSWORD_HASH_QUEUE` describe.
    pub(crate) fn from_config(config: &Config) -> Self {
        Self::new(config.password_hash_threads, config.password_hash_queue)
    }

    /// Takes a place in the queue, or refuses with `busy` when the queue is full.
    pub fn reserve(&self) -> AppResult<Reservation> {
        let admitted = Arc::clone(&self.admission)
            .try_acquire_owned()
            .map_err(|_| AppError::Overloaded {
                retry_after_secs: BUSY_RETRY_AFTER_SECS,
            })?;
        Ok(Reservation {
            admitted,
            threads: Arc::clone(&self.threads),
        })
    }

    /// Checks `password` against an encoded hash; a missing hash burns the same time and fails,
    /// so answers do not reveal which accounts exist.
    #[cfg(test)]
    pub(crate) async fn verify(
        &self,
        encoded: Option<String>,
        password: String,
    ) -> AppResult<bool> {
        self.reserve()?.verify(encoded, password).await
    }

    /// Hashes a new password.
    #[cfg(test)]
    pub(crate) async fn hash(&self, password: String) -> AppResult<String> {
        self.reserve()?.hash(password).await
    }
}

impl Reservation {
    /// Runs `work` on a blocking thread once one of the pool's threads is free.
    pub async fn run<T, F>(self, work: F) -> AppResult<T>
    where
        F: FnOnce() -> AppResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let running = self
            .threads
            .acquire_owned()
            .await
            .map_err(AppError::internal)?;
        let admitted = self.admitted;
        actix_web::rt::task::spawn_blocking(move || {
            let _held = (running, admitted);
            work()
        })
        .await
        .map_err(AppError::internal)?
    }

    /// [`Hasher::verify`] in this place of the queue.
    #[cfg(test)]
    pub(crate) async fn verify(self, encoded: Option<String>, password: String) -> AppResult<bool> {
        self.run(move || Ok(matches(encoded.as_deref(), &password)))
            .await
    }

    /// [`Hasher::verify`] in this place of the queue, which then also hashes a matching password
    /// anew when its hash is a bcrypt hash of the legacy backends. A failed rehash is logged and
    /// leaves the old hash in use: it never fails the check.
    pub(crate) async fn check(
        self,
        encoded: Option<String>,
        password: String,
    ) -> AppResult<Checked> {
        self.run(move || {
            if !matches(encoded.as_deref(), &password) {
                return Ok(Checked::default());
            }
            let rehashed = if encoded.as_deref().is_some_and(super::password::is_bcrypt) {
                super::password::hash(&password)
                    .inspect_err(|error| {
                        tracing::warn!(%error, "could not rehash a bcrypt password");
                    })
                    .ok()
            } else {
                None
            };
            Ok(Checked {
                matched: true,
                rehashed,
            })
        })
        .await
    }

    /// [`Hasher::hash`] in this place of the queue.
    pub(crate) async fn hash(self, password: String) -> AppResult<String> {
        self.run(move || super::password::hash(&password)).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[actix_web::test]
    async fn a_full_queue_is_refused_with_busy_and_frees_up_afterwards() {
        let hasher = Hasher::new(1, 1);
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        // One running (blocked until released), one waiting: the pool is full.
        let running = hasher.reserve().unwrap();
        let first = actix_web::rt::spawn(running.run(move || {
            started_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            Ok(1)
        }));
        started_rx.await.unwrap();
        let waiting = hasher.reserve().unwrap();
        let second = actix_web::rt::spawn(waiting.run(|| Ok(2)));

        let refused = hasher.reserve().unwrap_err();
        assert_eq!(refused.code(), "overloaded");
        assert_eq!(refused.status().as_u16(), 503);
        assert!(matches!(
            refused,
            AppError::Overloaded {
                retry_after_secs: BUSY_RETRY_AFTER_SECS
            }
        ));

        release_tx.send(()).unwrap();
        assert_eq!(first.await.unwrap().unwrap(), 1);
        assert_eq!(second.await.unwrap().unwrap(), 2);
        // Both places are free again.
        let a = hasher.reserve().unwrap();
        let b = hasher.reserve().unwrap();
        assert!(hasher.reserve().is_err());
        drop((a, b));
        assert!(hasher.reserve().is_ok());
    }

    #[actix_web::test]
    async fn verification_matches_only_the_right_password() {
        let hasher = Hasher::new(2, 4);
        let encoded = hasher.hash("correct horse".into()).await.unwrap();
        assert!(hasher
            .verify(Some(encoded.clone()), "correct horse".into())
            .await
            .unwrap());
        assert!(!hasher
            .verify(Some(encoded), "wrong horse".into())
            .await
            .unwrap());
        assert!(!hasher.verify(None, "anything".into()).await.unwrap());
    }

    #[actix_web::test]
    async fn a_matching_bcrypt_password_is_rehashed_with_the_current_scheme() {
        // bcryptjs, cost 4.
        const BCRYPT: &str = "$2a$04$BHC4tRj8EJAqjnPjQRIgZ.zjkhz3jB7zGFs2HRhuhGacn1cMxLhgS";
        let hasher = Hasher::new(2, 4);
        let checked = hasher
            .reserve()
            .unwrap()
            .check(Some(BCRYPT.into()), "legacy-pass-1".into())
            .await
            .unwrap();
        assert!(checked.matched);
        let rehashed = checked.rehashed.expect("a bcrypt hash is replaced");
        assert!(rehashed.starts_with("pbkdf2-sha256$600000$"), "{rehashed}");
        assert!(crate::auth::password::verify(&rehashed, "legacy-pass-1"));

        // A wrong password, a missing hash and a current-scheme hash replace nothing.
        let wrong = hasher.reserve().unwrap();
        let wrong = wrong.check(Some(BCRYPT.into()), "legacy-pass-2".into());
        assert_eq!(wrong.await.unwrap(), Checked::default());
        let missing = hasher.reserve().unwrap().check(None, "x".into());
        assert_eq!(missing.await.unwrap(), Checked::default());
        let current = hasher.reserve().unwrap();
        let current = current.check(Some(rehashed), "legacy-pass-1".into());
        assert_eq!(
            current.await.unwrap(),
            Checked {
                matched: true,
                rehashed: None
            }
        );
    }
}
