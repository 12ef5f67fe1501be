//! Issue 11 hardening tests: WHIP/WHEP sessions (items 3, 8, 9).
