//! Wire formats of pairwise messages (PROTOCOL.md, "Wire types"): Whisper (0x01) and
//! PreKey (0x02).

use x25519_dalek::PublicKey;

use crate::{
    codec::{Reader, Writer},
    consts::TAG_LEN,
    error::DecodeError,
    identity::DeviceIdentityPublic,
    keys::x25519_public_key,
};

/// Type byte of a Whisper message.
pub const WHISPER_TYPE: u8 = 0x01;
/// Type byte of a PreKey message.
pub const PREKEY_TYPE: u8 = 0x02;

/// `dh_pub (32) || u32be(pn) || u32be(n)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) dh: [u8; 32],
    pub(crate) pn: u32,
    pub(crate) n: u32,
}

impl Header {
    pub(crate) const LEN: usize = 40;

    pub(crate) fn to_bytes(self) -> [u8; 40] {
        let mut out = [0u8; 40];
        out[..32].copy_from_slice(&self.dh);
        out[32..36].copy_from_slice(&self.pn.to_be_bytes());
        out[36..].copy_from_slice(&self.n.to_be_bytes());
        out
    }
}

/// A parsed Whisper message: `0x01 || header || ciphertext`.
pub(crate) struct WhisperMessage<'a> {
    pub(crate) header: Header,
    pub(crate) header_bytes: [u8; 40],
    pub(crate) ciphertext: &'a [u8],
}

impl<'a> WhisperMessage<'a> {
    pub(crate) fn encode(header: Header, ciphertext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + Header::LEN + ciphertext.len());
        out.push(WHISPER_TYPE);
        out.extend_from_slice(&header.to_bytes());
        out.extend_from_slice(ciphertext);
        out
    }

    pub(crate) fn parse(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes, "Whisper message");
        let t = r.u8()?;
        if t != WHISPER_TYPE {
            return Err(DecodeError::UnknownType {
                what: "Whisper message",
                found: t,
            });
        }
        let header_bytes = r.array::<40>()?;
        let mut h = Reader::new(&header_bytes, "Whisper header");
        let header = Header {
            dh: h.array()?,
            pn: h.u32()?,
            n: h.u32()?,
        };
        x25519_public_key(&header.dh)
            .map_err(|_| r.invalid("the ratchet key is not a canonical X25519 key"))?;
        if r.remaining() < TAG_LEN {
            return Err(r.invalid("the ciphertext is shorter than an AES-GCM tag"));
        }
        Ok(Self {
            header,
            header_bytes,
            ciphertext: r.rest(),
        })
    }
}

/// A parsed PreKey message: `0x02 || IKs_A.pub || IKd_A.pub || EK_A.pub || u32be(spk_id) ||
/// u32be(opk_id, 0 = none) || Whisper message`.
pub(crate) struct PreKeyMessage<'a> {
    pub(crate) identity: DeviceIdentityPublic,
    pub(crate) base_key: PublicKey,
    pub(crate) spk_id: u32,
    pub(crate) opk_id: u32,
    pub(crate) whisper: &'a [u8],
}

impl<'a> PreKeyMessage<'a> {
    pub(crate) fn encode(
        identity: &DeviceIdentityPublic,
        base_key: &PublicKey,
        spk_id: u32,
        opk_id: u32,
        whisper: &[u8],
    ) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(PREKEY_TYPE)
            .put(&identity.to_bytes())
            .put(base_key.as_bytes());
        w.u32(spk_id).u32(opk_id).put(whisper);
        w.finish().to_vec()
    }

    pub(crate) fn parse(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes, "PreKey message");
        let t = r.u8()?;
        if t != PREKEY_TYPE {
            return Err(DecodeError::UnknownType {
                what: "PreKey message",
                found: t,
            });
        }
        let identity = DeviceIdentityPublic::from_bytes(&r.array::<64>()?)
            .map_err(|_| r.invalid("the sender's identity keys are not valid public keys"))?;
        let base_key = x25519_public_key(&r.array::<32>()?)
            .map_err(|_| r.invalid("the ephemeral key is not a canonical X25519 key"))?;
        let spk_id = r.u32()?;
        let opk_id = r.u32()?;
        Ok(Self {
            identity,
            base_key,
            spk_id,
            opk_id,
            whisper: r.rest(),
        })
    }
}

/// The kind of a pairwise message, from its first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PairwiseMessageKind {
    /// A message on an established session.
    Whisper,
    /// A message that may build a new session.
    PreKey,
}

/// Reads the type byte of a pairwise message.
pub fn pairwise_message_kind(bytes: &[u8]) -> Result<PairwiseMessageKind, DecodeError> {
    match bytes.first() {
        Some(&WHISPER_TYPE) => Ok(PairwiseMessageKind::Whisper),
        Some(&PREKEY_TYPE) => Ok(PairwiseMessageKind::PreKey),
        Some(&found) => Err(DecodeError::UnknownType {
            what: "pairwise message",
            found,
        }),
        None => Err(DecodeError::Truncated {
            what: "pairwise message",
            needed: 1,
        }),
    }
}
