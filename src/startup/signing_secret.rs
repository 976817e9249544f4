//! The secret that signs HS256 tokens and seals the asymmetric keys at rest.

use std::path::Path;

use anyhow::{Context, bail};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::Rng as _;

use crate::config::{Profile, Secret, Settings};

/// The signing key: configured, or (development only) generated once and kept in the data
/// folder, or (test only) drawn afresh for this process.
pub(super) fn signing_secret(settings: &Settings) -> anyhow::Result<Secret> {
    if let Some(secret) = &settings.secret_key {
        return Ok(secret.clone());
    }
    match settings.profile {
        Profile::Production => {
            bail!("production requires SECRET_KEY (at least 32 bytes) to be set")
        }
        Profile::Test => Ok(Secret::new(random_key())),
        Profile::Development => development_secret(&settings.data_dir),
    }
}

fn random_key() -> String {
    let mut bytes = [0u8; 48];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn development_secret(data_dir: &Path) -> anyhow::Result<Secret> {
    let path = data_dir.join("secret_key");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let existing = existing.trim().to_owned();
        if existing.len() >= crate::outbound::jwt::MIN_SECRET_BYTES {
            return Ok(Secret::new(existing));
        }
    }
    let mut folder = std::fs::DirBuilder::new();
    folder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut folder, 0o700);
    folder
        .create(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let key = random_key();
    write_private(&path, &key).with_context(|| format!("cannot write {}", path.display()))?;
    tracing::warn!(
        path = %path.display(),
        "SECRET_KEY is not set: generated a development signing key; set SECRET_KEY in production"
    );
    Ok(Secret::new(key))
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(contents.as_bytes())
}
