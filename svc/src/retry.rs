//! Retries, written once: a capped exponential backoff with jitter, and the three loops built on
//! it (until an attempt succeeds, for a bounded number of attempts, or for a bounded time).
//!
//! The jitter matters after a NATS outage, when every watch, consumer and subscription of a
//! gateway (and every gateway) retries at once: each pause is drawn from the upper half of its
//! step ("equal jitter"), so attempts spread out instead of arriving together, while no pause is
//! shorter than half its step.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

/// A capped exponential backoff with jitter: steps of `first`, doubling up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    /// Steps of `first`, `2 × first`, … up to `max`.
    pub const fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            step: first,
        }
    }

    /// The same step every time (jittered all the same).
    pub const fn constant(step: Duration) -> Self {
        Self::new(step, step)
    }

    /// The next pause: a random point in the upper half of the current step, which then doubles.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        jittered(step)
    }

    /// Back to the first step, after a success.
    pub fn reset(&mut self) {
        self.step = self.first;
    }
}

/// A random point in the upper half of `step` ("equal jitter").
pub fn jittered(step: Duration) -> Duration {
    step.mul_f64(0.5 + rand::random::<f64>() * 0.5)
}

/// Runs `attempt` until it succeeds, pausing by `backoff` after each failure and logging it: what
/// must come back by itself after an outage.
pub async fn until_ok<T, E, Fut>(
    what: &str,
    mut backoff: Backoff,
    mut attempt: impl FnMut() -> Fut,
) -> T
where
    E: Display,
    Fut: Future<Output = Result<T, E>>,
{
    loop {
        match attempt().await {
            Ok(v) => return v,
            Err(e) => {
                tracing::warn!(error = %e, "{what} failed; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// Runs `attempt` up to `attempts` times, pausing by `backoff` between them, and returns the last
/// error if none succeeded: what several processes starting together race to create.
pub async fn with_attempts<T, E, Fut>(
    what: &str,
    attempts: u32,
    mut backoff: Backoff,
    mut attempt: impl FnMut() -> Fut,
) -> Result<T, E>
where
    E: Display,
    Fut: Future<Output = Result<T, E>>,
{
    let mut n = 1;
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if n < attempts => {
                tracing::debug!(error = %e, attempt = n, "{what} not ready; retrying");
                n += 1;
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Runs `attempt` until it succeeds or `wait` has passed, pausing by `backoff` after each failure,
/// and returns the last error if none succeeded: what a process waits for at start (a stream, the
/// token keys) before it gives up and lets its supervisor see the failure.
pub async fn until_deadline<T, E, Fut>(
    what: &str,
    wait: Duration,
    mut backoff: Backoff,
    mut attempt: impl FnMut() -> Fut,
) -> Result<T, E>
where
    E: Display,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::info!(error = %format!("{e:#}"), "{what} not ready yet; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    // Proves each pause lies in the upper half of its step, steps double up to the cap, and reset
    // starts over.
    #[test]
    fn pauses_double_up_to_the_cap_with_jitter() {
        let ms = Duration::from_millis;
        for _ in 0..100 {
            let mut b = Backoff::new(ms(100), ms(1000));
            for step in [100, 200, 400, 800, 1000, 1000] {
                let d = b.next_delay();
                assert!(
                    d >= ms(step) / 2 && d <= ms(step),
                    "{d:?} for a step of {step} ms"
                );
            }
            b.reset();
            assert!(b.next_delay() <= ms(100));
        }
        let mut seen = std::collections::HashSet::new();
        let mut b = Backoff::constant(ms(1000));
        for _ in 0..20 {
            seen.insert(b.next_delay());
        }
        assert!(seen.len() > 1, "the pauses are jittered");
    }

    // Proves until_ok returns the first success, and with_attempts gives up after its count with
    // the last error.
    #[tokio::test]
    async fn loops_retry_as_told() {
        let calls = Cell::new(0);
        let v = until_ok("x", Backoff::constant(Duration::from_millis(1)), || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move { if n < 3 { Err("not yet") } else { Ok(n) } }
        })
        .await;
        assert_eq!(v, 3);
        calls.set(0);
        let r: Result<(), String> =
            with_attempts("y", 4, Backoff::constant(Duration::from_millis(1)), || {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move { Err(format!("failure {n}")) }
            })
            .await;
        assert_eq!(r.unwrap_err(), "failure 4");
        assert_eq!(calls.get(), 4);
    }

    // Proves until_deadline keeps trying while time remains, gives up with the last error once the
    // wait has passed, and returns a success that comes in time.
    #[tokio::test(start_paused = true)]
    async fn until_deadline_stops_at_the_deadline() {
        let calls = Cell::new(0);
        let started = tokio::time::Instant::now();
        let r: Result<(), String> = until_deadline(
            "z",
            Duration::from_secs(10),
            Backoff::constant(Duration::from_secs(1)),
            || {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move { Err(format!("failure {n}")) }
            },
        )
        .await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(10),
            "gave up early: {waited:?}"
        );
        assert!(
            waited < Duration::from_secs(11),
            "went on too long: {waited:?}"
        );
        assert_eq!(r.unwrap_err(), format!("failure {}", calls.get()));
        assert!(
            calls.get() >= 11,
            "{} attempts in 10 s of 0.5-1 s pauses",
            calls.get()
        );

        calls.set(0);
        let v = until_deadline(
            "z",
            Duration::from_secs(10),
            Backoff::constant(Duration::from_secs(1)),
            || {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move { if n < 3 { Err("not yet") } else { Ok(n) } }
            },
        )
        .await;
        assert_eq!(v, Ok(3));
    }
}
