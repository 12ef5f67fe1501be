//! SRTP protection of forwarded RTP (RFC 3711, RFC 7714), written straight into the
//! caller's send buffer: the fan-out's per-viewer step allocates nothing.
//!
//! Keys come from the viewer's DTLS-SRTP handshake (`RTCPeerConnection::local_srtp_keying`,
//! see vendor/rtc/TANDEM_PATCH.md). Only SSRCs that never go through the peer connection's
//! own `write_rtp` are protected here, so each SSRC's SRTP index has one owner; RTCP stays
//! with the peer connection.

use std::fmt;
use std::sync::OnceLock;

use bytes::BytesMut;
use rtc::crypto::{
    AeadAlgorithm, AeadCipher, BlockCipherAlgorithm, HmacAlgorithm, Mac, RTCCrypto,
    RTCCryptoProvider, StreamCipher, StreamCipherAlgorithm,
};
use rtc::peer_connection::transport::RTCSrtpKeying;
use rtc::shared::marshal::{Marshal, MarshalSize};
use rtc::srtp::protection_profile::ProtectionProfile;

/// SRTP key-derivation labels (RFC 3711 §4.3.2).
const LABEL_RTP_ENCRYPTION: u8 = 0x00;
const LABEL_RTP_AUTH: u8 = 0x01;
const LABEL_RTP_SALT: u8 = 0x02;

const GCM_TAG_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum SrtpError {
    #[error("unsupported SRTP protection profile {0:?}")]
    UnsupportedProfile(ProtectionProfile),
    #[error("SRTP key material of the wrong length")]
    KeyLength,
    #[error("crypto: {0}")]
    Crypto(String),
    #[error("RTP header: {0}")]
    Header(String),
}

fn crypto_err(e: impl fmt::Display) -> SrtpError {
    SrtpError::Crypto(e.to_string())
}

/// The crypto provider the peer connections use (ring), shared.
fn provider() -> Result<&'static dyn RTCCryptoProvider, SrtpError> {
    static PROVIDER: OnceLock<Option<std::sync::Arc<dyn RTCCryptoProvider>>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| rtc::crypto::default_provider().ok())
        .as_deref()
        .ok_or_else(|| SrtpError::Crypto("no crypto provider".into()))
}

enum Transform {
    /// AEAD_AES_128_GCM / AEAD_AES_256_GCM (RFC 7714).
    Gcm {
        cipher: Box<dyn AeadCipher>,
        salt: [u8; 12],
    },
    /// AES_CM_128_HMAC_SHA1_80 / _32 (RFC 3711).
    CmHmac {
        cipher: Box<dyn StreamCipher>,
        salt: [u8; 14],
        mac: Box<dyn Mac>,
        tag_len: usize,
    },
}

/// One viewer's outbound SRTP context for the RTP the SFU forwards to it.
pub struct SrtpSender {
    transform: Transform,
}

/// Where one SSRC's SRTP packet index stands (the rollover counter lives here).
#[derive(Debug, Default, Clone, Copy)]
pub struct SrtpIndex {
    highest: Option<u64>,
}

impl SrtpIndex {
    /// The 48-bit packet index of `seq`, guessed against the highest sent so far as a
    /// receiver does (RFC 3711 §3.3.1), so retransmissions across a wrap get the old ROC.
    fn next(&mut self, seq: u16) -> u64 {
        let Some(highest) = self.highest else {
            self.highest = Some(u64::from(seq));
            return u64::from(seq);
        };
        let roc = highest >> 16;
        let s_l = highest as u16;
        let v = if s_l < 0x8000 {
            if i32::from(seq) - i32::from(s_l) > 0x8000 && roc > 0 {
                roc - 1
            } else {
                roc
            }
        } else if i32::from(s_l) - 0x8000 > i32::from(seq) {
            roc + 1
        } else {
            roc
        };
        let index = (v << 16) | u64::from(seq);
        if index > highest {
            self.highest = Some(index);
        }
        index
    }
}

impl SrtpSender {
    pub fn new(keying: &RTCSrtpKeying) -> Result<Self, SrtpError> {
        let crypto = provider()?.crypto();
        let key = &keying.master_key;
        let salt = &keying.master_salt;
        let transform = match keying.profile {
            ProtectionProfile::AeadAes128Gcm | ProtectionProfile::AeadAes256Gcm => {
                let (algorithm, block) =
                    if matches!(keying.profile, ProtectionProfile::AeadAes128Gcm) {
                        (AeadAlgorithm::Aes128Gcm, BlockCipherAlgorithm::Aes128)
                    } else {
                        (AeadAlgorithm::Aes256Gcm, BlockCipherAlgorithm::Aes256)
                    };
                if salt.len() != 12 {
                    return Err(SrtpError::KeyLength);
                }
                let session_key =
                    derive(crypto, block, key, salt, LABEL_RTP_ENCRYPTION, key.len())?;
                let session_salt = derive(crypto, block, key, salt, LABEL_RTP_SALT, 12)?;
                Transform::Gcm {
                    cipher: crypto
                        .new_aead(algorithm, &session_key)
                        .map_err(crypto_err)?,
                    salt: session_salt.try_into().map_err(|_| SrtpError::KeyLength)?,
                }
            }
            ProtectionProfile::Aes128CmHmacSha1_80
            | ProtectionProfile::Aes128CmHmacSha1_32
            | ProtectionProfile::Aes256CmHmacSha1_80
            | ProtectionProfile::Aes256CmHmacSha1_32 => {
                let aes256 = matches!(
                    keying.profile,
                    ProtectionProfile::Aes256CmHmacSha1_80 | ProtectionProfile::Aes256CmHmacSha1_32
                );
                let (algorithm, block) = if aes256 {
                    (
                        StreamCipherAlgorithm::Aes256Ctr,
                        BlockCipherAlgorithm::Aes256,
                    )
                } else {
                    (
                        StreamCipherAlgorithm::Aes128Ctr,
                        BlockCipherAlgorithm::Aes128,
                    )
                };
                if salt.len() != 14 {
                    return Err(SrtpError::KeyLength);
                }
                let session_key =
                    derive(crypto, block, key, salt, LABEL_RTP_ENCRYPTION, key.len())?;
                let session_salt = derive(crypto, block, key, salt, LABEL_RTP_SALT, 14)?;
                let auth_key = derive(
                    crypto,
                    block,
                    key,
                    salt,
                    LABEL_RTP_AUTH,
                    keying.profile.auth_key_len(),
                )?;
                Transform::CmHmac {
                    cipher: crypto
                        .new_stream_cipher(algorithm, &session_key)
                        .map_err(crypto_err)?,
                    salt: session_salt.try_into().map_err(|_| SrtpError::KeyLength)?,
                    mac: crypto
                        .new_hmac(HmacAlgorithm::Sha1, &auth_key)
                        .map_err(crypto_err)?,
                    tag_len: keying.profile.rtp_auth_tag_len(),
                }
            }
            other => return Err(SrtpError::UnsupportedProfile(other)),
        };
        Ok(Self { transform })
    }

    /// Appends the SRTP packet for `header` + `payload` to `out`.
    ///
    /// `out` is only extended; on error it may hold a partial packet, which the caller
    /// discards.
    pub fn protect(
        &mut self,
        index: &mut SrtpIndex,
        header: &rtc::rtp::header::Header,
        payload: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), SrtpError> {
        self.protect_with(index, header, None, payload, out)
    }

    /// [`SrtpSender::protect`], with a transport-wide sequence number
    /// (`transport-cc`, as extension `id`) written into a one-byte header
    /// extension block (RFC 8285 §4.2) when `twcc` is given. `header` must carry
    /// no extension of its own (forwarded headers never do).
    pub fn protect_with(
        &mut self,
        index: &mut SrtpIndex,
        header: &rtc::rtp::header::Header,
        twcc: Option<(u8, u16)>,
        payload: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), SrtpError> {
        let start = out.len();
        let mut header_len = header.marshal_size();
        out.resize(start + header_len, 0);
        header
            .marshal_to(&mut out[start..])
            .map_err(|e| SrtpError::Header(e.to_string()))?;
        if let Some((id, seq)) = twcc
            && !header.extension
            && (1..=14).contains(&id)
        {
            out[start] |= 0x10;
            let [hi, lo] = seq.to_be_bytes();
            out.extend_from_slice(&[0xbe, 0xde, 0x00, 0x01, (id << 4) | 1, hi, lo, 0x00]);
            header_len += 8;
        }
        out.extend_from_slice(payload);
        let packet_index = index.next(header.sequence_number);
        let roc = (packet_index >> 16) as u32;
        let seq = header.sequence_number;
        match &mut self.transform {
            Transform::Gcm { cipher, salt } => {
                // RFC 7714 §8.1: 00 00 || SSRC || ROC || SEQ, XOR the session salt.
                let mut iv = [0u8; 12];
                iv[2..6].copy_from_slice(&header.ssrc.to_be_bytes());
                iv[6..10].copy_from_slice(&roc.to_be_bytes());
                iv[10..12].copy_from_slice(&seq.to_be_bytes());
                for (v, s) in iv.iter_mut().zip(salt.iter()) {
                    *v ^= s;
                }
                let mut tag = [0u8; GCM_TAG_LEN];
                let (aad, body) = out[start..].split_at_mut(header_len);
                cipher
                    .seal_in_place(&iv, aad, body, &mut tag)
                    .map_err(crypto_err)?;
                out.extend_from_slice(&tag);
            }
            Transform::CmHmac {
                cipher,
                salt,
                mac,
                tag_len,
            } => {
                // RFC 3711 §4.1.1: IV = (salt * 2^16) XOR (SSRC * 2^64) XOR (index * 2^16).
                let mut iv = [0u8; 16];
                iv[4..8].copy_from_slice(&header.ssrc.to_be_bytes());
                iv[8..12].copy_from_slice(&roc.to_be_bytes());
                iv[12..14].copy_from_slice(&seq.to_be_bytes());
                for (v, s) in iv.iter_mut().zip(salt.iter()) {
                    *v ^= s;
                }
                cipher
                    .apply_keystream(&iv, &mut out[start + header_len..])
                    .map_err(crypto_err)?;
                let mut tag = [0u8; 20];
                mac.sign(&[&out[start..], &roc.to_be_bytes()], &mut tag)
                    .map_err(crypto_err)?;
                out.extend_from_slice(&tag[..*tag_len]);
            }
        }
        Ok(())
    }
}

/// The AES-CM PRF of RFC 3711 §4.3.1 (and RFC 6188 for AES-256), key derivation rate 0.
fn derive(
    crypto: &dyn RTCCrypto,
    block: BlockCipherAlgorithm,
    master_key: &[u8],
    master_salt: &[u8],
    label: u8,
    len: usize,
) -> Result<Vec<u8>, SrtpError> {
    if master_salt.len() > 14 {
        return Err(SrtpError::KeyLength);
    }
    let mut input = [0u8; 16];
    input[..master_salt.len()].copy_from_slice(master_salt);
    input[7] ^= label;
    let mut out = Vec::with_capacity(len.div_ceil(16) * 16);
    for counter in 0..len.div_ceil(16) as u16 {
        let mut b = input;
        b[14..16].copy_from_slice(&counter.to_be_bytes());
        crypto
            .block_encrypt(block, master_key, &mut b)
            .map_err(crypto_err)?;
        out.extend_from_slice(&b);
    }
    out.truncate(len);
    Ok(out)
}

#[cfg(test)]
mod tests {
    //! The sender must produce byte-for-byte what webrtc-rs' own SRTP context produces
    //! for the same keys, across profiles and a sequence-number wrap.

    use super::*;
    use rtc::rtp::header::Header;
    use rtc::srtp::context::Context;

    fn keying(profile: ProtectionProfile) -> RTCSrtpKeying {
        RTCSrtpKeying {
            profile,
            master_key: (0..profile.key_len() as u8).map(|i| i * 7 + 1).collect(),
            master_salt: (0..profile.salt_len() as u8).map(|i| i * 13 + 5).collect(),
        }
    }

    fn header(seq: u16, ts: u32) -> Header {
        Header {
            version: 2,
            marker: seq.is_multiple_of(3),
            payload_type: 96,
            sequence_number: seq,
            timestamp: ts,
            ssrc: 0x1234_5678,
            ..Default::default()
        }
    }

    #[test]
    fn matches_webrtc_rs_context_for_every_profile() {
        let crypto = provider().unwrap().crypto();
        for profile in [
            ProtectionProfile::AeadAes128Gcm,
            ProtectionProfile::AeadAes256Gcm,
            ProtectionProfile::Aes128CmHmacSha1_80,
            ProtectionProfile::Aes128CmHmacSha1_32,
        ] {
            let k = keying(profile);
            let mut reference =
                Context::new(&k.master_key, &k.master_salt, profile, None, None, crypto).unwrap();
            let mut ours = SrtpSender::new(&k).unwrap();
            let mut index = SrtpIndex::default();
            let payload: Vec<u8> = (0..1100u32).map(|i| (i * 31) as u8).collect();
            // Across the 16-bit wrap, so the rollover counter matters.
            for (n, seq) in (65530u16..=65535).chain(0..6).enumerate() {
                let h = header(seq, 1000 + n as u32 * 3000);
                let mut plain = BytesMut::new();
                plain.resize(h.marshal_size(), 0);
                h.marshal_to(&mut plain[..]).unwrap();
                plain.extend_from_slice(&payload);
                let expected = reference.encrypt_rtp_with_header(&plain, &h).unwrap();
                let mut out = BytesMut::new();
                ours.protect(&mut index, &h, &payload, &mut out).unwrap();
                assert_eq!(&out[..], &expected[..], "{profile:?} seq {seq}");
            }
        }
    }

    #[test]
    fn a_transport_wide_sequence_number_is_written_as_webrtc_rs_would() {
        use rtc::rtp::header::{EXTENSION_PROFILE_ONE_BYTE, Extension};
        let crypto = provider().unwrap().crypto();
        let profile = ProtectionProfile::AeadAes128Gcm;
        let k = keying(profile);
        let mut reference =
            Context::new(&k.master_key, &k.master_salt, profile, None, None, crypto).unwrap();
        let mut ours = SrtpSender::new(&k).unwrap();
        let mut index = SrtpIndex::default();
        let payload = [7u8; 300];
        let h = header(100, 9000);
        let mut with_ext = h.clone();
        with_ext.extension = true;
        with_ext.extension_profile = EXTENSION_PROFILE_ONE_BYTE;
        with_ext.extensions = vec![Extension {
            id: 5,
            payload: bytes::Bytes::from_static(&[0x12, 0x34]),
        }];
        let mut plain = BytesMut::new();
        plain.resize(with_ext.marshal_size(), 0);
        with_ext.marshal_to(&mut plain[..]).unwrap();
        plain.extend_from_slice(&payload);
        let expected = reference
            .encrypt_rtp_with_header(&plain, &with_ext)
            .unwrap();
        let mut out = BytesMut::new();
        ours.protect_with(&mut index, &h, Some((5, 0x1234)), &payload, &mut out)
            .unwrap();
        assert_eq!(&out[..], &expected[..]);
    }

    #[test]
    fn retransmission_before_a_wrap_keeps_its_rollover_counter() {
        let mut index = SrtpIndex::default();
        assert_eq!(index.next(65534), 65534);
        assert_eq!(index.next(1), (1 << 16) | 1);
        // A NACKed packet from before the wrap is sent again with ROC 0.
        assert_eq!(index.next(65535), 65535);
        assert_eq!(index.next(2), (1 << 16) | 2);
        // Starting high in the first cycle never guesses a negative ROC.
        let mut early = SrtpIndex::default();
        assert_eq!(early.next(10), 10);
        assert_eq!(early.next(50_000), 50_000);
    }
}
