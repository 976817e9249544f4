//! The failure every port can report when its technology lets it down.

/// Any error an adapter can carry as the source, for the logs.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A port could not do its job for reasons that have nothing to do with the caller's input.
///
/// Use-case errors wrap it unchanged, so the HTTP edge can answer 503 for an outage, a failing
/// storage or an overload and 500 for anything else, in one place.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backing service (database, ...) is down or did not answer in time. Worth retrying.
    #[error("backend unavailable")]
    Unavailable(#[source] BoxError),
    /// The backing service's storage refuses the work: its disk is full, its file or file
    /// system is read-only, or it reports I/O errors. Reads may still be served. Unlike an
    /// outage it does not pass by itself: an operator must free space or make it writable.
    #[error("backend storage failing")]
    Storage(#[source] BoxError),
    /// The service is saturated (e.g. the password-hashing queue is full). Worth retrying soon.
    #[error("backend overloaded")]
    Overloaded,
    /// A bug or a broken invariant; retrying will not help.
    #[error("unexpected backend failure")]
    Unexpected(#[source] BoxError),
}

impl BackendError {
    /// Wraps any error as [`BackendError::Unexpected`].
    pub fn unexpected(err: impl Into<BoxError>) -> Self {
        Self::Unexpected(err.into())
    }
}
