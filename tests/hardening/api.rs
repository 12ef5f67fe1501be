//! Issue 11 hardening tests: the business API and tokens (items 4, 5, 7, 10, 12, 13, 14a).
