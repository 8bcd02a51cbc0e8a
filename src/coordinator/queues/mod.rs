//! Queue splitting: the splitter per broker, routing each message to exactly one consumer.
