use super::*;

/// However many and however long the reasons, the ledger's JSON stays bounded and every drop counted.
#[test]
fn drop_reasons_are_bounded() {
    let mut reasons = BTreeMap::new();
    for i in 0..10_000 {
        reasons.insert(format!("duplicate of {i} {}", "é\u{1}".repeat(400)), 1);
    }
    reasons.insert("common".to_string(), 500);
    let bounded = bound_reasons(reasons);
    let json = serde_json::to_string(&bounded).unwrap();
    assert!(json.len() <= LEDGER_REASONS_MAX_BYTES, "{}", json.len());
    assert_eq!(bounded.values().sum::<usize>(), 10_500);
    assert_eq!(bounded["common"], 500, "the most frequent reason is kept");
    assert!(bounded.keys().all(|k| k.len() <= LEDGER_REASON_BYTES));
    assert!(bounded.contains_key(OTHER_REASONS));
    // Few short reasons stay as they are.
    let few = BTreeMap::from([("a".to_string(), 2), ("b".to_string(), 1)]);
    assert_eq!(bound_reasons(few.clone()), few);
}

/// Keys the database takes for one are one key in the client's dedupe too.
#[test]
fn key_equality_follows_the_database() {
    use KeyEquality::*;
    assert_eq!(Standard.normalize(&Cell::Float(-0.0)), Cell::Float(0.0));
    assert_eq!(
        Standard.normalize(&Cell::Decimal("-0.00".into())),
        Cell::Decimal("0.00".into())
    );
    assert_eq!(
        Standard.normalize(&Cell::Decimal("-0.10".into())),
        Cell::Decimal("-0.10".into())
    );
    assert_eq!(
        Standard.normalize(&Cell::Text("a  ".into())),
        Cell::Text("a  ".into())
    );
    assert_eq!(
        Redshift.normalize(&Cell::Text("a  ".into())),
        Cell::Text("a".into())
    );
    let row = |id: &str| CheckedRow {
        table: 0,
        cells: vec![Cell::Text(id.into())],
    };
    let (a, a_blank) = (row("a"), row("a "));
    let both = vec![(&a, "r1"), (&a_blank, "r2")];
    assert_eq!(dedupe(both.clone(), &[0], None, Standard).len(), 2);
    let one = dedupe(both, &[0], None, Redshift);
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].1, "r2", "the latest");
}
