//! Property tests of core's parsers of outside data: the model id read from
//! chain (`ModelId::from_chain_bytes` / `from_compressed_str`) and the
//! scoring step `pretrain score` reads (`StepJson` -> `StepInput`).
//! Arbitrary input never panics and is either accepted or refused with a
//! reason; round trips hold where there are any.

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly; that is its job

use pretrain_core::constants::MAX_COMMITMENT_BYTES;
use pretrain_core::scoring::StepJson;
use pretrain_core::{ModelId, ModelIdError};
use proptest::prelude::*;
use serde_json::Value;

const CASES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../testdata/scoring/cases.json"
);

fn config() -> ProptestConfig {
    ProptestConfig::with_cases(256)
}

/// One part of a compressed id: no `:` (the separator), any other character.
fn part() -> impl Strategy<Value = String> {
    "[^:]{0,40}"
}

/// An optional commit or hash: `None` is written as the literal `None`, so a
/// present value cannot be that literal.
fn opt_part() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(part().prop_filter("the literal None means missing", |p| p != "None"))
}

fn model_id() -> impl Strategy<Value = ModelId> {
    (part(), part(), opt_part(), opt_part()).prop_map(|(namespace, name, commit, hash)| ModelId {
        namespace: namespace.into(),
        name: name.into(),
        commit: commit.map(Into::into),
        hash: hash.map(Into::into),
    })
}

/// Bytes as read from chain: mostly text with separators, sometimes anything.
fn chain_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        "[a-zA-Z0-9:/_.-]{0,140}".prop_map(String::into_bytes),
        "(None|[a-z]{0,5})(:(None|[a-z0-9]{0,8})){0,6}".prop_map(String::into_bytes),
    ]
}

/// A reason is a non-empty one-line text.
fn has_reason(e: &dyn std::error::Error) -> Result<(), TestCaseError> {
    let text = e.to_string();
    prop_assert!(!text.trim().is_empty(), "empty reason: {:?}", text);
    Ok(())
}

fn reference_steps() -> Vec<Value> {
    let text = std::fs::read_to_string(CASES).expect("reference scoring cases");
    let all: Value = serde_json::from_str(&text).expect("valid json");
    all["steps"].as_array().expect("steps").clone()
}

/// A JSON value of any shape, with the numbers that matter for sizes (the
/// bounds, around them, past 64 bits, negative, fractional) over-represented.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        prop_oneof![
            Just(0u64),
            Just(1),
            Just(2),
            Just(65_535),
            Just(65_536),
            Just(65_537),
            Just((1 << 20) + 1),
            Just(1 << 32),
            Just(1 << 53),
            Just(u64::MAX),
            0u64..20,
        ]
        .prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop_oneof![Just(-1.0f64), Just(0.5), Just(1e300), any::<f64>()]
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop_oneof![
            Just("inf".to_string()),
            Just("nan".to_string()),
            Just("-inf".to_string()),
            Just("ok".to_string()),
            Just("no_metadata".to_string()),
            Just("load_failed".to_string()),
            ".{0,8}",
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            proptest::collection::btree_map("[0-9]{1,2}|[a-z_]{1,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Reads a step the way `pretrain score` does and, when it is accepted, runs it.
fn score(value: Value) -> Result<(), TestCaseError> {
    let step: StepJson = match serde_json::from_value(value) {
        Ok(s) => s,
        Err(e) => return has_reason(&e),
    };
    let input = match step.to_input() {
        Ok(i) => i,
        Err(e) => return has_reason(&e),
    };
    match input.run() {
        Ok(out) => {
            // Accepted: the outputs have the shapes the inputs promise.
            prop_assert_eq!(out.weights.len(), input.n_total_uids);
            prop_assert_eq!(out.step_weights.len(), input.uids.len());
            prop_assert!(out.uids_to_eval_next.len() <= input.sample_min.min(input.uids.len()));
            Ok(())
        }
        Err(e) => has_reason(&e),
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn chain_bytes_parse_or_are_refused_with_a_reason(bytes in chain_bytes()) {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        match ModelId::from_chain_bytes(&bytes) {
            Ok(id) => {
                // Four `:`-separated parts are needed, extra ones are ignored.
                prop_assert!(text.matches(':').count() >= 3, "{:?}", text);
                prop_assert_eq!(text.split(':').next(), Some(id.namespace.as_str()));
                // What was parsed reads back the same.
                prop_assert_eq!(&ModelId::from_compressed_str(&id.to_compressed_str()).unwrap(), &id);
            }
            Err(e) => {
                prop_assert!(text.matches(':').count() < 3, "{:?}: {}", text, e);
                has_reason(&e)?;
            }
        }
        // The string form is the same parser.
        prop_assert_eq!(
            ModelId::from_compressed_str(&text).ok(),
            ModelId::from_chain_bytes(&bytes).ok()
        );
    }

    #[test]
    fn model_ids_round_trip_through_chain_bytes(id in model_id()) {
        let text = id.to_compressed_str();
        match id.to_chain_bytes() {
            Ok(bytes) => {
                prop_assert!(bytes.len() <= MAX_COMMITMENT_BYTES);
                prop_assert_eq!(&bytes, &text.clone().into_bytes());
                prop_assert_eq!(&ModelId::from_chain_bytes(&bytes).unwrap(), &id);
            }
            Err(e) => {
                prop_assert!(text.len() > MAX_COMMITMENT_BYTES, "{}: {}", text, e);
                prop_assert_eq!(
                    e.clone(),
                    ModelIdError::TooLong { len: text.len(), max: MAX_COMMITMENT_BYTES }
                );
                has_reason(&e)?;
            }
        }
    }

    #[test]
    fn arbitrary_json_is_scored_or_refused_with_a_reason(value in any_json()) {
        score(value)?;
    }

    #[test]
    fn reference_steps_with_one_field_changed_are_scored_or_refused(
        k in 0usize..20,
        field in prop_oneof![
            Just("n_total_uids"), Just("uids"), Just("n_batches"), Just("epsilon"),
            Just("temperature"), Just("alpha"), Just("sample_min"), Just("uid_status"),
            Just("blocks"), Just("losses_per_uid"), Just("prev_weights"), Just("name"),
            Just("no_such_field"),
        ],
        value in any_json(),
    ) {
        let steps = reference_steps();
        let mut step = steps[k % steps.len()].clone();
        step[field] = value;
        score(step)?;
    }

    #[test]
    fn reference_steps_with_one_uid_entry_changed_are_scored_or_refused(
        k in 0usize..20,
        map in prop_oneof![Just("uid_status"), Just("blocks"), Just("losses_per_uid")],
        pick in 0usize..64,
        value in any_json(),
    ) {
        let steps = reference_steps();
        let mut step = steps[k % steps.len()].clone();
        let uids: Vec<u64> = step["uids"].as_array().unwrap().iter().filter_map(Value::as_u64).collect();
        let uid = uids.get(pick % uids.len().max(1)).copied().unwrap_or(0);
        step[map][uid.to_string()] = value;
        score(step)?;
    }
}

#[test]
fn the_unchanged_reference_steps_are_accepted() {
    // The mutation tests above start from valid steps: check that they are.
    for step in reference_steps() {
        let parsed: StepJson = serde_json::from_value(step).unwrap();
        parsed.to_input().unwrap().run().unwrap();
    }
}
