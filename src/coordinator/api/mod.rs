//! Handlers of the CLI-facing `operator.metalbear.co/v1` API (pure: state comes in through traits).

pub mod state;
