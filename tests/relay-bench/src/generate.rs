//! Orders shaped like the tutorial's `order-placed` events, made up from a
//! seed so that every run (and every phase of one run) sees the same rows.
//!
//! Order `i` depends only on the seed and `i`, so a phase can make any
//! range of orders without making the ones before it. Sizes follow the
//! tutorial: one to five lines with long product names, a recipient and an
//! address for shipping and for billing, about 1 to 2 KiB of JSON each.

use chrono::{DateTime, SecondsFormat};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use uuid::Uuid;

/// The event type the relay writes.
pub const EVENT_TYPE: &str = "order-placed";

/// One generated order, ready to append.
pub struct GeneratedOrder {
    /// `order-<32 hex digits>`; also the stream it belongs to.
    pub order_id: String,
    /// The event id.
    pub event_id: Uuid,
    /// The event's JSON payload.
    pub data: Vec<u8>,
}

/// Makes orders from a seed.
#[derive(Debug, Clone, Copy)]
pub struct Generator {
    seed: u64,
}

impl Generator {
    /// A generator whose orders depend only on `seed`.
    pub fn new(seed: u64) -> Generator {
        Generator { seed }
    }

    /// Order number `index`.
    pub fn order(&self, index: u64) -> GeneratedOrder {
        // Spread neighbouring indexes over the seed space.
        let mixed = self.seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut rng = StdRng::seed_from_u64(mixed);

        let order_id = format!("order-{}", hex_id(&mut rng));
        let event_id = Uuid::from_u128(rng.random());
        let placed = placed_order(&mut rng, &order_id, index);
        let data = serde_json::to_vec(&placed).expect("plain structs serialise");
        GeneratedOrder {
            order_id,
            event_id,
            data,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OrderPlaced<'a> {
    order_id: &'a str,
    customer_id: String,
    checkout_of_cart: String,
    line_items: Vec<LineItem>,
    shipping: Shipping,
    billing: Billing,
    at: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LineItem {
    product_id: String,
    product_name: String,
    quantity: u32,
    price_per_unit: String,
    tax_rate: f64,
}

#[derive(Serialize, Clone)]
#[serde(rename_all = "camelCase")]
struct Recipient {
    title: &'static str,
    full_name: String,
    email_address: String,
    phone_number: String,
}

#[derive(Serialize, Clone)]
struct Address {
    country: &'static str,
    lines: Vec<String>,
}

#[derive(Serialize)]
struct Shipping {
    recipient: Recipient,
    address: Address,
    instructions: &'static str,
    method: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Billing {
    recipient: Recipient,
    address: Address,
    payment_method: &'static str,
}

fn placed_order<'a>(rng: &mut StdRng, order_id: &'a str, index: u64) -> OrderPlaced<'a> {
    let lines = rng.random_range(1..=5);
    let recipient = recipient(rng);
    let address = address(rng);
    OrderPlaced {
        order_id,
        customer_id: format!("customer-{}", rng.random_range(1..2_000_000_000u32)),
        checkout_of_cart: format!("cart-{}@{}", hex_id(rng), rng.random_range(2..40)),
        line_items: (0..lines).map(|_| line_item(rng)).collect(),
        shipping: Shipping {
            recipient: recipient.clone(),
            address: address.clone(),
            instructions: pick(rng, &["", "", "Leave at the door", "Call first"]),
            method: pick(rng, &["standard", "express"]),
        },
        billing: Billing {
            recipient,
            address,
            payment_method: pick(rng, &["card", "wireTransfer", "paypal"]),
        },
        at: placed_at(rng, index),
    }
}

fn line_item(rng: &mut StdRng) -> LineItem {
    LineItem {
        product_id: format!("{:013}", rng.random_range(0..10_000_000_000_000u64)),
        product_name: product_name(rng),
        quantity: rng.random_range(1..=5),
        price_per_unit: format!(
            "USD{}.{:02}",
            rng.random_range(1..1000),
            rng.random_range(0..100)
        ),
        tax_rate: *[0.0, 0.06, 0.09, 0.12, 0.21].choose(rng).unwrap_or(&0.21),
    }
}

/// A catalogue-style name: brand, a few qualifiers, a noun, sometimes a
/// long tail, as marketplace listings are.
fn product_name(rng: &mut StdRng) -> String {
    let mut name = format!(
        "{} {} {} {}",
        pick(rng, BRANDS),
        pick(rng, QUALIFIERS),
        pick(rng, QUALIFIERS),
        pick(rng, NOUNS)
    );
    for _ in 0..rng.random_range(0..4) {
        name.push_str(", ");
        name.push_str(pick(rng, TAILS));
    }
    name
}

fn recipient(rng: &mut StdRng) -> Recipient {
    let first = pick(rng, FIRST_NAMES);
    let last = pick(rng, LAST_NAMES);
    Recipient {
        title: pick(rng, &["Mr.", "Ms.", "Mrs.", "Dr.", "Mx."]),
        full_name: format!("{first} {last}"),
        email_address: format!("{first}.{last}@{}", pick(rng, DOMAINS)),
        phone_number: format!(
            "1-{}-{}-{:04}",
            rng.random_range(200..1000),
            rng.random_range(200..1000),
            rng.random_range(0..10_000)
        ),
    }
}

fn address(rng: &mut StdRng) -> Address {
    Address {
        country: pick(rng, COUNTRIES),
        lines: vec![
            format!("{} {}", pick(rng, STREETS), rng.random_range(1..999)),
            format!(
                "{:05}-{:04} {}",
                rng.random_range(0..100_000),
                rng.random_range(0..10_000),
                pick(rng, TOWNS)
            ),
            pick(rng, REGIONS).to_string(),
        ],
    }
}

/// Orders are placed in index order, a few seconds apart, during 2025.
fn placed_at(rng: &mut StdRng, index: u64) -> String {
    const START: i64 = 1_735_689_600; // 2025-01-01T00:00:00Z
    let seconds = START + (index as i64) * 3 + rng.random_range(0..3);
    let nanos = rng.random_range(0..1_000_000) * 1_000;
    DateTime::from_timestamp(seconds, nanos)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Micros, false)
}

/// 32 lowercase hex digits, as the tutorial's ids have.
fn hex_id(rng: &mut StdRng) -> String {
    format!("{:032x}", rng.random::<u128>())
}

fn pick<T: Copy>(rng: &mut StdRng, from: &[T]) -> T {
    *from.choose(rng).expect("word lists are not empty")
}

const BRANDS: &[&str] = &[
    "Northwind",
    "Alder & Finch",
    "Kestrel",
    "Tamarack",
    "Bluegill",
    "Oakhurst",
    "Lumen Works",
    "Harbor Lane",
    "Quillon",
    "Saffron Row",
];

const QUALIFIERS: &[&str] = &[
    "Classic",
    "Rechargeable",
    "Stainless Steel",
    "Wireless",
    "Organic",
    "Adjustable",
    "Waterproof",
    "Handmade",
    "Compact",
    "Extra Large",
    "Dimmable",
    "Vintage",
    "Lightweight",
    "Ergonomic",
    "Cotton",
];

const NOUNS: &[&str] = &[
    "Table Lamp",
    "Running Shoe",
    "Wrist Watch",
    "Backpack",
    "Coffee Grinder",
    "Desk Organizer",
    "Throw Blanket",
    "Water Bottle",
    "Headphones",
    "Cutting Board",
    "Rain Jacket",
    "Bookshelf",
    "Yoga Mat",
    "Tea Kettle",
];

const TAILS: &[&str] = &[
    "Set of 2",
    "for Living Room Bedroom Office",
    "with USB Charging Port",
    "Gift for Men and Women",
    "Machine Washable",
    "Dishwasher Safe",
    "2 Year Warranty",
    "Fits Most Sizes, Easy to Clean, Ships in Recyclable Packaging",
];

const FIRST_NAMES: &[&str] = &[
    "Ada", "Bram", "Chioma", "Dmitri", "Elif", "Farah", "Goran", "Hana", "Ivo", "Jun", "Kaia",
    "Luis", "Mira", "Nils", "Odile", "Priya",
];

const LAST_NAMES: &[&str] = &[
    "Abara",
    "Berg",
    "Castillo",
    "Dunmore",
    "Eriksen",
    "Fontaine",
    "Grady",
    "Haddad",
    "Ishikawa",
    "Jovanovic",
    "Kowalski",
    "Lindqvist",
    "Moreau",
];

const DOMAINS: &[&str] = &["example.com", "example.org", "mail.example.net"];

const COUNTRIES: &[&str] = &["NL", "DE", "FR", "GB", "US", "SE", "PL", "JP", "BR"];

const STREETS: &[&str] = &[
    "Willow Court",
    "Harbour Road",
    "Linden Avenue",
    "Mill Lane",
    "Quarry Hill",
    "Station Street",
    "Orchard Way",
    "Canal Side",
];

const TOWNS: &[&str] = &[
    "Eastbrook",
    "Port Amsel",
    "Riverton",
    "Kingsfold",
    "Marrow Bay",
    "Stillwater",
    "Northcote",
    "Ashby Green",
];

const REGIONS: &[&str] = &[
    "Westshire",
    "Lower Vale",
    "North Province",
    "Coastal District",
    "Highlands",
    "Capital Region",
];

#[cfg(test)]
mod tests {
    use super::*;
    use outbox_relay::order::{decode, DecodeLimits};

    /// The same seed and index make the same order, byte for byte.
    #[test]
    fn orders_are_deterministic_from_the_seed() {
        let a = Generator::new(7).order(42);
        let b = Generator::new(7).order(42);
        assert_eq!(a.data, b.data);
        assert_eq!(a.event_id, b.event_id);
        assert_ne!(a.order_id, Generator::new(8).order(42).order_id);
    }

    /// Payloads average about the tutorial's size (1.0 to 2.0 KB there).
    #[test]
    fn payloads_are_about_the_tutorials_size() {
        let generator = Generator::new(3);
        let total: usize = (0..1000).map(|i| generator.order(i).data.len()).sum();
        let average = total / 1000;
        assert!((900..=2000).contains(&average), "{average} bytes");
    }

    /// Every generated order is one the relay accepts.
    #[test]
    fn generated_orders_decode_as_valid_orders() {
        let generator = Generator::new(1);
        for index in 0..500 {
            let o = generator.order(index);
            let decoded = decode(
                "application/json",
                &o.data,
                &o.order_id,
                &DecodeLimits::default(),
            );
            let order = decoded.unwrap_or_else(|p| panic!("order {index}: {p}"));
            assert_eq!(order.order_id, o.order_id);
            assert!((1..=5).contains(&order.line_items.len()));
        }
    }
}
