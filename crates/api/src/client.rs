//! A gRPC channel over stevedored's unix socket, for the CLI and tests.

use std::path::{Path, PathBuf};
use tonic::transport::{Channel, Endpoint, Uri};

/// Connect to a daemon listening on a unix socket.
pub async fn connect(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = socket.to_path_buf();
    // the URI is required by the API but unused: the connector opens the socket
    Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}
