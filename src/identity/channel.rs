//! The private channel's keys and sealed boxes (pure: no files, no clock).
//!
//! A sealed box is libsodium's `crypto_box_seal`: an ephemeral X25519 key pair, the nonce
//! `blake2b(ephemeral_pk || recipient_pk)`, XSalsa20-Poly1305. The wire format is
//! `ephemeral_pk (32) || ciphertext || tag (16)`, so any libsodium binding can seal to a worker or
//! open what a worker sealed. The sender is anonymous: a sealed box proves nothing about who
//! wrote it, only that the holder of the recipient's key can read it.

use crypto_box::aead::OsRng;
use crypto_box::{PublicKey, SecretKey};
use curve25519_dalek::montgomery::MontgomeryPoint;
use curve25519_dalek::scalar::Scalar;
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

/// The largest plaintext [`seal`] accepts and [`open`](super::Identity::open) returns: the
/// channel carries small messages (connection details, tokens), never work payloads.
pub const MAX_PLAINTEXT_LEN: usize = 64 * 1024;

/// What sealing adds to a plaintext: the ephemeral public key and the Poly1305 tag.
pub const SEAL_OVERHEAD: usize = crypto_box::SEALBYTES;

/// Domain separation for the channel key: changing it changes every worker's registered key,
/// so it is versioned and never edited in place.
const CHANNEL_KEY_INFO: &[u8] = b"zeppelin/identity/channel-key/x25519/v1";
/// HKDF salt: fixed and public, it only separates this use of the key from any other HKDF use.
const CHANNEL_KEY_SALT: &[u8] = b"zeppelin identity";

/// Why sealing or opening failed. Deliberately vague about the cryptography: a failed open is
/// "this was not sealed to us, or it was changed", nothing more precise.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChannelError {
    /// The plaintext is over [`MAX_PLAINTEXT_LEN`].
    #[error("plaintext of {len} bytes is over the {max}-byte limit of the private channel")]
    PlaintextTooLong {
        /// The plaintext's length.
        len: usize,
        /// [`MAX_PLAINTEXT_LEN`].
        max: usize,
    },
    /// The recipient's key is of small order: anyone could read what is sealed to it.
    #[error("recipient encryption key is not a usable X25519 public key (small order)")]
    WeakRecipientKey,
    /// The ciphertext cannot be a sealed box of an allowed plaintext.
    #[error("sealed box of {len} bytes is outside {min}..={max} bytes")]
    BadLength {
        /// The ciphertext's length.
        len: usize,
        /// [`SEAL_OVERHEAD`]: the length of a sealed empty plaintext.
        min: usize,
        /// [`MAX_PLAINTEXT_LEN`] + [`SEAL_OVERHEAD`].
        max: usize,
    },
    /// Authentication failed: not sealed to this key, or changed on the way.
    #[error("sealed box does not open with this worker's key (sealed to another key, or tampered with)")]
    Open,
    /// The system random number generator failed.
    #[error("sealing failed: no randomness from the operating system")]
    Seal,
}

/// The worker's X25519 key pair for the private channel.
///
/// Derived from the Ethereum secret key (see the module docs of [`super`] for why). The secret
/// never leaves this type: there is no accessor, `Debug` shows the public key only.
#[derive(Clone)]
pub(crate) struct ChannelKey {
    secret: SecretKey,
    public: [u8; 32],
}

impl ChannelKey {
    /// Derives the channel key from a secp256k1 secret key with HKDF-SHA256.
    pub(crate) fn derive(eth_secret: &[u8; 32]) -> Self {
        let hkdf = Hkdf::<Sha256>::new(Some(CHANNEL_KEY_SALT), eth_secret);
        let mut okm = Zeroizing::new([0u8; 32]);
        hkdf.expand(CHANNEL_KEY_INFO, okm.as_mut()).expect("32 bytes is a valid HKDF-SHA256 output length");
        let secret = SecretKey::from_bytes(*okm);
        let public = secret.public_key().to_bytes();
        Self { secret, public }
    }

    pub(crate) fn public_key(&self) -> [u8; 32] {
        self.public
    }

    pub(crate) fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, ChannelError> {
        let (min, max) = (SEAL_OVERHEAD, MAX_PLAINTEXT_LEN + SEAL_OVERHEAD);
        if !(min..=max).contains(&sealed.len()) {
            return Err(ChannelError::BadLength { len: sealed.len(), min, max });
        }
        self.secret.unseal(sealed).map_err(|_| ChannelError::Open)
    }
}

impl std::fmt::Debug for ChannelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelKey").field("public", &Hex(&self.public)).finish_non_exhaustive()
    }
}

/// Seals `plaintext` to the holder of `recipient` (a worker's registered `encryptionKey`):
/// a libsodium-compatible anonymous sealed box, [`SEAL_OVERHEAD`] bytes longer than the
/// plaintext.
pub fn seal(recipient: &[u8; 32], plaintext: &[u8]) -> Result<Vec<u8>, ChannelError> {
    if plaintext.len() > MAX_PLAINTEXT_LEN {
        return Err(ChannelError::PlaintextTooLong { len: plaintext.len(), max: MAX_PLAINTEXT_LEN });
    }
    if is_small_order(recipient) {
        return Err(ChannelError::WeakRecipientKey);
    }
    PublicKey::from_bytes(*recipient).seal(&mut OsRng, plaintext).map_err(|_| ChannelError::Seal)
}

/// True when `8 * P` is the identity, i.e. `P` lies in the small subgroup (or on the twist's
/// small subgroup): a Diffie-Hellman with it gives a shared secret anyone can guess. libsodium
/// refuses these keys too (its `crypto_scalarmult` fails on an all-zero result).
fn is_small_order(key: &[u8; 32]) -> bool {
    let eight = Scalar::from(8u8);
    MontgomeryPoint(*key) * eight == MontgomeryPoint([0; 32])
}

/// Lowercase hex with a `0x` prefix, for `Debug` of public values.
pub(crate) struct Hex<'a>(pub(crate) &'a [u8]);

impl std::fmt::Debug for Hex<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("0x")?;
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> ChannelKey {
        ChannelKey::derive(&[byte; 32])
    }

    #[test]
    fn derivation_is_deterministic_and_separates_inputs() {
        assert_eq!(key(1).public_key(), key(1).public_key());
        assert_ne!(key(1).public_key(), key(2).public_key());
        // The derived secret is not the Ethereum secret reused as an X25519 scalar.
        let reused = SecretKey::from_bytes([1; 32]).public_key().to_bytes();
        assert_ne!(key(1).public_key(), reused);
    }

    /// Pins the derivation: a worker's registered `encryptionKey` must survive upgrades. If this
    /// fails, the derivation changed and every registered worker would lose its channel. The
    /// expected value was computed independently (Python: RFC 5869 HKDF with `hmac`/`hashlib`,
    /// X25519 from `cryptography`).
    #[test]
    fn derivation_known_answer() {
        let secret: [u8; 32] = std::array::from_fn(|i| i as u8 + 1);
        assert_eq!(
            format!("{:?}", Hex(&ChannelKey::derive(&secret).public_key())),
            "0x7f0369e42cd4723dfd15540210358150acd62108746adf7e28f71a0decb7ff4c"
        );
    }

    #[test]
    fn seal_then_open_round_trips_and_only_for_the_recipient() {
        let (alice, bob) = (key(1), key(2));
        let sealed = seal(&alice.public_key(), b"hello worker").unwrap();
        assert_eq!(sealed.len(), b"hello worker".len() + SEAL_OVERHEAD);
        assert_eq!(alice.open(&sealed).unwrap(), b"hello worker");
        assert_eq!(bob.open(&sealed), Err(ChannelError::Open));
    }

    #[test]
    fn sealing_is_randomised() {
        let alice = key(1);
        assert_ne!(seal(&alice.public_key(), b"x").unwrap(), seal(&alice.public_key(), b"x").unwrap());
    }

    #[test]
    fn empty_and_maximal_plaintexts_round_trip() {
        let alice = key(1);
        for len in [0, MAX_PLAINTEXT_LEN] {
            let plaintext = vec![7u8; len];
            let sealed = seal(&alice.public_key(), &plaintext).unwrap();
            assert_eq!(alice.open(&sealed).unwrap(), plaintext);
        }
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let alice = key(1);
        let sealed = seal(&alice.public_key(), b"pay me").unwrap();
        for i in 0..sealed.len() * 8 {
            let mut tampered = sealed.clone();
            tampered[i / 8] ^= 1 << (i % 8);
            assert_eq!(alice.open(&tampered), Err(ChannelError::Open), "bit {i}");
        }
    }

    #[test]
    fn lengths_are_bounded() {
        let alice = key(1);
        assert_eq!(
            seal(&alice.public_key(), &vec![0; MAX_PLAINTEXT_LEN + 1]),
            Err(ChannelError::PlaintextTooLong { len: MAX_PLAINTEXT_LEN + 1, max: MAX_PLAINTEXT_LEN })
        );
        for len in [0, SEAL_OVERHEAD - 1, MAX_PLAINTEXT_LEN + SEAL_OVERHEAD + 1] {
            assert!(matches!(alice.open(&vec![0; len]), Err(ChannelError::BadLength { .. })));
        }
    }

    #[test]
    fn small_order_recipient_keys_are_refused() {
        let mut one = [0u8; 32];
        one[0] = 1;
        // The order-8 point from the libsodium blacklist.
        let order8 = [
            0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4, 0x6a,
            0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49, 0xb8, 0x00,
        ];
        for weak in [[0u8; 32], one, order8] {
            assert_eq!(seal(&weak, b"x"), Err(ChannelError::WeakRecipientKey));
        }
        assert!(!is_small_order(&key(1).public_key()));
    }

    /// Interoperability with libsodium's `crypto_box_seal`: the nonce is
    /// `blake2b-192(ephemeral_pk || recipient_pk)` and the box is XSalsa20-Poly1305, so a box
    /// built by hand from those primitives must open.
    #[test]
    fn opens_a_box_built_the_libsodium_way() {
        use crypto_box::aead::Aead;
        use crypto_box::{SalsaBox, SecretKey};

        let alice = key(1);
        let ephemeral = SecretKey::from_bytes([9; 32]);
        let ephemeral_pk = ephemeral.public_key();
        let recipient = PublicKey::from_bytes(alice.public_key());
        let nonce = {
            use blake2::digest::{Update, VariableOutput};
            let mut hasher = blake2::Blake2bVar::new(24).unwrap();
            hasher.update(ephemeral_pk.as_bytes());
            hasher.update(recipient.as_bytes());
            let mut nonce = [0u8; 24];
            hasher.finalize_variable(&mut nonce).unwrap();
            nonce
        };
        let body = SalsaBox::new(&recipient, &ephemeral).encrypt(&nonce.into(), &b"interop"[..]).unwrap();
        let sealed = [ephemeral_pk.as_bytes().as_slice(), &body].concat();
        assert_eq!(alice.open(&sealed).unwrap(), b"interop");
    }
}
