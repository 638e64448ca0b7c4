use std::fmt;

use serde::{Deserialize, Serialize};

/// A callable phone number in E.164 form (`+31612345678`), valid by libphonenumber's rules.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Phone(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PhoneError {
    #[error("phone number must be in E.164 form, starting with '+'")]
    NotE164,
    #[error("phone number is not a valid number for its region")]
    Invalid,
}

impl Phone {
    pub fn parse(raw: &str) -> Result<Self, PhoneError> {
        let raw = Self::from_stored(raw.trim())?;
        let number = phonenumber::parse(None, raw.as_str()).map_err(|_| PhoneError::Invalid)?;
        if !phonenumber::is_valid(&number) {
            return Err(PhoneError::Invalid);
        }
        let e164 = number.format().mode(phonenumber::Mode::E164).to_string();
        Ok(Self(e164))
    }

    /// A number read back from our own store, where only `parse`d numbers are written: checks
    /// the E.164 shape only, because libphonenumber's full check costs more than the rest of
    /// loading a callback.
    pub fn from_stored(raw: &str) -> Result<Self, PhoneError> {
        let digits = raw.strip_prefix('+').ok_or(PhoneError::NotE164)?;
        if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PhoneError::NotE164);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The ISO 3166 region the number belongs to (`NL`, `US`), when libphonenumber knows it.
    pub fn region(&self) -> Option<String> {
        sole_region(&self.0).map(str::to_owned).or_else(|| {
            let number = phonenumber::parse(None, &self.0).ok()?;
            number.country().id().map(|id| format!("{id:?}"))
        })
    }

    /// The form allowed in logs, metrics and error texts: `+3161*****78`.
    pub fn masked(&self) -> String {
        mask_phone(&self.0)
    }
}

/// The region of an E.164 number whose country calling code belongs to one region only, read
/// from the code itself. Calling codes are prefix-free, so the first one to three digits name
/// it. The scheduling rules ask for the region on every step, and libphonenumber's full parse
/// costs more than the rest of the step; shared codes (`+1`, `+44`, `+7`) still need it.
fn sole_region(e164: &str) -> Option<&'static str> {
    let digits = e164.strip_prefix('+')?;
    (1..=3).find_map(|len| {
        let code: u16 = digits.get(..len)?.parse().ok()?;
        match phonenumber::metadata::DATABASE.region(&code)?.as_slice() {
            // "001" marks the non-geographic codes (+800, +882): no region.
            [only] if *only != "001" => Some(*only),
            _ => None,
        }
    })
}

/// Masks anything phone-like so at most the first five and the last two characters show.
/// Used for raw input too, before it is known to be a valid number.
///
/// ```
/// assert_eq!(callkeeper::domain::mask_phone("+31612345678"), "+3161*****78");
/// ```
pub fn mask_phone(raw: &str) -> String {
    let chars: Vec<char> = raw.chars().collect();
    if chars.len() <= 7 {
        return "*".repeat(chars.len());
    }
    let hidden = chars.len() - 7;
    let mut out: String = chars[..5].iter().collect();
    out.push_str(&"*".repeat(hidden));
    out.extend(&chars[chars.len() - 2..]);
    out
}

impl TryFrom<String> for Phone {
    type Error = PhoneError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Phone> for String {
    fn from(value: Phone) -> Self {
        value.0
    }
}

/// Debug and Display never print the full number, so a stray `{:?}` cannot leak it into logs.
impl fmt::Debug for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Phone({})", self.masked())
    }
}

impl fmt::Display for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_e164() {
        let p = Phone::parse("+31612345678").unwrap();
        assert_eq!(p.as_str(), "+31612345678");
        assert_eq!(p.region().as_deref(), Some("NL"));
    }

    #[test]
    fn region_from_the_calling_code_agrees_with_libphonenumber() {
        let numbers = [
            "+31612345678",   // NL, code of one region
            "+4915112345678", // DE
            "+35312345678",   // IE, three-digit code
            "+12025550123",   // US, +1 is shared
            "+14165550123",   // CA
            "+447400123456",  // GB, +44 is shared
            "+74951234567",   // RU, +7 is shared
            "+80012345678",   // international freephone, no region
        ];
        for raw in numbers {
            let phone = Phone::from_stored(raw).unwrap();
            let parsed = phonenumber::parse(None, raw)
                .ok()
                .and_then(|n| n.country().id().map(|id| format!("{id:?}")));
            assert_eq!(phone.region(), parsed, "{raw}");
        }
        assert_eq!(sole_region("+31612345678"), Some("NL"));
        assert_eq!(sole_region("+12025550123"), None);
    }

    #[test]
    fn rejects_non_e164_and_invalid() {
        assert_eq!(Phone::parse("0612345678"), Err(PhoneError::NotE164));
        assert_eq!(Phone::parse("+31 6 1234"), Err(PhoneError::NotE164));
        assert_eq!(Phone::parse("+"), Err(PhoneError::NotE164));
        assert_eq!(Phone::parse("+999999"), Err(PhoneError::Invalid));
        assert_eq!(Phone::parse("+3161234"), Err(PhoneError::Invalid));
    }

    #[test]
    fn masks_as_the_contract_shows() {
        assert_eq!(mask_phone("+31612345678"), "+3161*****78");
        assert_eq!(mask_phone("+1234"), "*****");
        let p = Phone::parse("+31612345678").unwrap();
        assert_eq!(format!("{p} {p:?}"), "+3161*****78 Phone(+3161*****78)");
    }
}
