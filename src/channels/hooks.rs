//! Hooks integration tests use to reach into the service: taps on topics, raw publishing,
//! a channel's key. Built only with the `test-hooks` feature, which the tests turn on.

use tokio::sync::broadcast;
use uuid::Uuid;

use super::Channels;

impl Channels {
    /// Hands every raw frame arriving on `topic` to the returned receiver (and subscribes).
    pub async fn tap(&self, topic: &str) -> broadcast::Receiver<Vec<u8>> {
        let rx = {
            let mut st = self.state();
            st.taps
                .entry(topic.to_string())
                .or_insert_with(|| broadcast::channel(256).0)
                .subscribe()
        };
        let _ = self.inner.net.subscribe(topic.to_string(), true).await;
        rx
    }

    /// Publishes raw bytes on a topic, as a misbehaving member would.
    pub async fn publish_raw(
        &self,
        topic: &str,
        data: Vec<u8>,
    ) -> Result<usize, crate::net::NetError> {
        self.inner.net.publish(topic.to_string(), data).await
    }

    /// A channel's current key epoch and key.
    pub fn key_of(&self, id: &Uuid) -> Option<(u32, [u8; 32])> {
        let st = self.state();
        let r = st.rows.get(id)?;
        r.key.map(|k| (r.epoch, *k))
    }

    /// Copies a frame that arrived on a tapped topic to its tap.
    pub(super) fn to_tap(&self, topic: &str, data: &[u8]) {
        if let Some(tap) = self.state().taps.get(topic) {
            let _ = tap.send(data.to_vec());
        }
    }
}
