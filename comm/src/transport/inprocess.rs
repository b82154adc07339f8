//! The in-process transport: peers are tasks or threads of one process,
//! connected by unbounded tokio channels. Messages are shared, not copied.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use tokio::sync::{Mutex, mpsc};

use super::{Acker, Delivery, Transport, TransportError};

/// Creates the connected endpoints of an in-process run; the embedded
/// default when all peers live in one process (simulations, tests).
#[derive(Debug)]
pub struct InProcessHub {
    endpoints: Vec<Option<InProcessTransport>>,
}

impl InProcessHub {
    /// A hub of `world_size` endpoints, each connected to all others.
    pub fn new(world_size: u32) -> Self {
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..world_size)
            .map(|_| mpsc::unbounded_channel::<Bytes>())
            .unzip();
        let endpoints = receivers
            .into_iter()
            .enumerate()
            .map(|(rank, inbox)| {
                let peers = senders
                    .iter()
                    .enumerate()
                    .filter(|(other, _)| *other != rank)
                    .map(|(_, sender)| sender.clone())
                    .collect();
                Some(InProcessTransport {
                    rank: rank as u32,
                    peers,
                    inbox: Mutex::new(inbox),
                    unacked: Arc::new(AtomicUsize::new(0)),
                })
            })
            .collect();
        InProcessHub { endpoints }
    }

    /// Takes the endpoint of `rank` (each can be taken once).
    pub fn take(&mut self, rank: u32) -> Option<InProcessTransport> {
        self.endpoints.get_mut(rank as usize)?.take()
    }

    /// All endpoints not taken yet, in rank order.
    pub fn into_endpoints(self) -> Vec<InProcessTransport> {
        self.endpoints.into_iter().flatten().collect()
    }
}

/// One peer's end of an [`InProcessHub`].
#[derive(Debug)]
pub struct InProcessTransport {
    rank: u32,
    peers: Vec<mpsc::UnboundedSender<Bytes>>,
    inbox: Mutex<mpsc::UnboundedReceiver<Bytes>>,
    unacked: Arc<AtomicUsize>,
}

impl InProcessTransport {
    /// The rank this endpoint was created for.
    pub fn rank(&self) -> u32 {
        self.rank
    }

    /// Deliveries received but not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.unacked.load(Ordering::Relaxed)
    }
}

impl Transport for InProcessTransport {
    async fn publish(&self, messages: &[Bytes]) -> Result<(), TransportError> {
        for message in messages {
            for peer in &self.peers {
                // A peer that has gone away simply no longer receives.
                let _ = peer.send(message.clone());
            }
        }
        Ok(())
    }

    async fn send_to(&self, rank: u32, messages: &[Bytes]) -> Result<(), TransportError> {
        // `peers` skips this endpoint's own rank.
        let index = match rank.cmp(&self.rank) {
            std::cmp::Ordering::Less => rank as usize,
            std::cmp::Ordering::Greater => rank as usize - 1,
            std::cmp::Ordering::Equal => usize::MAX,
        };
        let peer = self
            .peers
            .get(index)
            .ok_or_else(|| TransportError::Publish {
                cause: format!("no peer of rank {rank} to send to"),
            })?;
        for message in messages {
            let _ = peer.send(message.clone());
        }
        Ok(())
    }

    async fn recv(&self) -> Result<Delivery, TransportError> {
        let data = self
            .inbox
            .lock()
            .await
            .recv()
            .await
            .ok_or(TransportError::Closed)?;
        self.unacked.fetch_add(1, Ordering::Relaxed);
        Ok(Delivery::new(data, Acker::InProcess(self.unacked.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn broadcasts_to_all_others_but_not_self() {
        let endpoints = InProcessHub::new(3).into_endpoints();
        endpoints[1]
            .publish(&[Bytes::from_static(b"a"), Bytes::from_static(b"b")])
            .await
            .unwrap();
        for rank in [0, 2] {
            for expected in [&b"a"[..], b"b"] {
                let d = endpoints[rank].recv().await.unwrap();
                assert_eq!(&d.data()[..], expected);
                assert_eq!(endpoints[rank].unacked(), 1);
                d.ack().await.unwrap();
                assert_eq!(endpoints[rank].unacked(), 0);
            }
        }
        let nothing =
            tokio::time::timeout(std::time::Duration::from_millis(20), endpoints[1].recv()).await;
        assert!(
            nothing.is_err(),
            "the sender must not receive its own message"
        );
    }

    #[tokio::test]
    async fn take_once_and_closed_when_all_peers_gone() {
        let mut hub = InProcessHub::new(2);
        let zero = hub.take(0).unwrap();
        assert!(hub.take(0).is_none());
        assert!(hub.take(5).is_none());
        let one = hub.take(1).unwrap();
        assert_eq!(one.rank(), 1);
        drop(one);
        assert!(matches!(zero.recv().await, Err(TransportError::Closed)));
    }
}
