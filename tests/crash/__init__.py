"""Crash safety: real node processes killed with SIGKILL at random moments and restarted."""
