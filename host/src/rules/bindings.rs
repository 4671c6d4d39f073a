//! The host's only `bindgen!`: generated from the WIT contract in the repository's `wit/` folder.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "rule",
});
