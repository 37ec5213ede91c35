//! Time, in one place: the agent's clock (kernel monotonic timestamps to wall-clock time,
//! and "now"), and the small time arithmetic every stage uses. Stages never read the
//! system time themselves: they are handed a `now` or a [`Clock`], so tests fix time.

use std::time::{Duration, SystemTime};

/// Converts kernel monotonic timestamps to wall-clock time, and tells the time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Wall-clock time minus monotonic time, nanoseconds.
    offset_ns: i128,
    /// A fixed "now" (tests); `None` reads the system clock.
    frozen: Option<SystemTime>,
}

fn monotonic_ns() -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime with a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

fn unix_ns(t: SystemTime) -> i128 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or_default()
}

impl Clock {
    /// The system clock, with the monotonic offset measured now (re-measure it now and
    /// then: wall-clock time may be stepped).
    pub fn system() -> Self {
        Self {
            offset_ns: unix_ns(SystemTime::now()) - monotonic_ns(),
            frozen: None,
        }
    }

    /// A clock where monotonic time `mono_ns` is wall-clock time `wall`, and "now" is
    /// always `wall` (tests).
    pub fn fixed(mono_ns: u64, wall: SystemTime) -> Self {
        Self {
            offset_ns: unix_ns(wall) - mono_ns as i128,
            frozen: Some(wall),
        }
    }

    /// Wall-clock time of a kernel monotonic timestamp.
    pub fn wall(&self, mono_ns: u64) -> SystemTime {
        let ns = (mono_ns as i128 + self.offset_ns).max(0) as u128;
        SystemTime::UNIX_EPOCH + Duration::from_nanos(ns as u64)
    }

    /// Wall-clock time now.
    pub fn now(&self) -> SystemTime {
        self.frozen.unwrap_or_else(SystemTime::now)
    }

    /// Kernel monotonic time now, nanoseconds.
    pub fn monotonic_ns(&self) -> u64 {
        monotonic_ns().max(0) as u64
    }
}

/// Unix time in seconds (0 before the epoch).
pub fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// `a - b`, zero when `b` is later.
pub fn since(a: SystemTime, b: SystemTime) -> Duration {
    a.duration_since(b).unwrap_or_default()
}

/// Whether `t` lies within `window` before `now` (or after it).
pub fn within(t: SystemTime, now: SystemTime, window: Duration) -> bool {
    since(now, t) <= window
}

/// Serialise a time as Unix seconds (serde `serialize_with`).
pub fn ser_unix<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(unix_secs(*t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_clock_maps_monotonic_to_wall() {
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let c = Clock::fixed(5_000_000_000, wall);
        assert_eq!(c.wall(5_000_000_000), wall);
        assert_eq!(c.wall(6_500_000_000), wall + Duration::from_millis(1500));
        assert_eq!(c.now(), wall);
        assert_eq!(since(wall, wall + Duration::from_secs(1)), Duration::ZERO);
        assert!(within(
            wall,
            wall + Duration::from_secs(3),
            Duration::from_secs(3)
        ));
        assert!(!within(
            wall,
            wall + Duration::from_secs(4),
            Duration::from_secs(3)
        ));
    }
}
