//! Files to send: [`InputFile`] (a path, bytes in memory, or something Telegram already
//! has: a URL or a `file_id`), and how a request carries them.
//!
//! Only a path or bytes make a request multipart; a URL or a `file_id` is a plain
//! string parameter, so such a call stays JSON. A body is built from owned bytes so that
//! a retried request (after a 429 or a 5xx) sends the same parts again without reading
//! the file twice.

use std::path::PathBuf;

use bytes::Bytes;

use super::BotError;

/// A file for a Bot API parameter (`photo`, `document`, `certificate`, ...).
///
/// ```
/// use tgpipe_bot::InputFile;
///
/// let by_id = InputFile::file_id("AgACAgIAAxkBAAIB");
/// assert!(!by_id.is_upload());
/// let upload = InputFile::bytes("hello.txt", b"hello".to_vec());
/// assert!(upload.is_upload());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputFile {
    /// A local file, read when the request is built.
    Path(PathBuf),
    /// Bytes in memory, with the file name Telegram should see.
    Bytes {
        /// The file name.
        name: String,
        /// The content.
        data: Bytes,
    },
    /// An HTTP URL Telegram downloads itself.
    Url(String),
    /// A file Telegram already stores.
    FileId(String),
}

impl InputFile {
    /// A local file.
    pub fn path(path: impl Into<PathBuf>) -> InputFile {
        InputFile::Path(path.into())
    }

    /// Bytes in memory, named `name`.
    pub fn bytes(name: impl Into<String>, data: impl Into<Bytes>) -> InputFile {
        InputFile::Bytes {
            name: name.into(),
            data: data.into(),
        }
    }

    /// A URL for Telegram to download.
    pub fn url(url: impl Into<String>) -> InputFile {
        InputFile::Url(url.into())
    }

    /// A `file_id` of a file Telegram has.
    pub fn file_id(id: impl Into<String>) -> InputFile {
        InputFile::FileId(id.into())
    }

    /// Whether sending it uploads bytes (a multipart body).
    pub fn is_upload(&self) -> bool {
        matches!(self, InputFile::Path(_) | InputFile::Bytes { .. })
    }

    /// The string a parameter takes for a file Telegram fetches itself, if it is one.
    pub fn as_reference(&self) -> Option<&str> {
        match self {
            InputFile::Url(s) | InputFile::FileId(s) => Some(s),
            InputFile::Path(_) | InputFile::Bytes { .. } => None,
        }
    }

    /// Reads an upload into a form part (a path is read now).
    pub(crate) async fn into_part(self, field: &str) -> Result<FormPart, BotError> {
        match self {
            InputFile::Path(path) => {
                let data = tokio::fs::read(&path)
                    .await
                    .map_err(|e| BotError::InvalidRequest(format!("{}: {e}", path.display())))?;
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| field.to_owned());
                Ok(FormPart::File {
                    field: field.to_owned(),
                    name,
                    data: Bytes::from(data),
                })
            }
            InputFile::Bytes { name, data } => Ok(FormPart::File {
                field: field.to_owned(),
                name,
                data,
            }),
            InputFile::Url(s) | InputFile::FileId(s) => Ok(FormPart::Text {
                field: field.to_owned(),
                value: s,
            }),
        }
    }
}

impl From<PathBuf> for InputFile {
    fn from(p: PathBuf) -> InputFile {
        InputFile::Path(p)
    }
}

/// One part of a multipart body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormPart {
    /// A text field (nested parameters are JSON text, as Telegram reads them).
    Text {
        /// The field name.
        field: String,
        /// Its value.
        value: String,
    },
    /// A file.
    File {
        /// The field name (`photo`, or the name an `attach://` reference points to).
        field: String,
        /// The file name Telegram sees.
        name: String,
        /// The content.
        data: Bytes,
    },
}

impl FormPart {
    /// The part's field name.
    pub fn field(&self) -> &str {
        match self {
            FormPart::Text { field, .. } | FormPart::File { field, .. } => field,
        }
    }
}

/// A request body: JSON, or multipart when a file is uploaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// A JSON object.
    Json(Bytes),
    /// Multipart form parts.
    Multipart(Vec<FormPart>),
}

impl Payload {
    /// A JSON body from parameters.
    pub fn json<P: serde::Serialize + ?Sized>(params: &P) -> Result<Payload, BotError> {
        serde_json::to_vec(params)
            .map(|b| Payload::Json(Bytes::from(b)))
            .map_err(|e| BotError::InvalidRequest(format!("parameters: {e}")))
    }

    /// A multipart body: the parameters' fields as text (nested ones as JSON text,
    /// nulls left out) and the files. Files that are references (URL, `file_id`) become
    /// text fields; a body without uploads stays JSON.
    pub async fn with_files<P: serde::Serialize + ?Sized>(
        params: &P,
        files: Vec<(String, InputFile)>,
    ) -> Result<Payload, BotError> {
        let value = serde_json::to_value(params)
            .map_err(|e| BotError::InvalidRequest(format!("parameters: {e}")))?;
        let serde_json::Value::Object(mut map) = value else {
            return Err(BotError::InvalidRequest(
                "parameters must be an object".into(),
            ));
        };
        if !files.iter().any(|(_, f)| f.is_upload()) {
            for (field, file) in files {
                if let Some(s) = file.as_reference() {
                    map.insert(field, serde_json::Value::String(s.to_owned()));
                }
            }
            return Payload::json(&map);
        }
        let mut parts = Vec::with_capacity(map.len() + files.len());
        for (field, value) in map {
            let value = match value {
                serde_json::Value::String(s) => s,
                serde_json::Value::Null => continue,
                other => other.to_string(),
            };
            parts.push(FormPart::Text { field, value });
        }
        for (field, file) in files {
            parts.retain(|p| p.field() != field);
            parts.push(file.into_part(&field).await?);
        }
        Ok(Payload::Multipart(parts))
    }

    /// The reqwest form for one attempt (a form is consumed by sending it).
    pub(crate) fn form(parts: &[FormPart]) -> reqwest::multipart::Form {
        let mut form = reqwest::multipart::Form::new();
        for part in parts {
            form = match part {
                FormPart::Text { field, value } => form.text(field.clone(), value.clone()),
                FormPart::File { field, name, data } => form.part(
                    field.clone(),
                    reqwest::multipart::Part::stream(reqwest::Body::from(data.clone()))
                        .file_name(name.clone()),
                ),
            };
        }
        form
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn references_keep_a_json_body() {
        let p = Payload::with_files(
            &serde_json::json!({"chat_id": 5}),
            vec![("photo".into(), InputFile::file_id("abc"))],
        )
        .await
        .unwrap();
        let Payload::Json(b) = p else { panic!() };
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v, serde_json::json!({"chat_id": 5, "photo": "abc"}));
    }

    #[tokio::test]
    async fn uploads_make_multipart_with_nested_fields_as_json_text() {
        let p = Payload::with_files(
            &serde_json::json!({"chat_id": 5, "reply_markup": {"a": 1}, "caption": null}),
            vec![("photo".into(), InputFile::bytes("p.jpg", vec![1, 2, 3]))],
        )
        .await
        .unwrap();
        let Payload::Multipart(parts) = p else {
            panic!()
        };
        assert!(parts.contains(&FormPart::Text {
            field: "reply_markup".into(),
            value: r#"{"a":1}"#.into()
        }));
        assert!(!parts.iter().any(|p| p.field() == "caption"));
        assert!(
            parts
                .iter()
                .any(|p| matches!(p, FormPart::File { name, .. } if name == "p.jpg"))
        );
    }

    #[tokio::test]
    async fn a_missing_file_is_a_request_error() {
        let e = InputFile::path("/nonexistent/x")
            .into_part("document")
            .await
            .unwrap_err();
        assert!(matches!(e, BotError::InvalidRequest(_)));
    }
}
