//! CMAF / fragmented MP4: the init segment (`ftyp` + `moov` with a video
//! and/or an Opus track) and fragments (`moof` + `mdat` carrying a run of
//! samples per track), built with the `mp4-atom` crate's boxes.
//!
//! Timescales: video 90 000 (the RTP clock of every video codec), audio
//! 48 000 (Opus' RTP clock), so RTP timestamp differences are sample
//! durations as they are. Track 1 is video, track 2 audio, whichever exist.
//!
//! Imports [`super::depacketize`] (the key-frame information) only.

use std::io;

use mp4_atom::{
    Audio, Av01, Av1c, Avc1, Avcc, Codec, Dinf, Dops, Dref, Encode, Ftyp, Hdlr, Mdat, Mdhd, Mdia,
    Mfhd, Minf, Moof, Moov, Mvex, Mvhd, Opus, Smhd, Stbl, Stco, Stsd, Tfdt, Tfhd, Tkhd, Traf, Trak,
    Trex, Trun, TrunEntry, Url, Visual, Vmhd, Vp08, Vp09, VpcC,
};

use super::depacketize::{VideoConfig, VideoInfo};

pub const VIDEO_TIMESCALE: u32 = 90_000;
pub const AUDIO_TIMESCALE: u32 = 48_000;
pub const VIDEO_TRACK_ID: u32 = 1;
pub const AUDIO_TRACK_ID: u32 = 2;

/// The Opus track's parameters (from the negotiated codec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioInfo {
    pub channels: u16,
}

/// One sample of a fragment.
#[derive(Debug, Clone)]
pub struct Sample {
    pub data: Vec<u8>,
    /// In the track's timescale.
    pub duration: u32,
    pub keyframe: bool,
}

/// One track's samples in a fragment.
#[derive(Debug)]
pub struct TrackRun<'a> {
    pub track_id: u32,
    /// The first sample's decode time, in the track's timescale.
    pub base_decode_time: u64,
    pub samples: &'a [Sample],
}

fn mp4_err(e: mp4_atom::Error) -> io::Error {
    io::Error::other(format!("mp4: {e}"))
}

/// A VP9 level from the picture size (the vpcC wants one; browsers only
/// check it is plausible). Levels by luma picture size, VP9 spec Annex A.
fn vp9_level(width: u32, height: u32) -> u8 {
    let pixels = u64::from(width) * u64::from(height);
    match pixels {
        0..=36_864 => 10,
        36_865..=73_728 => 11,
        73_729..=122_880 => 20,
        122_881..=245_760 => 21,
        245_761..=552_960 => 30,
        552_961..=983_040 => 31,
        983_041..=2_228_224 => 41,
        2_228_225..=8_912_896 => 51,
        _ => 61,
    }
}

/// The RFC 6381 codec name of a video track, e.g. `vp08.00.41.08`,
/// `vp09.00.21.08`, `avc1.42e01f`, `av01.0.04M.08`.
pub fn video_codec_string(info: &VideoInfo) -> String {
    match &info.config {
        VideoConfig::Vp8 => "vp08.00.41.08".to_string(),
        VideoConfig::Vp9(h) => format!(
            "vp09.{:02}.{:02}.{:02}",
            h.profile,
            vp9_level(info.width, info.height),
            h.bit_depth
        ),
        VideoConfig::Avc { sps, .. } => format!(
            "avc1.{:02x}{:02x}{:02x}",
            sps.get(1).copied().unwrap_or(0x42),
            sps.get(2).copied().unwrap_or(0),
            sps.get(3).copied().unwrap_or(0x1f)
        ),
        VideoConfig::Av1 { seq, .. } => format!(
            "av01.{}.{:02}{}.{:02}",
            seq.profile,
            seq.level,
            if seq.tier { 'H' } else { 'M' },
            seq.bit_depth()
        ),
    }
}

fn visual(info: &VideoInfo) -> Visual {
    Visual {
        data_reference_index: 1,
        width: info.width.min(u32::from(u16::MAX)) as u16,
        height: info.height.min(u32::from(u16::MAX)) as u16,
        ..Default::default()
    }
}

fn sample_entry(info: &VideoInfo) -> io::Result<Codec> {
    let visual = visual(info);
    Ok(match &info.config {
        VideoConfig::Vp8 => Vp08 {
            visual,
            vpcc: VpcC {
                profile: 0,
                level: 41,
                bit_depth: 8,
                chroma_subsampling: 1,
                video_full_range_flag: false,
                color_primaries: 1,
                transfer_characteristics: 1,
                matrix_coefficients: 1,
                codec_initialization_data: vec![],
            },
            btrt: None,
            colr: None,
            pasp: None,
            spatial: None,
        }
        .into(),
        VideoConfig::Vp9(h) => Vp09 {
            visual,
            vpcc: VpcC {
                profile: h.profile,
                level: vp9_level(info.width, info.height),
                bit_depth: h.bit_depth,
                chroma_subsampling: h.chroma,
                video_full_range_flag: h.full_range,
                color_primaries: 2,
                transfer_characteristics: 2,
                matrix_coefficients: 2,
                codec_initialization_data: vec![],
            },
            btrt: None,
            colr: None,
            pasp: None,
            spatial: None,
        }
        .into(),
        // avc1 with the first SPS/PPS in avcC; key frames keep their in-band
        // parameter sets too, so a resolution change mid-stream still decodes
        // in decoders that follow in-band SPS (Chromium, Firefox, ffmpeg).
        VideoConfig::Avc { sps, pps } => Avc1 {
            visual,
            avcc: Avcc::new(sps, pps).map_err(mp4_err)?,
            btrt: None,
            colr: None,
            pasp: None,
            taic: None,
            fiel: None,
            spatial: None,
        }
        .into(),
        VideoConfig::Av1 { seq, obu } => Av01 {
            visual,
            av1c: Av1c {
                seq_profile: seq.profile,
                seq_level_idx_0: seq.level,
                seq_tier_0: seq.tier,
                high_bitdepth: seq.high_bitdepth,
                twelve_bit: seq.twelve_bit,
                monochrome: seq.monochrome,
                chroma_subsampling_x: seq.subsampling_x,
                chroma_subsampling_y: seq.subsampling_y,
                chroma_sample_position: seq.chroma_sample_position,
                initial_presentation_delay: None,
                config_obus: obu.clone(),
            },
            btrt: None,
            ccst: None,
            colr: None,
            pasp: None,
            taic: None,
            spatial: None,
        }
        .into(),
    })
}

fn trak(track_id: u32, timescale: u32, codec: Codec, video: Option<&VideoInfo>) -> Trak {
    let is_video = video.is_some();
    Trak {
        tkhd: Tkhd {
            track_id,
            enabled: true,
            in_movie: true,
            volume: if is_video { 0.into() } else { 1.into() },
            width: video
                .map_or(0, |v| v.width.min(u32::from(u16::MAX)) as u16)
                .into(),
            height: video
                .map_or(0, |v| v.height.min(u32::from(u16::MAX)) as u16)
                .into(),
            ..Default::default()
        },
        mdia: Mdia {
            mdhd: Mdhd {
                timescale,
                language: "und".to_string(),
                ..Default::default()
            },
            hdlr: Hdlr {
                handler: if is_video {
                    b"vide".into()
                } else {
                    b"soun".into()
                },
                name: if is_video {
                    "VideoHandler"
                } else {
                    "SoundHandler"
                }
                .to_string(),
            },
            minf: Minf {
                vmhd: is_video.then(Vmhd::default),
                smhd: (!is_video).then(Smhd::default),
                dinf: Dinf {
                    dref: Dref {
                        entries: vec![
                            Url {
                                location: String::new(),
                            }
                            .into(),
                        ],
                    },
                },
                stbl: Stbl {
                    stsd: Stsd {
                        codecs: vec![codec],
                    },
                    stco: Some(Stco::default()),
                    ..Default::default()
                },
                ..Default::default()
            },
        },
        ..Default::default()
    }
}

/// `ftyp` + `moov` for the tracks that exist (at least one).
pub fn init_segment(video: Option<&VideoInfo>, audio: Option<AudioInfo>) -> io::Result<Vec<u8>> {
    let mut traks = Vec::new();
    let mut trex = Vec::new();
    let mut brands = vec![b"iso6".into(), b"cmfc".into(), b"mp41".into()];
    if let Some(v) = video {
        traks.push(trak(
            VIDEO_TRACK_ID,
            VIDEO_TIMESCALE,
            sample_entry(v)?,
            Some(v),
        ));
        trex.push(VIDEO_TRACK_ID);
        if let VideoConfig::Av1 { .. } = v.config {
            brands.push(b"av01".into());
        }
    }
    if let Some(a) = audio {
        let channels = a.channels.clamp(1, 2);
        let opus = Opus {
            audio: Audio {
                data_reference_index: 1,
                channel_count: channels,
                sample_size: 16,
                sample_rate: 48000u16.into(),
            },
            dops: Dops {
                output_channel_count: channels as u8,
                // WebRTC Opus has no encoder delay to trim that we know of:
                // pre-skip 0 keeps audio aligned with the video track.
                pre_skip: 0,
                input_sample_rate: 48000,
                output_gain: 0,
                channel_mapping: None,
            },
            btrt: None,
        };
        traks.push(trak(AUDIO_TRACK_ID, AUDIO_TIMESCALE, opus.into(), None));
        trex.push(AUDIO_TRACK_ID);
    }
    if traks.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "no tracks"));
    }
    let moov = Moov {
        mvhd: Mvhd {
            timescale: 1000,
            next_track_id: AUDIO_TRACK_ID + 1,
            ..Default::default()
        },
        mvex: Some(Mvex {
            mehd: None,
            trex: trex
                .into_iter()
                .map(|track_id| Trex {
                    track_id,
                    default_sample_description_index: 1,
                    ..Default::default()
                })
                .collect(),
        }),
        trak: traks,
        ..Default::default()
    };
    let ftyp = Ftyp {
        major_brand: b"iso6".into(),
        minor_version: 0,
        compatible_brands: brands,
    };
    let mut out = Vec::new();
    ftyp.encode(&mut out).map_err(mp4_err)?;
    moov.encode(&mut out).map_err(mp4_err)?;
    Ok(out)
}

/// ISO BMFF sample flags: a sync sample depends on nothing; others depend
/// on earlier samples and are not sync samples.
const SYNC: u32 = 0x0200_0000;
const NON_SYNC: u32 = 0x0101_0000;

/// `moof` + `mdat` with one run per track (runs without samples are left out).
pub fn fragment(sequence_number: u32, runs: &[TrackRun<'_>]) -> io::Result<Vec<u8>> {
    let runs: Vec<&TrackRun<'_>> = runs.iter().filter(|r| !r.samples.is_empty()).collect();
    if runs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "empty fragment",
        ));
    }
    let build = |offsets: &[i32]| Moof {
        mfhd: Mfhd { sequence_number },
        traf: runs
            .iter()
            .zip(offsets)
            .map(|(run, &offset)| Traf {
                tfhd: Tfhd {
                    track_id: run.track_id,
                    default_base_is_moof: true,
                    ..Default::default()
                },
                tfdt: Some(Tfdt {
                    base_media_decode_time: run.base_decode_time,
                }),
                trun: vec![Trun {
                    data_offset: Some(offset),
                    samples: run
                        .samples
                        .iter()
                        .map(|s| TrunEntry {
                            duration: Some(s.duration),
                            size: Some(s.data.len() as u32),
                            flags: Some(if s.keyframe { SYNC } else { NON_SYNC }),
                            cts: None,
                        })
                        .collect::<Vec<_>>()
                        .into(),
                }],
                ..Default::default()
            })
            .collect(),
    };
    // The offsets do not change the moof's size: encode once to measure.
    let mut probe = Vec::new();
    build(&vec![0; runs.len()])
        .encode(&mut probe)
        .map_err(mp4_err)?;
    let mut offsets = Vec::with_capacity(runs.len());
    let mut at = probe.len() + 8; // mdat header
    let mut data = Vec::new();
    for run in &runs {
        offsets.push(i32::try_from(at).map_err(|_| io::Error::other("fragment too large"))?);
        for s in run.samples {
            at += s.data.len();
            data.extend_from_slice(&s.data);
        }
    }
    let mut out = Vec::with_capacity(probe.len() + 8 + data.len());
    build(&offsets).encode(&mut out).map_err(mp4_err)?;
    Mdat { data }.encode(&mut out).map_err(mp4_err)?;
    Ok(out)
}
