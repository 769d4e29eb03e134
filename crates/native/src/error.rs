//! Error messages for people: an error and every cause behind it on one line, since most
//! errors (reqwest's, tungstenite's) say little at the top and the real reason is a source.

/// `e` and its causes joined with `": "`; a cause whose text is already shown (many errors
/// repeat their source in their own message) is not repeated.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);

    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn joins_causes_and_skips_repeats() {
        let e = E(
            "error sending request",
            Some(Box::new(E(
                "connect failed: connection refused",
                Some(Box::new(E("connection refused", None))),
            ))),
        );
        assert_eq!(
            error_chain(&e),
            "error sending request: connect failed: connection refused"
        );
        assert_eq!(error_chain(&E("alone", None)), "alone");
    }
}
