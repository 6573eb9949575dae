//! Model-based property test of the mailbox: random push / finish / cancel
//! sequences over a few objects against a map of FIFO queues, checking every
//! return value and the depth, state and counts after each step.

use std::collections::{BTreeMap, VecDeque};

use proptest::prelude::*;
use stead_core::mailbox::{Mailbox, MailboxState};
use stead_core::Error;

const MAX_PENDING: usize = 3;

#[derive(Clone, Debug)]
enum Op {
    Push(u8),
    Finish(u8),
    /// Cancel the n-th queued token of the object (or an unknown token).
    Cancel(u8, usize),
}

fn op() -> impl Strategy<Value = Op> {
    let id = 0u8..4;
    prop_oneof![
        4 => id.clone().prop_map(Op::Push),
        3 => id.clone().prop_map(Op::Finish),
        1 => (id, 0usize..5).prop_map(|(o, n)| Op::Cancel(o, n)),
    ]
}

/// Object -> queue behind its running event; absent means idle.
type Model = BTreeMap<u8, VecDeque<u64>>;

fn id(object: u8) -> [u8; 32] {
    [object; 32]
}

fn step(mailbox: &Mailbox, model: &mut Model, op: Op, token: u64) {
    match op {
        Op::Push(o) => match (mailbox.push(&id(o), token), model.get_mut(&o)) {
            (Ok(true), None) => {
                model.insert(o, VecDeque::new());
            }
            (Ok(false), Some(queue)) if queue.len() < MAX_PENDING => queue.push_back(token),
            (Err(Error::Overloaded { pending }), Some(queue)) => {
                assert_eq!(pending, MAX_PENDING);
                assert_eq!(queue.len(), MAX_PENDING);
            }
            (got, queue) => panic!("push gave {got:?} with model queue {queue:?}"),
        },
        Op::Finish(o) => {
            let expected = model.get_mut(&o).and_then(|queue| queue.pop_front());
            if expected.is_none() {
                model.remove(&o);
            }
            assert_eq!(mailbox.finish(&id(o)), expected);
        }
        Op::Cancel(o, n) => {
            let queued = model.get(&o).and_then(|queue| queue.get(n).copied());
            let target = queued.unwrap_or(u64::MAX);
            if let Some(queue) = model.get_mut(&o) {
                queue.retain(|&t| t != target);
            }
            assert_eq!(mailbox.cancel(&id(o), target), queued.is_some());
        }
    }
}

fn check(mailbox: &Mailbox, model: &Model) {
    for object in 0u8..4 {
        let (depth, state) = match model.get(&object) {
            None => (0, MailboxState::Idle),
            Some(queue) if queue.is_empty() => (0, MailboxState::Running),
            Some(queue) => (queue.len(), MailboxState::Queued),
        };
        assert_eq!(mailbox.depth(&id(object)), depth);
        assert_eq!(mailbox.state(&id(object)), state);
        assert_eq!(mailbox.is_idle(&id(object)), state == MailboxState::Idle);
    }
    assert_eq!(mailbox.len(), model.len());
    assert_eq!(
        mailbox.total_depth(),
        model.values().map(VecDeque::len).sum::<usize>()
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn mailbox_matches_the_model(ops in prop::collection::vec(op(), 1..200), shards in 1usize..5) {
        let mailbox = Mailbox::new(MAX_PENDING, shards).unwrap();
        let mut model = Model::new();
        for (token, op) in ops.into_iter().enumerate() {
            step(&mailbox, &mut model, op, token as u64);
            check(&mailbox, &model);
        }
    }
}
