//! The SFU with real peers and at the protocol level: WHIP/WHEP, codecs, loss and
//! retransmission, slow viewers, ICE-TCP, the media configuration, the hardening of
//! issue 11, publishing with a stream key, restreaming to RTMP servers (issue 16), and what the watch, broadcast and `/streams`
//! pages say. The real-peer
//! tests need Chromium, aiortc (`.venv`) and the Node peers (`scripts/test.sh`
//! installs them) and take [`support::media_lock`] so that only one runs at a time
//! on a 2-core machine.

#[path = "../support/mod.rs"]
mod support;

mod aiortc;
mod browser;
mod calls;
mod cluster_edge;
mod codecs;
mod config;
mod continuity;
mod hardening;
mod ice_tcp;
mod loss;
mod operator;
mod pages;
mod port;
mod recording;
mod restream;
mod restream_api;
mod simulcast;
mod slow_viewer;
mod stream_key;
mod takeover;
mod whip_protocol;
