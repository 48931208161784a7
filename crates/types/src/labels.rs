//! Label validation with containerd's limits (`labels/validate.go`).

use crate::error::Error;
pub use crate::limits::MAX_LABEL_SIZE;
use std::collections::HashMap;

/// Validate one label the way containerd's `labels.Validate` does: key plus
/// value at most [`MAX_LABEL_SIZE`] bytes, with containerd's message (which
/// names the key by its first 10 bytes). An empty key is refused too
/// (containerd's bolt store fails on it with "key required").
pub fn validate(key: &str, value: &str) -> Result<(), Error> {
    if key.is_empty() {
        return Err(Error::invalid("label key must not be empty"));
    }
    if key.len() + value.len() > MAX_LABEL_SIZE {
        let mut end = key.len().min(10);
        while !key.is_char_boundary(end) {
            end -= 1;
        }
        return Err(Error::invalid(format!(
            "label key and value greater than maximum size ({MAX_LABEL_SIZE} bytes), key: {}",
            &key[..end]
        )));
    }
    Ok(())
}

/// Validate every label of a set.
pub fn validate_all(labels: &HashMap<String, String>) -> Result<(), Error> {
    for (k, v) in labels {
        validate(k, v)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn enforces_containerd_limit_with_its_message() {
        assert!(validate("a", "b").is_ok());
        assert!(validate(&"k".repeat(4096), "").is_ok());
        assert!(validate(&"k".repeat(2048), &"v".repeat(2048)).is_ok());
        let e = validate(&"k".repeat(4097), "").unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        assert_eq!(
            e.message,
            "label key and value greater than maximum size (4096 bytes), key: kkkkkkkkkk"
        );
        let e = validate("short", &"v".repeat(4092)).unwrap_err();
        assert!(e.message.ends_with("key: short"), "{e}");
        assert!(validate("", "v").is_err());
    }

    #[test]
    fn names_a_multibyte_key_without_splitting_a_character() {
        // 'é' is two bytes: the 10-byte cut falls inside the fifth one
        let key = format!("a{}", "é".repeat(3000));
        let e = validate(&key, "").unwrap_err();
        assert!(e.message.ends_with("key: aéééé"), "{e}");
    }
}
