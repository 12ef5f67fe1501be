//! Issue 11 hardening tests: the sync WebSocket (items 1, 11 close codes, 14b).
