"""Security primitives: pure functions and values, no database, no HTTP."""
