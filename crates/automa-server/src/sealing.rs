//! Encryption of secret values at rest and their masking in output. Values are sealed with AES-256-GCM under a
//! key derived from the server's secret key, with the secret's name as associated data so that a ciphertext
//! copied onto another secret's row does not decrypt.

use aes_gcm::{Aes256Gcm, KeyInit, Nonce, aead::Aead, aead::Payload};
use sha2::{Digest, Sha256};

use automa_store::SealedSecret;

/// Separates this key from every other use of the server key (session signing).
const KEY_LABEL: &[u8] = b"automa secret encryption v1\0";
/// What a secret's value is replaced with in logs.
pub const MASK: &str = "***";

pub struct Sealer {
    cipher: Aes256Gcm,
}

#[derive(Debug, thiserror::Error)]
#[error("secret '{0}' cannot be decrypted: the server key changed or the row was tampered with")]
pub struct UnsealError(pub String);

impl Sealer {
    pub fn new(server_key: &[u8]) -> Sealer {
        let key = Sha256::new().chain_update(KEY_LABEL).chain_update(server_key).finalize();
        Sealer { cipher: Aes256Gcm::new_from_slice(&key).expect("SHA-256 gives a 256-bit key") }
    }

    pub fn seal(&self, name: &str, value: &str) -> SealedSecret {
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).expect("the operating system's random source is available");
        let payload = Payload { msg: value.as_bytes(), aad: name.as_bytes() };
        let ciphertext =
            self.cipher.encrypt(&Nonce::from(nonce), payload).expect("AES-GCM encrypts any message in memory");
        SealedSecret { name: name.to_owned(), ciphertext, nonce: nonce.to_vec() }
    }

    pub fn unseal(&self, sealed: &SealedSecret) -> Result<String, UnsealError> {
        let fail = || UnsealError(sealed.name.clone());
        let nonce: [u8; 12] = sealed.nonce.as_slice().try_into().map_err(|_| fail())?;
        let payload = Payload { msg: &sealed.ciphertext, aad: sealed.name.as_bytes() };
        let plain = self.cipher.decrypt(&Nonce::from(nonce), payload).map_err(|_| fail())?;
        String::from_utf8(plain).map_err(|_| fail())
    }
}

/// Replaces every occurrence of each value in `text`, longest first so that a value containing another is
/// masked whole. Chunks reach the server line by line, so a value printed on one line is always masked; the
/// residual risk is a value split across a chunk boundary (lines over 64 KiB) or printed transformed
/// (encoded, reversed, one character per line), which no output filter can catch.
pub fn mask(text: &str, values: &[String]) -> String {
    let mut masked = text.to_owned();
    for value in values.iter().filter(|value| !value.is_empty()) {
        if masked.contains(value.as_str()) {
            masked = masked.replace(value.as_str(), MASK);
        }
    }
    masked
}

/// Sorts values for [`mask`]: longest first.
pub fn mask_order(mut values: Vec<String>) -> Vec<String> {
    values.sort_by_key(|value| std::cmp::Reverse(value.len()));
    values.dedup();
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_round_trip_and_are_bound_to_their_name() {
        let sealer = Sealer::new(b"a server key of some length.....");
        let sealed = sealer.seal("API_KEY", "hunter2");
        assert!(!sealed.ciphertext.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(sealer.unseal(&sealed).unwrap(), "hunter2");
        let moved = SealedSecret { name: "OTHER".into(), ..sealed.clone() };
        assert!(sealer.unseal(&moved).is_err());
        assert!(Sealer::new(b"another key").unseal(&sealed).is_err());
    }

    #[test]
    fn masking_prefers_the_longest_value() {
        let values = mask_order(vec!["abc".into(), "abcdef".into(), String::new()]);
        assert_eq!(mask("x abcdef y abc\n", &values), "x *** y ***\n");
    }
}
