//! Simulcast vocabulary shared by the core, the registry and the handle: a
//! stream's video encodings as viewers are offered them ([`LayerInfo`], the
//! `layers` event), what a viewer asks for ([`LayerRequest`], the WHEP `layer`
//! extension) and what it gets ([`ViewerLayer`]). Imports nothing from the
//! crate but the shared kinds, so every module may use it.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};

use serde::Serialize;

/// Encodings per video section a publisher may send (`a=simulcast`): three, as
/// browsers send (q/h/f) and as the WHIP/WHEP drafts' examples assume.
pub const MAX_ENCODINGS: usize = 3;

/// "No encoding" in the atomics below.
pub const NO_ENCODING: u8 = u8::MAX;

/// One encoding of a stream's video as the SSE `layers` event and the operator
/// view list it. `bitrate` is 0 for an encoding that is not arriving.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerInfo {
    /// The publisher's `rid` (empty for a stream without simulcast).
    pub rid: String,
    /// The same, under draft -00's name.
    #[serde(rename = "encodingId")]
    pub encoding_id: String,
    #[serde(rename = "spatialLayerId")]
    pub spatial_layer_id: u32,
    #[serde(rename = "temporalLayerId")]
    pub temporal_layer_id: u32,
    /// Bits per second received over the last rate window.
    pub bitrate: u64,
    /// From the encoding's last key frame; 0 until one was seen.
    pub width: u32,
    pub height: u32,
    pub active: bool,
}

/// What a viewer asks for through `POST {session}/layer`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerRequest {
    /// The m-line index the request is about (`mediaId`); `None`: the video one.
    pub media_id: Option<String>,
    /// The encoding to pin (`rid`, or draft -00's `encodingId`).
    pub rid: Option<String>,
    pub spatial_layer_id: Option<u32>,
    pub temporal_layer_id: Option<u32>,
    pub max_spatial_layer_id: Option<u32>,
    pub max_temporal_layer_id: Option<u32>,
    /// Caps for the automatic choice (draft -02).
    pub max_width: Option<u32>,
    pub max_height: Option<u32>,
}

impl LayerRequest {
    /// `{}`: back to automatic selection without caps.
    pub fn is_auto(&self) -> bool {
        *self == LayerRequest::default()
    }
}

/// Why a viewer moved from one encoding to another (the switch metric's label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchReason {
    /// The viewer's first encoding.
    Start,
    /// Pinned or released through the `layer` extension.
    Request,
    /// The bandwidth estimate fell below the encoding's rate.
    Down,
    /// The estimate held above the next encoding's rate (or a probe succeeded).
    Up,
    /// The encoding stopped arriving (the browser paused it).
    Inactive,
}

impl SwitchReason {
    pub const ALL: [SwitchReason; 5] = [
        SwitchReason::Start,
        SwitchReason::Request,
        SwitchReason::Down,
        SwitchReason::Up,
        SwitchReason::Inactive,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SwitchReason::Start => "start",
            SwitchReason::Request => "request",
            SwitchReason::Down => "bandwidth_down",
            SwitchReason::Up => "bandwidth_up",
            SwitchReason::Inactive => "layer_inactive",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// A viewer's layer as the HTTP side reads it (the SSE extension's `layer`
/// event, the watch page): written by the viewer's worker, read anywhere.
#[derive(Debug, Default)]
pub struct ViewerLayerShared {
    /// The encoding being forwarded ([`NO_ENCODING`] before the first).
    pub current: AtomicU8,
    /// The encoding the viewer is switching to (the same as `current` at rest).
    pub target: AtomicU8,
    pub pinned: AtomicBool,
    /// The viewer's bandwidth estimate in bits per second (0: none yet).
    pub estimate_bps: AtomicU64,
    /// The viewer's video m-line index in its offer (`u32::MAX`: no video).
    pub video_media_id: AtomicU32,
}

impl ViewerLayerShared {
    pub fn new(video_media_id: Option<usize>) -> Self {
        let s = Self::default();
        s.current.store(NO_ENCODING, Ordering::Relaxed);
        s.target.store(NO_ENCODING, Ordering::Relaxed);
        s.video_media_id.store(
            video_media_id.map_or(u32::MAX, |i| i as u32),
            Ordering::Relaxed,
        );
        s
    }
}

/// A viewer's layer, read from [`ViewerLayerShared`] and named by rid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ViewerLayer {
    /// The rid being forwarded (`None` before the first video packet, or when
    /// the stream has no simulcast: then `""`).
    pub rid: Option<String>,
    /// The rid being switched to, while a switch waits for its key frame.
    pub switching_to: Option<String>,
    /// Pinned through the `layer` extension (false: automatic).
    pub pinned: bool,
    /// The viewer's bandwidth estimate, bits per second (0 when there is none).
    pub estimate_bps: u64,
    /// The viewer's video m-line index (its `mediaId`).
    pub media_id: Option<String>,
}
