//! mirrord-protocol 1.29 codec (see issue 4).
