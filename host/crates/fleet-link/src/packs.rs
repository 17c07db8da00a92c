//! Fetching a pack the fleet distributes: chunk by chunk, by request/reply
//! on the host's own subject `edr.host.<id>.pack.get` (the only subjects a
//! host may publish to are its own, and it cannot read JetStream itself).
//! The number of chunks comes from the signed size, not from the server.

use crate::commands::PackFetcher;
use base64::Engine as _;
use edr_fleet_proto::msg::{self, PackChunkReply, PackChunkRequest};
use edr_fleet_proto::subjects;
use std::time::Duration;

/// How long one chunk may take to arrive.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(30);

/// Fetches over the link's NATS connection (called from a blocking thread).
pub(crate) struct NatsFetcher {
    pub(crate) client: async_nats::Client,
    pub(crate) host_id: String,
    pub(crate) rt: tokio::runtime::Handle,
}

impl PackFetcher for NatsFetcher {
    fn fetch(&self, sha256: &str, size: u64) -> Result<Vec<u8>, String> {
        let chunk = subjects::PACK_CHUNK_BYTES as u64;
        let chunks = size.div_ceil(chunk);
        let mut out = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        for index in 0..chunks {
            let req = PackChunkRequest { v: edr_fleet_proto::PROTO_VERSION, sha256: sha256.to_string(), index };
            let payload = serde_json::to_vec(&req).unwrap_or_default();
            let asked = self.rt.block_on(tokio::time::timeout(CHUNK_TIMEOUT, self.client.request(subjects::pack_get(&self.host_id), payload.into())));
            let reply = match asked {
                Ok(Ok(m)) => m,
                Ok(Err(e)) => return Err(format!("chunk {index} of pack {sha256}: {e}")),
                Err(_) => return Err(format!("chunk {index} of pack {sha256}: no answer within {CHUNK_TIMEOUT:?}")),
            };
            let reply: PackChunkReply = msg::decode(&reply.payload).map_err(|e| format!("chunk {index} of pack {sha256}: {e}"))?;
            if let Some(e) = reply.error {
                return Err(format!("the fleet did not send chunk {index} of pack {sha256}: {e}"));
            }
            let data = base64::engine::general_purpose::STANDARD.decode(reply.data).map_err(|e| format!("chunk {index}: not base64: {e}"))?;
            if data.len() as u64 > chunk || out.len() as u64 + data.len() as u64 > size {
                return Err(format!("chunk {index} of pack {sha256} is larger than the signed size allows; not installed"));
            }
            out.extend_from_slice(&data);
        }
        Ok(out)
    }
}
