//! tcg-witness (skeleton)
