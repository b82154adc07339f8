//! The study library (`peerless_bench::study`) from files and values alone: no training.

mod common;
mod config;
mod cost;
mod report;
mod simulate;
