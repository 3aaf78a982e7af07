//! X3DH key agreement (PROTOCOL.md, "X3DH"): the shared secret `SK` and associated data `AD`
//! of a new session between an initiator device A and a responder device B.

use x25519_dalek::PublicKey;
use zeroize::Zeroizing;

use crate::{
    consts::LABEL_X3DH,
    error::SessionError,
    identity::{DeviceIdentity, DeviceIdentityPublic},
    keys::DhSecret,
    primitives::{dh, hkdf},
};

/// `SK` and `AD` of a new session.
pub(crate) struct X3dhSecret {
    pub(crate) sk: Zeroizing<[u8; 32]>,
    pub(crate) ad: [u8; 128],
}

fn dh_checked(
    secret: &DhSecret,
    public: &PublicKey,
    what: &'static str,
) -> Result<Zeroizing<[u8; 32]>, SessionError> {
    dh(secret.inner(), public).map_err(|_| SessionError::LowOrderPoint(what))
}

fn derive(dhs: &[&[u8; 32]], a: &DeviceIdentityPublic, b: &DeviceIdentityPublic) -> X3dhSecret {
    let mut ikm = Zeroizing::new(Vec::with_capacity(32 * 5));
    ikm.extend_from_slice(&[0xFF; 32]);
    for d in dhs {
        ikm.extend_from_slice(d.as_slice());
    }
    let sk = hkdf::<32>(&[0u8; 32], &ikm, LABEL_X3DH);
    let mut ad = [0u8; 128];
    ad[..64].copy_from_slice(&a.to_bytes());
    ad[64..].copy_from_slice(&b.to_bytes());
    X3dhSecret { sk, ad }
}

/// The initiator's side: `DH1 = DH(IKd_A, SPK_B)`, `DH2 = DH(EK_A, IKd_B)`,
/// `DH3 = DH(EK_A, SPK_B)`, `DH4 = DH(EK_A, OPK_B)` when a one-time prekey was handed out.
/// The caller has verified B's certificate and prekey signature.
pub(crate) fn initiate(
    own: &DeviceIdentity,
    ephemeral: &DhSecret,
    peer: &DeviceIdentityPublic,
    signed_prekey: &PublicKey,
    one_time_prekey: Option<&PublicKey>,
) -> Result<X3dhSecret, SessionError> {
    let dh1 = dh_checked(&own.dh, signed_prekey, "signed prekey")?;
    let dh2 = dh_checked(ephemeral, &peer.dh, "identity key")?;
    let dh3 = dh_checked(ephemeral, signed_prekey, "signed prekey")?;
    let dh4 = one_time_prekey
        .map(|k| dh_checked(ephemeral, k, "one-time prekey"))
        .transpose()?;
    let mut parts = vec![&*dh1, &*dh2, &*dh3];
    if let Some(d) = &dh4 {
        parts.push(d);
    }
    Ok(derive(&parts, &own.public(), peer))
}

/// The responder's side, mirroring [`initiate`] with B's private keys and A's public keys.
pub(crate) fn respond(
    own: &DeviceIdentity,
    signed_prekey: &DhSecret,
    one_time_prekey: Option<&DhSecret>,
    peer: &DeviceIdentityPublic,
    ephemeral: &PublicKey,
) -> Result<X3dhSecret, SessionError> {
    let dh1 = dh_checked(signed_prekey, &peer.dh, "identity key")?;
    let dh2 = dh_checked(&own.dh, ephemeral, "ephemeral key")?;
    let dh3 = dh_checked(signed_prekey, ephemeral, "ephemeral key")?;
    let dh4 = one_time_prekey
        .map(|k| dh_checked(k, ephemeral, "ephemeral key"))
        .transpose()?;
    let mut parts = vec![&*dh1, &*dh2, &*dh3];
    if let Some(d) = &dh4 {
        parts.push(d);
    }
    Ok(derive(&parts, peer, &own.public()))
}
