//! Key pairs and serial numbers for issued certificates.

use std::process::{Command, Stdio};

use rcgen::{KeyPair, SerialNumber};
use ring::rand::{SecureRandom as _, SystemRandom};

use super::{CertsError, KeyType};

/// A new key pair of `key_type`.
pub(super) fn generate(key_type: KeyType) -> Result<KeyPair, CertsError> {
    match key_type {
        KeyType::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|source| CertsError::KeyGeneration { key_type, source }),
        KeyType::Rsa2048 => {
            let pem = openssl_rsa_2048()?;
            KeyPair::from_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256)
                .map_err(|source| CertsError::KeyGeneration { key_type, source })
        }
    }
}

/// An RSA-2048 PKCS#8 key from `openssl genpkey`: ring can sign with RSA keys but not make
/// them, and the alternatives (aws-lc-rs, the `rsa` crate) are heavy new dependencies for a
/// key type the demo does not need.
fn openssl_rsa_2048() -> Result<String, CertsError> {
    let output = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-outform",
            "PEM",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|source| CertsError::OpensslMissing { source })?;
    if !output.status.success() {
        return Err(CertsError::OpensslFailed {
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    String::from_utf8(output.stdout).map_err(|_| CertsError::OpensslFailed {
        status: output.status,
        stderr: "it printed a key that is not text".to_owned(),
    })
}

/// A random positive 16-byte serial, so two runs never issue the same issuer+serial pair
/// (rcgen's default derives it from the public key).
pub(super) fn random_serial() -> Result<SerialNumber, CertsError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CertsError::Random)?;
    // Top bit clear keeps it positive; the next one set keeps it exactly 16 bytes long.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}
