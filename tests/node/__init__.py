"""Tests that drive the server from Node.js."""
