//! Threads with a Tokio runtime of their own, for work that must not run on the HTTP workers
//! (the cluster's Redis I/O, a message writer's commits).

use std::future::Future;

/// Starts a thread named `name` that runs the future `make` returns on a current-thread
/// runtime of its own (timers and I/O enabled) until it ends. The runtime is built before the
/// thread starts, so a failure to build it fails the caller instead of leaving a thread that
/// does nothing.
pub(crate) fn spawn<F, Fut>(name: &str, make: F) -> std::io::Result<()>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || runtime.block_on(make()))
        .map(|_| ())
}
