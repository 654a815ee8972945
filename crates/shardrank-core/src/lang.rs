//! Languages as two-letter ISO 639-1 codes, packed into a u16 for columnar storage.
//! `0` means unknown ("", "und").

/// A packed language code; 0 is unknown.
pub type Lang = u16;

pub const UNKNOWN: Lang = 0;

/// Parses "en", "ja", ...; "" and "und" are unknown. Anything else is an error.
pub fn parse(code: &str) -> Result<Lang, String> {
    match code.as_bytes() {
        [] => Ok(UNKNOWN),
        b"und" => Ok(UNKNOWN),
        [a, b] if a.is_ascii_lowercase() && b.is_ascii_lowercase() => {
            Ok(((*a as u16) << 8) | *b as u16)
        }
        _ => Err(format!(
            "language {code:?} is not a two-letter lowercase ISO 639-1 code (or \"und\")"
        )),
    }
}

/// The code as text ("" for unknown).
pub fn format(lang: Lang) -> String {
    if lang == UNKNOWN {
        return String::new();
    }
    let bytes = [(lang >> 8) as u8, lang as u8];
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects() {
        for code in ["en", "ja", "pt"] {
            assert_eq!(format(parse(code).unwrap()), code);
        }
        assert_eq!(parse("und").unwrap(), UNKNOWN);
        assert_eq!(parse("").unwrap(), UNKNOWN);
        assert!(parse("EN").is_err());
        assert!(parse("eng").is_err());
        assert!(parse("e").is_err());
    }
}
