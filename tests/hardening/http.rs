//! Issue 11 hardening tests: the HTTP edge (items 2, 6, 11).
