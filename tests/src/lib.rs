//! Helpers live in `support/`; the tests are the `[[test]]` targets.
