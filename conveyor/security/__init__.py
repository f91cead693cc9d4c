"""Security primitives with no I/O of their own: passwords, TOTP, attempt throttling."""
