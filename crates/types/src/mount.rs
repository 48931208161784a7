//! A mount as containerd describes one: type, source, target and options.

use serde::{Deserialize, Serialize};

/// A filesystem mount to perform (or that was performed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    #[serde(rename = "type")]
    pub kind: String,
    pub source: String,
    #[serde(default)]
    pub target: String,
    #[serde(default)]
    pub options: Vec<String>,
}

impl Mount {
    /// True when the options ask for a read-only mount.
    pub fn read_only(&self) -> bool {
        self.options.iter().any(|o| o == "ro")
    }
}
