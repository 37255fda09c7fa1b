//! The `Bot` handle: a bot's identity and the one path every Bot API call takes.
//!
//! Every method goes through [`Bot::call`], so that request middleware, the rate limiter
//! and `retry_after` handling (see the Bot API client) have a single place to live. The
//! token is part of the request URL only as Telegram requires; it is never logged, and
//! `Debug` prints the bot id alone.

use std::fmt;
use std::sync::{Arc, OnceLock};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tgpipe_shared::BotId;

/// The default Bot API base URL.
pub const DEFAULT_API_URL: &str = "https://api.telegram.org";

/// A Bot API error, classified for retries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BotError {
    /// Telegram answered `ok: false`.
    #[error("Bot API error {code}: {description}")]
    Api {
        /// HTTP-like error code.
        code: u16,
        /// Telegram's description.
        description: String,
        /// Seconds to wait (429).
        retry_after: Option<u64>,
        /// The supergroup a group became (400).
        migrate_to_chat_id: Option<i64>,
    },
    /// The request did not complete.
    #[error("network error talking to the Bot API: {0}")]
    Network(String),
    /// The answer was not Telegram's envelope.
    #[error("unexpected answer from the Bot API: {0}")]
    InvalidResponse(String),
}

impl BotError {
    /// Whether retrying later could succeed: 429, 5xx and network errors.
    pub fn is_transient(&self) -> bool {
        match self {
            BotError::Api { code, .. } => *code == 429 || *code >= 500,
            BotError::Network(_) => true,
            BotError::InvalidResponse(_) => false,
        }
    }
}

/// A token that is not `<bot_id>:<secret>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a bot token looks like `123456:ABC-DEF...`")]
pub struct InvalidToken;

enum Payload {
    Json(Vec<u8>),
    Form(reqwest::multipart::Form),
}

struct Inner {
    token: String,
    id: BotId,
    api_url: String,
    client: reqwest::Client,
    username: OnceLock<String>,
}

/// A bot: cheap to clone, shared by every handler.
#[derive(Clone)]
pub struct Bot(Arc<Inner>);

impl fmt::Debug for Bot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bot")
            .field("id", &self.0.id)
            .field("username", &self.0.username.get())
            .finish()
    }
}

#[derive(serde::Deserialize)]
struct Envelope<R> {
    ok: bool,
    result: Option<R>,
    error_code: Option<u16>,
    description: Option<String>,
    parameters: Option<Parameters>,
}

#[derive(serde::Deserialize)]
struct Parameters {
    retry_after: Option<u64>,
    migrate_to_chat_id: Option<i64>,
}

impl Bot {
    /// A bot with this token, talking to Telegram.
    pub fn new(token: impl Into<String>) -> Result<Bot, InvalidToken> {
        Bot::with_api_url(token, DEFAULT_API_URL)
    }

    /// A bot talking to another Bot API server (a local one, or a stand-in).
    pub fn with_api_url(token: impl Into<String>, api_url: &str) -> Result<Bot, InvalidToken> {
        let token = token.into();
        let id = BotId::from_token(&token).ok_or(InvalidToken)?;
        let client = reqwest::Client::builder()
            .pool_idle_timeout(std::time::Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()
            .unwrap_or_default();
        Ok(Bot(Arc::new(Inner {
            token,
            id,
            api_url: api_url.trim_end_matches('/').to_owned(),
            client,
            username: OnceLock::new(),
        })))
    }

    /// The bot's id.
    pub fn id(&self) -> BotId {
        self.0.id
    }

    /// The bot's username, once known ([`Bot::me`] or [`Bot::set_username`]).
    pub fn username(&self) -> Option<&str> {
        self.0.username.get().map(String::as_str)
    }

    /// Sets the username without asking Telegram (tests, or when it is configured).
    pub fn set_username(&self, username: impl Into<String>) {
        let _ = self.0.username.set(username.into());
    }

    /// Calls a Bot API method: the one path every call takes.
    pub async fn call<P: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        method: &str,
        params: &P,
    ) -> Result<R, BotError> {
        let body = serde_json::to_vec(params)
            .map_err(|e| BotError::InvalidResponse(format!("parameters: {e}")))?;
        let bytes = self.send(method, Payload::Json(body)).await?;
        let envelope: Envelope<R> =
            serde_json::from_slice(&bytes).map_err(|e| BotError::InvalidResponse(e.to_string()))?;
        envelope
            .result
            .ok_or_else(|| BotError::InvalidResponse("`ok` without a `result`".into()))
    }

    /// Sends a request and returns the body of a successful (`ok: true`) answer; an
    /// `ok: false` answer becomes [`BotError::Api`].
    async fn send(&self, method: &str, payload: Payload) -> Result<bytes::Bytes, BotError> {
        let url = format!("{}/bot{}/{method}", self.0.api_url, self.0.token);
        let request = self.0.client.post(url);
        let request = match payload {
            Payload::Json(body) => request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body),
            Payload::Form(form) => request.multipart(form),
        };
        // `without_url`: the URL holds the token.
        let response = request
            .send()
            .await
            .map_err(|e| BotError::Network(e.without_url().to_string()))?;
        let status = response.status().as_u16();
        let body = response
            .bytes()
            .await
            .map_err(|e| BotError::Network(e.without_url().to_string()))?;
        let head: Envelope<serde::de::IgnoredAny> = serde_json::from_slice(&body)
            .map_err(|e| BotError::InvalidResponse(format!("HTTP {status}: {e}")))?;
        if head.ok {
            return Ok(body);
        }
        Err(BotError::Api {
            code: head.error_code.unwrap_or(status),
            description: head.description.unwrap_or_default(),
            retry_after: head.parameters.as_ref().and_then(|p| p.retry_after),
            migrate_to_chat_id: head.parameters.and_then(|p| p.migrate_to_chat_id),
        })
    }

    /// `getMe`, remembering the username for the `Command` filter's mention check.
    pub async fn me(&self) -> Result<frankenstein::types::User, BotError> {
        let me: frankenstein::types::User = self.call("getMe", &serde_json::json!({})).await?;
        if let Some(u) = &me.username {
            self.set_username(u.clone());
        }
        Ok(me)
    }

    /// `sendMessage` with plain text.
    pub async fn send_text(
        &self,
        chat_id: i64,
        text: &str,
    ) -> Result<frankenstein::types::Message, BotError> {
        self.call(
            "sendMessage",
            &serde_json::json!({"chat_id": chat_id, "text": text}),
        )
        .await
    }
}

/// Every Bot API method, through [`Bot`]'s single call path.
///
/// ```no_run
/// # async fn demo(bot: tgpipe_worker::Bot) -> Result<(), tgpipe_worker::BotError> {
/// use frankenstein::AsyncTelegramApi;
/// use frankenstein::methods::SendMessageParams;
///
/// let params = SendMessageParams::builder().chat_id(5).text("hi").build();
/// bot.send_message(&params).await?;
/// # Ok(()) }
/// ```
#[async_trait::async_trait]
impl frankenstein::AsyncTelegramApi for Bot {
    type Error = BotError;

    async fn request<Params, Output>(
        &self,
        method: &str,
        params: Option<Params>,
    ) -> Result<Output, BotError>
    where
        Params: Serialize + std::fmt::Debug + Send,
        Output: DeserializeOwned,
    {
        let body = match params {
            Some(p) => serde_json::to_vec(&p)
                .map_err(|e| BotError::InvalidResponse(format!("parameters: {e}")))?,
            None => b"{}".to_vec(),
        };
        let bytes = self.send(method, Payload::Json(body)).await?;
        serde_json::from_slice(&bytes).map_err(|e| BotError::InvalidResponse(e.to_string()))
    }

    async fn request_with_form_data<Params, Output>(
        &self,
        method: &str,
        params: Params,
        files: Vec<(&str, std::path::PathBuf)>,
    ) -> Result<Output, BotError>
    where
        Params: Serialize + std::fmt::Debug + Send,
        Output: DeserializeOwned,
    {
        let fields = serde_json::to_value(&params)
            .map_err(|e| BotError::InvalidResponse(format!("parameters: {e}")))?;
        let mut form = reqwest::multipart::Form::new();
        if let serde_json::Value::Object(map) = fields {
            for (name, value) in map {
                // Telegram reads nested parameters of a form as JSON text.
                let text = match value {
                    serde_json::Value::String(s) => s,
                    serde_json::Value::Null => continue,
                    other => other.to_string(),
                };
                form = form.text(name, text);
            }
        }
        for (field, path) in files {
            let bytes = tokio::fs::read(&path)
                .await
                .map_err(|e| BotError::InvalidResponse(format!("{}: {e}", path.display())))?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| field.to_owned());
            form = form.part(
                field.to_owned(),
                reqwest::multipart::Part::bytes(bytes).file_name(name),
            );
        }
        let bytes = self.send(method, Payload::Form(form)).await?;
        serde_json::from_slice(&bytes).map_err(|e| BotError::InvalidResponse(e.to_string()))
    }
}
