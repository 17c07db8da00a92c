//! One ring buffer of records and its per-CPU loss counter, read the same
//! way for every object: drain, wait, drain; count what cannot be parsed.

use std::fmt::Display;
use std::os::fd::AsRawFd;
use std::time::Duration;

use aya::maps::{MapData, PerCpuArray, RingBuf};
use aya::Ebpf;

use crate::{take, EbpfError};

/// A ring buffer whose records parse into `E`.
pub(crate) struct Ring<E, P> {
    ring: RingBuf<MapData>,
    lost: PerCpuArray<MapData, u64>,
    bad: u64,
    parse: P,
    what: &'static str,
    _event: std::marker::PhantomData<fn() -> E>,
}

impl<E, Err: Display, P: Fn(&[u8]) -> Result<E, Err>> Ring<E, P> {
    /// Takes the ring buffer `ring` and the per-CPU loss array `lost` out of
    /// the loaded object; `what` names the records in logs.
    pub fn take(ebpf: &mut Ebpf, ring: &'static str, lost: &'static str, parse: P, what: &'static str) -> Result<Self, EbpfError> {
        let ring = take(ebpf, ring, RingBuf::try_from)?;
        let lost = take(ebpf, lost, PerCpuArray::try_from)?;
        Ok(Self { ring, lost, bad: 0, parse, what, _event: std::marker::PhantomData })
    }

    /// Hands every record now in the ring buffer to `f`, waiting up to
    /// `timeout` for the first. Returns how many were handed over.
    pub fn poll(&mut self, timeout: Duration, mut f: impl FnMut(E)) -> Result<usize, EbpfError> {
        let mut n = self.drain(&mut f);
        if n > 0 {
            return Ok(n);
        }
        wait_readable(&self.ring, timeout)?;
        n += self.drain(&mut f);
        Ok(n)
    }

    fn drain(&mut self, f: &mut impl FnMut(E)) -> usize {
        let mut n = 0;
        while let Some(item) = self.ring.next() {
            match (self.parse)(&item) {
                Ok(e) => {
                    n += 1;
                    f(e)
                }
                Err(e) => {
                    self.bad += 1;
                    tracing::debug!(error = %e, "unparsable eBPF {} record", self.what);
                }
            }
        }
        n
    }

    /// Records the ring buffer could not take, per CPU (index = CPU).
    pub fn lost_per_cpu(&self) -> Vec<u64> {
        self.lost.get(&0, 0).map(|v| v.iter().copied().collect()).unwrap_or_default()
    }

    /// Records that could not be parsed.
    pub fn unparsable(&self) -> u64 {
        self.bad
    }
}

/// Waits up to `timeout` for `ring` to have a record (EINTR counts as a wake-up).
fn wait_readable(ring: &impl AsRawFd, timeout: Duration) -> Result<(), EbpfError> {
    let mut pfd = libc::pollfd { fd: ring.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd for the duration of the call.
    let r = unsafe { libc::poll(&mut pfd, 1, ms) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(EbpfError::Poll(e));
        }
    }
    Ok(())
}
