//! Label validation with containerd's limits.

use crate::error::Error;
use std::collections::HashMap;

/// containerd's maximum size of a label key, and of key plus value.
pub const MAX_LABEL_SIZE: usize = 4096;

/// Validate one label the way containerd's `labels.Validate` does.
pub fn validate(key: &str, value: &str) -> Result<(), Error> {
    if key.is_empty() {
        return Err(Error::invalid("label key must not be empty"));
    }
    if key.len() > MAX_LABEL_SIZE {
        return Err(Error::invalid(format!(
            "label key length ({} bytes) greater than maximum size ({MAX_LABEL_SIZE} bytes)",
            key.len()
        )));
    }
    if key.len() + value.len() > MAX_LABEL_SIZE {
        return Err(Error::invalid(format!(
            "label key and value length ({} bytes) greater than maximum size ({MAX_LABEL_SIZE} bytes)",
            key.len() + value.len()
        )));
    }
    Ok(())
}

/// Validate every label of a set.
pub fn validate_all(labels: &HashMap<String, String>) -> Result<(), Error> {
    for (k, v) in labels {
        validate(k, v).map_err(|e| e.context(format!("label {k:?}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enforces_containerd_limits() {
        assert!(validate("a", "b").is_ok());
        assert!(validate(&"k".repeat(4096), "").is_ok());
        assert!(validate(&"k".repeat(4097), "")
            .unwrap_err()
            .message
            .contains("label key length (4097 bytes)"));
        assert!(validate(&"k".repeat(2048), &"v".repeat(2049))
            .unwrap_err()
            .message
            .contains("key and value length (4097 bytes)"));
        assert!(validate("", "v").is_err());
    }
}
