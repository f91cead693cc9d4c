"""Security primitives with no I/O: passwords, one-time codes, signing keys, OpenID Connect."""
