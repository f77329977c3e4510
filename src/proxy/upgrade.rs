//! HTTP/1.1 Upgrade (WebSocket and others): once the backend answers 101 for the protocol
//! the client asked, both connections stop being HTTP and the proxy copies bytes both ways
//! until either side closes.

use tokio::io::{AsyncRead, AsyncWrite};

/// Join the client's and the backend's connections; returns the bytes sent to the client.
pub async fn tunnel<A, B>(client: &mut A, backend: &mut B, label: &str) -> u64
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    match tokio::io::copy_bidirectional(client, backend).await {
        Ok((up, down)) => {
            tracing::debug!(backend = %label, up, down, "upgraded connection closed");
            down
        }
        Err(e) => {
            tracing::debug!(backend = %label, error = %e, "upgraded connection failed");
            0
        }
    }
}
