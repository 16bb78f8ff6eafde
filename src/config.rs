//! The configuration file (TOML): serde model with `deny_unknown_fields`, so a misspelt key is an error that
//! names it. `config.example.toml` documents every option with its default; a test parses it.
//!
//! Later parts of the system (peers, applications, replication, store, SIP, HTTP) add their sections here.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::codec::DecodeLimits;
use crate::dict::{DictError, Dictionary};

/// The whole file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Codec limits.
    #[serde(default)]
    pub codec: CodecConfig,
    /// Dictionary files beyond the shipped ones.
    #[serde(default)]
    pub dictionaries: DictionariesConfig,
}

/// `[codec]`: what the decoder accepts.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CodecConfig {
    /// Largest Diameter message accepted, in octets (RFC 6733 allows 16 MiB; CCRs are a few hundred octets).
    pub max_message_size: usize,
    /// Deepest nesting of Grouped AVPs that validation descends into.
    pub max_depth: usize,
}

impl Default for CodecConfig {
    fn default() -> Self {
        let d = DecodeLimits::default();
        CodecConfig { max_message_size: d.max_message_size, max_depth: d.max_depth }
    }
}

impl CodecConfig {
    /// The limits for the decoder.
    pub fn limits(&self) -> DecodeLimits {
        DecodeLimits { max_message_size: self.max_message_size, max_depth: self.max_depth }
    }
}

/// `[dictionaries]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DictionariesConfig {
    /// XML files loaded after the shipped ones; their definitions replace shipped ones with the same code.
    #[serde(default)]
    pub files: Vec<PathBuf>,
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML is invalid or has an unknown key (the message names it and its line).
    #[error("config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A value is out of range.
    #[error("config {path}: {key}: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key.
        key: &'static str,
        /// What is allowed.
        why: String,
    },
    /// A dictionary file is wrong.
    #[error(transparent)]
    Dictionary(#[from] DictError),
}

impl Config {
    /// Parses TOML text; `path` names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })?;
        let invalid = |key, why: &str| ConfigError::Invalid { path: path.into(), key, why: why.into() };
        if !(20..=crate::codec::MAX_LENGTH).contains(&config.codec.max_message_size) {
            return Err(invalid("codec.max_message_size", "must be 20 to 16777215 octets"));
        }
        if !(1..=64).contains(&config.codec.max_depth) {
            return Err(invalid("codec.max_depth", "must be 1 to 64"));
        }
        Ok(config)
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Config::parse(&text, path)
    }

    /// The shipped dictionaries plus the configured files (paths relative to `base`).
    pub fn dictionary(&self, base: &Path) -> Result<Dictionary, ConfigError> {
        let mut texts = Vec::new();
        for f in &self.dictionaries.files {
            let path = base.join(f);
            let text =
                std::fs::read_to_string(&path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
            texts.push((path.display().to_string(), text));
        }
        let refs: Vec<(&str, &str)> = texts.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
        Ok(Dictionary::with_files(&refs)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_parses_and_equals_the_defaults() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml"));
        let config = Config::load(path).unwrap();
        // The example documents the defaults: what it says is what a missing key means.
        assert_eq!(config, Config::default());
        assert_eq!(Config::parse("", path).unwrap(), Config::default());
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let err = Config::parse("[codec]\nmax_mesage_size = 100\n", Path::new("node.toml")).unwrap_err().to_string();
        assert!(err.contains("max_mesage_size") && err.contains("node.toml"), "{err}");
        let err = Config::parse("[codecs]\n", Path::new("n.toml")).unwrap_err().to_string();
        assert!(err.contains("codecs"), "{err}");
    }

    #[test]
    fn out_of_range_values_say_what_is_allowed() {
        let err = Config::parse("[codec]\nmax_depth = 0\n", Path::new("n.toml")).unwrap_err().to_string();
        assert!(err.contains("codec.max_depth") && err.contains("1 to 64"), "{err}");
    }
}
