//! Waiting with a deadline: poll a condition until it holds, and panic naming it when it
//! does not (async and blocking forms).

use std::time::{Duration, Instant};

/// How often the `eventually` helpers look again: soon enough that a wait ends within a
/// few milliseconds of its condition, seldom enough that the probe adds little load.
const POLL: Duration = Duration::from_millis(20);

/// Polls `cond` every 20 ms until it holds, or panics after `limit` naming `what`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::{Duration, Instant};
/// let started = Instant::now();
/// tgpipe_testkit::eventually(Duration::from_secs(5), "50 ms passed", || async {
///     started.elapsed() >= Duration::from_millis(50)
/// })
/// .await;
/// # }
/// ```
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_some(limit, what, move || {
        let fut = cond();
        async move { fut.await.then_some(()) }
    })
    .await
}

/// Polls `probe` every 20 ms until it gives a value, and returns it; panics after
/// `limit` naming `what`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::Duration;
/// let mut polls = 0;
/// let third = tgpipe_testkit::eventually_some(Duration::from_secs(5), "a third poll", || {
///     polls += 1;
///     let n = polls;
///     async move { (n == 3).then_some(n) }
/// })
/// .await;
/// assert_eq!(third, 3);
/// # }
/// ```
pub async fn eventually_some<T, F, Fut>(limit: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let polled = poll_until_ok(limit, move || {
        let fut = probe();
        async move { fut.await.ok_or(()) }
    });
    match polled.await {
        Ok(v) => v,
        Err(()) => panic!("{what}: not within {limit:?}"),
    }
}

/// Polls `probe` every 20 ms until it gives `Ok`, and returns the value; panics after
/// `limit` naming `what` and the last `Err`, which says what the probe saw instead
/// (how many of the updates were answered, which partitions were held).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::Duration;
/// let mut answered = 0;
/// let all = tgpipe_testkit::eventually_ok(Duration::from_secs(5), "10 answers", || {
///     answered += 5;
///     let n = answered;
///     async move { if n >= 10 { Ok(n) } else { Err(format!("{n} of 10 answered")) } }
/// })
/// .await;
/// assert_eq!(all, 10);
/// # }
/// ```
pub async fn eventually_ok<T, E, F, Fut>(limit: Duration, what: &str, probe: F) -> T
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    match poll_until_ok(limit, probe).await {
        Ok(v) => v,
        Err(last) => panic!("{what}: not within {limit:?} ({last})"),
    }
}

/// Polls `probe` until it gives `Ok` or `limit` has passed; then the last answer.
async fn poll_until_ok<T, E, F, Fut>(limit: Duration, mut probe: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match probe().await {
            Err(_) if Instant::now() < deadline => tokio::time::sleep(POLL).await,
            answer => return answer,
        }
    }
}

/// [`eventually`] for code that is not async (a child process to wait for, a test with
/// no runtime): polls `cond` every 20 ms, blocking the thread, until it holds, or
/// panics after `limit` naming `what`.
///
/// ```
/// use std::time::{Duration, Instant};
/// let started = Instant::now();
/// tgpipe_testkit::eventually_blocking(Duration::from_secs(5), "50 ms passed", || {
///     started.elapsed() >= Duration::from_millis(50)
/// });
/// ```
pub fn eventually_blocking(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    eventually_some_blocking(limit, what, || cond().then_some(()))
}

/// [`eventually_some`] for code that is not async: polls `probe` every 20 ms, blocking
/// the thread, until it gives a value, and returns it; panics after `limit` naming
/// `what`.
///
/// ```
/// use std::process::Command;
/// use std::time::Duration;
/// let mut child = Command::new("true").spawn().unwrap();
/// let status = tgpipe_testkit::eventually_some_blocking(
///     Duration::from_secs(5),
///     "`true` exits",
///     || child.try_wait().unwrap(),
/// );
/// assert!(status.success());
/// ```
pub fn eventually_some_blocking<T>(
    limit: Duration,
    what: &str,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("{what}: not within {limit:?}");
        }
        std::thread::sleep(POLL);
    }
}
