"""Coverage-guided fuzzing of the parsers that see untrusted bytes (see ``fuzz/README.md``)."""
