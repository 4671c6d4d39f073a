//! The contract stamp: a custom section naming the contract version a component was built for, read before
//! it is compiled so that a component of another contract is refused with both versions named.

use super::*;

/// The custom section in which plugins carry the contract version they were built for.
pub const CONTRACT_SECTION: &str = "weir-contract";

/// The contract version stamped into a component (its `weir-contract` custom section, at the top level or in
/// any nested core module), if any.
pub fn stamped_contract(wasm: &[u8]) -> Option<String> {
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        if let Ok(wasmparser::Payload::CustomSection(c)) = payload
            && c.name() == CONTRACT_SECTION
        {
            return Some(String::from_utf8_lossy(c.data()).into_owned());
        }
    }
    None
}

/// The contract a plugin built for `version` runs under on this host, if any: the same major version, and
/// for 0.x the same minor version (semver), as one of [`CONTRACT_VERSIONS`].
pub fn contract_compatible(version: &str) -> Option<Contract> {
    let parts = |v: &str| -> Vec<u64> {
        v.split('.')
            .map(|p| p.parse().unwrap_or(u64::MAX))
            .collect()
    };
    let theirs = parts(version);
    if theirs.len() != 3 {
        return None;
    }
    [Contract::V0_1, Contract::V0_2].into_iter().find(|c| {
        let ours = parts(c.version());
        if ours[0] == 0 {
            ours[0] == theirs[0] && ours[1] == theirs[1]
        } else {
            ours[0] == theirs[0]
        }
    })
}

/// The contract version a component's imports name (`weir:rules/host@…` or `weir:rules/types@…`), if any.
pub fn implemented_contract(wasm: &[u8]) -> Option<String> {
    for prefix in [&b"weir:rules/host@"[..], b"weir:rules/types@"] {
        if let Some(at) = wasm.windows(prefix.len()).position(|w| w == prefix) {
            let rest = &wasm[at + prefix.len()..];
            let end = rest
                .iter()
                .position(|b| !(b.is_ascii_digit() || *b == b'.'))
                .unwrap_or(rest.len());
            if end > 0 {
                return Some(String::from_utf8_lossy(&rest[..end]).into_owned());
            }
        }
    }
    None
}

/// Appends the `weir-contract` custom section to a component (for components built by toolchains without a
/// weir SDK stamp), with the version its imports name, or else the newest this host runs. Replaces nothing: a
/// stamped component is returned unchanged.
pub fn stamp(wasm: &[u8]) -> Vec<u8> {
    if stamped_contract(wasm).is_some() {
        return wasm.to_vec();
    }
    let leb = |mut n: usize, out: &mut Vec<u8>| loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    };
    let mut body = Vec::new();
    leb(CONTRACT_SECTION.len(), &mut body);
    body.extend_from_slice(CONTRACT_SECTION.as_bytes());
    let version = implemented_contract(wasm).unwrap_or_else(|| CONTRACT_VERSION.to_string());
    body.extend_from_slice(version.as_bytes());
    let mut out = wasm.to_vec();
    out.push(0); // custom section
    leb(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}
