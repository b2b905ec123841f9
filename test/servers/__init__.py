"""Test helper servers (real HTTP on loopback) for the remote backend's tests."""
