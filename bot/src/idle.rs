//! Waits that give the caller's run slot back.
//!
//! A runtime that runs handlers in a bounded number of slots sets an [`IdleHook`] for
//! the handler's task. Every wait of the client (the rate limiter, a Telegram pause, a
//! retry's backoff) then runs through [`idle`]: the slot is given back while the task
//! only sleeps, and taken again before the call goes on. Without a hook, a wait is a
//! plain wait.
//!
//! ```
//! use std::time::Duration;
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! // No hook set: the same as sleeping.
//! tgpipe_bot::idle::idle(tokio::time::sleep(Duration::from_millis(1))).await;
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// What a runtime does when a handler's task starts and stops waiting.
pub trait IdleHook: Send + Sync + 'static {
    /// The task only waits from now on: give its slot back.
    fn idle(&self);
    /// The task has work again: resolves once it holds a slot again.
    fn busy(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

tokio::task_local! {
    static HOOK: Arc<dyn IdleHook>;
}

/// Runs `work` (a handler's dispatch) with `hook` told about each of its waits.
pub fn with_idle_hook<F: Future>(
    hook: Arc<dyn IdleHook>,
    work: F,
) -> impl Future<Output = F::Output> {
    HOOK.scope(hook, work)
}

/// Waits for `wait`, the caller's slot given back meanwhile when a hook is set.
pub async fn idle<F: Future>(wait: F) -> F::Output {
    match HOOK.try_with(Arc::clone) {
        Ok(hook) => {
            hook.idle();
            let out = wait.await;
            hook.busy().await;
            out
        }
        Err(_) => wait.await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[derive(Default)]
    struct Counting {
        idle: AtomicUsize,
        busy: AtomicUsize,
    }

    impl IdleHook for Counting {
        fn idle(&self) {
            self.idle.fetch_add(1, Ordering::SeqCst);
        }
        fn busy(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
            self.busy.fetch_add(1, Ordering::SeqCst);
            Box::pin(async {})
        }
    }

    #[tokio::test]
    async fn a_wait_under_a_hook_gives_the_slot_back_and_takes_it_again() {
        let hook = Arc::new(Counting::default());
        let dyn_hook: Arc<dyn IdleHook> = hook.clone();
        with_idle_hook(dyn_hook, async {
            idle(tokio::time::sleep(Duration::from_millis(1))).await;
            idle(async {}).await;
        })
        .await;
        assert_eq!(hook.idle.load(Ordering::SeqCst), 2);
        assert_eq!(hook.busy.load(Ordering::SeqCst), 2);
        // Outside the scope nothing is told.
        idle(async {}).await;
        assert_eq!(hook.idle.load(Ordering::SeqCst), 2);
    }
}
