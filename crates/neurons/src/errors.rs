//! How an error is turned into one line of text for a log or a reason.
//!
//! The crates' errors follow one convention: a variant either prints its
//! source in its message or exposes it as `source()`, never both; so the
//! whole story is the message followed by each source's, and nothing is
//! said twice.

use std::error::Error;

/// `err` and its sources joined with ": ".
pub fn error_chain(err: &(dyn Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_follow_the_message() {
        let err =
            pretrain_store::HubError::io("cannot read x")(std::io::Error::other("disk on fire"));
        assert_eq!(error_chain(&err), "cannot read x: disk on fire");
        let plain = pretrain_store::HubError::NotFound("repo a/b".into());
        assert_eq!(error_chain(&plain), "not found: repo a/b");
    }
}
