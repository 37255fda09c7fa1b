//! Run slots shared fairly between bots.
//!
//! A pod runs at most `TGPIPE_CONCURRENCY` dispatches at once. A slot is held only while
//! a handler runs; every wait gives it back. Bots with work waiting take turns (round
//! robin, one slot each in turn), so one bot's backlog cannot starve another bot's chats
//! on the same lane; `TGPIPE_MAX_RUNNING_PER_BOT` optionally caps one bot's share.
//! Within a bot's turn, urgent dispatches (with `TGPIPE_INTERACTIVE_FIRST`, the kinds
//! that expire: a callback query waits for an answer on the user's screen) go before
//! the others.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tgpipe_shared::BotId;
use tokio::sync::oneshot;

/// The pod's run slots.
pub(super) struct Slots {
    inner: Mutex<Inner>,
}

struct Inner {
    free: usize,
    /// The most slots one bot holds at once (`usize::MAX`: no cap).
    per_bot: usize,
    bots: HashMap<BotId, BotSlots>,
    /// Bots with waiters, in turn order; a bot is in it at most once.
    turns: VecDeque<BotId>,
}

#[derive(Default)]
struct BotSlots {
    running: usize,
    /// Served before `waiters`.
    urgent: VecDeque<oneshot::Sender<Slot>>,
    waiters: VecDeque<oneshot::Sender<Slot>>,
}

impl BotSlots {
    fn waiting(&self) -> usize {
        self.urgent.len() + self.waiters.len()
    }
}

/// One held slot; dropping it gives it to the next bot in turn.
pub(super) struct Slot {
    slots: Arc<Slots>,
    bot: BotId,
    urgent: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.release(self.bot);
    }
}

/// What one bot has in the pod: slots running and dispatches waiting for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BotLoad {
    pub(super) running: usize,
    pub(super) waiting: usize,
}

impl Slots {
    /// `n` slots, at most `per_bot` of them (0: no cap) held by one bot.
    pub(super) fn new(n: usize, per_bot: usize) -> Arc<Slots> {
        Arc::new(Slots {
            inner: Mutex::new(Inner {
                free: n.max(1),
                per_bot: if per_bot == 0 { usize::MAX } else { per_bot },
                bots: HashMap::new(),
                turns: VecDeque::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for `bot`: at once when one is free and the bot is under its cap, else in
    /// the bot's turn. The place in the queue is taken when this is called, not when the
    /// future is first polled. Cancel-safe: a slot granted to a dropped waiter goes on
    /// to the next.
    pub(super) fn acquire(
        self: &Arc<Self>,
        bot: BotId,
        urgent: bool,
    ) -> impl Future<Output = Slot> + use<> {
        let first = self.register(bot, urgent);
        let slots = Arc::clone(self);
        async move {
            let mut next = first;
            loop {
                match next {
                    Ok(slot) => return slot,
                    Err(rx) => match rx.await {
                        Ok(slot) => return slot,
                        // Never dropped unsent while the slots live; asked again if it was.
                        Err(_) => next = slots.register(bot, urgent),
                    },
                }
            }
        }
    }

    fn register(
        self: &Arc<Self>,
        bot: BotId,
        urgent: bool,
    ) -> Result<Slot, oneshot::Receiver<Slot>> {
        let mut inner = self.lock();
        let per_bot = inner.per_bot;
        let has_free = inner.free > 0;
        let b = inner.bots.entry(bot).or_default();
        if has_free && b.running < per_bot && b.waiting() == 0 {
            b.running += 1;
            inner.free -= 1;
            Ok(Slot {
                slots: Arc::clone(self),
                bot,
                urgent,
            })
        } else {
            let (tx, rx) = oneshot::channel();
            if urgent {
                b.urgent.push_back(tx);
            } else {
                b.waiters.push_back(tx);
            }
            if b.waiting() == 1 {
                inner.turns.push_back(bot);
            }
            Err(rx)
        }
    }

    fn release(self: &Arc<Self>, bot: BotId) {
        let granted = {
            let mut inner = self.lock();
            if let Some(b) = inner.bots.get_mut(&bot) {
                b.running = b.running.saturating_sub(1);
            }
            inner.free += 1;
            let next = inner.next_turn();
            if let Some(b) = inner.bots.get(&bot)
                && b.running == 0
                && b.waiting() == 0
            {
                inner.bots.remove(&bot);
            }
            next
        };
        if let Some((to, urgent, tx)) = granted {
            let slot = Slot {
                slots: Arc::clone(self),
                bot: to,
                urgent,
            };
            // A waiter that went away drops the slot, which releases it again.
            let _ = tx.send(slot);
        }
    }

    /// Each bot's running and waiting dispatches (for the per-bot metrics).
    pub(super) fn load(&self) -> Vec<(BotId, BotLoad)> {
        self.lock()
            .bots
            .iter()
            .map(|(bot, b)| {
                (
                    *bot,
                    BotLoad {
                        running: b.running,
                        waiting: b.waiting(),
                    },
                )
            })
            .collect()
    }
}

impl Inner {
    /// Grants a free slot to the next bot in turn that is under its cap.
    fn next_turn(&mut self) -> Option<(BotId, bool, oneshot::Sender<Slot>)> {
        if self.free == 0 {
            return None;
        }
        for _ in 0..self.turns.len() {
            let bot = self.turns.pop_front()?;
            let per_bot = self.per_bot;
            let Some(b) = self.bots.get_mut(&bot) else {
                continue;
            };
            if b.running >= per_bot {
                // At its cap: keeps its place for a later turn.
                self.turns.push_back(bot);
                continue;
            }
            loop {
                let (urgent, tx) = match b.urgent.pop_front() {
                    Some(tx) => (true, tx),
                    None => match b.waiters.pop_front() {
                        Some(tx) => (false, tx),
                        None => break,
                    },
                };
                if tx.is_closed() {
                    continue;
                }
                b.running += 1;
                self.free -= 1;
                if b.waiting() > 0 {
                    self.turns.push_back(bot);
                }
                return Some((bot, urgent, tx));
            }
        }
        None
    }
}

/// A dispatch's hold on a slot, given back while the handler only waits
/// ([`tgpipe::bot::idle`]).
pub(super) struct Holder {
    slots: Arc<Slots>,
    bot: BotId,
    urgent: bool,
    slot: Mutex<Option<Slot>>,
}

impl Holder {
    pub(super) fn new(slots: &Arc<Slots>, slot: Slot) -> Arc<Holder> {
        Arc::new(Holder {
            slots: Arc::clone(slots),
            bot: slot.bot,
            urgent: slot.urgent,
            slot: Mutex::new(Some(slot)),
        })
    }
}

impl tgpipe::bot::idle::IdleHook for Holder {
    fn idle(&self) {
        let slot = self.slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(slot);
    }

    fn busy(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let slot = self.slots.acquire(self.bot, self.urgent).await;
            *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(slot);
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_bot_with_a_backlog_takes_turns_with_a_bot_that_just_arrived() {
        let slots = Slots::new(2, 0);
        let (a, b) = (BotId(1), BotId(2));
        let held = [slots.acquire(a, false).await, slots.acquire(a, false).await];
        // Bot A queues 100 more, then bot B one.
        let mut a_waiting: Vec<_> = (0..100)
            .map(|_| Box::pin(slots.acquire(a, false)))
            .collect();
        let b_waiting = tokio::spawn(slots.acquire(b, false));
        tokio::task::yield_now().await;
        drop(held);
        // B is served by the second freed slot at the latest, not after A's 100.
        let slot = tokio::time::timeout(Duration::from_secs(1), b_waiting)
            .await
            .expect("bot B served in its turn")
            .unwrap();
        assert_eq!(slot.bot, b);
        let first_a = tokio::time::timeout(Duration::from_secs(1), a_waiting.remove(0))
            .await
            .expect("bot A's next waiter served too");
        assert_eq!(first_a.bot, a);
        assert_eq!(
            slots
                .load()
                .into_iter()
                .find(|(bot, _)| *bot == a)
                .unwrap()
                .1,
            BotLoad {
                running: 1,
                waiting: 99
            }
        );
    }

    #[tokio::test]
    async fn a_bot_at_its_cap_waits_while_slots_are_free() {
        let slots = Slots::new(4, 1);
        let one = slots.acquire(BotId(1), false).await;
        let two = Box::pin(slots.acquire(BotId(1), false));
        let other =
            tokio::time::timeout(Duration::from_millis(100), slots.acquire(BotId(2), false))
                .await
                .expect("another bot takes a free slot");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), two)
                .await
                .is_err(),
            "bot 1 is capped at one slot"
        );
        drop((one, other));
    }

    #[tokio::test]
    async fn a_slot_granted_to_a_waiter_that_went_away_goes_to_the_next() {
        let slots = Slots::new(1, 0);
        let held = slots.acquire(BotId(1), false).await;
        let gone = Box::pin(slots.acquire(BotId(2), false));
        let next = tokio::spawn(slots.acquire(BotId(3), false));
        tokio::task::yield_now().await;
        drop(gone);
        drop(held);
        let slot = tokio::time::timeout(Duration::from_secs(1), next)
            .await
            .expect("the slot is not lost")
            .unwrap();
        assert_eq!(slot.bot, BotId(3));
    }

    #[tokio::test]
    async fn an_urgent_dispatch_goes_before_its_bots_backlog() {
        let slots = Slots::new(1, 0);
        let bot = BotId(1);
        let held = slots.acquire(bot, false).await;
        let backlog: Vec<_> = (0..50)
            .map(|_| tokio::spawn(slots.acquire(bot, false)))
            .collect();
        let urgent = tokio::spawn(slots.acquire(bot, true));
        tokio::task::yield_now().await;
        assert_eq!(
            slots.load()[0].1,
            BotLoad {
                running: 1,
                waiting: 51
            }
        );
        drop(held);
        let slot = tokio::time::timeout(Duration::from_secs(1), urgent)
            .await
            .expect("the urgent dispatch is served by the next free slot")
            .unwrap();
        assert!(slot.urgent);
        drop(slot);
        for b in backlog {
            drop(
                tokio::time::timeout(Duration::from_secs(1), b)
                    .await
                    .unwrap(),
            );
        }
    }
}
