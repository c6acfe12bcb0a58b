//! The GPU receive path of the progress engine (feature `cuda`; `DESIGN.md` §3 steps 5–7).
//!
//! On a receive comm whose plugin publishes unpack metadata (TCPX; tcpx-sim in CUDA mode) a
//! chunk that `test` reports done is still in the GPU's bounce pool:
//!
//! 5. its slot (k-th receive on the comm → k % 16, counted at post) names its fragments in the
//!    comm's mapped metadata; they are validated and pushed onto the turn's unpack batch;
//! 6. at the end of the turn ONE launch unpacks every chunk pushed by every comm of this GPU
//!    (`Engine::launch_pending`), records an event, and those window entries become
//!    `Unpacking(event)`;
//! 7. when its event has completed, the oldest entry of each window is consumed
//!    (`irecvConsumed`, FIFO) and released.
//!
//! Invariants:
//! * Nothing waits for the GPU: events are polled, never synchronised.
//! * A chunk whose push cannot be staged yet (staging full or still read by a launch in
//!   flight) is left done-but-unmarked: the loader answers `Done` again without calling the
//!   plugin, so it is retried next turn, after the launch.
//! * A chunk received into host memory on such a comm has nothing to unpack; it becomes
//!   `Unpacking(NO_EVENT)` (complete at once), but only when no pushed chunk precedes it in its
//!   window, so consumption stays FIFO.
//! * Fragments that fail validation fail the connection with a clear error before anything is
//!   launched (the real plugin would `exit(1)` on the worst of them).

use std::sync::Arc;

use tcpx_core::unpack::SlotCounter;
use tcpx_core::window::{EntryState, EventId};

use super::{Channel, Comm, ConnId, Transfer, TransferError};
use crate::cuda::{DeviceDst, Gpu, UnpackConfig, UnpackError, UnpackQueueView, Unpacker};
use crate::net::{MemKind, Region, TestResult};

/// The event of an entry with nothing to unpack: complete at once, never released.
pub(crate) const NO_EVENT: EventId = EventId(u32::MAX);

/// The GPU receive path's settings.
#[derive(Clone, Debug)]
pub struct CudaRecvConfig {
    /// The GPU whose bounce pool and buffers the receives use (current on the progress thread).
    pub gpu: Arc<Gpu>,
    /// The unpacker: implementation (`kernel`, `d2d`, `host`, `none`), staging sizes.
    pub unpack: UnpackConfig,
}

/// The progress thread's GPU state: one unpacker (stream, staging, events) for all comms.
pub(crate) struct GpuRecv {
    pub(crate) unpacker: Unpacker,
}

impl GpuRecv {
    pub(crate) fn new(config: &CudaRecvConfig) -> Result<Self, UnpackError> {
        config.gpu.make_current().map_err(UnpackError::Cuda)?;
        Ok(Self {
            unpacker: Unpacker::new(&config.gpu, config.unpack).map_err(UnpackError::Cuda)?,
        })
    }
}

/// What an unpacking receive comm keeps: its metadata view and its slot counter.
pub(crate) struct ChannelUnpack {
    pub(crate) view: UnpackQueueView,
    pub(crate) slots: SlotCounter,
}

impl Channel {
    /// Make this channel an unpacking receive channel when its comm's device handle says the
    /// plugin unpacks (TCPX; tcpx-sim in CUDA mode). Send channels and host-only plugins stay
    /// as they are.
    pub(crate) fn open_unpack(&mut self, gpu: &Arc<Gpu>) -> Result<(), crate::endpoint::Error> {
        let Comm::Recv(comm) = &self.comm else {
            return Ok(());
        };
        let handle = comm.device_handle();
        if handle.net_device_type != crate::net::abi::net_device_type::UNPACK {
            return Ok(());
        }
        let view = UnpackQueueView::open(gpu, handle)
            .map_err(|e| crate::endpoint::Error::Gpu(e.to_string()))?;
        self.unpack = Some(ChannelUnpack {
            view,
            slots: SlotCounter::new(),
        });
        self.window = tcpx_core::window::TcpxWindow::new(tcpx_core::window::WindowKind::RecvUnpack);
        Ok(())
    }

    /// The slot of the receive being posted (0 where slots are not used).
    pub(crate) fn next_slot(&mut self) -> u8 {
        match self.unpack.as_mut() {
            Some(u) => u.slots.next_slot().index() as u8,
            None => 0,
        }
    }
}

/// Release, test and push on one unpacking receive channel. Returns (progressed, a transfer
/// finished).
pub(crate) fn progress_channel(
    ch: &mut Channel,
    transfers: &mut [Option<Transfer>],
    regions: &[Arc<dyn Region>],
    gpu: &mut GpuRecv,
    conn: ConnId,
    channel: usize,
) -> Result<(bool, bool), TransferError> {
    let nic = ch.nic;
    let plugin_fail = |error| TransferError::Plugin {
        conn,
        channel,
        nic,
        error,
    };
    let unpack_fail = |e: UnpackError| TransferError::Unpack {
        conn,
        channel,
        nic,
        reason: e.to_string(),
    };
    let Comm::Recv(comm) = &ch.comm else {
        return Ok((false, false));
    };
    let (mut progressed, mut finished) = (false, false);

    // 7. Consume, in FIFO order, what the GPU has finished unpacking.
    while let Some(e) = ch.window.oldest() {
        let EntryState::Unpacking { event } = e.state else {
            break;
        };
        if event != NO_EVENT && !gpu.unpacker.event_complete(event).map_err(unpack_fail)? {
            break;
        }
        comm.irecv_consumed(e.request.req).map_err(plugin_fail)?;
        let _ = ch.window.release_oldest();
        if event != NO_EVENT {
            gpu.unpacker.release_event(event).map_err(unpack_fail)?;
        }
        progressed = true;
        finished |= super::released(&mut ch.stats, transfers, &e);
    }

    // 5. Test the head; push what is done onto the turn's batch.
    while let Some(entry) = ch.window.next_to_test() {
        ch.stats.record_test();
        if comm.test(entry.request.req).map_err(plugin_fail)? == TestResult::Pending {
            break;
        }
        let Some(t) = transfers[usize::from(entry.request.transfer)].as_ref() else {
            return Err(TransferError::Shutdown);
        };
        let region = &regions[t.buf.0 as usize];
        if region.kind() == MemKind::Host {
            // Nothing to unpack (the bytes landed in host memory); complete at once, but not
            // ahead of a pushed chunk that is still waiting for this turn's launch.
            if ch.window.done() > 0 {
                break;
            }
            let _ = ch.window.mark_done(entry.request);
            let _ = ch.window.start_unpack(NO_EVENT);
            progressed = true;
            continue;
        }
        let Some(u) = ch.unpack.as_ref() else {
            return Err(TransferError::Shutdown);
        };
        let slot = tcpx_core::unpack::Slot::new(usize::from(entry.request.slot))
            .ok_or(TransferError::Shutdown)?;
        let frags = u
            .view
            .fragments(slot)
            .map_err(|e| unpack_fail(UnpackError::Fragment(e)))?;
        let Some(mh) = ch.mhs[t.buf.0 as usize].as_ref() else {
            return Err(TransferError::Shutdown);
        };
        let dst = DeviceDst::in_mem_handle(mh, entry.request.offset as usize, entry.bytes as usize)
            .map_err(unpack_fail)?;
        let (bounce, bounce_len) = u.view.bounce();
        match gpu.unpacker.push_chunk(frags, bounce, bounce_len, dst) {
            Ok(()) => {}
            // Retry after this turn's launch (the plugin is not asked again: the loader
            // remembers the request is done).
            Err(
                UnpackError::StagingFull { .. }
                | UnpackError::TooManyChunks { .. }
                | UnpackError::StagingBusy,
            ) => break,
            Err(e) => return Err(unpack_fail(e)),
        }
        let _ = ch.window.mark_done(entry.request);
        progressed = true;
    }
    Ok((progressed, finished))
}
