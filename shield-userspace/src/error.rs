//! Printing an error with its causes.
//!
//! shield's error types keep their cause as `source()` and out of their own
//! message, so that `{:#}` on an `anyhow::Error` names each cause once. A
//! log line that has only the error (not an `anyhow` chain) prints it with
//! [`Chain`], or the cause would be lost.

use std::{error::Error, fmt};

/// Displays an error and each of its sources, joined by `": "`, as
/// `anyhow`'s `{:#}` does.
#[derive(Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut current = self.0.source();
        while let Some(cause) = current {
            write!(f, ": {cause}")?;
            current = cause.source();
        }
        Ok(())
    }
}

impl fmt::Debug for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// How often `needle` occurs in `{:#}` of `error` (the operator's view).
    pub(crate) fn count_in_chain(
        error: impl Error + Send + Sync + 'static,
        needle: &str,
    ) -> (usize, String) {
        let text = format!("{:#}", anyhow::Error::from(error));
        (text.matches(needle).count(), text)
    }

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn chain_prints_every_cause_once() {
        let error = Outer(std::io::Error::other("inner"));
        assert_eq!(Chain(&error).to_string(), "outer: inner");
        assert_eq!(count_in_chain(error, "inner").0, 1);
    }
}
