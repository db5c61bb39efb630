//! Durations as the configuration writes them (`"10s"`, `"1m30s"`, `"20ms"`), each key
//! within bounds of its own: read in one place, with one wording for what is refused.

use std::time::Duration;

/// What a duration key accepts, and how its error says so.
pub(super) struct Bounds {
    pub(super) least: Duration,
    pub(super) most: Duration,
    /// The bounds in words, for the error: `"1s and 24h"`.
    pub(super) range: &'static str,
    /// A value that fits, for the error: `"10s"`.
    pub(super) example: &'static str,
}

/// Reads `text` as a duration within `bounds`; the error quotes the text and says what
/// fits. The caller names the key.
pub(super) fn bounded(text: &str, bounds: &Bounds) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .ok()
        .filter(|d| *d >= bounds.least && *d <= bounds.most)
        .ok_or_else(|| {
            format!(
                "{text:?} is not a duration between {} (such as \"{}\")",
                bounds.range, bounds.example
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECONDS: Bounds = Bounds {
        least: Duration::from_secs(1),
        most: Duration::from_secs(60),
        range: "1s and 60s",
        example: "10s",
    };

    #[test]
    fn durations_are_read_within_their_bounds_and_refused_with_what_fits() {
        assert_eq!(bounded("1s", &SECONDS), Ok(Duration::from_secs(1)));
        assert_eq!(bounded("1m", &SECONDS), Ok(Duration::from_secs(60)));
        assert_eq!(bounded("1500ms", &SECONDS), Ok(Duration::from_millis(1500)));
        for refused in ["999ms", "61s", "ten seconds", "", "-1s"] {
            let err = bounded(refused, &SECONDS).unwrap_err();
            assert_eq!(
                err,
                format!("{refused:?} is not a duration between 1s and 60s (such as \"10s\")")
            );
        }
    }
}
