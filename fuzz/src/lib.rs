//! Shared by the fuzz targets: reading their line-oriented inputs (so that the
//! seeds in `fuzz/seeds/` are hand-written text), and a scripted LINE Platform on
//! loopback for the targets that check how the proxy reads LINE's answers.
//!
//! Each target states its input format at the top of its file.

pub mod input;
pub mod mock_line;
