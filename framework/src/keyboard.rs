//! Keyboard builders, after aiogram's `InlineKeyboardBuilder` and `ReplyKeyboardBuilder`:
//! add buttons, [`adjust`](InlineKeyboardBuilder::adjust) them into rows, take the
//! markup.
//!
//! ```
//! use tgpipe::callback_data;
//! use tgpipe::keyboard::InlineKeyboardBuilder;
//!
//! callback_data! {
//!     /// A button of the shop's menu.
//!     pub struct MenuButton("menu") { action: String, item: u32 }
//! }
//!
//! let mut keyboard = InlineKeyboardBuilder::new();
//! for action in ["buy", "sell", "info"] {
//!     keyboard.button(action, MenuButton { action: action.into(), item: 7 });
//! }
//! keyboard.url_button("Shop", "https://example.com/shop").adjust(&[3, 1]);
//! let markup = keyboard.as_markup().expect("within Telegram's limits");
//! assert_eq!(markup.inline_keyboard[0][2].callback_data.as_deref(), Some("menu:info:7"));
//! assert_eq!(markup.inline_keyboard[1][0].url.as_deref(), Some("https://example.com/shop"));
//! ```
//!
//! Adding buttons never fails: a button whose callback data does not fit, a row size
//! out of range or too many buttons is kept as the builder's first error, which
//! `as_markup` returns ([`KeyboardError`]), so a keyboard is built in a row of calls
//! and checked once.

use frankenstein::types::{
    InlineKeyboardButton, InlineKeyboardMarkup, KeyboardButton, ReplyKeyboardMarkup,
};

use crate::callback_data::{CallbackData, CallbackDataError, MAX_LEN};

/// Telegram's limits on an inline keyboard: 8 buttons a row, 100 in all.
const INLINE: Limits = Limits {
    width: 8,
    buttons: 100,
};

/// Telegram documents no limits for reply keyboards; these are the ones aiogram enforces.
const REPLY: Limits = Limits {
    width: 10,
    buttons: 300,
};

/// Why a keyboard cannot be sent as built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyboardError {
    /// A button's callback data does not pack, or is over Telegram's 64 bytes.
    #[error("button `{text}`: {source}")]
    CallbackData {
        /// The button's text.
        text: String,
        /// Why its data does not fit.
        source: CallbackDataError,
    },
    /// A button's callback data is empty: Telegram wants 1 to 64 bytes.
    #[error("button `{text}` has empty callback data; Telegram wants 1 to {MAX_LEN} bytes")]
    EmptyCallbackData {
        /// The button's text.
        text: String,
    },
    /// `adjust` was given a row size of 0 or over the keyboard's width.
    #[error("a row of {size} buttons: a row has 1 to {max}")]
    RowSize {
        /// The size asked for.
        size: usize,
        /// The widest row the keyboard allows.
        max: usize,
    },
    /// More buttons than the keyboard allows.
    #[error("{count} buttons: a keyboard has at most {max}")]
    TooManyButtons {
        /// How many buttons it has.
        count: usize,
        /// How many it may have.
        max: usize,
    },
}

/// What a button's `callback_data` can be made of: a [`CallbackData`] value (made by
/// [`callback_data!`](crate::callback_data!)), packed, or plain text.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a button's callback data",
    label = "not callback data",
    note = "callback data is a `callback_data!` type, a `String` or a `&str`"
)]
pub trait IntoCallbackData {
    /// The data as Telegram gets it.
    fn into_callback_data(self) -> Result<String, CallbackDataError>;
}

impl<T: CallbackData> IntoCallbackData for T {
    fn into_callback_data(self) -> Result<String, CallbackDataError> {
        self.pack()
    }
}

impl IntoCallbackData for &str {
    fn into_callback_data(self) -> Result<String, CallbackDataError> {
        Ok(self.to_owned())
    }
}

impl IntoCallbackData for String {
    fn into_callback_data(self) -> Result<String, CallbackDataError> {
        Ok(self)
    }
}

/// An inline keyboard: buttons under a message, each sending callback data or opening
/// a URL.
///
/// Buttons fill rows of 8 (Telegram's widest) unless [`row`](Self::row) starts a new
/// one or [`adjust`](Self::adjust) lays them out again.
///
/// ```
/// use tgpipe::keyboard::InlineKeyboardBuilder;
///
/// let markup = InlineKeyboardBuilder::new()
///     .button("Yes", "answer:yes")
///     .button("No", "answer:no")
///     .row()
///     .url_button("Help", "https://example.com/help")
///     .as_markup()
///     .unwrap();
/// let rows: Vec<usize> = markup.inline_keyboard.iter().map(Vec::len).collect();
/// assert_eq!(rows, [2, 1]);
/// ```
#[derive(Debug, Clone)]
pub struct InlineKeyboardBuilder(Layout<InlineKeyboardButton>);

impl Default for InlineKeyboardBuilder {
    fn default() -> Self {
        InlineKeyboardBuilder::new()
    }
}

impl InlineKeyboardBuilder {
    /// An empty keyboard.
    pub fn new() -> InlineKeyboardBuilder {
        InlineKeyboardBuilder(Layout::new(INLINE))
    }

    /// Adds a button that sends `data` back as a callback query: a [`CallbackData`]
    /// value, packed, or plain text (1 to 64 bytes).
    pub fn button(&mut self, text: impl Into<String>, data: impl IntoCallbackData) -> &mut Self {
        let text = text.into();
        match data.into_callback_data() {
            Ok(data) => self.add(
                InlineKeyboardButton::builder()
                    .text(text)
                    .callback_data(data)
                    .build(),
            ),
            Err(source) => {
                self.0.fail(KeyboardError::CallbackData { text, source });
                self
            }
        }
    }

    /// Adds a button that opens `url`.
    pub fn url_button(&mut self, text: impl Into<String>, url: impl Into<String>) -> &mut Self {
        self.add(InlineKeyboardButton::builder().text(text).url(url).build())
    }

    /// Adds a button made by hand (a web app, an inline query switch, a payment ...);
    /// its callback data, if it has some, is checked like [`button`](Self::button)'s.
    pub fn add(&mut self, button: InlineKeyboardButton) -> &mut Self {
        if let Some(data) = &button.callback_data
            && let Err(e) = check_callback_data(&button.text, data)
        {
            self.0.fail(e);
        }
        self.0.push(button);
        self
    }

    /// Ends the current row: the next button starts a new one.
    pub fn row(&mut self) -> &mut Self {
        self.0.row();
        self
    }

    /// Lays every button added so far out again, into rows of `sizes[0]`, `sizes[1]`,
    /// ... buttons, the last size repeating for the rest (aiogram's `adjust`); no sizes
    /// means rows of 8. Each size is 1 to 8. Buttons added later fill the last row
    /// before they start a new one.
    pub fn adjust(&mut self, sizes: &[usize]) -> &mut Self {
        self.0.adjust(sizes);
        self
    }

    /// How many buttons it has.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it has none.
    pub fn is_empty(&self) -> bool {
        self.0.len() == 0
    }

    /// The keyboard, for `reply_markup` (inside `ReplyMarkup::InlineKeyboardMarkup` when
    /// sending a message), or the builder's first error.
    pub fn as_markup(&self) -> Result<InlineKeyboardMarkup, KeyboardError> {
        Ok(InlineKeyboardMarkup::builder()
            .inline_keyboard(self.0.rows()?)
            .build())
    }
}

fn check_callback_data(text: &str, data: &str) -> Result<(), KeyboardError> {
    if data.is_empty() {
        return Err(KeyboardError::EmptyCallbackData { text: text.into() });
    }
    if data.len() > MAX_LEN {
        return Err(KeyboardError::CallbackData {
            text: text.into(),
            source: CallbackDataError::TooLong {
                data: data.into(),
                len: data.len(),
            },
        });
    }
    Ok(())
}

/// A reply keyboard: buttons in place of the user's keyboard, each sending its text.
///
/// ```
/// use tgpipe::keyboard::ReplyKeyboardBuilder;
///
/// let mut keyboard = ReplyKeyboardBuilder::new();
/// for n in 1..=7 {
///     keyboard.button(n.to_string());
/// }
/// let markup = keyboard.adjust(&[3]).resize().one_time().as_markup().unwrap();
/// let rows: Vec<usize> = markup.keyboard.iter().map(Vec::len).collect();
/// assert_eq!(rows, [3, 3, 1]);
/// assert_eq!(markup.resize_keyboard, Some(true));
/// ```
#[derive(Debug, Clone)]
pub struct ReplyKeyboardBuilder {
    layout: Layout<KeyboardButton>,
    resize: bool,
    one_time: bool,
}

impl Default for ReplyKeyboardBuilder {
    fn default() -> Self {
        ReplyKeyboardBuilder::new()
    }
}

impl ReplyKeyboardBuilder {
    /// An empty keyboard.
    pub fn new() -> ReplyKeyboardBuilder {
        ReplyKeyboardBuilder {
            layout: Layout::new(REPLY),
            resize: false,
            one_time: false,
        }
    }

    /// Adds a button that sends `text`.
    pub fn button(&mut self, text: impl Into<String>) -> &mut Self {
        self.add(KeyboardButton::builder().text(text).build())
    }

    /// Adds a button made by hand (one that asks for a contact, a location, a poll ...).
    pub fn add(&mut self, button: KeyboardButton) -> &mut Self {
        self.layout.push(button);
        self
    }

    /// Ends the current row: the next button starts a new one.
    pub fn row(&mut self) -> &mut Self {
        self.layout.row();
        self
    }

    /// Lays every button added so far out again, as
    /// [`InlineKeyboardBuilder::adjust`] does, with rows of 1 to 10 buttons.
    pub fn adjust(&mut self, sizes: &[usize]) -> &mut Self {
        self.layout.adjust(sizes);
        self
    }

    /// Asks clients to fit the keyboard's height to its buttons (`resize_keyboard`).
    pub fn resize(&mut self) -> &mut Self {
        self.resize = true;
        self
    }

    /// Asks clients to hide the keyboard once a button is pressed (`one_time_keyboard`).
    pub fn one_time(&mut self) -> &mut Self {
        self.one_time = true;
        self
    }

    /// How many buttons it has.
    pub fn len(&self) -> usize {
        self.layout.len()
    }

    /// Whether it has none.
    pub fn is_empty(&self) -> bool {
        self.layout.len() == 0
    }

    /// The keyboard, for `reply_markup` (inside `ReplyMarkup::ReplyKeyboardMarkup`), or
    /// the builder's first error.
    pub fn as_markup(&self) -> Result<ReplyKeyboardMarkup, KeyboardError> {
        Ok(ReplyKeyboardMarkup::builder()
            .keyboard(self.layout.rows()?)
            .maybe_resize_keyboard(self.resize.then_some(true))
            .maybe_one_time_keyboard(self.one_time.then_some(true))
            .build())
    }
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    /// The widest row.
    width: usize,
    /// The most buttons in all.
    buttons: usize,
}

/// Buttons in rows, under a keyboard's limits, with the first error met while building.
#[derive(Debug, Clone)]
struct Layout<B> {
    rows: Vec<Vec<B>>,
    /// `row()` was called: the next button starts a row even if the last has room.
    row_ended: bool,
    limits: Limits,
    error: Option<KeyboardError>,
}

impl<B: Clone> Layout<B> {
    fn new(limits: Limits) -> Layout<B> {
        Layout {
            rows: Vec::new(),
            row_ended: false,
            limits,
            error: None,
        }
    }

    /// Keeps the first error: it is the one the author wrote first.
    fn fail(&mut self, error: KeyboardError) {
        self.error.get_or_insert(error);
    }

    fn push(&mut self, button: B) {
        match self.rows.last_mut() {
            Some(row) if !self.row_ended && row.len() < self.limits.width => row.push(button),
            _ => self.rows.push(vec![button]),
        }
        self.row_ended = false;
    }

    fn row(&mut self) {
        self.row_ended = true;
    }

    fn adjust(&mut self, sizes: &[usize]) {
        let max = self.limits.width;
        if let Some(&size) = sizes.iter().find(|&&s| s == 0 || s > max) {
            self.fail(KeyboardError::RowSize { size, max });
            return;
        }
        let last = sizes.last().copied().unwrap_or(max);
        let mut sizes = sizes.iter().copied().chain(std::iter::repeat(last));
        let mut buttons = std::mem::take(&mut self.rows)
            .into_iter()
            .flatten()
            .peekable();
        while buttons.peek().is_some() {
            let size = sizes.next().unwrap_or(last);
            self.rows.push(buttons.by_ref().take(size).collect());
        }
        self.row_ended = false;
    }

    fn len(&self) -> usize {
        self.rows.iter().map(Vec::len).sum()
    }

    fn rows(&self) -> Result<Vec<Vec<B>>, KeyboardError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let count = self.len();
        if count > self.limits.buttons {
            return Err(KeyboardError::TooManyButtons {
                count,
                max: self.limits.buttons,
            });
        }
        Ok(self.rows.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callback_data;

    callback_data! {
        struct Pick("pick") { item: String }
    }

    fn shape(markup: &InlineKeyboardMarkup) -> Vec<usize> {
        markup.inline_keyboard.iter().map(Vec::len).collect()
    }

    fn inline_with(n: usize) -> InlineKeyboardBuilder {
        let mut keyboard = InlineKeyboardBuilder::new();
        for i in 0..n {
            keyboard.button(i.to_string(), format!("b:{i}"));
        }
        keyboard
    }

    #[test]
    fn an_empty_builder_is_an_empty_keyboard() {
        let keyboard = InlineKeyboardBuilder::new();
        assert!(keyboard.is_empty());
        assert!(keyboard.as_markup().unwrap().inline_keyboard.is_empty());
        let reply = ReplyKeyboardBuilder::new().as_markup().unwrap();
        assert!(reply.keyboard.is_empty());
        assert_eq!(reply.resize_keyboard, None);
        // Adjusting nothing is still nothing.
        assert!(
            shape(
                &InlineKeyboardBuilder::new()
                    .adjust(&[2])
                    .as_markup()
                    .unwrap()
            )
            .is_empty()
        );
    }

    #[test]
    fn buttons_fill_rows_of_eight() {
        assert_eq!(shape(&inline_with(3).as_markup().unwrap()), [3]);
        assert_eq!(shape(&inline_with(17).as_markup().unwrap()), [8, 8, 1]);
    }

    #[test]
    fn adjust_repeats_the_last_size() {
        assert_eq!(
            shape(&inline_with(10).adjust(&[3, 2]).as_markup().unwrap()),
            [3, 2, 2, 2, 1]
        );
        assert_eq!(
            shape(&inline_with(5).adjust(&[1]).as_markup().unwrap()),
            [1; 5]
        );
    }

    #[test]
    fn adjust_with_more_room_than_buttons_stops_at_the_last_button() {
        assert_eq!(
            shape(&inline_with(4).adjust(&[3, 3, 3]).as_markup().unwrap()),
            [3, 1]
        );
        assert_eq!(
            shape(&inline_with(2).adjust(&[5]).as_markup().unwrap()),
            [2]
        );
    }

    #[test]
    fn adjust_without_sizes_makes_rows_of_the_widest() {
        let mut keyboard = inline_with(10);
        keyboard.adjust(&[1]).adjust(&[]);
        assert_eq!(shape(&keyboard.as_markup().unwrap()), [8, 2]);
    }

    #[test]
    fn adjust_lays_out_rows_again_and_later_buttons_fill_the_last_row() {
        let mut keyboard = inline_with(3);
        keyboard.row().button("x", "x").adjust(&[2]);
        assert_eq!(shape(&keyboard.as_markup().unwrap()), [2, 2]);
        keyboard.button("y", "y");
        assert_eq!(shape(&keyboard.as_markup().unwrap()), [2, 3]);
    }

    #[test]
    fn row_starts_a_new_row_once() {
        let mut keyboard = inline_with(2);
        keyboard.row().row().button("c", "c").row();
        assert_eq!(shape(&keyboard.as_markup().unwrap()), [2, 1]);
        // A row before any button makes no empty row.
        let mut keyboard = InlineKeyboardBuilder::new();
        keyboard.row().button("a", "a");
        assert_eq!(shape(&keyboard.as_markup().unwrap()), [1]);
    }

    #[test]
    fn row_sizes_out_of_range_are_refused() {
        for size in [0, 9] {
            let err = inline_with(3).adjust(&[2, size]).as_markup().unwrap_err();
            assert_eq!(err, KeyboardError::RowSize { size, max: 8 });
        }
        let mut reply = ReplyKeyboardBuilder::new();
        reply.button("a").adjust(&[10]);
        assert!(reply.as_markup().is_ok());
        let err = reply.adjust(&[11]).as_markup().unwrap_err();
        assert_eq!(err, KeyboardError::RowSize { size: 11, max: 10 });
    }

    #[test]
    fn a_hundred_buttons_pass_and_one_more_does_not() {
        assert!(inline_with(100).as_markup().is_ok());
        let err = inline_with(101).as_markup().unwrap_err();
        assert_eq!(
            err,
            KeyboardError::TooManyButtons {
                count: 101,
                max: 100
            }
        );
        assert_eq!(err.to_string(), "101 buttons: a keyboard has at most 100");
    }

    #[test]
    fn callback_data_values_are_packed() {
        let mut keyboard = InlineKeyboardBuilder::new();
        keyboard
            .button("Tea", Pick { item: "tea".into() })
            .button("Plain", String::from("p"));
        let markup = keyboard.as_markup().unwrap();
        let data: Vec<_> = markup.inline_keyboard[0]
            .iter()
            .map(|b| b.callback_data.as_deref().unwrap())
            .collect();
        assert_eq!(data, ["pick:tea", "p"]);
    }

    #[test]
    fn callback_data_over_64_bytes_is_refused_with_the_button_named() {
        let long = "x".repeat(65);
        let err = InlineKeyboardBuilder::new()
            .button("ok", "ok")
            .button("long text", long.as_str())
            .as_markup()
            .unwrap_err();
        assert_eq!(
            err,
            KeyboardError::CallbackData {
                text: "long text".into(),
                source: CallbackDataError::TooLong {
                    data: long.clone(),
                    len: 65
                },
            }
        );
        assert!(
            err.to_string()
                .starts_with("button `long text`: callback data `xxx"),
            "{err}"
        );
        // Exactly 64 bytes fit; a packed value over 64 fails the same way.
        assert!(
            InlineKeyboardBuilder::new()
                .button("b", &*"x".repeat(64))
                .as_markup()
                .is_ok()
        );
        let err = InlineKeyboardBuilder::new()
            .button(
                "p",
                Pick {
                    item: "y".repeat(60),
                },
            )
            .as_markup()
            .unwrap_err();
        assert!(matches!(
            err,
            KeyboardError::CallbackData {
                source: CallbackDataError::TooLong { len: 65, .. },
                ..
            }
        ));
    }

    #[test]
    fn a_field_holding_the_separator_or_empty_data_is_refused() {
        let err = InlineKeyboardBuilder::new()
            .button("p", Pick { item: "a:b".into() })
            .as_markup()
            .unwrap_err();
        assert!(matches!(
            err,
            KeyboardError::CallbackData {
                source: CallbackDataError::Separator { field: "item" },
                ..
            }
        ));
        let err = InlineKeyboardBuilder::new()
            .button("e", "")
            .as_markup()
            .unwrap_err();
        assert_eq!(err, KeyboardError::EmptyCallbackData { text: "e".into() });
    }

    #[test]
    fn the_first_error_is_the_one_returned() {
        let err = InlineKeyboardBuilder::new()
            .button("first", "")
            .adjust(&[0])
            .as_markup()
            .unwrap_err();
        assert_eq!(
            err,
            KeyboardError::EmptyCallbackData {
                text: "first".into()
            }
        );
    }

    #[test]
    fn buttons_made_by_hand_are_checked_too() {
        let button = InlineKeyboardButton::builder()
            .text("h")
            .callback_data("x".repeat(70))
            .build();
        assert!(
            InlineKeyboardBuilder::new()
                .add(button)
                .as_markup()
                .is_err()
        );
    }

    #[test]
    fn reply_keyboards_carry_their_options_and_fill_rows_of_ten() {
        let mut keyboard = ReplyKeyboardBuilder::new();
        for i in 0..12 {
            keyboard.button(i.to_string());
        }
        let markup = keyboard.as_markup().unwrap();
        assert_eq!(
            markup.keyboard.iter().map(Vec::len).collect::<Vec<_>>(),
            [10, 2]
        );
        assert_eq!(
            (markup.resize_keyboard, markup.one_time_keyboard),
            (None, None)
        );
        let markup = keyboard.resize().one_time().as_markup().unwrap();
        assert_eq!(markup.resize_keyboard, Some(true));
        assert_eq!(markup.one_time_keyboard, Some(true));
        assert_eq!(markup.keyboard[1][1].text, "11");
    }

    #[test]
    fn reply_keyboards_have_at_most_300_buttons() {
        let mut keyboard = ReplyKeyboardBuilder::new();
        for _ in 0..301 {
            keyboard.button("b");
        }
        assert_eq!(
            keyboard.as_markup().unwrap_err(),
            KeyboardError::TooManyButtons {
                count: 301,
                max: 300
            }
        );
    }
}
