//! CLI sessions: one CLI connection fanned out to the agents of every pod of its target.
