//! Site secrets at rest: AES-256-GCM under a key derived from the platform's `secret_key`
//! (SHA-256 with a purpose label, so the signing key and the encryption key differ).

use aes_gcm::{
    Aes256Gcm, KeyInit, Nonce,
    aead::{Aead, Payload},
};
use anyhow::anyhow;
use rand::Rng;
use sha2::{Digest, Sha256};

#[derive(Clone)]
pub struct SecretBox {
    cipher: Aes256Gcm,
}

impl SecretBox {
    pub fn new(secret_key: &[u8]) -> Self {
        let key = Sha256::new()
            .chain_update(b"pressdock site secrets v1\0")
            .chain_update(secret_key)
            .finalize();
        Self {
            cipher: Aes256Gcm::new(&key),
        }
    }

    /// Encrypts `plaintext`, bound to `context` (the site and kind) so a ciphertext
    /// cannot be moved to another row.
    pub fn seal(&self, context: &str, plaintext: &str) -> anyhow::Result<([u8; 12], Vec<u8>)> {
        let mut nonce = [0u8; 12];
        rand::rng().fill(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| anyhow!("encrypting a site secret"))?;
        Ok((nonce, sealed))
    }

    pub fn open(&self, context: &str, nonce: &[u8], ciphertext: &[u8]) -> anyhow::Result<String> {
        if nonce.len() != 12 {
            return Err(anyhow!("stored nonce has the wrong length"));
        }
        let plain = self
            .cipher
            .decrypt(
                &Nonce::from(
                    <[u8; 12]>::try_from(nonce)
                        .map_err(|_| anyhow!("stored nonce has the wrong length"))?,
                ),
                Payload {
                    msg: ciphertext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| {
                anyhow!("a site secret does not decrypt: wrong secret_key or tampered row")
            })?;
        String::from_utf8(plain).map_err(|_| anyhow!("a site secret is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_bound_to_context() {
        let sb = SecretBox::new(b"0123456789abcdef0123456789abcdef");
        let (nonce, sealed) = sb.seal("site1/db", "hunter2").expect("seal");
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(
            sb.open("site1/db", &nonce, &sealed).expect("open"),
            "hunter2"
        );
        assert!(
            sb.open("site2/db", &nonce, &sealed).is_err(),
            "context bound"
        );
        assert!(
            SecretBox::new(b"another key another key another k")
                .open("site1/db", &nonce, &sealed)
                .is_err()
        );
    }
}
