//! Integration tests live in `src/integration`; this library is empty on purpose.
