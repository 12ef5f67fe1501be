//! Watch Together rooms over WebSocket: clock sync, playback state, presence, chat.
//! Knows nothing of media; the server asks it through the traits it defines.
