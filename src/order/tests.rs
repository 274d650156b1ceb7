//! Decoder tests: the tutorial's real orders, each rule, and fuzzing.

use super::*;
use proptest::prelude::*;
use std::path::Path;

const SEEDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/tutorial-seed");

/// Every `order-placed` event in the seed files, as (stream, data).
fn seed_orders() -> Vec<(String, Value)> {
    let mut files: Vec<_> = std::fs::read_dir(Path::new(SEEDS))
        .expect("seed directory")
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();

    let mut orders = Vec::new();
    for file in files {
        let streams: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
        for stream in streams.as_array().unwrap() {
            for event in stream["events"].as_array().unwrap() {
                if event["type"] == "order-placed" {
                    let name = stream["stream"].as_str().unwrap().to_owned();
                    orders.push((name, event["data"].clone()));
                }
            }
        }
    }
    orders
}

fn decode_value(value: &Value, stream: &str) -> Result<Order, Poison> {
    let bytes = serde_json::to_vec(value).unwrap();
    decode(JSON_CONTENT_TYPE, &bytes, stream, &DecodeLimits::default())
}

fn decode_text(text: &str) -> Result<Order, Poison> {
    decode(
        JSON_CONTENT_TYPE,
        text.as_bytes(),
        "$ce-order",
        &DecodeLimits::default(),
    )
}

/// The first seed order, for mutating one field at a time.
fn sample() -> Value {
    seed_orders().remove(0).1
}

fn reason_with(edit: impl FnOnce(&mut Value)) -> PoisonReason {
    let mut order = sample();
    edit(&mut order);
    decode_value(&order, "$ce-order")
        .expect_err("should be poison")
        .reason
}

/// Totals worked out independently (Python `decimal`, half-even per line).
const EXPECTED: [(&str, usize, &str, &str, &str); 10] = [
    (
        "order-b0d1a15a21d24ffa97785ce7b345a87e",
        2,
        "4183.68",
        "701.81",
        "4885.49",
    ),
    (
        "order-f16847c9a2e44b23bdacc5c92b6dbb25",
        5,
        "8863.68",
        "1099.07",
        "9962.75",
    ),
    (
        "order-44c1c762ca1d440bb2e03a2655ba7edb",
        2,
        "4235.79",
        "645.67",
        "4881.46",
    ),
    (
        "order-c49064f930344a72bd6173db57e43f78",
        3,
        "5379.73",
        "971.60",
        "6351.33",
    ),
    (
        "order-36bf75fe641e453b906946ba4b5288c5",
        2,
        "4690.91",
        "281.46",
        "4972.37",
    ),
    (
        "order-babc43583617421a90d4c7d039900142",
        2,
        "2680.73",
        "321.69",
        "3002.42",
    ),
    (
        "order-3d268df88f9c451eae9cae49d10656d5",
        3,
        "2061.24",
        "166.04",
        "2227.28",
    ),
    (
        "order-ad53653936ff469ea208cce8726906eb",
        1,
        "792.18",
        "166.36",
        "958.54",
    ),
    (
        "order-6eca2b03d96e423d87db9ae3e7d4333c",
        2,
        "2090.64",
        "439.04",
        "2529.68",
    ),
    (
        "order-518fc532ce4b46508a8297ccac692638",
        3,
        "4093.43",
        "491.21",
        "4584.64",
    ),
];

/// All ten tutorial orders decode with the right lines and exact totals.
#[test]
fn every_seed_order_decodes_with_exact_totals() {
    let orders = seed_orders();
    assert_eq!(orders.len(), EXPECTED.len());

    for ((stream, data), (id, lines, subtotal, tax, total)) in orders.iter().zip(EXPECTED) {
        let order = decode_value(data, stream).unwrap();
        assert_eq!(order.order_id, id);
        assert_eq!(order.line_items.len(), lines, "{id}");
        assert_eq!(order.subtotal.to_string(), subtotal, "{id}");
        assert_eq!(order.tax.to_string(), tax, "{id}");
        assert_eq!(order.total.to_string(), total, "{id}");
        assert_eq!(order.currency, "USD");
        assert!(order.extra.is_empty());
    }
}

/// The first seed order keeps its fields as sent.
#[test]
fn seed_order_fields_are_kept() {
    let order = decode_value(&sample(), "order-b0d1a15a21d24ffa97785ce7b345a87e").unwrap();
    assert_eq!(order.customer_id, "customer-185176238");
    assert_eq!(
        order.checkout_of_cart.as_deref(),
        Some("cart-631dd4d51e6b4f4d9f9e26e55f1cd587@9")
    );
    assert_eq!(order.line_items[0].unit_price.to_string(), "601.05");
    assert_eq!(order.line_items[0].tax_rate.to_string(), "0.21");
    assert_eq!(order.shipping["method"], "express");
    assert_eq!(order.billing["paymentMethod"], "wireTransfer");
    assert_eq!(
        order.placed_at.to_rfc3339(),
        "2025-01-01T01:11:30.976938+00:00"
    );
}

/// The tutorial's deliberately invalid event is missing its order id.
#[test]
fn tutorial_invalid_event_is_poison_for_a_missing_field() {
    let poison = decode_text(r#"{"thisEvent":"is invalid"}"#).unwrap_err();
    assert_eq!(poison.reason, PoisonReason::MissingField);
    assert_eq!(poison.to_string(), "missing_field: orderId");
}

/// Each envelope problem has its own reason.
#[test]
fn envelope_problems_have_their_own_reasons() {
    let limits = DecodeLimits::default();
    let go = |ct: &str, data: &[u8]| decode(ct, data, "x", &limits).unwrap_err().reason;

    assert_eq!(
        go("application/octet-stream", b"{}"),
        R::UnsupportedContentType
    );
    assert_eq!(go("", b"{}"), R::UnsupportedContentType);
    assert_eq!(go("application/json", b""), R::Empty);
    assert_eq!(go("application/json", b" \n "), R::Empty);
    assert_eq!(go("application/json", b"\xff{}"), R::InvalidUtf8);
    assert_eq!(go("application/json", b"{"), R::NotJson);
    assert_eq!(go("application/json", b"{} {}"), R::NotJson);
    assert_eq!(go("application/json", b"[1]"), R::NotAnObject);
    assert_eq!(go("Application/JSON; charset=utf-8", b"[]"), R::NotAnObject);
}

/// Payloads over the byte limit are refused before being read.
#[test]
fn oversized_payload_is_too_large() {
    let limits = DecodeLimits {
        max_bytes: 10,
        ..DecodeLimits::default()
    };
    let poison = decode(JSON_CONTENT_TYPE, &[b' '; 11], "x", &limits).unwrap_err();
    assert_eq!(poison.reason, R::TooLarge);
}

/// Deep nesting is poison, not a stack overflow, even far past the limit.
#[test]
fn deep_nesting_is_poison() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert_eq!(decode_text(&deep).unwrap_err().reason, R::TooDeep);

    let reason = reason_with(|o| {
        let mut nested = json!(1);
        for _ in 0..70 {
            nested = json!([nested]);
        }
        o["deep"] = nested;
    });
    assert_eq!(reason, R::TooDeep);
}

/// A NUL anywhere, even in a key or an unknown field, cannot be stored.
#[test]
fn nul_characters_are_not_storable() {
    assert_eq!(
        reason_with(|o| o["customerId"] = json!("a\u{0}b")),
        R::TextNotStorable
    );
    assert_eq!(
        reason_with(|o| o["shipping"]["x\u{0}"] = json!(1)),
        R::TextNotStorable
    );

    // An escaped backslash followed by "u0000" is ordinary text.
    let order = decode_value(
        &{
            let mut o = sample();
            o["note"] = json!("\\u0000");
            o
        },
        "$ce-order",
    );
    assert_eq!(order.unwrap().extra["note"], "\\u0000");
}

/// Missing and mistyped fields name the field.
#[test]
fn missing_and_mistyped_fields_are_named() {
    for field in [
        "orderId",
        "customerId",
        "lineItems",
        "shipping",
        "billing",
        "at",
    ] {
        let poison = {
            let mut o = sample();
            o.as_object_mut().unwrap().remove(field);
            decode_value(&o, "$ce-order").unwrap_err()
        };
        assert_eq!(poison.reason, R::MissingField, "{field}");
        assert!(poison.detail.contains(field), "{poison}");
    }
    assert_eq!(reason_with(|o| o["orderId"] = json!(7)), R::WrongType);
    assert_eq!(reason_with(|o| o["customerId"] = Value::Null), R::WrongType);
    assert_eq!(reason_with(|o| o["shipping"] = json!("home")), R::WrongType);
    assert_eq!(reason_with(|o| o["lineItems"] = json!({})), R::WrongType);
    assert_eq!(reason_with(|o| o["lineItems"][0] = json!(1)), R::WrongType);
    assert_eq!(
        reason_with(|o| o["lineItems"][0]["taxRate"] = json!("0.2")),
        R::WrongType
    );
    let mut o = sample();
    o["lineItems"][1]
        .as_object_mut()
        .unwrap()
        .remove("pricePerUnit");
    let poison = decode_value(&o, "$ce-order").unwrap_err();
    assert_eq!(
        poison.to_string(),
        "missing_field: lineItems[1].pricePerUnit"
    );
}

/// checkoutOfCart may be absent or null; unknown fields are kept.
#[test]
fn optional_and_unknown_fields_are_handled() {
    let mut o = sample();
    o.as_object_mut().unwrap().remove("checkoutOfCart");
    o["channel"] = json!({"name": "web"});
    let order = decode_value(&o, "$ce-order").unwrap();
    assert_eq!(order.checkout_of_cart, None);
    assert_eq!(order.extra["channel"]["name"], "web");

    let mut o = sample();
    o["checkoutOfCart"] = Value::Null;
    assert_eq!(
        decode_value(&o, "$ce-order").unwrap().checkout_of_cart,
        None
    );
}

/// Unusable order ids and blank customer ids are refused.
#[test]
fn bad_identifiers_are_refused() {
    assert_eq!(reason_with(|o| o["orderId"] = json!("")), R::InvalidOrderId);
    assert_eq!(
        reason_with(|o| o["orderId"] = json!(" order-1")),
        R::InvalidOrderId
    );
    assert_eq!(
        reason_with(|o| o["orderId"] = json!("order\n1")),
        R::InvalidOrderId
    );
    assert_eq!(
        reason_with(|o| o["customerId"] = json!("  ")),
        R::BlankField
    );
    assert_eq!(
        reason_with(|o| o["lineItems"][0]["productId"] = json!("")),
        R::BlankField
    );
}

/// Strings longer than their column allows are refused, counted in
/// UTF-8 bytes; strings exactly at the limit are accepted.
#[test]
fn over_long_strings_are_text_too_long() {
    let id_at_limit = "é".repeat(MAX_ID_BYTES / 2);
    let id_over = format!("{id_at_limit}x");
    let name_over = "n".repeat(MAX_NAME_BYTES + 1);
    type Edit = fn(&mut Value, Value);
    let edits: [(&str, Edit); 5] = [
        ("orderId", |o, v| o["orderId"] = v),
        ("customerId", |o, v| o["customerId"] = v),
        ("checkoutOfCart", |o, v| o["checkoutOfCart"] = v),
        ("productId", |o, v| o["lineItems"][1]["productId"] = v),
        ("productName", |o, v| o["lineItems"][0]["productName"] = v),
    ];
    for (field, edit) in edits {
        let over = if field == "productName" {
            &name_over
        } else {
            &id_over
        };
        let mut o = sample();
        edit(&mut o, json!(over));
        let poison = decode_value(&o, "$ce-order").unwrap_err();
        assert_eq!(poison.reason, R::TextTooLong, "{field}");
        assert!(poison.detail.contains(field), "{poison}");

        let mut o = sample();
        edit(&mut o, json!(id_at_limit));
        assert!(decode_value(&o, "$ce-order").is_ok(), "{field} at limit");
    }
}

/// More lines than the limit are refused; exactly the limit is accepted.
#[test]
fn too_many_line_items_are_refused() {
    let limits = DecodeLimits {
        max_line_items: 3,
        ..DecodeLimits::default()
    };
    let with_lines = |n: usize| {
        let mut o = sample();
        let line = o["lineItems"][0].clone();
        o["lineItems"] = Value::Array(vec![line; n]);
        let bytes = serde_json::to_vec(&o).unwrap();
        decode(JSON_CONTENT_TYPE, &bytes, "$ce-order", &limits)
    };
    assert_eq!(with_lines(3).unwrap().line_items.len(), 3);
    let poison = with_lines(4).unwrap_err();
    assert_eq!(poison.to_string(), "too_many_line_items: 4 lines, limit 3");
}

/// In an order stream, the order id must be the stream's name.
#[test]
fn order_id_must_match_its_order_stream() {
    let data = serde_json::to_vec(&sample()).unwrap();
    let limits = DecodeLimits::default();
    let go = |stream| decode(JSON_CONTENT_TYPE, &data, stream, &limits);

    assert!(go("order-b0d1a15a21d24ffa97785ce7b345a87e").is_ok());
    assert!(go("some-other-stream").is_ok());
    let poison = go("order-somebody-else").unwrap_err();
    assert_eq!(poison.reason, R::OrderIdStreamMismatch);
}

/// Quantities must be JSON integers from 1 to i32::MAX.
#[test]
fn quantity_must_be_a_positive_i32() {
    let with = |q: Value| reason_with(|o| o["lineItems"][0]["quantity"] = q);
    for bad in [
        json!(0),
        json!(-1),
        json!(2.0),
        json!(2.5),
        json!(2_147_483_648u64),
    ] {
        assert_eq!(with(bad.clone()), R::InvalidQuantity, "{bad}");
    }
    assert_eq!(with(json!("2")), R::WrongType);
    assert_eq!(
        decode_text(
            &sample()
                .to_string()
                .replace("\"quantity\":5", "\"quantity\":5e0")
        )
        .unwrap_err()
        .reason,
        R::InvalidQuantity
    );

    let mut o = sample();
    o["lineItems"][0]["quantity"] = json!(i32::MAX);
    assert!(decode_value(&o, "$ce-order").is_ok());
}

/// Prices need an upper-case known currency and a plain decimal.
#[test]
fn malformed_prices_are_invalid() {
    let with = |p: &str| reason_with(|o| o["lineItems"][0]["pricePerUnit"] = json!(p));
    for bad in [
        "601.05",
        "USD",
        "usd601.05",
        "USD-601.05",
        "USD6.0105e2",
        "USD601.055",
        "ABC1.00",
    ] {
        assert_eq!(with(bad), R::InvalidPrice, "{bad}");
    }
}

/// A different currency on any line is refused.
#[test]
fn mixed_currencies_are_refused() {
    assert_eq!(
        reason_with(|o| o["lineItems"][1]["pricePerUnit"] = json!("EUR392.81")),
        R::MixedCurrencies
    );
}

/// Currencies without cents total in whole units.
#[test]
fn zero_decimal_currency_totals_in_whole_units() {
    let mut o = sample();
    o["lineItems"] = json!([
        {"productId": "p", "productName": "n", "quantity": 3,
         "pricePerUnit": "JPY1005", "taxRate": 0.1}
    ]);
    let order = decode_value(&o, "$ce-order").unwrap();
    // 3015 x 0.1 = 301.5, rounded half to even.
    assert_eq!(
        (order.subtotal.to_string(), order.tax.to_string()),
        ("3015".into(), "302".into())
    );
    assert_eq!(order.total.to_string(), "3317");
}

/// Tax rates are exact, in 0..=1, and read from the number's text.
#[test]
fn tax_rates_are_exact_and_bounded() {
    let text = sample().to_string().replace("0.21", "2.1E-1");
    let order = decode_text(&text).unwrap();
    assert_eq!(order.line_items[0].tax_rate.to_string(), "0.21");

    let with = |r: &str| {
        let text = sample().to_string().replace("0.21", r);
        decode_text(&text).unwrap_err().reason
    };
    assert_eq!(with("-0.21"), R::InvalidTaxRate);
    assert_eq!(with("1.5"), R::InvalidTaxRate);
    assert_eq!(with("0.123456789"), R::InvalidTaxRate);
}

/// Timestamps need an offset; without one they are refused, not guessed.
#[test]
fn timestamps_need_an_offset() {
    assert_eq!(
        reason_with(|o| o["at"] = json!("2025-01-01T01:11:30")),
        R::InvalidTimestamp
    );
    assert_eq!(
        reason_with(|o| o["at"] = json!("yesterday")),
        R::InvalidTimestamp
    );

    let mut o = sample();
    o["at"] = json!("2025-01-01T03:11:30+02:00");
    let order = decode_value(&o, "$ce-order").unwrap();
    assert_eq!(order.placed_at.to_rfc3339(), "2025-01-01T01:11:30+00:00");
}

/// An order needs at least one line.
#[test]
fn empty_line_items_are_refused() {
    assert_eq!(reason_with(|o| o["lineItems"] = json!([])), R::NoLineItems);
}

/// Line items serialise with string amounts for jsonb.
#[test]
fn line_items_serialise_with_string_amounts() {
    let order = decode_value(&sample(), "$ce-order").unwrap();
    let json = serde_json::to_value(&order.line_items[0]).unwrap();
    assert_eq!(json["unitPrice"], "601.05");
    assert_eq!(json["taxRate"], "0.21");
    assert_eq!(json["quantity"], 5);
}

/// Every reason, for checks over all of them.
const ALL_REASONS: [PoisonReason; 24] = {
    use R::*;
    [
        UnsupportedContentType,
        Empty,
        TooLarge,
        InvalidUtf8,
        TooDeep,
        NotJson,
        NotAnObject,
        MissingField,
        WrongType,
        BlankField,
        InvalidOrderId,
        OrderIdStreamMismatch,
        InvalidQuantity,
        InvalidPrice,
        InvalidTaxRate,
        MixedCurrencies,
        AmountOverflow,
        InvalidTimestamp,
        NoLineItems,
        TooManyLineItems,
        TextTooLong,
        TextNotStorable,
        DecoderPanicked,
        RejectedByDatabase,
    ]
};

/// Every reason has a distinct snake_case code.
#[test]
fn reason_codes_are_distinct_snake_case() {
    let codes: std::collections::HashSet<_> = ALL_REASONS.iter().map(|r| r.code()).collect();
    assert_eq!(codes.len(), ALL_REASONS.len());
    assert!(codes.iter().all(|c| c
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')));
}

/// Operators look codes up in the README, so each one is listed there.
#[test]
fn every_reason_code_is_in_the_readme() {
    let readme = include_str!("../../README.md");
    for reason in ALL_REASONS {
        let row = format!("| `{}` |", reason.code());
        assert!(readme.contains(&row), "README lacks a row for {reason}");
    }
}

use serde_json::json;

/// A random JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::from),
        "[A-Z]{3}[0-9]{1,6}(\\.[0-9]{0,4})?".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Replaces the node at a pseudo-random path with `replacement`.
fn replace_somewhere(value: &mut Value, mut choice: usize, replacement: Value) {
    let mut node = value;
    loop {
        let len = match node {
            Value::Object(m) => m.len(),
            Value::Array(a) => a.len(),
            _ => 0,
        };
        if len == 0 || choice.is_multiple_of(4) {
            *node = replacement;
            return;
        }
        let index = choice % len;
        choice /= 4;
        node = match node {
            Value::Object(m) => m.values_mut().nth(index).unwrap(),
            Value::Array(a) => &mut a[index],
            _ => unreachable!(),
        };
    }
}

/// Invariants every accepted order satisfies.
fn assert_consistent(order: &Order) {
    assert!(!order.line_items.is_empty());
    assert!(order.line_items.iter().all(|l| l.quantity >= 1));
    assert_eq!(order.subtotal + order.tax, order.total);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Arbitrary bytes never panic the decoder.
    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(JSON_CONTENT_TYPE, &data, "order-x", &DecodeLimits::default());
    }

    /// Any content type, stream, text and limits give a verdict, never a
    /// panic; a poison verdict always has a known, non-empty code.
    #[test]
    fn any_envelope_gets_a_verdict(
        content_type in "(application/json|.{0,24})",
        stream in "(order-.{0,8}|.{0,12})",
        text in ".{0,256}",
        max_bytes in 0usize..300,
        max_depth in 0usize..8,
        max_line_items in 0usize..4,
    ) {
        let limits = DecodeLimits { max_bytes, max_depth, max_line_items };
        let verdict = decode(&content_type, text.as_bytes(), &stream, &limits);
        match verdict {
            Ok(order) => assert_consistent(&order),
            Err(poison) => prop_assert!(!poison.reason.code().is_empty()),
        }
    }

    /// Byte-level corruption of a real order never panics.
    #[test]
    fn corrupted_orders_never_panic(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut data = serde_json::to_vec(&sample()).unwrap();
        for (at, byte) in edits {
            let i = at.index(data.len());
            data[i] = byte;
        }
        data.truncate(cut.index(data.len() + 1).max(1));
        if let Ok(order) = decode(JSON_CONTENT_TYPE, &data, "$ce-order", &DecodeLimits::default()) {
            assert_consistent(&order);
        }
    }

    /// Structurally mutated orders never panic, and anything accepted is
    /// internally consistent.
    #[test]
    fn mutated_orders_never_panic(choice in any::<usize>(), replacement in any_json()) {
        let mut order = sample();
        replace_somewhere(&mut order, choice, replacement);
        if let Ok(order) = decode_value(&order, "$ce-order") {
            assert_consistent(&order);
        }
    }

    /// Any valid price and quantity decodes and totals exactly.
    #[test]
    fn valid_lines_always_decode(
        quantity in 1..=i32::MAX,
        cents in 0u64..1_000_000_000_000,
        rate_bp in 0u32..=10_000,
    ) {
        let mut o = sample();
        o["lineItems"] = json!([{
            "productId": "p", "productName": "n", "quantity": quantity,
            "pricePerUnit": format!("USD{}.{:02}", cents / 100, cents % 100),
            "taxRate": serde_json::Number::from_f64(f64::from(rate_bp) / 10_000.0).unwrap(),
        }]);
        let order = decode_value(&o, "$ce-order").unwrap();
        assert_consistent(&order);
        let expected = Decimal::new(cents as i64, 2) * Decimal::from(quantity);
        prop_assert_eq!(order.subtotal, expected);
    }
}
