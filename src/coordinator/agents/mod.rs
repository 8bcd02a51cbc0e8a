//! The agent registry: agents dial `/agents/connect`, are identified by TokenReview, and are known per pod.
