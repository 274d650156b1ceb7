//! Exact money arithmetic for order events.
//!
//! Prices arrive as `<ISO 4217 code><decimal>` strings (`"USD601.05"`) and
//! tax rates as JSON numbers (`0.21`). Both are parsed from their text, and
//! every sum is done on integer minor units in `i128`, so no binary floating
//! point ever touches an amount and no intermediate step rounds silently.
//!
//! The table of minor units is deliberately small: a currency it does not
//! list is rejected rather than guessed at. Adding a currency is a one-line
//! change in [`minor_units`].

use rust_decimal::Decimal;

/// Most digits accepted before the decimal point of a unit price.
///
/// Together with `quantity <= i32::MAX` and [`MAX_TAX_RATE_SCALE`] this keeps
/// `quantity x price x rate` inside `i128` for any single line.
pub const MAX_PRICE_INTEGER_DIGITS: usize = 15;

/// Most decimal places accepted in a tax rate once trailing zeros are gone.
pub const MAX_TAX_RATE_SCALE: u32 = 8;

/// Longest JSON number text accepted for a tax rate; bounds the parser's work.
const MAX_TAX_RATE_TEXT: usize = 64;

/// A unit price split into its currency and an amount in minor units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Price {
    /// Upper-case ISO 4217 code, e.g. `USD`.
    pub currency: String,
    /// Minor units of the currency (cents for USD, yen for JPY).
    pub minor: i128,
    /// How many minor-unit digits the currency has.
    pub scale: u32,
}

impl Price {
    /// The price as an exact decimal with the currency's scale.
    pub fn amount(&self) -> Option<Decimal> {
        Decimal::try_from_i128_with_scale(self.minor, self.scale).ok()
    }
}

/// Decimal places of an ISO 4217 currency, or `None` when unknown.
pub fn minor_units(code: &str) -> Option<u32> {
    match code {
        "JPY" | "KRW" | "ISK" | "CLP" | "VND" | "PYG" | "UGX" | "XAF" | "XOF" => Some(0),
        "BHD" | "KWD" | "OMR" | "JOD" | "TND" | "IQD" | "LYD" => Some(3),
        "USD" | "EUR" | "GBP" | "CHF" | "CAD" | "AUD" | "NZD" | "SEK" | "NOK" | "DKK" | "PLN"
        | "CZK" | "HUF" | "RON" | "BGN" | "CNY" | "HKD" | "SGD" | "TWD" | "INR" | "IDR" | "MYR"
        | "THB" | "PHP" | "BRL" | "MXN" | "ARS" | "COP" | "PEN" | "ZAR" | "TRY" | "ILS" | "AED"
        | "SAR" | "QAR" | "EGP" | "NGN" | "KES" | "UAH" | "IRR" => Some(2),
        _ => None,
    }
}

/// Parses `"USD601.05"`: three upper-case letters, then a plain
/// non-negative decimal with at most the currency's decimal places.
pub fn parse_price(text: &str) -> Result<Price, String> {
    let (code, number) = match text.char_indices().nth(3) {
        Some((at, _)) => text.split_at(at),
        None => return Err("expected a currency code and an amount".into()),
    };
    if !code.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err("currency must be three upper-case letters".into());
    }
    let scale = minor_units(code).ok_or_else(|| format!("unknown currency {code:?}"))?;
    let minor = parse_amount(number, scale)?;
    let currency = code.to_owned();

    Ok(Price {
        currency,
        minor,
        scale,
    })
}

/// Parses `601.05` into minor units; no sign, exponent or spaces allowed.
fn parse_amount(number: &str, scale: u32) -> Result<i128, String> {
    let (int, frac) = match number.split_once('.') {
        Some((int, "")) => {
            return Err(format!("no digits after the point in {int:?}."));
        }
        Some(parts) => parts,
        None => (number, ""),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || !(frac.is_empty() || digits(frac)) {
        return Err("amount must be a plain non-negative decimal".into());
    }
    if int.trim_start_matches('0').len() > MAX_PRICE_INTEGER_DIGITS {
        return Err("amount is too large".into());
    }
    if frac.len() > scale as usize {
        return Err(format!("more than {scale} decimal places"));
    }

    // Both parts are short digit runs, so these cannot overflow i128.
    let padded = format!("{int}{frac:0<width$}", width = scale as usize);
    padded.parse::<i128>().map_err(|e| e.to_string())
}

/// Parses a tax rate from its JSON number text into an exact decimal in
/// `0..=1` with at most [`MAX_TAX_RATE_SCALE`] decimal places.
pub fn parse_tax_rate(text: &str) -> Result<Decimal, String> {
    if text.len() > MAX_TAX_RATE_TEXT {
        return Err("number text is too long".into());
    }
    if text.starts_with('-') {
        return Err("must not be negative".into());
    }
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i64>().map_err(|e| e.to_string())?),
        None => (text, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let mut digits = format!("{int}{frac}");
    let mut scale = (frac.len() as i64)
        .checked_sub(exponent)
        .ok_or("exponent out of range")?;

    while scale > 0 && digits.ends_with('0') {
        digits.pop();
        scale -= 1;
    }
    rate_from_digits(digits.trim_start_matches('0'), scale)
}

/// Builds the rate from significant digits and a (possibly negative) scale.
fn rate_from_digits(digits: &str, scale: i64) -> Result<Decimal, String> {
    if digits.is_empty() {
        return Ok(Decimal::ZERO);
    }
    if scale > i64::from(MAX_TAX_RATE_SCALE) {
        return Err(format!("more than {MAX_TAX_RATE_SCALE} decimal places"));
    }
    if scale < 0 || digits.len() as i64 > scale + 1 {
        return Err("must not be greater than 1".into());
    }
    let mantissa: i128 = digits.parse().map_err(|_| "not a number")?;
    let rate =
        Decimal::try_from_i128_with_scale(mantissa, scale as u32).map_err(|e| e.to_string())?;
    if rate > Decimal::ONE {
        return Err("must not be greater than 1".into());
    }

    Ok(rate)
}

/// `n / d` rounded half to even; both must be non-negative and `d > 0`.
pub fn div_half_even(n: i128, d: i128) -> i128 {
    let (q, r) = (n / d, n % d);
    match (2 * r).cmp(&d) {
        std::cmp::Ordering::Greater => q + 1,
        std::cmp::Ordering::Equal if q % 2 == 1 => q + 1,
        _ => q,
    }
}

/// Line subtotal and line tax in minor units, or `None` on overflow.
///
/// The tax is rounded half to even to the currency's minor units per line,
/// which is how the tutorial's sample totals were produced.
pub fn line_amounts(quantity: i32, price: i128, rate: Decimal) -> Option<(i128, i128)> {
    let subtotal = price.checked_mul(i128::from(quantity))?;
    let denominator = 10i128.checked_pow(rate.scale())?;
    let exact = subtotal.checked_mul(rate.mantissa())?;

    Some((subtotal, div_half_even(exact, denominator)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain dollar price keeps its cents.
    #[test]
    fn dollar_price_parses_to_cents() {
        let price = parse_price("USD601.05").unwrap();
        assert_eq!((price.currency.as_str(), price.minor), ("USD", 60105));
    }

    /// Whole amounts are padded to the currency's scale.
    #[test]
    fn whole_amounts_are_padded() {
        assert_eq!(parse_price("USD7").unwrap().minor, 700);
        assert_eq!(parse_price("JPY500").unwrap().minor, 500);
        assert_eq!(parse_price("BHD1.5").unwrap().minor, 1500);
    }

    /// Malformed prices are refused with a reason, never a panic.
    #[test]
    fn malformed_prices_are_refused() {
        for bad in [
            "",
            "USD",
            "601.05",
            "usd601.05",
            "USD-1.00",
            "USD+1.00",
            "USD1e3",
            "USD1.005",
            "JPY1.5",
            "XXX1.00",
            "USD 1.00",
            "USD1.",
            "USD.5",
            "USD1,00",
            "ÜSD1.00",
            "US€1",
            "USD1234567890123456",
        ] {
            assert!(parse_price(bad).is_err(), "{bad:?} was accepted");
        }
    }

    /// Tax rates are read from their text exactly, exponents included.
    #[test]
    fn tax_rates_are_exact() {
        let rate = |t| parse_tax_rate(t).unwrap().to_string();
        assert_eq!(rate("0.21"), "0.21");
        assert_eq!(rate("0.210"), "0.21");
        assert_eq!(rate("2.1e-1"), "0.21");
        assert_eq!(rate("0"), "0");
        assert_eq!(rate("1"), "1");
        assert_eq!(rate("1.0"), "1");
        assert_eq!(rate("0.00000001"), "0.00000001");
    }

    /// Negative, too precise or above-one rates are refused.
    #[test]
    fn out_of_range_tax_rates_are_refused() {
        for bad in [
            "-0.1",
            "1.01",
            "2",
            "1e1",
            "0.000000001",
            "1e-99999999",
            "1e-9223372036854775808",
            "0.5e-9223372036854775807",
            "1e9223372036854775807",
        ] {
            assert!(parse_tax_rate(bad).is_err(), "{bad:?} was accepted");
        }
    }

    /// Half-cent taxes round to the even cent.
    #[test]
    fn halves_round_to_even() {
        assert_eq!(div_half_even(25, 10), 2);
        assert_eq!(div_half_even(35, 10), 4);
        assert_eq!(div_half_even(26, 10), 3);
        assert_eq!(div_half_even(24, 10), 2);
    }
}
