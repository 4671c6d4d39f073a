use super::*;

/// Versions of the same 0.x minor as a supported one are compatible; other minors and majors are not.
#[test]
fn contract_versions() {
    assert_eq!(contract_compatible("0.1.0"), Some(Contract::V0_1));
    assert_eq!(contract_compatible("0.1.7"), Some(Contract::V0_1));
    assert_eq!(contract_compatible("0.2.0"), Some(Contract::V0_2));
    assert_eq!(contract_compatible("0.3.0"), None);
    assert_eq!(contract_compatible("1.1.0"), None);
    assert_eq!(contract_compatible("x"), None);
}

/// The WIT package and every guest SDK name the host's contract version: the version string is
/// written once in the host and nowhere else can drift from it.
#[test]
fn one_contract_version() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let read =
        |p: &str| std::fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert!(read("wit/v0.2/rules.wit").contains(&format!("package {CONTRACT};")));
    assert!(read("wit/rules.wit").contains(&format!("package {CONTRACT_0_1};")));
    let v0_1 = CONTRACT_VERSIONS[0];
    for (file, line) in [
        (
            "plugins/weir-rule/src/lib.rs",
            format!("pub const CONTRACT_VERSION: &str = \"{CONTRACT_VERSION}\";"),
        ),
        (
            "plugins/c/weir_rule.h",
            format!(
                "#define WEIR_CONTRACT_VERSION \"{CONTRACT_VERSION}\"\n#else\n#define WEIR_CONTRACT_VERSION \"{v0_1}\""
            ),
        ),
        (
            "plugins/js/weir_rule.js",
            format!("export const CONTRACT_VERSION = '{CONTRACT_VERSION}';"),
        ),
        (
            "plugins/js/weir_rule.js",
            format!("from 'weir:rules/host@{CONTRACT_VERSION}'"),
        ),
        (
            "plugins/python/weir_rule/__init__.py",
            format!("CONTRACT_VERSION = \"{v0_1}\" if _V01 else \"{CONTRACT_VERSION}\""),
        ),
    ] {
        assert!(read(file).contains(&line), "{file} does not say {line}");
    }
}

/// A stamp appended to an unstamped component is found; stamping twice changes nothing.
#[test]
fn stamp_round_trip() {
    // The smallest component: the magic and the component-model version/layer.
    let empty = b"\0asm\x0d\0\x01\0".to_vec();
    assert_eq!(stamped_contract(&empty), None);
    let stamped = stamp(&empty);
    assert_eq!(
        stamped_contract(&stamped).as_deref(),
        Some(CONTRACT_VERSION)
    );
    assert_eq!(stamp(&stamped), stamped);
}
