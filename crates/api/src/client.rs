//! A gRPC channel over stevedored's unix socket, for the CLI, tests and the
//! daemon's own clients (the CRI plugin).

use std::path::{Path, PathBuf};
use tonic::transport::{Channel, Endpoint, Uri};

/// The endpoint and the connector that opens the socket (the URI is
/// required by the API but unused).
fn endpoint(
    socket: &Path,
) -> Result<
    (
        Endpoint,
        impl tower::Service<
                Uri,
                Response = hyper_util::rt::TokioIo<tokio::net::UnixStream>,
                Error = std::io::Error,
                Future = impl Send,
            > + Send
            + Clone
            + 'static,
    ),
    tonic::transport::Error,
> {
    let path: PathBuf = socket.to_path_buf();
    let connector = tower::service_fn(move |_: Uri| {
        let path = path.clone();
        async move {
            let stream = tokio::net::UnixStream::connect(path).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    Ok((Endpoint::try_from("http://[::]:50051")?, connector))
}

/// Connect to a daemon listening on a unix socket.
pub async fn connect(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let (e, c) = endpoint(socket)?;
    e.connect_with_connector(c).await
}

/// A channel to the daemon at `socket` that connects on first use (and
/// again after a failure), so it can be made before the daemon serves.
pub fn connect_lazy(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let (e, c) = endpoint(socket)?;
    Ok(e.connect_with_connector_lazy(c))
}
