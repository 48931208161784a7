//! The `metav1.Status` JSON the v4/v5 protocols write on the error stream,
//! byte for byte as kubelet's `json.Marshal` writes it.

use serde::Serialize;

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct Cause<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    message: &'a str,
}

#[derive(Serialize)]
struct Details<'a> {
    causes: Vec<Cause<'a>>,
}

#[derive(Serialize)]
struct Status<'a> {
    metadata: Empty,
    status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Details<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<u16>,
}

fn encode(status: &Status<'_>) -> Vec<u8> {
    // a struct of strings always serialises
    serde_json::to_vec(status).unwrap_or_default()
}

/// `{"metadata":{},"status":"Success"}`.
pub(crate) fn success() -> Vec<u8> {
    encode(&Status {
        metadata: Empty {},
        status: "Success",
        message: None,
        reason: None,
        details: None,
        code: None,
    })
}

/// A `NonZeroExitCode` failure carrying the exit code as an `ExitCode` cause.
pub(crate) fn non_zero_exit(code: i32, message: &str) -> Vec<u8> {
    let code = code.to_string();
    encode(&Status {
        metadata: Empty {},
        status: "Failure",
        message: Some(message),
        reason: Some("NonZeroExitCode"),
        details: Some(Details {
            causes: vec![Cause {
                reason: Some("ExitCode"),
                message: &code,
            }],
        }),
        code: None,
    })
}

/// apimachinery's `NewInternalError`: code 500, reason `InternalError`.
pub(crate) fn internal(message: &str) -> Vec<u8> {
    encode(&Status {
        metadata: Empty {},
        status: "Failure",
        message: Some(&internal_message(message)),
        reason: Some("InternalError"),
        details: Some(Details {
            causes: vec![Cause {
                reason: None,
                message,
            }],
        }),
        code: Some(500),
    })
}

/// The message `NewInternalError` gives an error.
pub(crate) fn internal_message(message: &str) -> String {
    format!("Internal error occurred: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_is_kubelets_bytes() {
        assert_eq!(success(), br#"{"metadata":{},"status":"Success"}"#);
    }

    #[test]
    fn non_zero_exit_carries_the_code_as_a_cause() {
        let got = String::from_utf8(non_zero_exit(
            3,
            "command terminated with non-zero exit code: x",
        ))
        .unwrap();
        assert_eq!(
            got,
            r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: x","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#
        );
    }

    #[test]
    fn internal_error_has_code_500() {
        let got = String::from_utf8(internal("boom")).unwrap();
        assert_eq!(
            got,
            r#"{"metadata":{},"status":"Failure","message":"Internal error occurred: boom","reason":"InternalError","details":{"causes":[{"message":"boom"}]},"code":500}"#
        );
    }
}
