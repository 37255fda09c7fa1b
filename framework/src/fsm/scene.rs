//! Scenes (aiogram 3's): named steps of a conversation, entered and left, with a short
//! history for `back`.
//!
//! A scene is a state named `scene:<name>`, so handlers are routed into a scene with
//! [`Scene::filter`]. The history (the scenes entered before the current one, newest
//! last, at most [`HISTORY_CAP`]) is a side record of the same FSM key
//! (`...}:scenes:data` in Redis), so it survives the handlers' own `set_data` and is
//! covered by the same lock.
//!
//! [`Scenes`] (given to the dispatcher as state) adds aiogram's `on.enter` / `on.leave`
//! hooks: handlers run with the update that moved the conversation into or out of a
//! scene.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{FsmContext, FsmError, StateFilter, StateName};
use crate::context::Context;
use crate::error::HandlerError;
use crate::extract::{ExtractError, FromContext, Requirement};
use crate::handler::{ErasedHandler, Handler};

/// How many earlier scenes `back` can return through.
pub const HISTORY_CAP: usize = 10;

const PREFIX: &str = "scene:";

/// A named scene.
///
/// ```
/// use tgpipe::fsm::Scene;
///
/// const CHECKOUT: Scene = Scene::new("checkout");
/// assert_eq!(CHECKOUT.state().as_str(), "scene:checkout");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scene(&'static str);

impl Scene {
    /// The scene `name`.
    pub const fn new(name: &'static str) -> Scene {
        Scene(name)
    }

    /// Its name.
    pub fn name(&self) -> &'static str {
        self.0
    }

    /// The FSM state that means "in this scene".
    pub fn state(&self) -> StateName {
        StateName::from(format!("{PREFIX}{}", self.0))
    }

    /// A filter passing while the update's FSM key is in this scene.
    pub fn filter(&self) -> StateFilter {
        StateFilter::is(self.state())
    }
}

#[derive(Clone, Default)]
struct Hooks {
    enter: Option<ErasedHandler>,
    leave: Option<ErasedHandler>,
}

/// Scene hooks (aiogram's `on.<event>.enter()` and `.leave()`): handlers run by
/// [`SceneContext`] when a scene is entered or left, with the update that caused it.
/// Give it to the dispatcher as state. Hook arguments are extractors like a handler's,
/// but they are not part of the start-up dependency check: a hook whose argument is
/// missing fails when it runs.
///
/// ```
/// use tgpipe::fsm::{Fsm, MemoryStorage, Scene, Scenes};
/// use tgpipe::{Bot, Dispatcher, Router};
///
/// const MENU: Scene = Scene::new("menu");
///
/// let scenes = Scenes::new()
///     .on_enter(MENU, |bot: Bot| async move { let _ = bot; })
///     .on_leave(MENU, || async {});
/// let dispatcher = Dispatcher::builder(Router::new("main"))
///     .state(scenes)
///     .fsm(Fsm::new(MemoryStorage::new()))
///     .build()
///     .unwrap();
/// ```
#[derive(Clone, Default)]
pub struct Scenes(Arc<HashMap<&'static str, Hooks>>);

impl std::fmt::Debug for Scenes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Scenes {
    /// No hooks.
    pub fn new() -> Scenes {
        Scenes::default()
    }

    fn hooks(&mut self, scene: Scene) -> &mut Hooks {
        Arc::make_mut(&mut self.0).entry(scene.name()).or_default()
    }

    /// Runs `handler` when `scene` is entered (after the state is set).
    pub fn on_enter<H: Handler<A>, A: 'static>(mut self, scene: Scene, handler: H) -> Scenes {
        self.hooks(scene).enter = Some(ErasedHandler::new(handler));
        self
    }

    /// Runs `handler` when `scene` is left (before the state changes).
    pub fn on_leave<H: Handler<A>, A: 'static>(mut self, scene: Scene, handler: H) -> Scenes {
        self.hooks(scene).leave = Some(ErasedHandler::new(handler));
        self
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct History {
    scenes: Vec<String>,
}

/// Scene navigation for the update's FSM key, as a handler argument.
///
/// ```
/// use tgpipe::HandlerError;
/// use tgpipe::fsm::{Scene, SceneContext};
///
/// const MENU: Scene = Scene::new("menu");
/// const SETTINGS: Scene = Scene::new("settings");
///
/// async fn open_settings(scenes: SceneContext) -> Result<(), HandlerError> {
///     scenes.enter(SETTINGS).await?; // history: [menu]
///     Ok(())
/// }
///
/// async fn go_back(scenes: SceneContext) -> Result<(), HandlerError> {
///     scenes.back().await?; // in `menu` again
///     Ok(())
/// }
/// ```
///
/// Navigation returns a [`HandlerError`]: an FSM error ([`FsmError`] inside) or the
/// error of a [`Scenes`] hook.
#[derive(Clone)]
pub struct SceneContext {
    fsm: FsmContext,
    history: FsmContext,
    hooks: Option<(Scenes, Context)>,
}

impl std::fmt::Debug for SceneContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SceneContext")
            .field("fsm", &self.fsm)
            .field("hooks", &self.hooks.as_ref().map(|(s, _)| s))
            .finish()
    }
}

impl SceneContext {
    /// Scenes over an FSM context, without hooks.
    pub fn new(fsm: FsmContext) -> SceneContext {
        // Under the same lease or fence as the state it changes with.
        let history = fsm.side("scenes");
        SceneContext {
            fsm,
            history,
            hooks: None,
        }
    }

    async fn run_hook(
        &self,
        scene: &str,
        pick: fn(&Hooks) -> &Option<ErasedHandler>,
    ) -> Result<(), HandlerError> {
        let Some((scenes, cx)) = &self.hooks else {
            return Ok(());
        };
        if let Some(hook) = scenes.0.get(scene).and_then(|h| pick(h).as_ref()) {
            // A hook has no next handler to give control back to: skipped or handled,
            // the transition goes on.
            let _outcome = hook.call(cx.clone()).await?;
        }
        Ok(())
    }

    /// The FSM context underneath (scene data lives in its data).
    pub fn fsm(&self) -> &FsmContext {
        &self.fsm
    }

    /// The current scene's name.
    pub async fn current(&self) -> Result<Option<String>, FsmError> {
        Ok(self
            .fsm
            .state()
            .await?
            .and_then(|s| s.strip_prefix(PREFIX).map(str::to_owned)))
    }

    /// The earlier scenes, oldest first.
    pub async fn history(&self) -> Result<Vec<String>, FsmError> {
        Ok(self.history.data::<History>().await?.scenes)
    }

    /// Enters `scene`: runs the current scene's leave hook, puts the current scene onto
    /// the history, sets the state, runs `scene`'s enter hook. Entering the current
    /// scene again runs no hooks and keeps the history.
    pub async fn enter(&self, scene: Scene) -> Result<(), HandlerError> {
        let current = self.current().await?;
        if current.as_deref() == Some(scene.name()) {
            return Ok(());
        }
        match current {
            Some(current) => {
                self.run_hook(&current, |h| &h.leave).await?;
                // One step: a failed write pushes nothing, a retry pushes once.
                self.fsm
                    .set_state_with_side(Some(&scene.state()), &self.history, |h: &mut History| {
                        h.scenes.push(current.clone());
                        let excess = h.scenes.len().saturating_sub(HISTORY_CAP);
                        h.scenes.drain(..excess);
                    })
                    .await?;
            }
            None => self.fsm.set_state(scene.state()).await?,
        }
        self.run_hook(scene.name(), |h| &h.enter).await
    }

    /// Returns to the previous scene and returns its name; with no history, leaves the
    /// current scene and returns `None`. Leave and enter hooks run as for `enter`.
    pub async fn back(&self) -> Result<Option<String>, HandlerError> {
        if let Some(current) = self.current().await? {
            self.run_hook(&current, |h| &h.leave).await?;
        }
        // The history popped and the previous scene's state set in one step: a failed
        // write pops nothing, a retry pops once.
        let expected = self.history().await?.pop();
        let state = expected
            .as_ref()
            .map(|name| StateName::from(format!("{PREFIX}{name}")));
        let mut previous = None;
        self.fsm
            .set_state_with_side(state.as_ref(), &self.history, |h: &mut History| {
                previous = h.scenes.pop();
            })
            .await?;
        if previous != expected {
            // Without isolation another update changed the history in between.
            match &previous {
                Some(name) => {
                    self.fsm
                        .set_state(StateName::from(format!("{PREFIX}{name}")))
                        .await?
                }
                None => self.fsm.remove_state().await?,
            }
        }
        if let Some(name) = &previous {
            self.run_hook(name, |h| &h.enter).await?;
        }
        Ok(previous)
    }

    /// Leaves the current scene (no scene afterwards), keeping the history and data.
    pub async fn leave(&self) -> Result<(), HandlerError> {
        if let Some(current) = self.current().await? {
            self.run_hook(&current, |h| &h.leave).await?;
            self.fsm.remove_state().await?;
        }
        Ok(())
    }

    /// Leaves the scenes altogether: no scene, no history, no data.
    pub async fn exit(&self) -> Result<(), HandlerError> {
        if let Some(current) = self.current().await? {
            self.run_hook(&current, |h| &h.leave).await?;
        }
        // Deletions only, under the lease or fence: a retry after a failure finishes.
        self.history.clear().await?;
        self.fsm.clear().await?;
        Ok(())
    }
}

impl FromContext for SceneContext {
    fn from_context(cx: &Context) -> Result<Self, ExtractError> {
        let mut scenes = SceneContext::new(FsmContext::from_context(cx)?);
        scenes.hooks = cx.get::<Scenes>().map(|s| (s.clone(), cx.clone()));
        Ok(scenes)
    }

    fn requirement() -> Option<Requirement> {
        FsmContext::requirement()
    }
}
