"""Commands and the pure deciders that turn them into events."""
