//! The order domain: turning a delivered `order-placed` event into a
//! validated [`Order`], or into a [`Poison`] verdict saying why it never will
//! be one.
//!
//! Decoding is pure (no I/O) and total: any byte string yields `Ok` or
//! `Err`, never a panic, so a hostile or corrupt event can only ever be
//! parked, not crash the relay. Each [`PoisonReason`] has a stable
//! snake_case [`code`](PoisonReason::code) that operators see in logs and in
//! the `dead_letters` table.
//!
//! Policies worth knowing:
//!
//! * Money is exact. Prices (`"USD601.05"`) and tax rates are parsed from
//!   their text; nothing goes through `f64`. See [`money`].
//! * Tax is `quantity x unitPrice x taxRate` per line, rounded half to even
//!   to the currency's minor units; `total = subtotal + tax`.
//! * `at` must be RFC 3339 *with* an offset (`Z` or `+hh:mm`). A timestamp
//!   without one is refused rather than assumed to be UTC, because guessing
//!   a zone would silently misplace orders by hours.
//! * When the event lives in an `order-...` stream, `orderId` must equal the
//!   stream name, as the tutorial writes them; other streams are not checked.
//! * A `\u0000` anywhere in the document is refused: PostgreSQL can store it
//!   in neither `text` nor `jsonb`.
//! * Identifiers (`orderId`, `customerId`, `checkoutOfCart`, `productId`)
//!   are at most [`MAX_ID_BYTES`] long and `productName` at most
//!   [`MAX_NAME_BYTES`], in UTF-8 bytes; the schema checks the same bounds,
//!   so an over-long string is poison here instead of a database error.
//! * An order has at most [`DecodeLimits::max_line_items`] lines.
//!
//! Known shortcomings: unknown fields inside a line item are dropped (only
//! unknown top-level fields are kept, in [`Order::extra`]); numbers inside
//! `shipping`, `billing` and `extra` are kept as JSON values, so a
//! non-integer there is held as an `f64`; duplicate JSON keys are not
//! refused, the last one wins; `at` keeps nanoseconds but PostgreSQL stores
//! microseconds.

pub mod money;

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use PoisonReason as R;

/// The content type the tutorial's events carry.
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// Longest identifier accepted, in UTF-8 bytes: `orderId` (the table's
/// unique key), `customerId`, `checkoutOfCart` and each `productId`.
pub const MAX_ID_BYTES: usize = 256;

/// Longest `productName` accepted, in UTF-8 bytes.
pub const MAX_NAME_BYTES: usize = 1024;

/// Bounds on what [`decode`] is willing to look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Payloads longer than this are refused unread.
    pub max_bytes: usize,
    /// Deepest nesting of objects and arrays accepted; bounds recursion.
    pub max_depth: usize,
    /// Most `lineItems` accepted in one order. A real order this long is
    /// unlikely; a producer looping over the same line is not.
    pub max_line_items: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_bytes: 1024 * 1024,
            max_depth: 64,
            max_line_items: 1000,
        }
    }
}

/// A validated order, ready to be written.
#[derive(Debug, Clone, PartialEq)]
pub struct Order {
    /// Business key; unique in the store.
    pub order_id: String,
    /// Who placed it.
    pub customer_id: String,
    /// The cart and revision it came from, e.g. `cart-631d...@9`.
    pub checkout_of_cart: Option<String>,
    /// ISO 4217 code shared by every line.
    pub currency: String,
    /// The lines, in event order.
    pub line_items: Vec<LineItem>,
    /// Sum of `quantity x unit_price`.
    pub subtotal: Decimal,
    /// Sum of the per-line rounded taxes.
    pub tax: Decimal,
    /// `subtotal + tax`.
    pub total: Decimal,
    /// The event's `shipping` object, as sent.
    pub shipping: Value,
    /// The event's `billing` object, as sent.
    pub billing: Value,
    /// When the order was placed (`at`), normalised to UTC.
    pub placed_at: DateTime<Utc>,
    /// Top-level fields this version does not know, kept so that nothing
    /// the producer adds later is lost.
    pub extra: Map<String, Value>,
}

/// One validated order line. Serialises with string amounts for `jsonb`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LineItem {
    /// The product's id in the catalogue.
    pub product_id: String,
    /// The name shown to the customer at the time of the order.
    pub product_name: String,
    /// Units ordered; always at least 1.
    pub quantity: i32,
    /// Price of one unit, with the currency's decimal places.
    #[serde(with = "rust_decimal::serde::str")]
    pub unit_price: Decimal,
    /// Tax rate as a fraction in `0..=1` (0.21 is 21%).
    #[serde(with = "rust_decimal::serde::str")]
    pub tax_rate: Decimal,
}

/// Why an event can never become an [`Order`]. Retrying will not help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail}", reason.code())]
pub struct Poison {
    /// The category, for metrics and the dead-letter table.
    pub reason: PoisonReason,
    /// Human-readable specifics, e.g. which field and what was wrong.
    pub detail: String,
}

impl Poison {
    /// A verdict with its explanation.
    pub fn new(reason: PoisonReason, detail: impl Into<String>) -> Poison {
        Poison {
            reason,
            detail: detail.into(),
        }
    }

    /// The verdict when decoding panicked instead of returning.
    pub fn handler_panicked() -> Poison {
        Poison::new(R::DecoderPanicked, "decoding panicked")
    }

    /// The verdict when the database refuses a decoded order for good.
    pub fn rejected_by_database(err: &dyn std::error::Error) -> Poison {
        Poison::new(R::RejectedByDatabase, err.to_string())
    }
}

/// Categories of undecodable events; see [`PoisonReason::code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoisonReason {
    /// The content type is not JSON.
    UnsupportedContentType,
    /// The payload has no bytes, or only whitespace.
    Empty,
    /// The payload is longer than [`DecodeLimits::max_bytes`].
    TooLarge,
    /// The payload is not UTF-8.
    InvalidUtf8,
    /// Objects or arrays nest deeper than [`DecodeLimits::max_depth`].
    TooDeep,
    /// The payload is not a JSON document.
    NotJson,
    /// The JSON document is not an object.
    NotAnObject,
    /// A required field is absent.
    MissingField,
    /// A field has the wrong JSON type (including `null`).
    WrongType,
    /// A required identifier is empty or only whitespace.
    BlankField,
    /// `orderId` is unusable as a key.
    InvalidOrderId,
    /// `orderId` differs from the `order-...` stream it was written to.
    OrderIdStreamMismatch,
    /// `quantity` is not an integer in `1..=i32::MAX`.
    InvalidQuantity,
    /// `pricePerUnit` is not `<CODE><non-negative decimal>`.
    InvalidPrice,
    /// `taxRate` is not a number in `0..=1` with few enough decimals.
    InvalidTaxRate,
    /// Line items use more than one currency.
    MixedCurrencies,
    /// An amount does not fit the exact arithmetic.
    AmountOverflow,
    /// `at` is not RFC 3339 with an offset.
    InvalidTimestamp,
    /// `lineItems` is empty.
    NoLineItems,
    /// `lineItems` has more than [`DecodeLimits::max_line_items`] lines.
    TooManyLineItems,
    /// A string is longer than its column allows ([`MAX_ID_BYTES`],
    /// [`MAX_NAME_BYTES`]).
    TextTooLong,
    /// Text contains U+0000, which PostgreSQL cannot store.
    TextNotStorable,
    /// The decoder panicked; a bug, but the event is parked, not retried
    /// forever.
    DecoderPanicked,
    /// The order decoded, but PostgreSQL refused it permanently (SQLSTATE
    /// class 22 or 23).
    RejectedByDatabase,
}

impl PoisonReason {
    /// Stable snake_case code; part of the operational interface.
    pub fn code(&self) -> &'static str {
        use PoisonReason::*;
        match self {
            UnsupportedContentType => "unsupported_content_type",
            Empty => "empty",
            TooLarge => "too_large",
            InvalidUtf8 => "invalid_utf8",
            TooDeep => "too_deep",
            NotJson => "not_json",
            NotAnObject => "not_an_object",
            MissingField => "missing_field",
            WrongType => "wrong_type",
            BlankField => "blank_field",
            InvalidOrderId => "invalid_order_id",
            OrderIdStreamMismatch => "order_id_stream_mismatch",
            InvalidQuantity => "invalid_quantity",
            InvalidPrice => "invalid_price",
            InvalidTaxRate => "invalid_tax_rate",
            MixedCurrencies => "mixed_currencies",
            AmountOverflow => "amount_overflow",
            InvalidTimestamp => "invalid_timestamp",
            NoLineItems => "no_line_items",
            TooManyLineItems => "too_many_line_items",
            TextTooLong => "text_too_long",
            TextNotStorable => "text_not_storable",
            DecoderPanicked => "decoder_panicked",
            RejectedByDatabase => "rejected_by_database",
        }
    }
}

impl fmt::Display for PoisonReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Decodes and validates one delivered event.
///
/// `stream` is the stream the event was written to (the resolved event's
/// stream, not `$ce-order`); it is used only for the `orderId` check.
pub fn decode(
    content_type: &str,
    data: &[u8],
    stream: &str,
    limits: &DecodeLimits,
) -> Result<Order, Poison> {
    check_content_type(content_type)?;
    let text = check_payload(data, limits)?;
    let mut fields = parse_object(text, limits.max_depth)?;

    let order = build_order(&mut fields, limits)?;
    check_stream(&order.order_id, stream)?;

    Ok(order)
}

/// Accepts `application/json`, any case, with optional parameters.
fn check_content_type(content_type: &str) -> Result<(), Poison> {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case(JSON_CONTENT_TYPE) {
        return Ok(());
    }
    Err(Poison::new(R::UnsupportedContentType, shown(content_type)))
}

/// Size, emptiness and encoding, checked before any parsing.
fn check_payload<'a>(data: &'a [u8], limits: &DecodeLimits) -> Result<&'a str, Poison> {
    if data.len() > limits.max_bytes {
        let detail = format!("{} bytes, limit {}", data.len(), limits.max_bytes);
        return Err(Poison::new(R::TooLarge, detail));
    }
    if data.iter().all(u8::is_ascii_whitespace) {
        return Err(Poison::new(R::Empty, "no JSON document"));
    }
    std::str::from_utf8(data).map_err(|e| Poison::new(R::InvalidUtf8, e.to_string()))
}

/// Top-level fields, each still as raw JSON text.
type Fields<'a> = BTreeMap<String, &'a RawValue>;

/// Parses the document into its top-level fields, keeping each value's
/// text so that numbers can be read exactly.
fn parse_object(text: &str, max_depth: usize) -> Result<Fields<'_>, Poison> {
    let scan = scan(text, max_depth);
    if scan.too_deep {
        let detail = format!("nesting deeper than {max_depth}");
        return Err(Poison::new(R::TooDeep, detail));
    }

    let raw: &RawValue = serde_json::from_str(text).map_err(not_json)?;
    if kind(raw) != "object" {
        let detail = format!("top level is {}", kind(raw));
        return Err(Poison::new(R::NotAnObject, detail));
    }
    if scan.has_nul {
        return Err(Poison::new(R::TextNotStorable, "text contains \\u0000"));
    }

    serde_json::from_str(raw.get()).map_err(not_json)
}

fn not_json(err: serde_json::Error) -> Poison {
    Poison::new(R::NotJson, err.to_string())
}

/// What a byte-level pass over the JSON text found.
struct Scan {
    too_deep: bool,
    has_nul: bool,
}

/// Measures nesting and looks for `\u0000` without recursing, so that
/// depth is refused before a recursive parser ever sees it.
fn scan(text: &str, max_depth: usize) -> Scan {
    let bytes = text.as_bytes();
    let (mut depth, mut i) = (0usize, 0usize);
    let (mut in_string, mut has_nul) = (false, false);

    while i < bytes.len() {
        match (in_string, bytes[i]) {
            (true, b'\\') => {
                has_nul |= bytes.get(i + 1..i + 6) == Some(b"u0000");
                i += 1;
            }
            (true, b'"') | (false, b'"') => in_string = !in_string,
            (false, b'{' | b'[') => depth += 1,
            (false, b'}' | b']') => depth = depth.saturating_sub(1),
            _ => {}
        }
        if depth > max_depth {
            return Scan {
                too_deep: true,
                has_nul,
            };
        }
        i += 1;
    }
    Scan {
        too_deep: false,
        has_nul,
    }
}

/// The JSON type of a syntactically valid raw value, from its first byte.
fn kind(raw: &RawValue) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'{') => "object",
        Some(b'[') => "array",
        Some(b'"') => "string",
        Some(b't' | b'f') => "boolean",
        Some(b'n') => "null",
        _ => "number",
    }
}

/// Builds the order from its fields; whatever is left over is `extra`.
fn build_order(fields: &mut Fields<'_>, limits: &DecodeLimits) -> Result<Order, Poison> {
    let order_id = order_id(required_string(fields, "orderId")?)?;
    let customer_id = bounded(non_blank(fields, "customerId")?, "customerId", MAX_ID_BYTES)?;
    let checkout_of_cart = optional_string(fields, "checkoutOfCart")?
        .map(|cart| bounded(cart, "checkoutOfCart", MAX_ID_BYTES))
        .transpose()?;
    let items = required(fields, "lineItems")?;
    let (line_items, currency) = line_items(items, limits.max_line_items)?;
    let (subtotal, tax) = totals(&line_items, &currency)?;
    let total = subtotal
        .checked_add(tax)
        .ok_or_else(|| Poison::new(R::AmountOverflow, "total"))?;
    let shipping = object(required(fields, "shipping")?, "shipping")?;
    let billing = object(required(fields, "billing")?, "billing")?;
    let placed_at = timestamp(&required_string(fields, "at")?)?;
    let extra = extra(std::mem::take(fields))?;

    Ok(Order {
        order_id,
        customer_id,
        checkout_of_cart,
        currency,
        line_items,
        subtotal,
        tax,
        total,
        shipping,
        billing,
        placed_at,
        extra,
    })
}

/// Removes a required field, refusing absence.
fn required<'a>(fields: &mut Fields<'a>, name: &str) -> Result<&'a RawValue, Poison> {
    fields
        .remove(name)
        .ok_or_else(|| Poison::new(R::MissingField, name.to_owned()))
}

fn required_string(fields: &mut Fields<'_>, name: &str) -> Result<String, Poison> {
    string(required(fields, name)?, name)
}

/// A required string that must contain something other than whitespace.
fn non_blank(fields: &mut Fields<'_>, name: &str) -> Result<String, Poison> {
    let value = required_string(fields, name)?;
    if value.trim().is_empty() {
        return Err(Poison::new(R::BlankField, name.to_owned()));
    }
    Ok(value)
}

/// A string field that may be absent or `null`.
fn optional_string(fields: &mut Fields<'_>, name: &str) -> Result<Option<String>, Poison> {
    match fields.remove(name) {
        Some(raw) if kind(raw) != "null" => string(raw, name).map(Some),
        _ => Ok(None),
    }
}

/// Reads a raw value as a string, refusing any other JSON type.
fn string(raw: &RawValue, path: &str) -> Result<String, Poison> {
    expect_kind(raw, "string", path)?;
    serde_json::from_str(raw.get()).map_err(not_json)
}

/// Reads a raw value as an object, refusing any other JSON type.
fn object(raw: &RawValue, path: &str) -> Result<Value, Poison> {
    expect_kind(raw, "object", path)?;
    serde_json::from_str(raw.get()).map_err(not_json)
}

fn expect_kind(raw: &RawValue, want: &str, path: &str) -> Result<(), Poison> {
    let found = kind(raw);
    if found == want {
        return Ok(());
    }
    let detail = format!("{path}: expected {want}, found {found}");
    Err(Poison::new(R::WrongType, detail))
}

/// Refuses text longer than `max` bytes, the bound its column checks.
fn bounded(text: String, path: &str, max: usize) -> Result<String, Poison> {
    if text.len() <= max {
        return Ok(text);
    }
    let detail = format!("{path}: {} bytes, limit {max}", text.len());
    Err(Poison::new(R::TextTooLong, detail))
}

/// An order id is a key: non-empty, bounded, no control characters and no
/// surrounding whitespace.
fn order_id(id: String) -> Result<String, Poison> {
    let id = bounded(id, "orderId", MAX_ID_BYTES)?;
    let problem = if id.is_empty() {
        "is empty"
    } else if id.trim() != id {
        "has surrounding whitespace"
    } else if id.chars().any(char::is_control) {
        "has control characters"
    } else {
        return Ok(id);
    };
    Err(Poison::new(R::InvalidOrderId, format!("orderId {problem}")))
}

/// In an `order-...` stream the order id is the stream name.
fn check_stream(order_id: &str, stream: &str) -> Result<(), Poison> {
    if !stream.starts_with("order-") || stream == order_id {
        return Ok(());
    }
    let detail = format!("orderId {} in stream {}", shown(order_id), shown(stream));
    Err(Poison::new(R::OrderIdStreamMismatch, detail))
}

/// Decodes every line and checks they share one currency.
fn line_items(raw: &RawValue, max: usize) -> Result<(Vec<LineItem>, String), Poison> {
    expect_kind(raw, "array", "lineItems")?;
    let raws: Vec<&RawValue> = serde_json::from_str(raw.get()).map_err(not_json)?;
    if raws.is_empty() {
        return Err(Poison::new(R::NoLineItems, "lineItems is empty"));
    }
    if raws.len() > max {
        let detail = format!("{} lines, limit {max}", raws.len());
        return Err(Poison::new(R::TooManyLineItems, detail));
    }

    let mut items = Vec::with_capacity(raws.len());
    let mut currency: Option<String> = None;
    for (index, raw) in raws.into_iter().enumerate() {
        let (item, code) = line_item(raw, &format!("lineItems[{index}]"))?;
        match &currency {
            Some(first) if *first != code => {
                let detail = format!("{first} and {code}");
                return Err(Poison::new(R::MixedCurrencies, detail));
            }
            Some(_) => {}
            None => currency = Some(code),
        }
        items.push(item);
    }

    // `raws` was non-empty, so the first line set the currency.
    Ok((items, currency.unwrap_or_default()))
}

/// One line and its currency code.
fn line_item(raw: &RawValue, path: &str) -> Result<(LineItem, String), Poison> {
    expect_kind(raw, "object", path)?;
    let mut fields: Fields<'_> = serde_json::from_str(raw.get()).map_err(not_json)?;
    let field = |name: &str| format!("{path}.{name}");

    let product_id = non_blank(&mut fields, "productId")
        .and_then(|id| bounded(id, "productId", MAX_ID_BYTES))
        .map_err(|p| at_path(p, path))?;
    let product_name = required_string(&mut fields, "productName")
        .and_then(|name| bounded(name, "productName", MAX_NAME_BYTES))
        .map_err(|p| at_path(p, path))?;
    let quantity = quantity(req(&mut fields, "quantity", path)?, &field("quantity"))?;
    let price_text = string(
        req(&mut fields, "pricePerUnit", path)?,
        &field("pricePerUnit"),
    )?;
    let price = money::parse_price(&price_text)
        .map_err(|e| Poison::new(R::InvalidPrice, format!("{}: {e}", field("pricePerUnit"))))?;
    let tax_rate = tax_rate(req(&mut fields, "taxRate", path)?, &field("taxRate"))?;
    let unit_price = price
        .amount()
        .ok_or_else(|| Poison::new(R::AmountOverflow, field("pricePerUnit")))?;

    let item = LineItem {
        product_id,
        product_name,
        quantity,
        unit_price,
        tax_rate,
    };
    Ok((item, price.currency))
}

/// `required`, with the line's path in the detail.
fn req<'a>(fields: &mut Fields<'a>, name: &str, path: &str) -> Result<&'a RawValue, Poison> {
    required(fields, name).map_err(|p| at_path(p, path))
}

/// Prefixes a poison's detail with where in the document it was found.
fn at_path(poison: Poison, path: &str) -> Poison {
    Poison::new(poison.reason, format!("{path}.{}", poison.detail))
}

/// A JSON integer in `1..=i32::MAX`; `2.0` and `"2"` are refused.
fn quantity(raw: &RawValue, path: &str) -> Result<i32, Poison> {
    expect_kind(raw, "number", path)?;
    let text = raw.get();
    let invalid = || Poison::new(R::InvalidQuantity, format!("{path}: {}", shown(text)));
    if !text.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        return Err(invalid());
    }
    match text.parse::<i32>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(invalid()),
    }
}

/// A JSON number read exactly from its text.
fn tax_rate(raw: &RawValue, path: &str) -> Result<Decimal, Poison> {
    expect_kind(raw, "number", path)?;
    money::parse_tax_rate(raw.get())
        .map_err(|e| Poison::new(R::InvalidTaxRate, format!("{path}: {e}")))
}

/// Subtotal and tax of all lines, exact, in the currency's scale.
fn totals(items: &[LineItem], currency: &str) -> Result<(Decimal, Decimal), Poison> {
    let overflow = || Poison::new(R::AmountOverflow, "order totals");
    let scale = money::minor_units(currency).ok_or_else(overflow)?;
    let (mut subtotal, mut tax) = (0i128, 0i128);

    for item in items {
        // Prices were built with the currency's scale, so the mantissa is
        // the amount in minor units.
        let price = item.unit_price.mantissa();
        let (line, line_tax) =
            money::line_amounts(item.quantity, price, item.tax_rate).ok_or_else(overflow)?;
        subtotal = subtotal.checked_add(line).ok_or_else(overflow)?;
        tax = tax.checked_add(line_tax).ok_or_else(overflow)?;
    }

    let decimal = |minor| Decimal::try_from_i128_with_scale(minor, scale);
    Ok((
        decimal(subtotal).map_err(|_| overflow())?,
        decimal(tax).map_err(|_| overflow())?,
    ))
}

/// RFC 3339 with a mandatory offset, normalised to UTC.
fn timestamp(text: &str) -> Result<DateTime<Utc>, Poison> {
    DateTime::parse_from_rfc3339(text)
        .map(|at| at.with_timezone(&Utc))
        .map_err(|e| Poison::new(R::InvalidTimestamp, format!("at {}: {e}", shown(text))))
}

/// Unknown top-level fields, as JSON values.
fn extra(fields: Fields<'_>) -> Result<Map<String, Value>, Poison> {
    fields
        .into_iter()
        .map(|(name, raw)| {
            let value = serde_json::from_str(raw.get()).map_err(not_json)?;
            Ok((name, value))
        })
        .collect()
}

/// A short, escaped rendering of untrusted text for a poison detail, so
/// that details stay small and printable whatever the input.
fn shown(text: &str) -> String {
    const MAX_CHARS: usize = 64;
    let head: String = text.chars().take(MAX_CHARS).collect();
    let ellipsis = if head.len() < text.len() { "..." } else { "" };
    format!("{head:?}{ellipsis}")
}

#[cfg(test)]
mod tests;
