//! A directory's conflict policy, `on_conflict`, as the configuration gives it: what a
//! receiving node does with a pushed change planned against a version it no longer
//! holds. A plain value: deciding a conflict is the receiver's business
//! (`apply::session`), and nothing here reads a file or a clock.

/// What a receiver does with an operation that conflicts with its own edit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnConflict {
    /// Refuse it and report the conflict; nothing is overwritten (the default).
    #[default]
    Refuse,
    /// Apply a put anyway when the version it brings was modified strictly later than
    /// the one held here, keeping the one held in the backups; refuse otherwise.
    Newest,
}

/// The values `on_conflict` accepts, for messages.
const ALLOWED: &str = "\"refuse\" (the default), \"newest\"";

impl OnConflict {
    /// Reads the value of `on_conflict`.
    pub fn parse(text: &str) -> Result<OnConflict, String> {
        match text {
            "refuse" => Ok(OnConflict::Refuse),
            "newest" => Ok(OnConflict::Newest),
            other => Err(format!("on_conflict: {other:?} is not one of {ALLOWED}")),
        }
    }

    /// The value as written in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            OnConflict::Refuse => "refuse",
            OnConflict::Newest => "newest",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_value_reads_back_as_written_and_any_other_names_the_allowed_ones() {
        for policy in [OnConflict::Refuse, OnConflict::Newest] {
            assert_eq!(OnConflict::parse(policy.name()), Ok(policy));
        }
        assert_eq!(OnConflict::default(), OnConflict::Refuse);
        for bad in ["latest", "Newest", "", "overwrite"] {
            let message = OnConflict::parse(bad).unwrap_err();
            assert!(
                message.starts_with(&format!("on_conflict: {bad:?} is not one of"))
                    && message.contains("\"refuse\"")
                    && message.contains("\"newest\""),
                "{message}"
            );
        }
    }
}
