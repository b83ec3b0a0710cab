"""Faithful fakes of the providers the gateway talks to, served over loopback in tests."""
