//! Black-box tests for Spate.
