//! What every property test shares: how many cases it runs, and where its failures go.
//!
//! Properties live beside the code they test, in that module's tests. A failure is not written
//! to a `proptest-regressions` file: `cargo test` in CI would then dirty the source tree, and a
//! seed file says less than a test. A case a property finds becomes a named unit test beside it
//! (with the fix), and the property keeps looking.

use proptest::test_runner::Config;

/// `cases` random cases, no regression file. Cheap properties take the default 256; anything
/// that signs, hashes a password or runs a ceremony takes fewer, so that all of them together
/// add seconds, not minutes, to `cargo test --lib`.
pub(crate) fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}
