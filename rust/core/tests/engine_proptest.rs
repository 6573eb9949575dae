//! Model-based property test of the engine: random batches over many
//! objects, reopens and compactions at random points, compared after every
//! step with a BTreeMap model, including `list` with every option.

use std::collections::BTreeMap;
use std::path::Path;

use proptest::prelude::*;
use stead_core::engine::{Durability, Engine, ListOptions, Op, Options};

type Model = BTreeMap<Vec<u8>, BTreeMap<Vec<u8>, Vec<u8>>>;

#[derive(Clone, Debug)]
enum MOp {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    DeleteAll,
    SetAlarm(i64),
    DeleteAlarm,
}

#[derive(Clone, Debug)]
enum Action {
    Commit(Vec<u8>, Vec<MOp>),
    Reopen,
    Compact,
    List(Vec<u8>, ListOptions),
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(vec![0u8, b'a', b'b', 0xFF]), 1..4)
}

fn object_id() -> impl Strategy<Value = Vec<u8>> {
    (0u8..6).prop_map(|i| vec![b'o', i])
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => prop::collection::vec(any::<u8>(), 0..40),
        1 => prop::collection::vec(any::<u8>(), 500..3000),
    ]
}

fn op() -> impl Strategy<Value = MOp> {
    prop_oneof![
        10 => (key(), value()).prop_map(|(k, v)| MOp::Put(k, v)),
        4 => key().prop_map(MOp::Delete),
        1 => Just(MOp::DeleteAll),
        2 => (-5i64..1_000_000).prop_map(MOp::SetAlarm),
        1 => Just(MOp::DeleteAlarm),
    ]
}

fn list_options() -> impl Strategy<Value = ListOptions> {
    (
        prop::option::of(prop::collection::vec(
            prop::sample::select(vec![0u8, b'a', 0xFF]),
            0..2,
        )),
        prop::option::of(key()),
        prop::option::of(key()),
        prop::option::of(key()),
        any::<bool>(),
        prop::option::of(0usize..5),
    )
        .prop_map(
            |(prefix, start, start_after, end, reverse, limit)| ListOptions {
                prefix,
                start,
                start_after,
                end,
                reverse,
                limit,
            },
        )
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        20 => (object_id(), prop::collection::vec(op(), 0..6)).prop_map(|(o, ops)| Action::Commit(o, ops)),
        2 => Just(Action::Reopen),
        1 => Just(Action::Compact),
        5 => (object_id(), list_options()).prop_map(|(o, l)| Action::List(o, l)),
    ]
}

fn options() -> Options {
    Options {
        durability: Durability::Os,
        segment_bytes: 4096,
        cache_bytes: 8192,
        ..Options::default()
    }
}

fn model_list(model: &Model, object_id: &[u8], o: &ListOptions) -> Vec<(Vec<u8>, Vec<u8>)> {
    let Some(keys) = model.get(object_id) else {
        return Vec::new();
    };
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = keys
        .iter()
        .filter(|(k, _)| o.prefix.as_ref().map_or(true, |p| k.starts_with(p)))
        .filter(|(k, _)| o.start.as_ref().map_or(true, |s| *k >= s))
        .filter(|(k, _)| o.start_after.as_ref().map_or(true, |s| *k > s))
        .filter(|(k, _)| o.end.as_ref().map_or(true, |e| *k < e))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if o.reverse {
        out.reverse();
    }
    out.truncate(o.limit.unwrap_or(usize::MAX));
    out
}

fn apply_model(
    model: &mut Model,
    alarms: &mut BTreeMap<Vec<u8>, i64>,
    object_id: &[u8],
    ops: &[MOp],
) {
    for op in ops {
        match op {
            MOp::Put(k, v) => {
                model
                    .entry(object_id.to_vec())
                    .or_default()
                    .insert(k.clone(), v.clone());
            }
            MOp::Delete(k) => {
                if let Some(keys) = model.get_mut(object_id) {
                    keys.remove(k);
                }
            }
            MOp::DeleteAll => {
                model.remove(object_id);
                alarms.remove(object_id);
            }
            MOp::SetAlarm(when) => {
                alarms.insert(object_id.to_vec(), *when);
            }
            MOp::DeleteAlarm => {
                alarms.remove(object_id);
            }
        }
        if model.get(object_id).is_some_and(BTreeMap::is_empty) {
            model.remove(object_id);
        }
    }
}

fn check_all(engine: &Engine, model: &Model, alarms: &BTreeMap<Vec<u8>, i64>) {
    // Objects with keys or an alarm, ascending.
    let ids: Vec<Vec<u8>> = model
        .keys()
        .chain(alarms.keys())
        .cloned()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(engine.objects(None, None, None), ids);
    for (id, keys) in model {
        let listed = engine.list(id, &ListOptions::default()).unwrap();
        let expected: Vec<(Vec<u8>, Vec<u8>)> =
            keys.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        assert_eq!(listed, expected);
        for (k, v) in keys {
            assert_eq!(engine.get(id, k).unwrap().as_ref(), Some(v));
        }
    }
    let expected: Vec<(Vec<u8>, i64)> = alarms.iter().map(|(k, v)| (k.clone(), *v)).collect();
    assert_eq!(engine.alarms(), expected);
}

fn run(dir: &Path, actions: Vec<Action>) {
    let mut engine = Engine::open(Some(dir), options()).unwrap();
    let mut model = Model::new();
    let mut alarms = BTreeMap::new();
    let mut last_seq = 0;
    for action in actions {
        match action {
            Action::Commit(object_id, ops) => {
                let core_ops: Vec<Op<'_>> = ops
                    .iter()
                    .map(|op| match op {
                        MOp::Put(k, v) => Op::Put(k, v),
                        MOp::Delete(k) => Op::Delete(k),
                        MOp::DeleteAll => Op::DeleteAll,
                        MOp::SetAlarm(w) => Op::SetAlarm(*w),
                        MOp::DeleteAlarm => Op::DeleteAlarm,
                    })
                    .collect();
                let seq = engine.commit(&object_id, &core_ops).unwrap();
                assert_eq!(seq, last_seq + 1);
                last_seq = seq;
                apply_model(&mut model, &mut alarms, &object_id, &ops);
            }
            Action::Reopen => {
                engine.close().unwrap();
                drop(engine);
                engine = Engine::open(Some(dir), options()).unwrap();
                assert_eq!(engine.last_seq(), last_seq);
                check_all(&engine, &model, &alarms);
            }
            Action::Compact => {
                engine.compact().unwrap();
                check_all(&engine, &model, &alarms);
            }
            Action::List(object_id, options) => {
                assert_eq!(
                    engine.list(&object_id, &options).unwrap(),
                    model_list(&model, &object_id, &options)
                );
            }
        }
    }
    check_all(&engine, &model, &alarms);
    engine.close().unwrap();
    let reopened = Engine::open(Some(dir), options()).unwrap();
    check_all(&reopened, &model, &alarms);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_model(actions in prop::collection::vec(action(), 1..120)) {
        let dir = tempfile::tempdir().unwrap();
        run(dir.path(), actions);
    }
}

#[test]
fn in_memory_engine_matches_model() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 32,
        ..Default::default()
    });
    let strategy = prop::collection::vec(
        (
            object_id(),
            prop::collection::vec(op(), 0..6),
            list_options(),
        ),
        1..80,
    );
    runner
        .run(&strategy, |steps| {
            let engine = Engine::open(None, options()).unwrap();
            let (mut model, mut alarms) = (Model::new(), BTreeMap::new());
            for (object_id, ops, list) in steps {
                let core_ops: Vec<Op<'_>> = ops
                    .iter()
                    .map(|op| match op {
                        MOp::Put(k, v) => Op::Put(k, v),
                        MOp::Delete(k) => Op::Delete(k),
                        MOp::DeleteAll => Op::DeleteAll,
                        MOp::SetAlarm(w) => Op::SetAlarm(*w),
                        MOp::DeleteAlarm => Op::DeleteAlarm,
                    })
                    .collect();
                engine.commit(&object_id, &core_ops).unwrap();
                apply_model(&mut model, &mut alarms, &object_id, &ops);
                prop_assert_eq!(
                    engine.list(&object_id, &list).unwrap(),
                    model_list(&model, &object_id, &list)
                );
            }
            check_all(&engine, &model, &alarms);
            Ok(())
        })
        .unwrap();
}
