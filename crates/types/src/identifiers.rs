//! containerd's identifier rules (`pkg/identifiers`): the ids of namespaces,
//! containers, tasks, exec processes and leases. An id that passes is safe
//! to use as one path component: no `/`, no `.`/`..`, no leading dot, no
//! control characters. Snapshot keys and image names have their own rules.

use crate::{Error, Result};

/// containerd's `maxLength`.
pub const MAX_LENGTH: usize = 76;

/// The pattern containerd quotes in its error message.
pub const PATTERN: &str = "^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$";

/// Validate an identifier with containerd's rule and wording (all
/// InvalidArgument): `^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$`, at most 76
/// characters.
pub fn validate(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::invalid("identifier must not be empty"));
    }
    if id.len() > MAX_LENGTH {
        return Err(Error::invalid(format!(
            "identifier {id:?} greater than maximum length ({MAX_LENGTH} characters)"
        )));
    }
    let ok = id
        .split(['.', '_', '-'])
        .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric()));
    if !ok {
        return Err(Error::invalid(format!(
            "identifier {id:?} must match {PATTERN}"
        )));
    }
    Ok(())
}

/// Whether `id` is a valid identifier.
pub fn is_valid(id: &str) -> bool {
    validate(id).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn accepts_containerd_identifiers() {
        for id in [
            "a",
            "default",
            "k8s.io",
            "moby",
            "a-b_c.d",
            "A1",
            &"x".repeat(76),
        ] {
            validate(id).unwrap_or_else(|e| panic!("{id:?}: {e}"));
        }
    }

    #[test]
    fn refuses_paths_and_separators_with_containerd_wording() {
        for id in [
            "../../../../tmp/x",
            "..",
            ".",
            ".hidden",
            "a/b",
            "a..b",
            "a-",
            "-a",
            "a b",
            "a\nb",
            "ä",
            "a:b",
        ] {
            let e = validate(id).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidArgument, "{id:?}");
            assert_eq!(
                e.message,
                format!("identifier {id:?} must match {PATTERN}"),
                "{id:?}"
            );
        }
    }

    #[test]
    fn refuses_empty_and_long_identifiers() {
        assert_eq!(
            validate("").unwrap_err().message,
            "identifier must not be empty"
        );
        let long = "x".repeat(77);
        assert_eq!(
            validate(&long).unwrap_err().message,
            format!("identifier {long:?} greater than maximum length (76 characters)")
        );
    }
}
