//! SASL for the operator's Kafka admin client: PLAIN (RFC 4616) and SCRAM-SHA-256/512
//! (RFC 5802/7677, as Kafka's `ScramSaslServer` speaks it). Pure message building and checking;
//! the exchange itself runs in `kafka_wire` over `SaslHandshake` + `SaslAuthenticate`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use flightline_service::connect::SaslMechanism;
use ring::{digest, hmac, pbkdf2};

/// The first message a client sends for a mechanism, and what it must remember for the next.
pub enum Exchange {
    /// PLAIN: one message, the broker answers with nothing.
    Plain(Vec<u8>),
    /// SCRAM: client-first, then the proof once the server's salt and nonce are known.
    Scram(Scram),
}

impl Exchange {
    pub fn start(mechanism: SaslMechanism, username: &str, password: &str, nonce: &str) -> Self {
        match mechanism {
            SaslMechanism::Plain => Self::Plain(format!("\0{username}\0{password}").into_bytes()),
            SaslMechanism::ScramSha256 => Self::Scram(Scram::new(ScramHash::Sha256, username, password, nonce)),
            SaslMechanism::ScramSha512 => Self::Scram(Scram::new(ScramHash::Sha512, username, password, nonce)),
        }
    }
}

#[derive(Clone, Copy)]
pub enum ScramHash {
    Sha256,
    Sha512,
}

impl ScramHash {
    fn pbkdf2(self) -> pbkdf2::Algorithm {
        match self {
            Self::Sha256 => pbkdf2::PBKDF2_HMAC_SHA256,
            Self::Sha512 => pbkdf2::PBKDF2_HMAC_SHA512,
        }
    }
    fn hmac(self) -> hmac::Algorithm {
        match self {
            Self::Sha256 => hmac::HMAC_SHA256,
            Self::Sha512 => hmac::HMAC_SHA512,
        }
    }
    fn digest(self) -> &'static digest::Algorithm {
        match self {
            Self::Sha256 => &digest::SHA256,
            Self::Sha512 => &digest::SHA512,
        }
    }
    fn len(self) -> usize {
        self.digest().output_len()
    }
}

/// A SCRAM client between its first and final message.
pub struct Scram {
    hash: ScramHash,
    password: String,
    client_nonce: String,
    client_first_bare: String,
    server_signature: Option<Vec<u8>>,
}

/// Kafka's SCRAM iteration floor is 4096 and its ceiling 16384: anything else is not a Kafka broker
/// (or one misconfigured), and a huge count would stall the operator hashing.
const MIN_ITERATIONS: u32 = 4096;
const MAX_ITERATIONS: u32 = 1 << 16;

impl Scram {
    fn new(hash: ScramHash, username: &str, password: &str, nonce: &str) -> Self {
        // RFC 5802 §5.1: `=` and `,` in the name are escaped.
        let name = username.replace('=', "=3D").replace(',', "=2C");
        Self {
            hash,
            password: password.into(),
            client_nonce: nonce.into(),
            client_first_bare: format!("n={name},r={nonce}"),
            server_signature: None,
        }
    }

    /// `n,,n=<user>,r=<nonce>`: no channel binding, no authorization identity.
    pub fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.client_first_bare).into_bytes()
    }

    /// The proof for the server's first message, or why that message cannot be answered.
    pub fn client_final(&mut self, server_first: &[u8]) -> Result<Vec<u8>, String> {
        let server_first = std::str::from_utf8(server_first).map_err(|_| "server-first message is not UTF-8")?;
        if let Some(error) = attribute(server_first, 'e') {
            return Err(format!("the broker refused the SCRAM exchange: {error}"));
        }
        let nonce = attribute(server_first, 'r').ok_or("server-first message has no nonce")?;
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err("the server's nonce does not extend the client's".into());
        }
        let salt = BASE64
            .decode(attribute(server_first, 's').ok_or("server-first message has no salt")?)
            .map_err(|_| "the server's salt is not base64")?;
        let iterations: u32 = attribute(server_first, 'i')
            .and_then(|i| i.parse().ok())
            .ok_or("server-first message has no iteration count")?;
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
            return Err(format!("SCRAM iteration count {iterations} is outside {MIN_ITERATIONS}..={MAX_ITERATIONS}"));
        }

        let hash = self.hash;
        let mut salted = vec![0u8; hash.len()];
        let rounds = std::num::NonZeroU32::new(iterations).expect("at least MIN_ITERATIONS");
        pbkdf2::derive(hash.pbkdf2(), rounds, &salt, self.password.as_bytes(), &mut salted);
        let salted = hmac::Key::new(hash.hmac(), &salted);
        let client_key = hmac::sign(&salted, b"Client Key");
        let stored_key = digest::digest(hash.digest(), client_key.as_ref());
        let server_key = hmac::Key::new(hash.hmac(), hmac::sign(&salted, b"Server Key").as_ref());

        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let client_signature = hmac::sign(&hmac::Key::new(hash.hmac(), stored_key.as_ref()), auth_message.as_bytes());
        let proof: Vec<u8> =
            client_key.as_ref().iter().zip(client_signature.as_ref()).map(|(key, sig)| key ^ sig).collect();
        self.server_signature = Some(hmac::sign(&server_key, auth_message.as_bytes()).as_ref().to_vec());
        Ok(format!("{without_proof},p={}", BASE64.encode(proof)).into_bytes())
    }

    /// Checks the server's final message: the broker proves it knows the password too.
    pub fn verify_server_final(&self, server_final: &[u8]) -> Result<(), String> {
        let server_final = std::str::from_utf8(server_final).map_err(|_| "server-final message is not UTF-8")?;
        if let Some(error) = attribute(server_final, 'e') {
            return Err(format!("the broker refused the SCRAM proof: {error}"));
        }
        let signature = attribute(server_final, 'v').ok_or("server-final message has no verifier")?;
        let signature = BASE64.decode(signature).map_err(|_| "the server's verifier is not base64")?;
        // The server's signature is no secret (it proves the broker's side), so a plain comparison.
        match &self.server_signature {
            Some(expected) if *expected == signature => Ok(()),
            _ => Err("the broker's SCRAM signature is wrong: it does not know this user's credentials".into()),
        }
    }
}

fn attribute(message: &str, name: char) -> Option<&str> {
    message.split(',').find_map(|part| part.strip_prefix(name)?.strip_prefix('='))
}

/// A fresh client nonce: 24 random bytes, base64 (printable and without `,`).
pub fn nonce() -> String {
    BASE64.encode(rand::random::<[u8; 24]>())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 §3: the SCRAM-SHA-256 example exchange, byte for byte.
    #[test]
    fn scram_sha256_matches_rfc_7677() {
        let Exchange::Scram(mut scram) =
            Exchange::start(SaslMechanism::ScramSha256, "user", "pencil", "rOprNGfwEbeRWgbNEkqO")
        else {
            panic!("SCRAM expected")
        };
        assert_eq!(scram.client_first(), b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server_first = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let client_final = scram.client_final(server_first).unwrap();
        assert_eq!(
            String::from_utf8(client_final).unwrap(),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        scram.verify_server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=").unwrap();
        let forged = scram.verify_server_final(b"v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=").unwrap_err();
        assert!(forged.contains("signature is wrong"), "{forged}");
    }

    #[test]
    fn plain_is_one_message_and_names_are_escaped_for_scram() {
        let Exchange::Plain(message) = Exchange::start(SaslMechanism::Plain, "u", "p", "n") else { panic!() };
        assert_eq!(message, b"\0u\0p");
        let Exchange::Scram(scram) = Exchange::start(SaslMechanism::ScramSha512, "a=b,c", "p", "xyz") else { panic!() };
        assert_eq!(scram.client_first(), b"n,,n=a=3Db=2Cc,r=xyz");
    }

    #[test]
    fn server_messages_that_cannot_be_answered_are_refused_with_why() {
        let scram = || match Exchange::start(SaslMechanism::ScramSha512, "u", "p", "abc") {
            Exchange::Scram(s) => s,
            Exchange::Plain(_) => unreachable!(),
        };
        for (server_first, why) in [
            (&b"e=unknown-user"[..], "refused the SCRAM exchange: unknown-user"),
            (b"r=zzz,s=AAAA,i=4096", "does not extend"),
            (b"r=abc,s=AAAA,i=4096", "does not extend"),
            (b"r=abcd,s=!!,i=4096", "not base64"),
            (b"r=abcd,s=AAAA,i=10", "iteration count 10"),
            (b"r=abcd,s=AAAA,i=999999999", "iteration count 999999999"),
            (b"r=abcd,s=AAAA", "no iteration count"),
        ] {
            let error = scram().client_final(server_first).unwrap_err();
            assert!(error.contains(why), "{error} should say {why}");
        }
        // No final message may pass before a proof was sent.
        assert!(scram().verify_server_final(b"v=AAAA").is_err());
    }

    #[test]
    fn nonces_are_fresh_and_printable() {
        let (a, b) = (nonce(), nonce());
        assert_ne!(a, b);
        assert!(a.len() == 32 && !a.contains(','));
    }
}
