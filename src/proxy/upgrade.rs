//! HTTP/1.1 Upgrade (WebSocket and others): once the backend answers 101, both connections
//! stop being HTTP and the proxy copies bytes both ways until either side closes.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// Join the client's and the backend's upgraded connections.
pub async fn tunnel(client: OnUpgrade, backend: OnUpgrade, label: std::sync::Arc<str>) {
    let (client, backend) = match tokio::try_join!(client, backend) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(backend = %label, error = %e, "upgrade did not complete");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut backend = TokioIo::new(backend);
    match tokio::io::copy_bidirectional(&mut client, &mut backend).await {
        Ok((up, down)) => {
            tracing::debug!(backend = %label, up, down, "upgraded connection closed")
        }
        Err(e) => tracing::debug!(backend = %label, error = %e, "upgraded connection failed"),
    }
}
