//! The split matches retrain.py's, case by case (../shared/reference/split_cases.tsv).

use retrain::data::dataset::assign_set;
use std::path::Path;

#[test]
fn split_matches_retrain_py() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/reference/split_cases.tsv");
    let text = std::fs::read_to_string(path).unwrap();
    let mut checked = 0;
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(
            assign_set(cols[0], 10.0, 10.0).name(),
            cols[1],
            "{} at 10/10",
            cols[0]
        );
        assert_eq!(
            assign_set(cols[0], 20.0, 5.0).name(),
            cols[2],
            "{} at 20/5",
            cols[0]
        );
        checked += 1;
    }
    assert!(checked >= 60, "only {checked} cases read");
}
