//! The Double Ratchet state of one session.

use std::collections::VecDeque;

use rand_core::{CryptoRng, RngCore};
use x25519_dalek::PublicKey;
use zeroize::Zeroizing;

use super::{chain::ChainKey, message_key::MessageKey, root::RootKey};
use crate::{
    codec::{Reader, Writer},
    consts::{CHAIN_EXHAUSTED, MAX_SKIP, MAX_SKIPPED_KEYS},
    error::{DecodeError, SessionError},
    keys::DhSecret,
    message::{Header, WhisperMessage},
    primitives::dh,
};

/// A stored key of a skipped message, under `(dh_pub, n)`.
struct SkippedKey {
    dh: [u8; 32],
    n: u32,
    key: MessageKey,
}

/// The ratchet: `RK`, `DHs`, `DHr`, `CKs`, `CKr`, `Ns`, `Nr`, `PN` and the skipped keys.
pub(crate) struct Ratchet {
    ad: [u8; 128],
    root: RootKey,
    dhs: DhSecret,
    dhr: Option<PublicKey>,
    cks: Option<ChainKey>,
    ns: u32,
    ckr: Option<ChainKey>,
    nr: u32,
    pn: u32,
    skipped: VecDeque<SkippedKey>,
}

fn ratchet_dh(secret: &DhSecret, public: &PublicKey) -> Result<Zeroizing<[u8; 32]>, SessionError> {
    dh(secret.inner(), public).map_err(|_| SessionError::LowOrderPoint("ratchet key"))
}

/// The state changes a successful decryption commits.
struct Commit {
    /// A DH ratchet step: new `RK`, `DHr`, `DHs`, `CKs`.
    step: Option<(RootKey, PublicKey, DhSecret, ChainKey)>,
    ckr: ChainKey,
    nr: u32,
    new_skipped: Vec<SkippedKey>,
}

impl Ratchet {
    /// The initiator: `DHs` fresh, `DHr = SPK_B`, `(RK, CKs) = KDF_RK(SK, DH(DHs, DHr))`.
    pub(crate) fn initiator(
        sk: &[u8; 32],
        ad: [u8; 128],
        dhs: DhSecret,
        spk: PublicKey,
    ) -> Result<Self, SessionError> {
        let out = ratchet_dh(&dhs, &spk)?;
        let (root, cks) = RootKey::new(*sk).advance(&out);
        Ok(Self {
            ad,
            root,
            dhs,
            dhr: Some(spk),
            cks: Some(cks),
            ns: 0,
            ckr: None,
            nr: 0,
            pn: 0,
            skipped: VecDeque::new(),
        })
    }

    /// The responder: `DHs = SPK_B`, `RK = SK`, no chains until the first message arrives.
    pub(crate) fn responder(sk: &[u8; 32], ad: [u8; 128], spk: DhSecret) -> Self {
        Self {
            ad,
            root: RootKey::new(*sk),
            dhs: spk,
            dhr: None,
            cks: None,
            ns: 0,
            ckr: None,
            nr: 0,
            pn: 0,
            skipped: VecDeque::new(),
        }
    }

    pub(crate) fn ad(&self) -> &[u8; 128] {
        &self.ad
    }

    /// Seals `plaintext` as the next message of the sending chain and advances the chain.
    /// Returns the Whisper message bytes.
    pub(crate) fn encrypt(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, SessionError> {
        let cks = self.cks.as_ref().ok_or(SessionError::NotYetReceived)?;
        if self.ns == CHAIN_EXHAUSTED {
            return Err(SessionError::ChainExhausted);
        }
        let header = Header {
            dh: self.dhs.public_key().to_bytes(),
            pn: self.pn,
            n: self.ns,
        };
        let (next, mk) = cks.step();
        let ct = mk.seal(plaintext, &self.associated_data(&header.to_bytes()));
        self.cks = Some(next);
        self.ns += 1;
        Ok(WhisperMessage::encode(header, &ct))
    }

    fn associated_data(&self, header: &[u8; 40]) -> [u8; 168] {
        let mut ad = [0u8; 168];
        ad[..128].copy_from_slice(&self.ad);
        ad[128..].copy_from_slice(header);
        ad
    }

    /// Decrypts a Whisper message. All-or-nothing: the state changes only when the tag
    /// verifies.
    pub(crate) fn decrypt(
        &mut self,
        rng: &mut (impl RngCore + CryptoRng),
        msg: &WhisperMessage<'_>,
    ) -> Result<Zeroizing<Vec<u8>>, SessionError> {
        let h = msg.header;
        let ad = self.associated_data(&msg.header_bytes);
        if let Some(i) = self.skipped.iter().position(|k| k.dh == h.dh && k.n == h.n) {
            let pt = self.skipped[i]
                .key
                .open(msg.ciphertext, &ad)
                .map_err(|_| SessionError::DecryptionFailed)?;
            // Used once, then deleted.
            self.skipped.remove(i);
            return Ok(pt);
        }
        let same_chain = self.dhr.is_some_and(|k| k.as_bytes() == &h.dh);
        let (commit, pt) = if same_chain {
            self.open_on_current_chain(msg, &ad)?
        } else {
            self.open_after_step(rng, msg, &ad)?
        };
        self.apply(commit);
        Ok(pt)
    }

    fn open_on_current_chain(
        &self,
        msg: &WhisperMessage<'_>,
        ad: &[u8],
    ) -> Result<(Commit, Zeroizing<Vec<u8>>), SessionError> {
        let h = msg.header;
        let ckr = self.ckr.as_ref().ok_or(SessionError::DecryptionFailed)?;
        if h.n < self.nr {
            return Err(SessionError::Replay { n: h.n });
        }
        check_skip(u64::from(h.n) - u64::from(self.nr))?;
        let mut new_skipped = Vec::new();
        let (ckr, mk) = skip_to(ckr.clone(), self.nr, h.n, h.dh, &mut new_skipped);
        let pt = mk
            .open(msg.ciphertext, ad)
            .map_err(|_| SessionError::DecryptionFailed)?;
        Ok((
            Commit {
                step: None,
                ckr,
                nr: next_n(h.n)?,
                new_skipped,
            },
            pt,
        ))
    }

    fn open_after_step(
        &self,
        rng: &mut (impl RngCore + CryptoRng),
        msg: &WhisperMessage<'_>,
        ad: &[u8],
    ) -> Result<(Commit, Zeroizing<Vec<u8>>), SessionError> {
        let h = msg.header;
        // Limits first, before deriving anything.
        if self.ckr.is_some() {
            check_skip(u64::from(h.pn).saturating_sub(u64::from(self.nr)))?;
        }
        check_skip(u64::from(h.n))?;
        let mut new_skipped = Vec::new();
        if let (Some(ckr), Some(dhr)) = (&self.ckr, &self.dhr) {
            if h.pn > self.nr {
                let _ = skip_to(ckr.clone(), self.nr, h.pn, dhr.to_bytes(), &mut new_skipped);
            }
        }
        let dhr = PublicKey::from(h.dh);
        let (root, ckr) = self.root.advance(&*ratchet_dh(&self.dhs, &dhr)?);
        let (ckr, mk) = skip_to(ckr, 0, h.n, h.dh, &mut new_skipped);
        let pt = mk
            .open(msg.ciphertext, ad)
            .map_err(|_| SessionError::DecryptionFailed)?;
        let dhs = DhSecret::generate(rng);
        let (root, cks) = root.advance(&*ratchet_dh(&dhs, &dhr)?);
        Ok((
            Commit {
                step: Some((root, dhr, dhs, cks)),
                ckr,
                nr: next_n(h.n)?,
                new_skipped,
            },
            pt,
        ))
    }

    fn apply(&mut self, c: Commit) {
        if let Some((root, dhr, dhs, cks)) = c.step {
            self.pn = self.ns;
            self.ns = 0;
            self.root = root;
            self.dhr = Some(dhr);
            self.dhs = dhs;
            self.cks = Some(cks);
        }
        self.ckr = Some(c.ckr);
        self.nr = c.nr;
        for k in c.new_skipped {
            if self.skipped.len() >= MAX_SKIPPED_KEYS {
                self.skipped.pop_front();
            }
            self.skipped.push_back(k);
        }
    }

    /// The versioned persistence body (the caller writes the version byte).
    pub(crate) fn write(&self, w: &mut Writer) {
        w.put(&self.ad)
            .put(self.root.bytes())
            .put(self.dhs.to_bytes().as_ref());
        write_opt(w, self.dhr.as_ref().map(|k| k.as_bytes()));
        write_opt(w, self.cks.as_ref().map(ChainKey::bytes));
        w.u32(self.ns);
        write_opt(w, self.ckr.as_ref().map(ChainKey::bytes));
        w.u32(self.nr).u32(self.pn).u32(self.skipped.len() as u32);
        for k in &self.skipped {
            w.put(&k.dh).u32(k.n).put(k.key.bytes());
        }
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let ad = r.array::<128>()?;
        let root = RootKey(r.secret::<32>()?);
        let dhs = DhSecret::from_bytes(&*r.secret::<32>()?);
        let dhr = read_opt(r)?.map(|b| PublicKey::from(*b));
        let cks = read_opt(r)?.map(|b| ChainKey::new(*b));
        let ns = r.u32()?;
        let ckr = read_opt(r)?.map(|b| ChainKey::new(*b));
        let nr = r.u32()?;
        let pn = r.u32()?;
        let count = r.count(MAX_SKIPPED_KEYS)?;
        let mut skipped = VecDeque::with_capacity(count);
        for _ in 0..count {
            let dh = r.array::<32>()?;
            let n = r.u32()?;
            skipped.push_back(SkippedKey {
                dh,
                n,
                key: MessageKey::from_bytes(*r.secret::<32>()?),
            });
        }
        Ok(Self {
            ad,
            root,
            dhs,
            dhr,
            cks,
            ns,
            ckr,
            nr,
            pn,
            skipped,
        })
    }

    /// `(Ns, Nr, PN)` and the number of stored skipped keys, for diagnostics and tests.
    pub(crate) fn counters(&self) -> (u32, u32, u32, usize) {
        (self.ns, self.nr, self.pn, self.skipped.len())
    }
}

/// `n + 1`; a header claiming the last number of the chain (never sent) is refused.
fn next_n(n: u32) -> Result<u32, SessionError> {
    n.checked_add(1).ok_or(SessionError::ChainExhausted)
}

fn check_skip(skip: u64) -> Result<(), SessionError> {
    if skip > u64::from(MAX_SKIP) {
        return Err(SessionError::TooManySkipped {
            skip,
            max: MAX_SKIP,
        });
    }
    Ok(())
}

/// Steps `ck` (at message `from`) up to message `to`, storing the skipped keys, and returns the
/// chain key after `to` and the key of message `to`.
fn skip_to(
    mut ck: ChainKey,
    from: u32,
    to: u32,
    dh: [u8; 32],
    skipped: &mut Vec<SkippedKey>,
) -> (ChainKey, MessageKey) {
    for n in from..to {
        let (next, key) = ck.step();
        skipped.push(SkippedKey { dh, n, key });
        ck = next;
    }
    ck.step()
}

fn write_opt(w: &mut Writer, v: Option<&[u8; 32]>) {
    w.bool(v.is_some()).put(v.unwrap_or(&[0u8; 32]));
}

fn read_opt(r: &mut Reader<'_>) -> Result<Option<Zeroizing<[u8; 32]>>, DecodeError> {
    let present = r.bool()?;
    let bytes = r.secret::<32>()?;
    Ok(present.then_some(bytes))
}
