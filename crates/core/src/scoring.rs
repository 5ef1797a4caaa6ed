//! Validator scoring (filled in below).
