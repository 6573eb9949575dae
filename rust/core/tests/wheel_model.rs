//! Model-based property test of the timer wheel: random set / cancel /
//! advance sequences against a BTreeMap of deadlines. Every advance must
//! return exactly the model's due tokens (none early, none missed), earliest
//! first; `next_deadline` must never be after the earliest deadline (also
//! when the caller's clock steps back) and, followed as a scheduler follows
//! it, must fire every token at exactly its deadline.

use std::collections::BTreeMap;

use proptest::prelude::*;
use stead_core::wheel::TimerWheel;

const BLOCK: i64 = 1 << 36; // the span of the wheel's top level
const YEAR: i64 = 365 * 86_400_000;

#[derive(Clone, Debug)]
enum Op {
    Set(u64, i64),
    Cancel(u64),
    Advance(i64),
    /// The caller's clock steps back (a wall-clock correction).
    Back(i64),
    /// Follow `next_deadline` until the wheel is empty.
    Drive,
}

/// Offsets from the clock at every scale the wheel distinguishes: the past,
/// one level-0 rotation, the middle levels, overflow and years ahead.
fn offset() -> impl Strategy<Value = i64> {
    prop_oneof![
        2 => -200i64..200,
        2 => 0i64..5_000,
        2 => 0i64..20_000_000,
        1 => 0i64..2 * BLOCK,
        1 => 0i64..6 * YEAR,
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let token = 0u64..24;
    prop_oneof![
        6 => (token.clone(), offset()).prop_map(|(t, o)| Op::Set(t, o)),
        2 => token.prop_map(Op::Cancel),
        3 => prop_oneof![0i64..100, 0i64..100_000, 0i64..BLOCK].prop_map(Op::Advance),
        1 => prop_oneof![0i64..100, 0i64..10_000_000].prop_map(Op::Back),
        1 => Just(Op::Drive),
    ]
}

/// Start times: an ordinary epoch time, just before a top-level block boundary, zero.
fn start() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(1_780_000_000_000i64),
        (-300i64..300).prop_map(|d| 26 * BLOCK + d),
        Just(0i64),
    ]
}

struct Harness {
    wheel: TimerWheel,
    model: BTreeMap<u64, i64>,
    clock: i64,
}

impl Harness {
    /// Advance both to `now`; `due` must be the model's due set in order.
    fn advance(&mut self, now: i64) -> Vec<(u64, i64)> {
        self.clock = now;
        let due = self.wheel.advance(self.clock);
        let mut expected: Vec<(i64, u64)> = self
            .model
            .iter()
            .filter(|&(_, &when)| when <= self.clock)
            .map(|(&t, &when)| (when, t))
            .collect();
        expected.sort_unstable();
        let expected: Vec<u64> = expected.into_iter().map(|(_, t)| t).collect();
        assert_eq!(due, expected, "due set at {}", self.clock);
        due.into_iter()
            .map(|t| (t, self.model.remove(&t).unwrap()))
            .collect()
    }

    fn drive(&mut self) {
        let overdue_at = self.clock;
        for _ in 0..2_000 {
            let Some(next) = self.wheel.next_deadline() else {
                assert!(self.model.is_empty());
                return;
            };
            let earliest = *self.model.values().min().expect("wheel not empty");
            assert!(next <= earliest, "next_deadline past the earliest");
            for (token, when) in self.advance(next.max(self.clock)) {
                // Followed like this, nothing fires late: on time, or at once if overdue.
                assert_eq!(self.clock, when.max(overdue_at), "token {token} late");
            }
        }
        panic!("next_deadline did not converge");
    }

    fn check(&self) {
        assert_eq!(self.wheel.len(), self.model.len());
        for (&token, &when) in &self.model {
            assert_eq!(self.wheel.get(token), Some(when));
        }
        match (self.wheel.next_deadline(), self.model.values().min()) {
            (None, None) => {}
            (Some(next), Some(&earliest)) => assert!(next <= earliest),
            (next, earliest) => panic!("next_deadline {next:?} with earliest {earliest:?}"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn wheel_matches_the_model(start in start(), ops in prop::collection::vec(op(), 1..120)) {
        let mut h = Harness { wheel: TimerWheel::new(start), model: BTreeMap::new(), clock: start };
        for op in ops {
            match op {
                Op::Set(token, offset) => {
                    h.wheel.set(token, h.clock + offset);
                    h.model.insert(token, h.clock + offset);
                }
                Op::Cancel(token) => {
                    prop_assert_eq!(h.wheel.cancel(token), h.model.remove(&token).is_some());
                }
                Op::Advance(delta) => {
                    h.advance(h.clock + delta);
                }
                Op::Back(delta) => h.clock -= delta,
                Op::Drive => h.drive(),
            }
            h.check();
        }
        h.drive();
        prop_assert!(h.wheel.is_empty());
    }
}

#[test]
fn many_tokens_fire_exactly_on_time_when_driven_by_next_deadline() {
    let start = 1_780_000_000_000;
    let mut h = Harness {
        wheel: TimerWheel::new(start),
        model: BTreeMap::new(),
        clock: start,
    };
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for token in 0..20_000u64 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let when = start + (state % 10_000_000) as i64;
        h.wheel.set(token, when);
        h.model.insert(token, when);
    }
    let mut fired = 0;
    while let Some(next) = h.wheel.next_deadline() {
        for (_, when) in h.advance(next.max(h.clock)) {
            assert_eq!(h.clock, when);
            fired += 1;
        }
    }
    assert_eq!(fired, 20_000);
}
