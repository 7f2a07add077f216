//! Every example of the App Mesh user guide still validates: the request
//! files of its CLI walkthroughs, the specs of its resource pages, the
//! resources its describe commands answer, and the names its commands pass.
//!
//! `user-guide-examples.json` holds them as extracted from the guide's code
//! blocks (each with the page it came from), so that Weft's own rules on top
//! of the model (names, string lengths, client tokens) are checked against
//! what real users wrote.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use weft_model::validate_input;

const EXAMPLES: &str = include_str!("user-guide-examples.json");

#[test]
fn every_example_of_the_app_mesh_user_guide_validates() {
    let examples: Vec<Value> = serde_json::from_str(EXAMPLES).expect("examples are JSON");
    assert!(examples.len() >= 50, "{} examples", examples.len());
    let mut failures = Vec::new();
    for example in &examples {
        let operation = example["operation"].as_str().expect("operation");
        if let Err(e) = validate_input(operation, &example["input"]) {
            failures.push(format!("{} ({operation}): {e}", example["source"]));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
