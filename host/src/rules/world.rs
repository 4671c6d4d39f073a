//! The deterministic world a rule sees through WASI: the same records give the same outcomes on every
//! delivery, redelivery, restart and replay.
//!
//! - **Wall clock** (`wasi:clocks/wall-clock`): the first record's `arrived-at-ms` of the call, plus the
//!   virtual time the call has slept. Never the host's clock.
//! - **Monotonic clock** (`wasi:clocks/monotonic-clock`): starts at zero for every call and advances only
//!   when the rule sleeps. Sleeps (`subscribe-duration`, `subscribe-instant`, so `std::thread::sleep` and
//!   `time.sleep`) return at once after moving the clock, so a sleeping rule cannot block a host thread past
//!   its deadline: the deadline (epoch interruption) only ever has wasm code to stop.
//! - **Random** (`wasi:random/random` and `wasi:random/insecure`): a stream seeded, for every call, from the
//!   ids of the call's records; `insecure-seed` is a constant.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::Resource;
use wasmtime_wasi::p2::bindings::clocks::monotonic_clock;
use wasmtime_wasi::p2::{DynPollable, Pollable, subscribe};

use super::SourceRecord;

/// The constant `wasi:random/insecure-seed`.
pub const INSECURE_SEED: u128 = 0x7765_6972_2d72_756c_6573_2d73_6565_6400;

#[derive(Debug, Default)]
struct State {
    /// The wall clock at virtual time zero, ns since the epoch.
    wall_base_ns: u64,
    /// Virtual time of the call, ns.
    mono_ns: u64,
    /// Random stream: SHA-256 in counter mode over the call's seed.
    seed: [u8; 32],
    counter: u64,
    buffer: Vec<u8>,
}

/// The shared state behind one instance's clocks and random generators.
#[derive(Debug, Clone, Default)]
pub struct World(Arc<Mutex<State>>);

impl World {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Resets the world for a call on `records`: clocks from the first record's arrival, random from the ids.
    pub fn begin(&self, records: &[SourceRecord]) {
        let wall_ms = records.first().map(|r| r.arrived_at_ms).unwrap_or(0).max(0) as u64;
        let mut h = Sha256::new();
        for r in records {
            h.update(r.id.as_bytes());
            h.update([0]);
        }
        let seed: [u8; 32] = h.finalize().into();
        self.with(|s| {
            *s = State {
                wall_base_ns: wall_ms.saturating_mul(1_000_000),
                mono_ns: 0,
                seed,
                counter: 0,
                buffer: Vec::new(),
            }
        });
    }

    /// Virtual time now, ns.
    pub fn monotonic_ns(&self) -> u64 {
        self.with(|s| s.mono_ns)
    }

    /// Moves virtual time forward to `ns` (never back).
    pub fn advance_to(&self, ns: u64) {
        self.with(|s| s.mono_ns = s.mono_ns.max(ns));
    }

    /// Moves virtual time forward by `ns`.
    pub fn advance_by(&self, ns: u64) {
        self.with(|s| s.mono_ns = s.mono_ns.saturating_add(ns));
    }

    fn fill(&self, out: &mut [u8]) {
        self.with(|s| {
            let mut i = 0;
            while i < out.len() {
                if s.buffer.is_empty() {
                    let mut h = Sha256::new();
                    h.update(s.seed);
                    h.update(s.counter.to_le_bytes());
                    s.counter += 1;
                    s.buffer = h.finalize().to_vec();
                }
                let n = s.buffer.len().min(out.len() - i);
                out[i..i + n].copy_from_slice(&s.buffer[..n]);
                s.buffer.drain(..n);
                i += n;
            }
        })
    }

    /// The wall clock for the WASI context.
    pub fn wall_clock(&self) -> WallClock {
        WallClock(self.clone())
    }

    /// The monotonic clock for the WASI context (reads only; sleeps go through [`monotonic_clock::Host`]).
    pub fn monotonic_clock(&self) -> MonotonicClock {
        MonotonicClock(self.clone())
    }

    /// A random generator for the WASI context.
    pub fn random(&self) -> Random {
        Random(self.clone())
    }
}

/// `wasi:clocks/wall-clock` of a [`World`].
pub struct WallClock(World);

impl wasmtime_wasi::HostWallClock for WallClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }
    fn now(&self) -> Duration {
        let (base, mono) = self.0.with(|s| (s.wall_base_ns, s.mono_ns));
        Duration::from_nanos(base.saturating_add(mono))
    }
}

/// `wasi:clocks/monotonic-clock` reads of a [`World`].
pub struct MonotonicClock(World);

impl wasmtime_wasi::HostMonotonicClock for MonotonicClock {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        self.0.monotonic_ns()
    }
}

/// `wasi:random/*` of a [`World`].
pub struct Random(World);

impl rand_core::TryRng for Random {
    type Error = std::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut b = [0; 4];
        self.0.fill(&mut b);
        Ok(u32::from_le_bytes(b))
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut b = [0; 8];
        self.0.fill(&mut b);
        Ok(u64::from_le_bytes(b))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        self.0.fill(dst);
        Ok(())
    }
}

/// A pollable that is ready at once: the end of a virtual sleep.
struct Elapsed;

#[wasmtime_wasi::async_trait]
impl Pollable for Elapsed {
    async fn ready(&mut self) {}
}

/// Store data that owns a [`World`] and a resource table: the monotonic clock whose sleeps are virtual.
pub trait HasWorld: Send {
    /// The instance's world.
    fn world(&self) -> &World;
    /// The instance's resource table.
    fn table(&mut self) -> &mut wasmtime::component::ResourceTable;
}

/// The `wasi:clocks/monotonic-clock` implementation installed over wasmtime-wasi's (which sleeps for real).
pub struct VirtualClock<'a, T: HasWorld>(pub &'a mut T);

impl<T: HasWorld> monotonic_clock::Host for VirtualClock<'_, T> {
    fn now(&mut self) -> wasmtime::Result<monotonic_clock::Instant> {
        Ok(self.0.world().monotonic_ns())
    }

    fn resolution(&mut self) -> wasmtime::Result<monotonic_clock::Duration> {
        Ok(1)
    }

    fn subscribe_instant(
        &mut self,
        when: monotonic_clock::Instant,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        self.0.world().advance_to(when);
        let r = self.0.table().push(Elapsed)?;
        subscribe(self.0.table(), r)
    }

    fn subscribe_duration(
        &mut self,
        duration: monotonic_clock::Duration,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        self.0.world().advance_by(duration);
        let r = self.0.table().push(Elapsed)?;
        subscribe(self.0.table(), r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::Rng;
    use wasmtime_wasi::{HostMonotonicClock, HostWallClock};

    fn record(id: &str, at: i64) -> SourceRecord {
        SourceRecord {
            id: id.into(),
            partition_key: String::new(),
            arrived_at_ms: at,
            attributes: vec![],
            payload: vec![],
        }
    }

    /// The same records give the same clocks and random stream; other records another stream.
    #[test]
    fn same_records_same_world() {
        let w = World::default();
        let (wall, mono, mut rng) = (w.wall_clock(), w.monotonic_clock(), w.random());
        let a = [record("a/1", 1_700_000_000_123), record("a/2", 5)];
        w.begin(&a);
        assert_eq!(wall.now(), Duration::from_millis(1_700_000_000_123));
        assert_eq!(mono.now(), 0);
        w.advance_by(2_000_000_000);
        assert_eq!(mono.now(), 2_000_000_000);
        assert_eq!(wall.now(), Duration::from_millis(1_700_000_002_123));
        w.advance_to(5); // never back
        assert_eq!(mono.now(), 2_000_000_000);
        let first: Vec<u64> = (0..5).map(|_| rng.next_u64()).collect();
        w.begin(&a);
        assert_eq!(mono.now(), 0);
        let again: Vec<u64> = (0..5).map(|_| rng.next_u64()).collect();
        assert_eq!(first, again);
        w.begin(&[record("b/1", 0)]);
        assert_ne!(rng.next_u64(), first[0]);
    }
}
