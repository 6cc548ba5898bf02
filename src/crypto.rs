//! Encryption at rest with age (the `age` crate, the reference Rust
//! implementation): dumps and globals files are encrypted as they stream to
//! the store (`.dump.zst.age`, `.globals.sql.age`) to recipients' public keys;
//! the host that makes backups needs no secret key. Files stay standard age
//! files: `age -d -i key.txt FILE.dump.zst.age | zstd -d | pg_restore ...`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use anyhow::{anyhow, Context, Result};

use crate::error::usage;

/// The recipients new backups are encrypted to, as configured and parsed.
#[derive(Clone)]
pub struct Recipients {
    /// The public keys as written (`age1...`, `ssh-ed25519 AAAA...`), for the manifest.
    pub keys: Vec<String>,
    parsed: Arc<Vec<Box<dyn age::Recipient + Send + Sync>>>,
}

impl std::fmt::Debug for Recipients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.keys).finish()
    }
}

impl Recipients {
    /// Parses public keys: `age1...` (X25519), `ssh-ed25519 ...`, `ssh-rsa ...`.
    /// `from` names where they came from, for the error.
    pub fn parse(keys: &[String], from: &str) -> Result<Recipients> {
        let mut parsed: Vec<Box<dyn age::Recipient + Send + Sync>> = Vec::new();
        let mut kept = Vec::new();
        for key in keys.iter().map(|k| k.trim()).filter(|k| !k.is_empty()) {
            if let Ok(r) = key.parse::<age::x25519::Recipient>() {
                parsed.push(Box::new(r));
            } else if let Ok(r) = key.parse::<age::ssh::Recipient>() {
                parsed.push(Box::new(r));
            } else {
                return Err(usage(format!(
                    "{from}: {:?} is not an age public key (age1...) nor an ssh-ed25519 or ssh-rsa \
                     public key; `age-keygen -y key.txt` prints the public key of an age identity",
                    shorten(key)
                )));
            }
            kept.push(key.to_string());
        }
        if kept.is_empty() {
            return Err(usage(format!(
                "{from} names no recipient; give at least one public key or unset it"
            )));
        }
        Ok(Recipients {
            keys: kept,
            parsed: Arc::new(parsed),
        })
    }

    /// The keys of a recipients file: one per line, `#` comments and blank lines aside.
    pub fn read_file(path: &Path) -> Result<Vec<String>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            usage(format!(
                "cannot read the recipients file {} (BACKUP_AGE_RECIPIENTS_FILE): {e}",
                path.display()
            ))
        })?;
        Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect())
    }

    /// Wraps `out`: what is written to the result is encrypted to every
    /// recipient. `finish` it to write the last chunk.
    pub fn encrypt<W: Write>(&self, out: W) -> Result<age::stream::StreamWriter<W>> {
        let encryptor = age::Encryptor::with_recipients(
            self.parsed
                .iter()
                .map(|r| r.as_ref() as &dyn age::Recipient),
        )
        .map_err(|e| anyhow!("cannot encrypt to the configured recipients: {e}"))?;
        encryptor.wrap_output(out).context("writing the age header")
    }

    /// `bytes` encrypted (the globals file: small, encrypted in memory).
    pub fn encrypt_bytes(&self, bytes: &[u8]) -> Result<Vec<u8>> {
        let mut w = self.encrypt(Vec::with_capacity(bytes.len() + 256))?;
        w.write_all(bytes)?;
        Ok(w.finish()?)
    }
}

fn shorten(s: &str) -> String {
    if s.chars().count() > 24 {
        format!("{}...", s.chars().take(20).collect::<String>())
    } else {
        s.to_string()
    }
}

/// The identities (secret keys) that decrypt backups, from BACKUP_AGE_IDENTITY
/// or `--identity`.
pub struct Identities {
    pub path: PathBuf,
    keys: Vec<Box<dyn age::Identity + Send + Sync>>,
}

impl Identities {
    /// Reads an identity file: age identities (`AGE-SECRET-KEY-1...`, one per
    /// line, as `age-keygen` writes), or an unencrypted OpenSSH private key.
    pub fn load(path: &Path) -> Result<Identities> {
        let bad = |why: String| {
            usage(format!(
                "cannot use the identity file {} (BACKUP_AGE_IDENTITY / --identity): {why}",
                path.display()
            ))
        };
        let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let keys: Vec<Box<dyn age::Identity + Send + Sync>> = match age::IdentityFile::from_buffer(
            BufReader::new(&bytes[..]),
        )
        .and_then(|f| f.into_identities().map_err(io::Error::other))
        {
            Ok(keys) if !keys.is_empty() => keys,
            age_error => {
                match age::ssh::Identity::from_buffer(
                        BufReader::new(&bytes[..]),
                        Some(path.display().to_string()),
                    ) {
                        Ok(age::ssh::Identity::Unencrypted(k)) => {
                            vec![Box::new(age::ssh::Identity::Unencrypted(k))]
                        }
                        Ok(age::ssh::Identity::Encrypted(_)) => {
                            return Err(bad(
                                "the SSH key is protected by a passphrase, which an unattended \
                                 restore cannot type; use an age identity (age-keygen) or an \
                                 unencrypted copy of the key"
                                    .into(),
                            ))
                        }
                        _ => {
                            return Err(bad(match age_error {
                                Ok(_) => "it holds no identity".into(),
                                Err(e) => format!(
                                    "{e} (expected age identities, AGE-SECRET-KEY-1..., or an SSH private key)"
                                ),
                            }))
                        }
                    }
            }
        };
        Ok(Identities {
            path: path.to_path_buf(),
            keys,
        })
    }

    /// A reader of the plaintext of the age file `input`. Errors name what is
    /// wrong: not an age file, no identity matches, a damaged header.
    pub fn decrypt<'a, R: Read + 'a>(&self, input: R) -> Result<Box<dyn Read + 'a>> {
        let decryptor = age::Decryptor::new(input).map_err(|e| header_error(&e))?;
        let reader = decryptor
            .decrypt(self.keys.iter().map(|k| k.as_ref() as &dyn age::Identity))
            .map_err(|e| match e {
                age::DecryptError::NoMatchingKeys => anyhow::Error::new(OtherKeys {
                    identity: self.path.clone(),
                }),
                e => header_error(&e),
            })?;
        Ok(Box::new(Plaintext(reader)))
    }

    /// `bytes` (a whole age file) decrypted.
    pub fn decrypt_bytes(&self, bytes: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.decrypt(bytes)?
            .read_to_end(&mut out)
            .map_err(stream_error)?;
        Ok(out)
    }
}

/// A file sealed to other recipients than the identities given: it says
/// nothing of the file (mid key rotation, the identity holds the new key).
#[derive(Debug)]
pub struct OtherKeys {
    pub identity: PathBuf,
}

impl std::fmt::Display for OtherKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "none of the identities in {} can decrypt it (it was encrypted to other recipients: its \
             manifest lists them; give the identity of one of them)",
            self.identity.display()
        )
    }
}

impl std::error::Error for OtherKeys {}

/// Turns the age stream's errors into what they mean for a backup.
struct Plaintext<R>(R);

impl<R: Read> Read for Plaintext<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("the encrypted stream is damaged or truncated (age: {e})"),
            )
        })
    }
}

fn stream_error(e: io::Error) -> anyhow::Error {
    anyhow!("{e}")
}

fn header_error(e: &age::DecryptError) -> anyhow::Error {
    anyhow!("not a readable age file: {e}")
}

/// Whether `input` starts with a well-formed age header (read without any
/// key: its structure; the header's MAC needs the file key). For
/// `verify --quick` without an identity.
pub fn check_header<R: BufRead>(input: R) -> Result<()> {
    age::Decryptor::new_buffered(input)
        .map(|_| ())
        .map_err(|e| header_error(&e))
}

/// The text of a saved globals file, decrypted when it is sealed.
pub fn read_globals(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read the saved globals {}", path.display()))?;
    let bytes = if is_age(path) {
        need_identities(&path.display().to_string())?
            .decrypt_bytes(&bytes)
            .with_context(|| format!("cannot decrypt the saved globals {}", path.display()))?
    } else {
        bytes
    };
    String::from_utf8(bytes)
        .map_err(|_| anyhow!("the saved globals {} are not text", path.display()))
}

/// Whether a stored file is age-encrypted, by its name.
pub fn is_age(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "age")
}

static IDENTITIES: OnceLock<Option<Identities>> = OnceLock::new();

/// Loads the configured identity file once for this process (None: none configured).
pub fn init(path: Option<&Path>) -> Result<()> {
    if IDENTITIES.get().is_some() {
        return Ok(());
    }
    let loaded = path.map(Identities::load).transpose()?;
    let _ = IDENTITIES.set(loaded);
    Ok(())
}

/// The identities of this process, when configured (see [`init`]).
pub fn identities() -> Option<&'static Identities> {
    IDENTITIES.get().and_then(Option::as_ref)
}

/// The identities, or the usage error (exit 2) saying which setting to give
/// to read `what`.
pub fn need_identities(what: &str) -> Result<&'static Identities> {
    identities().ok_or_else(|| {
        usage(format!(
            "{what} is encrypted with age: give the identity (secret key) file that decrypts it \
             with BACKUP_AGE_IDENTITY=FILE or --identity FILE; nothing was touched"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use age::secrecy::ExposeSecret;

    #[test]
    fn round_trips_and_refuses_the_wrong_key() {
        let id = age::x25519::Identity::generate();
        let other = age::x25519::Identity::generate();
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.txt");
        std::fs::write(
            &key,
            format!("# a comment\n{}\n", id.to_string().expose_secret()),
        )
        .unwrap();
        let wrong = dir.path().join("wrong.txt");
        std::fs::write(&wrong, other.to_string().expose_secret()).unwrap();

        let r = Recipients::parse(&[id.to_public().to_string()], "test").unwrap();
        let sealed = r.encrypt_bytes(b"secret data").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        check_header(&sealed[..]).unwrap();

        let ids = Identities::load(&key).unwrap();
        assert_eq!(ids.decrypt_bytes(&sealed).unwrap(), b"secret data");
        let e = Identities::load(&wrong)
            .unwrap()
            .decrypt_bytes(&sealed)
            .unwrap_err();
        assert!(e.to_string().contains("none of the identities"), "{e}");

        // Tampered with: one flipped byte in the payload.
        let mut bad = sealed.clone();
        let last = bad.len() - 3;
        bad[last] ^= 1;
        let e = ids.decrypt_bytes(&bad).unwrap_err();
        assert!(e.to_string().contains("damaged or truncated"), "{e}");
        // Truncated.
        let e = ids.decrypt_bytes(&sealed[..sealed.len() - 5]).unwrap_err();
        assert!(e.to_string().contains("damaged or truncated"), "{e}");
        // Not age at all.
        assert!(check_header(&b"PGDMP"[..]).is_err());
    }

    /// An SSH key pair made for this test only (ssh-keygen -t ed25519 -N "").
    const SSH_PRIVATE: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACAwRDB/bkQg/5mp5X43QkYryT2pOpNkJgPQzdIrCq4UHAAAAJB9cpgJfXKY
CQAAAAtzc2gtZWQyNTUxOQAAACAwRDB/bkQg/5mp5X43QkYryT2pOpNkJgPQzdIrCq4UHA
AAAEBhaXjRiAHsTuj/abTbSpirjymrIlxFqdkDc7ZSseY25DBEMH9uRCD/manlfjdCRivJ
Pak6k2QmA9DN0isKrhQcAAAADGtiYWNrdXAtdGVzdAE=
-----END OPENSSH PRIVATE KEY-----
";
    const SSH_PUBLIC: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDBEMH9uRCD/manlfjdCRivJPak6k2QmA9DN0isKrhQc kbackup-test";

    #[test]
    fn ssh_keys_seal_and_open() {
        let age_id = age::x25519::Identity::generate();
        // Two recipients of two kinds: either identity opens the file.
        let r = Recipients::parse(
            &[SSH_PUBLIC.into(), age_id.to_public().to_string()],
            "BACKUP_AGE_RECIPIENTS",
        )
        .unwrap();
        assert_eq!(r.keys.len(), 2);
        let sealed = r.encrypt_bytes(b"both").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ssh = dir.path().join("id_ed25519");
        std::fs::write(&ssh, SSH_PRIVATE).unwrap();
        assert_eq!(
            Identities::load(&ssh)
                .unwrap()
                .decrypt_bytes(&sealed)
                .unwrap(),
            b"both"
        );
        let native = dir.path().join("key.txt");
        std::fs::write(&native, age_id.to_string().expose_secret()).unwrap();
        assert_eq!(
            Identities::load(&native)
                .unwrap()
                .decrypt_bytes(&sealed)
                .unwrap(),
            b"both"
        );
    }

    #[test]
    fn bad_keys_are_named_without_their_whole_text() {
        let e = Recipients::parse(&["age1notakey".into()], "BACKUP_AGE_RECIPIENTS").unwrap_err();
        assert!(e.to_string().contains("BACKUP_AGE_RECIPIENTS"), "{e}");
        assert!(Recipients::parse(&[" ".into()], "X").is_err());
        let secret = "AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ";
        let e = Recipients::parse(&[secret.into()], "X").unwrap_err();
        assert!(!e.to_string().contains(secret), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k");
        std::fs::write(&f, "not a key\n").unwrap();
        let e = Identities::load(&f).err().unwrap();
        assert!(e.to_string().contains("BACKUP_AGE_IDENTITY"), "{e}");
        assert!(!e.to_string().contains("not a key"), "{e}");
    }
}
