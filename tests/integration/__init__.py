"""Integration tests: real connector processes on loopback, driven over HTTP and the CLI."""
