//! TLS material: loading, hot swapping and expiry reporting.
