"""The rule model and its pure evaluation: observations and state in, events out; no I/O, no await."""
