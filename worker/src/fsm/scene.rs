//! Scenes (aiogram 3's): named steps of a conversation, entered and left, with a short
//! history for `back`.
//!
//! A scene is a state named `scene:<name>`, so handlers are routed into a scene with
//! [`Scene::filter`]. The history (the scenes entered before the current one, newest
//! last, at most [`HISTORY_CAP`]) is a side record of the same FSM key
//! (`...}:scenes:data` in Redis), so it survives the handlers' own `set_data` and is
//! covered by the same lock.

use serde::{Deserialize, Serialize};

use super::{FsmContext, FsmError, StateFilter, StateName};
use crate::context::Context;
use crate::extract::{ExtractError, FromContext, Requirement};

/// How many earlier scenes `back` can return through.
pub const HISTORY_CAP: usize = 10;

const PREFIX: &str = "scene:";

/// A named scene.
///
/// ```
/// use tgpipe_worker::fsm::Scene;
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

#[derive(Debug, Default, Serialize, Deserialize)]
struct History {
    scenes: Vec<String>,
}

/// Scene navigation for the update's FSM key, as a handler argument.
///
/// ```
/// use tgpipe_worker::fsm::{FsmError, Scene, SceneContext};
///
/// const MENU: Scene = Scene::new("menu");
/// const SETTINGS: Scene = Scene::new("settings");
///
/// async fn open_settings(scenes: SceneContext) -> Result<(), FsmError> {
///     scenes.enter(SETTINGS).await?; // history: [menu]
///     Ok(())
/// }
///
/// async fn go_back(scenes: SceneContext) -> Result<(), FsmError> {
///     scenes.back().await?; // in `menu` again
///     Ok(())
/// }
/// ```
#[derive(Debug, Clone)]
pub struct SceneContext {
    fsm: FsmContext,
    history: FsmContext,
}

impl SceneContext {
    /// Scenes over an FSM context.
    pub fn new(fsm: FsmContext) -> SceneContext {
        let history = FsmContext::new(
            std::sync::Arc::clone(fsm.storage()),
            fsm.key().clone().with_destiny("scenes"),
        );
        SceneContext { fsm, history }
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

    /// Enters `scene`; the current scene, if any, goes onto the history.
    pub async fn enter(&self, scene: Scene) -> Result<(), FsmError> {
        if let Some(current) = self.current().await?
            && current != scene.name()
        {
            self.history
                .update_data(|h: &mut History| {
                    h.scenes.push(current.clone());
                    let excess = h.scenes.len().saturating_sub(HISTORY_CAP);
                    h.scenes.drain(..excess);
                })
                .await?;
        }
        self.fsm.set_state(scene.state()).await
    }

    /// Returns to the previous scene and returns its name; with no history, leaves the
    /// current scene and returns `None`.
    pub async fn back(&self) -> Result<Option<String>, FsmError> {
        let mut previous = None;
        self.history
            .update_data(|h: &mut History| previous = h.scenes.pop())
            .await?;
        match &previous {
            Some(name) => {
                self.fsm
                    .set_state(StateName::from(format!("{PREFIX}{name}")))
                    .await?
            }
            None => self.fsm.remove_state().await?,
        }
        Ok(previous)
    }

    /// Leaves the current scene (no scene afterwards), keeping the history and data.
    pub async fn leave(&self) -> Result<(), FsmError> {
        if self.current().await?.is_some() {
            self.fsm.remove_state().await?;
        }
        Ok(())
    }

    /// Leaves the scenes altogether: no scene, no history, no data.
    pub async fn exit(&self) -> Result<(), FsmError> {
        self.history.clear().await?;
        self.fsm.clear().await
    }
}

impl FromContext for SceneContext {
    fn from_context(cx: &Context) -> Result<Self, ExtractError> {
        FsmContext::from_context(cx).map(SceneContext::new)
    }

    fn requirement() -> Option<Requirement> {
        FsmContext::requirement()
    }
}
